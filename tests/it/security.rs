//! What a hostile but authenticated client, or a forged request, must not get: answers that
//! grow the bridge without bound, a session that panics into a zombie, an Origin check
//! slipped past, every connection slot, a look at topics it may not receive, another kind of
//! credential's identity.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tokens::{SERVICE_KEY, auth_section, hs256, now, token};
use crate::support::{
    ADMIN_TOKEN, Bridge, ConnectError, Frame, RedisServer, WAIT, WsClient, config_with,
    wait_until_async,
};

const MIB: u64 = 1024;

/// A subscribe route only administrators may have, an `auto` route for everyone and one for
/// administrators.
const ROUTES: &str = r#"
    - name: private
      pattern: "p:*"
      topic: "p:{1}"
      audience: { roles: [admin] }
    - name: news
      channel: news
      topic: news
      delivery: auto
    - name: admin-events
      channel: admin
      topic: admin-events
      delivery: auto
      audience: { roles: [admin] }
    "#;

async fn start(websocket: &str) -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let sections = format!(
        "{}admin:\n  token: {ADMIN_TOKEN}\n",
        auth_section("optional", "", "")
    );
    let bridge = Bridge::start(&redis, &config_with(websocket, &sections, ROUTES));
    bridge.wait_ready().await;
    (redis, bridge)
}

