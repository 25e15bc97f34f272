//! Presence: two bridges on one Redis count the same users (per user, over all their
//! connections and both bridges); join and leave frames when a user's first connection
//! arrives and last one goes, wherever they are; `visible_to` refusals; a bridge killed with
//! SIGKILL drops out within `redis.heartbeat_timeout`; the README's least ACL is enough.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::redis_acl::{PASSWORD, command, readme_acl_line};
use crate::support::tokens::{auth_section, token};
use crate::support::{Bridge, RedisServer, WAIT, WsClient};

/// Members live 1 s without a refresh, refreshed every 200 ms.
/// Routes on `PREFIX:*` (topics `PREFIX:<id>`) and the channel `PREFIX:lobby` (topic `lobby`).
fn yaml(redis_url: &str, instance: &str, prefix: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
instance: {instance}
redis:
  url: {redis_url}
  heartbeat_interval: 200ms
  heartbeat_timeout: 1s
websocket:
  path: /ws
{auth}shutdown_grace: 5s
routes:
  - name: rooms
    pattern: "{prefix}:*"
    topic: "{prefix}:{{1}}"
    audience: {{ claims: {{ rooms: "{prefix}:{{1}}" }} }}
    presence:
      visible_to: {{ claims: {{ rooms: "{{topic}}" }} }}
      events: true
  - name: lobby
    channel: "{prefix}:lobby"
    topic: lobby
    presence: {{ visible_to: authenticated }}
"#,
        auth = auth_section("optional", "", "")
    )
}

async fn bridge(redis: &RedisServer, instance: &str) -> Bridge {
    let bridge = Bridge::start_with(&yaml(&redis.url(), instance, "room"), &[]);
    bridge.wait_ready().await;
    bridge
}

async fn user(bridge: &Bridge, name: &str, rooms: &[&str]) -> WsClient {
    let token = token(name, &["member"], json!({ "rooms": rooms }));
    bridge.client_at(&format!("/ws?token={token}")).await
}

/// The `presence` answer for `topic`.
async fn presence(client: &mut WsClient, id: u64, topic: &str) -> Value {
    client
        .send_json(&json!({"type": "presence", "id": id, "topic": topic}))
        .await;
    client.next_json().await
}

fn answer(id: u64, topic: &str, users: &[(&str, usize)]) -> Value {
    let users: Vec<Value> = users
        .iter()
        .map(|(user, connections)| json!({"user": user, "connections": connections}))
        .collect();
    json!({"type": "presence", "id": id, "topic": topic, "count": users.len(), "users": users})
}

