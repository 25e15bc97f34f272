//! Inbound routes: client frames published to Redis with the sender's verified identity,
//! seen by a real Redis subscriber; every refusal (no route, over size, `allow`, `rate`, a
//! placeholder without a value) publishes nothing; a channel that could reach the bridge's
//! own prefix is refused at load; a reload replaces the routes; replies to one connection.

use serde_json::{Value, json};

use crate::support::tokens::{auth_section, token};
use crate::support::watcher::Watcher;
use crate::support::{
    Bridge, RedisServer, WAIT, WsClient, assert_rfc3339_ms_utc, config_with, publish,
};

const INBOUND: &str = r#"
inbound:
  - name: chat
    match: { type: publish, topic: "room:*" }
    channel: "chat:{payload.topic}"
    allow: { claims: { rooms: "{payload.topic}" } }
    ack: true
  - name: metric-requests
    match: { type: request_metrics }
    channel: "requests:{claims.workspace_id}"
    allow: authenticated
    rate: 2/s
  - name: notes
    match: { type: note }
    channel: "notes:{user}:{connection_id}"
    allow: all
"#;

/// The replies a worker publishes to one connection.
const REPLY_ROUTE: &str = r#"
    - name: replies
      channel: replies
      topic: replies
      delivery: auto
      audience: { connection: "{payload.connection_id}" }
      format: raw
    "#;

fn yaml(websocket: &str, inbound: &str) -> String {
    let sections = format!(
        "instance: bridge-a\n{}{}",
        auth_section("optional", "", ""),
        inbound.trim_start_matches('\n')
    );
    config_with(websocket, &sections, REPLY_ROUTE)
}

async fn start(websocket: &str) -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &yaml(websocket, INBOUND));
    bridge.wait_ready().await;
    (redis, bridge)
}

async fn alice_client(bridge: &Bridge) -> WsClient {
    let token = token(
        "alice",
        &["member"],
        json!({"rooms": ["room:1"], "workspace_id": "w1"}),
    );
    bridge.client_at(&format!("/ws?token={token}")).await
}

fn connection_id(client: &WsClient) -> String {
    client.welcome["connection_id"]
        .as_str()
        .expect("a connection id")
        .to_owned()
}