/// The HTTP status the bridge answers a raw upgrade request with these extra header lines.
async fn upgrade_status(addr: SocketAddr, headers: &[u8]) -> u16 {
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    request.extend_from_slice(headers);
    request.extend_from_slice(b"\r\n");
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(&request).await.expect("send the request");
    let mut head = [0; 12];
    tokio::time::timeout(WAIT, socket.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("a status line");
    std::str::from_utf8(&head[9..12])
        .expect("ASCII status")
        .parse()
        .expect("a status code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscribes_from_a_client_that_never_reads_keep_memory_bounded() {
    let (_redis, bridge) = start("").await;
    let alice = token("alice", &["user"], json!({}));
    let url = bridge.ws_url(&format!("/ws?token={alice}"));
    let mut flooder = WsClient::connect_small_buffer(&url, bridge.addr(), 4096).await;
    let baseline = bridge.rss_kib();

    // The burst of 20 commands the default rate admits, then one command every 60 ms (within
    // the rate of 20/s). Each refuses 1000 topics; the first ten quote an id as long as the
    // frame allows, the rest the longest id allowed. Answered with an error per topic, each
    // repeating the id, the burst alone grew the bridge by hundreds of MiB.
    let long_id = "A".repeat(40_000);
    let refused: Vec<String> = (0..1000).map(|i| format!("p:{i:053}")).collect();
    let command = |i: usize| {
        let (id, topics) = if i < 10 {
            (long_id.clone(), vec!["x".to_owned(); 1000])
        } else {
            ("B".repeat(128), refused.clone())
        };
        json!({"type": "subscribe", "id": id, "topics": topics}).to_string()
    };
    let burst: Vec<String> = (0..20).map(command).collect();
    let steady: Vec<String> = (20..400).map(command).collect();
    let started = Instant::now();
    assert!(flooder.send_burst(&burst).await, "the burst is written");
    let mut sent = burst.len();
    let mut peak = baseline;
    // The answers pile up in the socket's buffers (some MiB on loopback), then in the bridge,
    // until the unread ones pass the connection's bound.
    for text in &steady {
        peak = peak.max(bridge.rss_kib());
        if bridge.stats().await["connections"] == 0 {
            break;
        }
        if !flooder.send_burst(std::slice::from_ref(text)).await {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    wait_until_async(WAIT, "the flooder closed", || {
        peak = peak.max(bridge.rss_kib());
        async { bridge.stats().await["connections"] == 0 }
    })
    .await;
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "refused-subscribe flood: {sent} commands in {:?}; RSS {baseline} KiB → peak {peak} KiB (+{growth} KiB)",
        started.elapsed()
    );
    assert!(growth < 50 * MIB, "RSS grew by {growth} KiB");

    // Closed for its unread answers. The close frame rarely gets through a full socket, so
    // the log says why.
    let closed = bridge
        .wait_log(WAIT, |line| line["message"] == "connection closed")
        .await;
    assert_eq!(
        (&closed["close_code"], &closed["reason"]),
        (&json!(1008), &json!("too many unread replies")),
        "{closed}"
    );

    // What the flooder finds when it reads at last (what its socket held before the bridge
    // dropped the connection): one answer per command, none quoting the overlong id.
    let mut answers = Vec::new();
    loop {
        match flooder.recv_frame(WAIT).await {
            Frame::Text(text) => answers.push(serde_json::from_str::<Value>(&text).unwrap()),
            Frame::Close(close) => {
                assert_eq!(close, Some((1008, "too many unread replies".to_owned())));
                break;
            }
            Frame::Ended | Frame::Error(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answers[0]["type"], "connected");
    assert!(
        answers.len() <= sent + 1,
        "{} answers to {sent} commands",
        answers.len() - 1
    );
    for answer in answers.iter().skip(1).take(10) {
        assert_eq!(answer["code"], "bad_request", "{answer}");
        assert!(answer.get("id").is_none(), "{answer}");
    }
    for answer in answers.iter().skip(11) {
        assert_eq!(
            (
                &answer["type"],
                &answer["code"],
                answer["refused"].as_array().map(Vec::len)
            ),
            (&json!("error"), &json!("forbidden"), Some(1000)),
            "one answer lists every refused topic"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_is_answered_once_with_what_it_refused() {
    let (_redis, bridge) = start("").await;
    let admin = token("root", &["admin"], json!({}));
    let mut c = bridge.client_at(&format!("/ws?token={admin}")).await;
    c.send_json(&json!({"type": "subscribe", "id": 1, "topics": ["p:1", "nope", "p:2"]}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "subscribed", "id": 1, "topics": ["p:1", "p:2"],
               "refused": [{"topic": "nope", "code": "unknown_topic"}]})
    );
    let mut anonymous = bridge.client().await;
    anonymous
        .send_json(&json!({"type": "subscribe", "id": "a", "topics": ["p:1", "nope"]}))
        .await;
    let answer = anonymous.next_json().await;
    assert_eq!(
        (
            &answer["type"],
            &answer["code"],
            &answer["id"],
            &answer["topic"]
        ),
        (
            &json!("error"),
            &json!("forbidden"),
            &json!("a"),
            &json!("p:1")
        ),
        "{answer}"
    );
    assert_eq!(
        answer["refused"],
        json!([{"topic": "p:1", "code": "forbidden"}, {"topic": "nope", "code": "unknown_topic"}])
    );
    // Nothing else was queued: the next answer is the pong.
    anonymous.assert_pong(2).await;
    c.assert_pong(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_exp_is_past_the_year_9999_is_refused_and_panics_nothing() {
    let (_redis, bridge) = start("").await;
    let huge = |user: &str| hs256(&json!({"sub": user, "exp": 1u64 << 63}));
    match WsClient::try_connect(&bridge.ws_url(&format!("/ws?token={}", huge("alice"))), &[]).await
    {
        Err(ConnectError::Status(401, body)) => {
            let body: Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body["reason"], "expiry_out_of_range", "{body}");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    // As a refresh: refused, and the session goes on as it was.
    let mut alice = bridge
        .client_at(&format!("/ws?token={}", token("alice", &[], json!({}))))
        .await;
    alice
        .send_json(&json!({"type": "refresh", "id": 1, "token": huge("alice")}))
        .await;
    let answer = alice.next_json().await;
    assert_eq!(
        (&answer["type"], &answer["id"]),
        (&json!("error"), &json!(1)),
        "{answer}"
    );
    alice.assert_pong(2).await;
    assert_eq!(bridge.stats().await["connections"], 1);
    // A token far away but within range is served, with its expiry.
    let far = now() + 50 * 365 * 24 * 3600;
    let later = hs256(&json!({"sub": "alice", "exp": far}));
    alice
        .send_json(&json!({"type": "refresh", "id": 3, "token": later}))
        .await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "refreshed", "id": 3, "expires_at": far})
    );
    alice.close().await;
    wait_until_async(WAIT, "the connection gone", || async {
        bridge.stats().await["connections"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_origin_must_be_present_once_and_readable() {
    let (_redis, bridge) = start("allowed_origins: [https://app.example.com]").await;
    let addr = bridge.addr();
    assert_eq!(
        upgrade_status(addr, b"Origin: https://app.example.com\r\n").await,
        101
    );
    assert_eq!(
        upgrade_status(addr, b"").await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        upgrade_status(addr, b"Origin: https://evil.example\r\n").await,
        403
    );
    assert_eq!(
        upgrade_status(
            addr,
            b"Origin: https://app.example.com\r\nOrigin: https://evil.example\r\n"
        )
        .await,
        403,
        "a second Origin"
    );
    assert_eq!(
        upgrade_status(addr, b"Origin: https://app.example.com\xff\r\n").await,
        403,
        "an unreadable Origin"
    );
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_user_and_per_address_with_429() {
    let (_redis, bridge) = start("max_connections_per_user: 2\nmax_connections_per_ip: 3").await;
    let (url, addr) = (bridge.ws_url("/ws"), bridge.addr());
    let alice = token("alice", &[], json!({}));
    let alice_url = bridge.ws_url(&format!("/ws?token={alice}"));
    let mut held = Vec::new();
    for from in [local(1), local(2)] {
        held.push(
            WsClient::try_connect_from(&alice_url, addr, from)
                .await
                .expect("alice, within her 2"),
        );
    }
    let refused = |result: Result<WsClient, ConnectError>| match result {
        Err(ConnectError::Status(status, body)) => (status, body),
        Ok(_) => panic!("admitted past the limit"),
        Err(other) => panic!("{other:?}"),
    };
    let (status, body) = refused(WsClient::try_connect_from(&alice_url, addr, local(3)).await);
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "too many connections for this user"})
    );
    // Another user from a fresh address is not affected.
    let bob_url = bridge.ws_url(&format!("/ws?token={}", token("bob", &[], json!({}))));
    held.push(
        WsClient::try_connect_from(&bob_url, addr, local(3))
            .await
            .expect("bob"),
    );

    // 127.0.0.4: three anonymous connections, then 429.
    for _ in 0..3 {
        held.push(
            WsClient::try_connect_from(&url, addr, local(4))
                .await
                .expect("within 3"),
        );
    }
    let (status, body) = refused(WsClient::try_connect_from(&url, addr, local(4)).await);
    assert_eq!(status, 429);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "too many connections from this address"})
    );
    assert_eq!(
        bridge
            .metric(r#"bridge_connections_rejected_total{reason="user_limit"}"#)
            .await,
        Some(1)
    );
    assert_eq!(
        bridge
            .metric(r#"bridge_connections_rejected_total{reason="address_limit"}"#)
            .await,
        Some(1)
    );

    // A closed connection gives its place back.
    held.remove(0).close().await;
    wait_until_async(WAIT, "alice admitted again", || async {
        WsClient::try_connect_from(&alice_url, addr, local(5))
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connected_frame_names_only_auto_topics_the_connection_may_receive() {
    let (_redis, bridge) = start("").await;
    let anonymous = bridge.client().await;
    assert_eq!(anonymous.welcome["topics"], json!(["news"]));
    let admin = token("root", &["admin"], json!({}));
    let admin = bridge.client_at(&format!("/ws?token={admin}")).await;
    assert_eq!(admin.welcome["topics"], json!(["admin-events", "news"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_act_as_an_api_key_user() {
    let (_redis, bridge) = start("").await;
    // `svc` is the user of the API key SERVICE_KEY.
    let forged = token("svc", &["service"], json!({}));
    match WsClient::try_connect(&bridge.ws_url(&format!("/ws?token={forged}")), &[]).await {
        Err(ConnectError::Status(401, body)) => {
            let body: Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body["reason"], "api_key_user", "{body}");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut key = WsClient::connect(&bridge.ws_url("/ws"), &[("X-API-Key", SERVICE_KEY)]).await;
    assert_eq!(key.next_json().await["user"], "svc");
}