fn event(kind: &str, user: &str) -> Value {
    json!({"type": kind, "topic": "room:1", "user": user})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_presence_and_a_killed_one_drops_out() {
    let redis = RedisServer::start();
    let a = bridge(&redis, "bridge-a").await;
    let mut b = bridge(&redis, "bridge-b").await;

    // dave watches room:1 from bridge A.
    let mut dave = user(&a, "dave", &["room:1"]).await;
    dave.subscribe(1, &["room:1"]).await;
    assert_eq!(dave.next_json().await, event("join", "dave"));

    // alice's first connection (A) is a join, on both bridges; her second (B) is not.
    let mut alice_a = user(&a, "alice", &["room:1"]).await;
    alice_a.subscribe(1, &["room:1"]).await;
    assert_eq!(dave.next_json().await, event("join", "alice"));
    assert_eq!(alice_a.next_json().await, event("join", "alice"));
    let mut alice_b = user(&b, "alice", &["room:1"]).await;
    alice_b.subscribe(1, &["room:1"]).await;
    let mut bob = user(&b, "bob", &["room:1"]).await;
    bob.subscribe(1, &["room:1"]).await;
    // bob's join is the next frame of everyone on room:1: alice's second connection made none.
    for client in [&mut dave, &mut alice_a, &mut alice_b, &mut bob] {
        assert_eq!(client.next_json().await, event("join", "bob"));
    }

    let everyone = [("alice", 2), ("bob", 1), ("dave", 1)];
    assert_eq!(
        presence(&mut dave, 2, "room:1").await,
        answer(2, "room:1", &everyone)
    );
    assert_eq!(
        presence(&mut bob, 2, "room:1").await,
        answer(2, "room:1", &everyone)
    );

    // alice leaves one connection: no leave; her last one: a leave.
    alice_a
        .send_json(&json!({"type": "unsubscribe", "id": 3, "topics": ["room:1"]}))
        .await;
    assert_eq!(alice_a.next_json().await["type"], "unsubscribed");
    alice_b.close().await;
    assert_eq!(dave.next_json().await, event("leave", "alice"));
    assert_eq!(bob.next_json().await, event("leave", "alice"));
    assert_eq!(
        presence(&mut dave, 4, "room:1").await,
        answer(4, "room:1", &[("bob", 1), ("dave", 1)])
    );

    // Bridge B dies without a word: bob drops out within the member lifetime (1 s, checked
    // against 3 s: the refresh period and the machine's noise), with no leave event.
    b.signal("KILL");
    let killed = Instant::now();
    let mut id = 5;
    loop {
        let got = presence(&mut dave, id, "room:1").await;
        if got == answer(id, "room:1", &[("dave", 1)]) {
            break;
        }
        assert_eq!(got, answer(id, "room:1", &[("bob", 1), ("dave", 1)]));
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "bob still present: {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        id += 1;
    }
    assert!(
        b.wait_exit(WAIT).await.code().is_none(),
        "killed by a signal"
    );
    // Nothing else was sent to dave: no leave for bob.
    dave.assert_pong(100).await;
    assert_eq!(
        a.metric(r#"bridge_presence_queries_total{result="ok"}"#)
            .await,
        Some(id - 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connections_visible_to_admits_see_presence() {
    let redis = RedisServer::start();
    let a = bridge(&redis, "bridge-a").await;
    let mut alice = user(&a, "alice", &["room:1"]).await;
    alice.subscribe(1, &["room:1", "lobby"]).await;
    assert_eq!(alice.next_json().await, event("join", "alice"));
    // `events: false`: no frame for the lobby, and its presence is there to query.
    assert_eq!(
        presence(&mut alice, 2, "lobby").await,
        answer(2, "lobby", &[("alice", 1)])
    );

    // carol may not see room:1 (not in her rooms), an anonymous connection sees nothing.
    let mut carol = user(&a, "carol", &["room:2"]).await;
    let refused = presence(&mut carol, 1, "room:1").await;
    assert_eq!(
        (&refused["code"], &refused["id"], &refused["topic"]),
        (&json!("forbidden"), &json!(1), &json!("room:1")),
        "{refused}"
    );
    let mut anonymous = a.client().await;
    for topic in ["room:1", "lobby"] {
        let refused = presence(&mut anonymous, 1, topic).await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
    }
    // A topic no route with presence produces.
    let refused = presence(&mut alice, 3, "elsewhere").await;
    assert_eq!(refused["code"], "unknown_topic", "{refused}");
    let refused = presence(&mut alice, 4, "").await;
    assert_eq!(refused["code"], "bad_request", "{refused}");

    // carol subscribes to room:2, which alice may not see: alice gets no event of it.
    carol.subscribe(2, &["room:2"]).await;
    assert_eq!(
        carol.next_json().await,
        json!({"type": "join", "topic": "room:2", "user": "carol"})
    );
    alice.assert_pong(5).await;
    anonymous.assert_pong(2).await;
    for (result, count) in [("ok", 1), ("forbidden", 3), ("unknown_topic", 1)] {
        let series = format!(r#"bridge_presence_queries_total{{result="{result}"}}"#);
        assert_eq!(a.metric(&series).await, Some(count), "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_runs_under_the_readme_acl_line() {
    let redis = RedisServer::start();
    command(&redis, &readme_acl_line()).await;
    let url = format!(
        "redis://redis-ws-bridge:{PASSWORD}@127.0.0.1:{}/0",
        redis.port()
    );
    // README's line grants the route channels `job:*`.
    let bridge = Bridge::start_with(&yaml(&url, "bridge-a", "job"), &[]);
    bridge.wait_ready().await;
    let mut alice = user(&bridge, "alice", &["job:1"]).await;
    alice.subscribe(1, &["job:1"]).await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "join", "topic": "job:1", "user": "alice"})
    );
    assert_eq!(
        presence(&mut alice, 2, "job:1").await,
        answer(2, "job:1", &[("alice", 1)])
    );
    assert!(!bridge.logs().contains("NOPERM"), "{}", bridge.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_presence_takes_its_members_out() {
    let redis = RedisServer::start();
    let a = bridge(&redis, "bridge-a").await;
    let b = bridge(&redis, "bridge-b").await;
    let mut dave = user(&a, "dave", &["room:1"]).await;
    let mut alice = user(&b, "alice", &["room:1"]).await;
    alice.subscribe(1, &["room:1"]).await;
    assert_eq!(alice.next_json().await, event("join", "alice"));
    assert_eq!(
        presence(&mut dave, 1, "room:1").await,
        answer(1, "room:1", &[("alice", 1)])
    );

    // Bridge B keeps the route and alice's subscription, without presence.
    let without = yaml(&redis.url(), "bridge-b", "room").replace(
        "    presence:\n      visible_to: { claims: { rooms: \"{topic}\" } }\n      events: true\n",
        "",
    );
    assert!(!without.contains("events: true"), "{without}");
    std::fs::write(b.config_path(), without).expect("rewrite bridge B's routing file");
    b.signal("HUP");
    b.wait_log(WAIT, |line| {
        crate::support::log_field(line, "message").and_then(Value::as_str) == Some("reloaded")
    })
    .await;
    let reloaded = Instant::now();
    let mut id = 2;
    while presence(&mut dave, id, "room:1").await != answer(id, "room:1", &[]) {
        assert!(
            reloaded.elapsed() < Duration::from_secs(3),
            "alice still present"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        id += 1;
    }
    // alice is still subscribed on B: its frames still reach her.
    crate::support::publish(&redis.url(), "room:1", r#"{"n":1}"#).await;
    assert_eq!(alice.next_json().await["data"], json!({"n": 1}));
}
