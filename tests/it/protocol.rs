//! The client protocol: the `connected` frame, commands and their answers, error codes,
//! frame and connection limits, server pings and the idle timeout.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::support::{
    ConnectError, Frame, JOB_ROUTE, Publisher, WAIT, WsClient, assert_envelope,
    parse_server_opcodes, raw_ws_handshake, start, wait_until_async,
};

/// Asserts `{"type":"error","code":code,"message":"..."}` plus the given `id`
/// (`None`: no id, or null) and nothing else but an optional `topic`.
fn assert_error(frame: &Value, code: &str, id: Option<u64>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {frame}"
    );
    match id {
        Some(id) => assert_eq!(frame["id"], id, "{frame}"),
        None => assert!(frame["id"].is_null(), "no id to echo: {frame}"),
    }
    for key in frame.as_object().unwrap().keys() {
        assert!(
            ["type", "code", "message", "id", "topic"].contains(&key.as_str()),
            "unexpected key {key} in {frame}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_frame_is_connected() {
    let (_redis, bridge) = start("", JOB_ROUTE).await;
    let a = bridge.client().await;
    let b = bridge.client().await;
    for w in [&a.welcome, &b.welcome] {
        assert_eq!(w["type"], "connected", "{w}");
        let id = w["connection_id"].as_str().unwrap_or_else(|| panic!("{w}"));
        assert_eq!(id.len(), 36, "connection_id is a UUID: {w}");
        assert_eq!(id.matches('-').count(), 4, "connection_id is a UUID: {w}");
        assert!(w["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{w}");
        assert!(w["topics"].is_array(), "{w}");
    }
    assert_ne!(a.welcome["connection_id"], b.welcome["connection_id"]);
    assert_eq!(
        a.welcome["epoch"], b.welcome["epoch"],
        "one epoch per process run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_pong_echoing_the_id() {
    let (_redis, bridge) = start("", JOB_ROUTE).await;
    let mut c = bridge.client().await;
    c.assert_pong(3).await;
    c.assert_pong(4).await;
    // Without an id: a pong without one.
    c.send_json(&json!({"type": "ping"})).await;
    let pong = c.next_json().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(pong["id"].is_null(), "{pong}");
    // A string id is echoed as it is.
    c.send_json(&json!({"type": "ping", "id": "abc"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong", "id": "abc"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_bad_request_and_the_connection_stays() {
    let (redis, bridge) = start("", JOB_ROUTE).await;
    let mut c = bridge.client().await;
    c.subscribe(1, &["job:1"]).await;

    // Not JSON.
    c.send_text("hello").await;
    assert_error(&c.next_json().await, "bad_request", None);
    c.assert_pong(100).await;

    // JSON, not an object.
    c.send_text("[1,2,3]").await;
    assert_error(&c.next_json().await, "bad_request", None);
    c.assert_pong(101).await;

    // No type.
    c.send_json(&json!({"id": 11})).await;
    assert_error(&c.next_json().await, "bad_request", Some(11));
    c.assert_pong(102).await;

    // Unknown type.
    c.send_json(&json!({"type": "dance", "id": 7})).await;
    assert_error(&c.next_json().await, "bad_request", Some(7));
    c.assert_pong(103).await;

    // Wrong field type.
    c.send_json(&json!({"type": "subscribe", "id": 8, "topics": "job:2"}))
        .await;
    assert_error(&c.next_json().await, "bad_request", Some(8));
    c.assert_pong(104).await;

    // Missing field.
    c.send_json(&json!({"type": "unsubscribe", "id": 9})).await;
    assert_error(&c.next_json().await, "bad_request", Some(9));
    c.assert_pong(105).await;

    // A binary frame, even one holding a valid command.
    c.send_binary(br#"{"type":"ping","id":10}"#).await;
    assert_error(&c.next_json().await, "bad_request", None);
    c.assert_pong(106).await;

    // The bad `subscribe` did not subscribe job:2, and job:1 still works.
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("job:2", "2").await;
    p.publish("job:1", "1").await;
    assert_envelope(&c.next_json().await, "jobs", "job:1", 1, &json!(1));
    c.assert_pong(107).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_a_topic_no_route_produces_is_unknown_topic() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: jobs
          pattern: "job:*"
          topic: "job:{1}"
        - name: news
          channel: test:news
          topic: news
          delivery: auto
        "#,
    )
    .await;
    let mut c = bridge.client().await;
    for (id, topic) in [(4, "nope:1"), (5, "jobs:1"), (6, "news")] {
        // `news` is produced only by an auto route: nothing to subscribe to.
        c.send_json(&json!({"type": "subscribe", "id": id, "topics": [topic]}))
            .await;
        let f = c.next_json().await;
        assert_error(&f, "unknown_topic", Some(id));
        assert_eq!(f["topic"], topic, "{f}");
        c.assert_pong(id + 100).await;
    }
    // Nothing was subscribed: the next frame is the auto route's.
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("nope:1", "x").await;
    p.publish("job:1", "x").await;
    p.publish("test:news", "n").await;
    assert_envelope(&c.next_json().await, "news", "news", 1, &json!("n"));
    c.assert_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009() {
    let (_redis, bridge) = start("max_frame_bytes: 1024", JOB_ROUTE).await;
    let mut c = bridge.client().await;
    // Under the limit: fine.
    c.subscribe(1, &["job:1"]).await;
    c.assert_pong(2).await;
    let big = format!(
        r#"{{"type":"subscribe","id":3,"topics":["job:{}"]}}"#,
        "x".repeat(4096)
    );
    c.send_text(&big).await;
    let (code, _reason) = c.expect_close(WAIT).await;
    assert_eq!(code, 1009);
    wait_until_async(WAIT, "the connection to be gone", || async {
        bridge.stats().await["connections"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_upgrade_gets_503() {
    let (_redis, bridge) = start("max_connections: 2", JOB_ROUTE).await;
    let mut a = bridge.client().await;
    let b = bridge.client().await;
    match WsClient::try_connect(&bridge.ws_url("/ws"), &[]).await {
        Err(ConnectError::Status(503, _)) => {}
        Err(other) => panic!("expected HTTP 503, got {other:?}"),
        Ok(_) => panic!("a third connection was accepted with max_connections: 2"),
    }
    a.assert_pong(1).await;
    assert_eq!(bridge.stats().await["connections"], 2);
    // A freed slot is usable again.
    b.close().await;
    wait_until_async(WAIT, "1 connection left", || async {
        bridge.stats().await["connections"] == 1
    })
    .await;
    let mut c = bridge.client().await;
    c.assert_pong(2).await;
    a.assert_pong(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sends_websocket_pings() {
    let (_redis, bridge) = start("ping_interval: 200ms\nidle_timeout: 10s", JOB_ROUTE).await;
    let mut c = bridge.client().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while pings < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv_raw(left).await {
            Some(Frame::Ping(_)) => pings += 1,
            Some(other) => panic!("expected only pings, got {other:?}"),
            None => panic!("fewer than 2 pings in 3s with ping_interval: 200ms"),
        }
    }
    c.assert_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_client_that_does_not_answer_pings() {
    let (_redis, bridge) = start("ping_interval: 200ms\nidle_timeout: 1s", JOB_ROUTE).await;

    // A silent client: the handshake, then it never writes (so never pongs).
    let silent = async {
        let (mut s, mut buf) = raw_ws_handshake(bridge.addr(), "/ws").await;
        let t0 = Instant::now();
        let mut ops = parse_server_opcodes(&mut buf);
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut chunk))
                .await
                .expect("the silent client was not closed within 8s (idle_timeout: 1s)");
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    ops.extend(parse_server_opcodes(&mut buf));
                }
            }
        }
        (t0.elapsed(), ops)
    };
    // A client that answers pings (tungstenite does, while it reads) stays.
    let lively = async {
        let mut c = bridge.client().await;
        let until = Instant::now() + Duration::from_millis(2500);
        let mut pings = 0;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match c.try_recv_raw(left).await {
                Some(Frame::Ping(_)) => pings += 1,
                Some(other) => panic!("the answering client got {other:?}"),
                None => break,
            }
        }
        assert!(pings >= 2, "only {pings} pings in 2.5s");
        c.assert_pong(1).await;
    };
    let ((elapsed, ops), ()) = tokio::join!(silent, lively);
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after {elapsed:?}, before idle_timeout: 1s"
    );
    assert!(
        ops.contains(&0x9),
        "the silent client saw no ping; opcodes {ops:?}"
    );
    // Its only data frame is the `connected` frame.
    assert_eq!(
        ops.iter().filter(|op| **op == 0x1 || **op == 0x2).count(),
        1,
        "data frames besides `connected`: {ops:?}"
    );
}
