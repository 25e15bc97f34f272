//! Operational behaviour: slow clients, Redis going away and coming back, SIGTERM.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Bridge, Frame, JOB_ROUTE, Publisher, RedisServer, WAIT, WsClient, assert_envelope, config,
    start, wait_until_async,
};

/// Messages in the flood: 4096 × 4 KiB = 16 MiB, several times what the kernel buffers
/// on loopback (4 MiB send buffer at most; the slow client's receive buffer is tiny).
const FLOOD: usize = 4096;
/// Published between two checks of the fast client: below `send_queue`, so a client that
/// reads is never more than a batch behind.
const BATCH: usize = 16;

const FLOOD_ROUTE: &str = r#"
    - name: flood
      channel: test:flood
      topic: flood
      delivery: auto
      format: raw
    "#;

fn flood_payload(i: i64) -> Vec<u8> {
    format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(4000)).into_bytes()
}

/// The `i` of a flood frame; `None` for the `connected` frame.
fn flood_index(frame: &Frame) -> Option<i64> {
    let Frame::Text(t) = frame else {
        panic!("expected a text frame, got {frame:?}")
    };
    let v: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:.80}"));
    if v["type"] == "connected" {
        return None;
    }
    Some(v["i"].as_i64().unwrap_or_else(|| panic!("no i in {t:.80}")))
}