/// Checks an envelope's identity and data; returns it.
fn assert_envelope(seen: &Value, route: &str, user: Value, roles: Value, id: &str, data: &Value) {
    assert_rfc3339_ms_utc(seen["ts"].as_str().expect("ts"));
    let mut seen = seen.clone();
    seen["ts"] = json!("<ts>");
    assert_eq!(
        seen,
        json!({"type": "client_message", "route": route, "user": user, "roles": roles,
               "connection_id": id, "instance": "bridge-a", "ts": "<ts>", "data": data})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_reach_redis_with_the_verified_identity_only() {
    let (redis, bridge) = start("").await;
    let mut watcher = Watcher::start(&redis.url(), &["chat:*", "requests:*", "notes:*"]).await;
    let mut alice = alice_client(&bridge).await;
    let alice_id = connection_id(&alice);

    // Every identity field of the frame is forged: they stay in `data`, and the envelope
    // says who really sent it.
    let forged = json!({"type": "publish", "id": 7, "topic": "room:1", "text": "hi",
                        "user": "mallory", "roles": ["admin"], "connection_id": "forged",
                        "instance": "forged", "route": "forged"});
    alice.send_json(&forged).await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "published", "id": 7})
    );
    let seen = watcher.next().await;
    assert_eq!(seen.channel, "chat:room:1");
    assert_envelope(
        &seen.payload,
        "chat",
        json!("alice"),
        json!(["member"]),
        &alice_id,
        &forged,
    );

    // Claims in the channel, no ack: nothing comes back to the client.
    let request = json!({"type": "request_metrics", "metric_type": "executions"});
    alice.send_json(&request).await;
    let seen = watcher.next().await;
    assert_eq!(seen.channel, "requests:w1");
    assert_envelope(
        &seen.payload,
        "metric-requests",
        json!("alice"),
        json!(["member"]),
        &alice_id,
        &request,
    );
    alice.assert_pong(1).await;

    // An anonymous sender through `allow: all`: user null, and `{user}` has no value.
    let mut anonymous = bridge.client().await;
    let note = json!({"type": "note", "user": "alice"});
    anonymous.send_json(&note).await;
    let refused = anonymous.next_json().await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    alice.send_json(&note).await;
    let seen = watcher.next().await;
    assert_eq!(seen.channel, format!("notes:alice:{alice_id}"));
    assert_envelope(
        &seen.payload,
        "notes",
        json!("alice"),
        json!(["member"]),
        &alice_id,
        &note,
    );

    assert_eq!(
        bridge
            .metric(r#"bridge_inbound_published_total{route="chat"}"#)
            .await,
        Some(1)
    );
    assert_eq!(
        bridge
            .metric(r#"bridge_inbound_refused_total{reason="unresolved"}"#)
            .await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_publish_nothing() {
    let (redis, bridge) = start("max_frame_bytes: 1024").await;
    let mut watcher = Watcher::start(&redis.url(), &["*"]).await;
    let mut alice = alice_client(&bridge).await;
    let mut anonymous = bridge.client().await;
    let no_workspace = token("bob", &["member"], json!({"rooms": ["room:1"]}));
    let mut bob = bridge.client_at(&format!("/ws?token={no_workspace}")).await;

    // A frame no inbound route takes and no command: `bad_request`, as without routes.
    alice.send_json(&json!({"type": "dance", "id": 1})).await;
    let f = alice.next_json().await;
    assert_eq!(
        (f["code"].as_str(), &f["id"]),
        (Some("bad_request"), &json!(1)),
        "{f}"
    );
    // A command keeps its own errors, whatever an inbound `match` would take.
    alice
        .send_json(&json!({"type": "subscribe", "id": 2, "topic": "room:1"}))
        .await;
    let f = alice.next_json().await;
    assert_eq!(f["code"], "bad_request", "{f}");
    // A room the token does not list, and an anonymous sender: `forbidden`.
    alice
        .send_json(&json!({"type": "publish", "id": 3, "topic": "room:2"}))
        .await;
    let f = alice.next_json().await;
    assert_eq!(
        (f["code"].as_str(), &f["id"]),
        (Some("forbidden"), &json!(3)),
        "{f}"
    );
    anonymous
        .send_json(&json!({"type": "request_metrics", "id": 4}))
        .await;
    let f = anonymous.next_json().await;
    assert_eq!(f["code"], "forbidden", "{f}");
    // A token without the claim the channel needs.
    bob.send_json(&json!({"type": "request_metrics", "id": 5}))
        .await;
    let f = bob.next_json().await;
    assert_eq!(f["code"], "bad_request", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requests:{claims.workspace_id}"),
        "{f}"
    );

    // `rate: 2/s`: the third at once is refused, and nothing of it is published.
    for id in 10..13 {
        alice
            .send_json(&json!({"type": "request_metrics", "id": id}))
            .await;
    }
    let f = alice.next_json().await;
    assert_eq!(
        (f["code"].as_str(), &f["id"]),
        (Some("rate_limited"), &json!(12)),
        "{f}"
    );
    for _ in 0..2 {
        assert_eq!(watcher.next().await.channel, "requests:w1");
    }

    // Over `max_frame_bytes`: closed with 1009, nothing published.
    let big = json!({"type": "publish", "topic": "room:1", "pad": "x".repeat(1100)});
    alice.send_json(&big).await;
    assert_eq!(alice.expect_close(WAIT).await.0, 1009);

    // Nothing else came: the next message is the marker.
    let mut alice = alice_client(&bridge).await;
    alice
        .send_json(&json!({"type": "publish", "id": 20, "topic": "room:1", "marker": true}))
        .await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "published", "id": 20})
    );
    let seen = watcher.next().await;
    assert_eq!(seen.channel, "chat:room:1");
    assert_eq!(seen.payload["data"]["marker"], true, "{:?}", seen.payload);
    for (reason, count) in [("forbidden", 2), ("rate_limited", 1), ("unresolved", 1)] {
        let series = format!(r#"bridge_inbound_refused_total{{reason="{reason}"}}"#);
        assert_eq!(bridge.metric(&series).await, Some(count), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answers_exactly_the_requesting_connection() {
    let (redis, bridge) = start("").await;
    let mut watcher = Watcher::start(&redis.url(), &["requests:*"]).await;
    let mut asking = alice_client(&bridge).await;
    let mut other_tab = alice_client(&bridge).await;
    let request = json!({"type": "request_metrics", "metric_type": "executions"});
    asking.send_json(&request).await;
    let seen = watcher.next().await;
    let reply = json!({"connection_id": seen.payload["connection_id"], "total": 3});
    assert_eq!(publish(&redis.url(), "replies", reply.to_string()).await, 1);
    assert_eq!(asking.next_json().await, reply);
    // The other tab of the same user got nothing: its next frame is its pong.
    other_tab.assert_pong(1).await;
    // A reply to a connection that is gone reaches nobody.
    let stale = json!({"connection_id": "00000000-0000-0000-0000-000000000000"});
    publish(&redis.url(), "replies", stale.to_string()).await;
    asking.assert_pong(2).await;
    other_tab.assert_pong(3).await;
}

#[tokio::test]
async fn a_channel_that_could_name_the_bridges_own_is_refused_at_load() {
    for (channel, column) in [
        ("\"{payload.channel}\"", 14),
        ("\"__redis-ws-bridge__:x\"", 14),
        ("\"__redis{payload.x}\"", 14),
    ] {
        let inbound = format!("inbound:\n  - name: x\n    channel: {channel}\n");
        let exit =
            Bridge::check(&yaml("", &inbound).replace("{redis_url}", "redis://127.0.0.1:1/0"));
        assert_eq!(exit.code, Some(1), "{channel}: {}", exit.stderr);
        let line = exit
            .stderr
            .lines()
            .find(|line| line.contains("inbound[0].channel"))
            .unwrap_or_else(|| panic!("{channel}: {}", exit.stderr));
        assert!(line.contains("__redis-ws-bridge__:"), "{line}");
        let at = format!(
            "bridge.yaml:{}:{column}:",
            line_of(&yaml("", &inbound), "channel:")
        );
        assert!(line.contains(&at), "{line} (expected {at})");
    }
    let ok = "inbound:\n  - name: x\n    channel: \"chat:{payload.channel}\"\n";
    let exit = Bridge::check(&yaml("", ok).replace("{redis_url}", "redis://127.0.0.1:1/0"));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

#[tokio::test]
async fn an_allow_that_needs_a_token_is_refused_at_load_when_nobody_has_one() {
    // No `auth` section: every connection is anonymous, and the default `allow` would refuse
    // every frame.
    let inbound = "inbound:\n  - name: x\n    channel: \"chat:{payload.channel}\"\n";
    let yaml =
        config_with("", inbound, REPLY_ROUTE).replace("{redis_url}", "redis://127.0.0.1:1/0");
    let exit = Bridge::check(&yaml);
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    let line = exit
        .stderr
        .lines()
        .find(|line| line.contains("inbound[0].allow"))
        .unwrap_or_else(|| panic!("{}", exit.stderr));
    assert!(
        line.contains(&format!("bridge.yaml:{}:5:", line_of(&yaml, "- name: x")))
            && line.contains("(the default)")
            && line.contains("`allow: all`"),
        "{line}"
    );
    let open = yaml.replace("    channel: \"chat", "    allow: all\n    channel: \"chat");
    let exit = Bridge::check(&open);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .expect("the needle")
        + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_inbound_routes() {
    let (redis, bridge) = start("").await;
    let mut watcher = Watcher::start(&redis.url(), &["*"]).await;
    let mut alice = alice_client(&bridge).await;
    let moved = INBOUND.replace("\"chat:{payload.topic}\"", "\"rooms:{payload.topic}\"");
    std::fs::write(
        bridge.config_path(),
        yaml("", &moved).replace("{redis_url}", &redis.url()),
    )
    .expect("rewrite the routing file");
    bridge.signal("HUP");
    bridge
        .wait_log(WAIT, |line| {
            line["fields"]["message"] == "reloaded" || line["message"] == "reloaded"
        })
        .await;
    alice
        .send_json(&json!({"type": "publish", "id": 1, "topic": "room:1"}))
        .await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "published", "id": 1})
    );
    assert_eq!(watcher.next().await.channel, "rooms:room:1");
}