/// Starts a bridge with `slow_client: policy`, a fast client and a client that never reads;
/// floods the topic; checks that the fast client got every message in order.
async fn flood_with_a_stalled_client(policy: &str) -> (RedisServer, Bridge, WsClient, WsClient) {
    let (redis, bridge) = start(
        &format!("send_queue: {}\nslow_client: {policy}", 2 * BATCH),
        FLOOD_ROUTE,
    )
    .await;
    let mut fast = bridge.client().await;
    // Never reads until the flood is over; a 4 KiB receive buffer fills at once.
    let slow = WsClient::connect_small_buffer(&bridge.ws_url("/ws"), bridge.addr(), 4096).await;
    wait_until_async(WAIT, "2 connections", || async {
        bridge.stats().await["connections"] == 2
    })
    .await;

    let mut p = Publisher::connect(&redis.url()).await;
    let mut next = 0i64;
    while (next as usize) < FLOOD {
        let batch: Vec<Vec<u8>> = (next..next + BATCH as i64).map(flood_payload).collect();
        p.publish_many("test:flood", &batch).await;
        for want in next..next + BATCH as i64 {
            let f = fast.recv_frame(WAIT).await;
            assert_eq!(
                flood_index(&f),
                Some(want),
                "the fast client's frames in order"
            );
        }
        next += BATCH as i64;
    }
    (redis, bridge, fast, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_and_a_fast_one_gets_everything() {
    let (redis, bridge, mut fast, mut slow) = flood_with_a_stalled_client("disconnect").await;

    // The stalled client now reads: what it got is an in-order prefix, then the end
    // (close 4000, or the connection dropped).
    let mut got = Vec::new();
    let end = loop {
        let f = slow.recv_frame(WAIT).await;
        match f {
            Frame::Text(_) => {
                if let Some(i) = flood_index(&f) {
                    got.push(i);
                }
            }
            other => break other,
        }
    };
    match &end {
        Frame::Close(Some((4000, _))) | Frame::Ended | Frame::Error(_) => {}
        other => panic!(
            "the slow client must end with close 4000 or a dropped connection, got {other:?}"
        ),
    }
    assert!(
        got.len() < FLOOD,
        "the slow client got all {FLOOD} messages: it was never overflowed"
    );
    assert_eq!(
        got,
        (0..got.len() as i64).collect::<Vec<_>>(),
        "the slow client's frames are an in-order prefix"
    );

    // The fast client is still here and nothing else is queued for it.
    fast.assert_pong(1).await;
    wait_until_async(WAIT, "only the fast client left", || async {
        bridge.stats().await["connections"] == 1
    })
    .await;
    // Delivery goes on.
    Publisher::connect(&redis.url())
        .await
        .publish("test:flood", flood_payload(-1))
        .await;
    assert_eq!(flood_index(&fast.recv_frame(WAIT).await), Some(-1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drop_oldest_a_stalled_client_loses_old_frames_and_stays() {
    let (redis, bridge, mut fast, mut slow) = flood_with_a_stalled_client("drop_oldest").await;
    Publisher::connect(&redis.url())
        .await
        .publish("test:flood", flood_payload(-1))
        .await;
    assert_eq!(flood_index(&fast.recv_frame(WAIT).await), Some(-1));

    // The stalled client reads now: increasing indexes with a gap, ending with the newest
    // ones and the marker.
    let mut got = Vec::new();
    loop {
        let f = slow.recv_frame(WAIT).await;
        match flood_index(&f) {
            None => continue,
            Some(-1) => break,
            Some(i) => got.push(i),
        }
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "the slow client's frames are in order"
    );
    assert!(
        got.len() < FLOOD,
        "nothing was dropped: the queue never overflowed"
    );
    assert_eq!(
        got.last(),
        Some(&(FLOOD as i64 - 1)),
        "the newest frames are kept, the oldest dropped"
    );
    // Still connected, and nothing else queued.
    slow.assert_pong(1).await;
    fast.assert_pong(1).await;
    assert_eq!(bridge.stats().await["connections"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_stream() {
    let (mut redis, bridge) = start(
        "",
        r#"
        - name: live
          channel: test:live
          topic: live
          delivery: auto
        - name: jobs
          pattern: "job:*"
          topic: "job:{1}"
        "#,
    )
    .await;
    let mut auto = bridge.client().await;
    let mut sub = bridge.client().await;
    sub.subscribe(1, &["job:1"]).await;
    let pid = bridge.pid();

    let mut p = Publisher::connect(&redis.url()).await;
    for i in 1..=5u64 {
        p.publish("test:live", json!({"i": i}).to_string()).await;
    }
    p.publish("job:1", r#"{"before":true}"#).await;
    // `auto` gets the auto route only; `sub` gets it too (auto reaches every connection),
    // then its subscription's message.
    for c in [&mut auto, &mut sub] {
        for i in 1..=5u64 {
            assert_envelope(&c.next_json().await, "live", "live", i, &json!({"i": i}));
        }
    }
    assert_envelope(
        &sub.next_json().await,
        "jobs",
        "job:1",
        1,
        &json!({"before": true}),
    );
    drop(p);

    redis.kill();
    let body = bridge.wait_readyz(503, WAIT).await;
    serde_json::from_str::<Value>(&body)
        .unwrap_or_else(|e| panic!("/readyz 503 body is not JSON ({e}): {body}"));
    assert_eq!(bridge.get("/healthz").await.0, 200);
    assert_eq!(bridge.stats().await["redis"]["connected"], false);
    // The clients stay connected while Redis is away.
    auto.assert_pong(1).await;
    sub.assert_pong(1).await;

    redis.restart();
    bridge.wait_readyz(200, Duration::from_secs(30)).await;
    assert_eq!(bridge.stats().await["redis"]["connected"], true);
    // Each client is told that messages may have been lost, naming its subscriptions.
    for (c, topics) in [(&mut auto, json!([])), (&mut sub, json!(["job:1"]))] {
        let gap = c.next_json().await;
        assert_eq!(gap["type"], "gap", "{gap}");
        assert_eq!(gap["reason"], "redis_reconnected", "{gap}");
        assert_eq!(gap["topics"], topics, "{gap}");
    }
    auto.assert_pong(2).await;

    // Delivery resumes on the same connections, subscriptions and seq counters.
    let mut p = Publisher::connect(&redis.url()).await;
    for i in 6..=10u64 {
        p.publish("test:live", json!({"i": i}).to_string()).await;
    }
    p.publish("job:1", r#"{"after":true}"#).await;
    for c in [&mut auto, &mut sub] {
        for i in 6..=10u64 {
            assert_envelope(&c.next_json().await, "live", "live", i, &json!({"i": i}));
        }
    }
    assert_envelope(
        &sub.next_json().await,
        "jobs",
        "job:1",
        2,
        &json!({"after": true}),
    );
    auto.assert_pong(3).await;
    sub.assert_pong(3).await;
    assert_eq!(bridge.pid(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_becomes_ready_when_it_appears() {
    let mut redis = RedisServer::start();
    redis.kill();
    let bridge = Bridge::start(
        &redis,
        &config(
            "",
            r#"
            - name: live
              channel: test:live
              topic: live
              delivery: auto
            "#,
        ),
    );
    assert_eq!(bridge.get("/healthz").await.0, 200);
    let (status, body) = bridge.get("/readyz").await;
    assert_eq!(status, 503, "/readyz without Redis: {body}");
    serde_json::from_str::<Value>(&body)
        .unwrap_or_else(|e| panic!("/readyz 503 body is not JSON ({e}): {body}"));

    redis.restart();
    bridge.wait_readyz(200, Duration::from_secs(30)).await;
    let mut c = bridge.client().await;
    Publisher::connect(&redis.url())
        .await
        .publish("test:live", "1")
        .await;
    assert_envelope(&c.next_json().await, "live", "live", 1, &json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let (_redis, mut bridge) = start("", JOB_ROUTE).await;
    let mut a = bridge.client().await;
    let mut b = bridge.client().await;
    a.subscribe(1, &["job:1"]).await;

    bridge.signal("TERM");
    for c in [&mut a, &mut b] {
        let (code, _reason) = c.expect_close(WAIT).await;
        assert_eq!(code, 1001);
    }
    let status = bridge.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; logs:\n{}",
        bridge.logs()
    );
    assert!(
        WsClient::try_connect(&bridge.ws_url("/ws"), &[])
            .await
            .is_err(),
        "the bridge still accepts connections after exiting"
    );
}
