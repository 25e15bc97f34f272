//! Topics with memory: `last` and `since` on subscribe against a real bridge, real Redis and
//! real clients: replays byte-identical to the live frames, the seam with the live stream
//! under a publish storm, audiences and filters checked again at replay, epochs, gaps, the
//! bounds (size, ttl, history_max_bytes), reloads, conflation and bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::support::tokens::{auth_section, token};
use crate::support::{
    ADMIN_TOKEN, Bridge, Frame, Publisher, RedisServer, WAIT, WsClient, config, config_with, start,
    wait_until_async, without_position,
};

/// Jobs, each frame retained: `job:<id>` on `job:<id>`.
fn jobs(history: &str) -> String {
    format!(
        r#"
        - name: jobs
          pattern: "job:*"
          topic: "job:{{1}}"
          history: {history}
        "#
    )
}

/// [`jobs`], and `plain:<id>` on `plain:<id>`, which no route retains.
fn jobs_and_plain(history: &str) -> String {
    jobs(history)
        + r#"
        - name: plain
          pattern: "plain:*"
          topic: "plain:{1}"
        "#
}

fn seq(frame: &Value) -> u64 {
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a frame with a seq: {frame}"))
}

/// Sends `command` and expects `subscribed` for `topics` with the command's id (and any
/// `position`).
async fn subscribed(c: &mut WsClient, command: Value) {
    let topics = command["topics"].clone();
    let id = command["id"].clone();
    c.send_json(&command).await;
    let answer = without_position(c.next_json().await);
    assert_eq!(
        answer,
        json!({"type": "subscribed", "id": id, "topics": topics}),
        "answer to {command}"
    );
}

/// The next `n` text frames, exactly as sent.
async fn texts(c: &mut WsClient, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.recv_text().await);
    }
    out
}

/// The topic and `seq` of each of the next `n` frames.
async fn topics_and_seqs(c: &mut WsClient, n: usize) -> Vec<(String, u64)> {
    texts(c, n)
        .await
        .iter()
        .map(|text| {
            let frame = parse(text);
            let topic = frame["topic"].as_str().expect("a topic").to_owned();
            (topic, seq(&frame))
        })
        .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn publish_numbered(
    redis: &RedisServer,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) {
    let mut publisher = Publisher::connect(&redis.url()).await;
    let payloads: Vec<Vec<u8>> = range
        .map(|n| json!({"n": n}).to_string().into_bytes())
        .collect();
    publisher.publish_many(channel, &payloads).await;
}

/// A publisher that PUBLISHes `total` numbered messages on `channel` as fast as Redis takes
/// them (pipelines of 50), counting in `published` as it goes.
fn storm(
    redis: &RedisServer,
    channel: &'static str,
    total: u64,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let published = Arc::new(AtomicU64::new(0));
    let counter = published.clone();
    let url = redis.url();
    let task = tokio::spawn(async move {
        let mut publisher = Publisher::connect(&url).await;
        let mut n = 0;
        while n < total {
            let batch: Vec<Vec<u8>> = (n + 1..=(n + 50).min(total))
                .map(|i| json!({"n": i, "to": "alice"}).to_string().into_bytes())
                .collect();
            n += batch.len() as u64;
            publisher.publish_many(channel, &batch).await;
            counter.store(n, Ordering::SeqCst);
        }
    });
    (published, task)
}

async fn wait_published(published: &AtomicU64, at_least: u64) {
    wait_until_async(WAIT, "the publisher to get far enough", || async {
        published.load(Ordering::SeqCst) >= at_least
    })
    .await;
}

/// Reads route frames until one has `seq == last`; panics on anything but route frames.
async fn seqs_until(c: &mut WsClient, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let frame = c.next_json().await;
        let n = seq(&frame);
        seqs.push(n);
        if n >= last {
            return seqs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_and_since_replay_the_live_bytes_then_the_live_stream() {
    let (redis, bridge) = start("", &jobs("{ size: 5 }")).await;
    let mut live = bridge.client().await;
    live.subscribe(1, &["job:1"]).await;
    publish_numbered(&redis, "job:1", 1..=8).await;
    let seen = texts(&mut live, 8).await;

    let mut late = bridge.client().await;
    subscribed(
        &mut late,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 3}),
    )
    .await;
    assert_eq!(
        texts(&mut late, 3).await,
        seen[5..8],
        "the same bytes: seq, ts"
    );

    let epoch = late.welcome["epoch"].clone();
    let mut resumed = bridge.client().await;
    subscribed(
        &mut resumed,
        json!({"type": "subscribe", "id": "r", "topics": ["job:1"], "since": {"epoch": epoch, "seq": {"job:1": 6}}}),
    )
    .await;
    assert_eq!(texts(&mut resumed, 2).await, seen[6..8]);

    // Nothing more was queued; the live stream follows.
    for c in [&mut late, &mut resumed] {
        c.assert_pong(9).await;
    }
    publish_numbered(&redis, "job:1", 9..=9).await;
    for c in [&mut live, &mut late, &mut resumed] {
        assert_eq!(seq(&c.next_json().await), 9);
        c.assert_pong(10).await;
    }
    assert_eq!(
        bridge.metric("bridge_history_replayed_frames_total").await,
        Some(5)
    );
    assert_eq!(bridge.metric("bridge_history_frames").await, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_resumes_exactly_what_it_missed_while_publishing_goes_on() {
    let (redis, bridge) = start("send_queue: 10000", &jobs("{ size: 10000 }")).await;
    const TOTAL: u64 = 4000;
    let mut first = bridge.client().await;
    let epoch = first.welcome["epoch"].clone();
    first.subscribe(1, &["job:1"]).await;
    let (published, publisher) = storm(&redis, "job:1", TOTAL);
    let mut got = Vec::new();
    while got.len() < 300 {
        got.push(seq(&first.next_json().await));
    }
    let position = *got.last().unwrap();
    drop(first);
    // The connection is gone while the publisher goes on.
    wait_published(&published, position + 500).await;
    let mut second = bridge.client().await;
    subscribed(
        &mut second,
        json!({"type": "subscribe", "id": 2, "topics": ["job:1"], "since": {"epoch": epoch, "seq": {"job:1": position}}}),
    )
    .await;
    let resumed = seqs_until(&mut second, TOTAL).await;
    publisher.await.unwrap();
    let expected: Vec<u64> = (position + 1..=TOTAL).collect();
    assert_eq!(
        resumed, expected,
        "exactly the missed frames, then the live ones"
    );
    assert_eq!((1..=position).collect::<Vec<_>>(), got);
    second.assert_pong(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_under_a_publish_storm_joins_the_live_stream_without_loss_or_repeat() {
    let (redis, bridge) = start("send_queue: 10000", &jobs("{ size: 50 }")).await;
    const TOTAL: u64 = 6000;
    let (_, publisher) = storm(&redis, "job:s", TOTAL);
    let mut clients = Vec::new();
    for at in [500, 1500, 2500, 3500, 4500] {
        // Routed, not only published: a bridge behind the publisher would replay from 1.
        wait_until_async(WAIT, "the bridge to route far enough", || async {
            bridge
                .metric("bridge_redis_messages_received_total")
                .await
                .is_some_and(|routed| routed >= at)
        })
        .await;
        let mut c = bridge.client().await;
        subscribed(
            &mut c,
            json!({"type": "subscribe", "id": 1, "topics": ["job:s"], "last": 20}),
        )
        .await;
        clients.push(c);
    }
    publisher.await.unwrap();
    for mut c in clients {
        let seqs = seqs_until(&mut c, TOTAL).await;
        let first = seqs[0];
        assert!(first > 1, "some frames were replayed, not all: {first}");
        let expected: Vec<u64> = (first..=TOTAL).collect();
        assert_eq!(
            seqs, expected,
            "contiguous from the replay into the live stream"
        );
        c.assert_pong(2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_checks_the_audience_and_the_filter_of_the_connection_again() {
    let redis = RedisServer::start();
    let sections = format!(
        "{}admin:\n  token: {ADMIN_TOKEN}\n",
        auth_section("optional", "", "")
    );
    let routes = r#"
        - name: jobs
          pattern: "job:*"
          topic: "job:{1}"
          audience: { user: "{payload.owner}" }
          history: { size: 50 }
        - name: raw-jobs
          pattern: "raw:*"
          topic: "raw:{1}"
          audience: { user: "{payload.owner}" }
          format: raw
          history: { size: 50 }
        - name: shaped
          pattern: "shaped:*"
          topic: "shaped:{1}"
          audience: { user: "{payload.owner}" }
          format: { kind: shaped, who: "{payload.owner}" }
          history: { size: 50 }
        "#;
    let bridge = Bridge::start(&redis, &config_with("", &sections, routes));
    bridge.wait_ready().await;
    let connect = |user: &str| {
        let path = format!("/ws?token={}", token(user, &["user"], json!({})));
        let bridge = &bridge;
        async move { bridge.client_at(&path).await }
    };
    let done = json!({"status": ["done"]});
    let topics = ["job:1", "raw:1", "shaped:1"];
    let mut alice_live = connect("alice").await;
    alice_live
        .subscribe_filtered(1, &topics, done.clone())
        .await;
    let mut bob_live = connect("bob").await;
    bob_live.subscribe(1, &topics).await;

    let mut publisher = Publisher::connect(&redis.url()).await;
    let owners = ["alice", "bob", "alice", "alice", "bob", "alice"];
    let statuses = ["done", "done", "running", "done", "running", "done"];
    for channel in topics {
        for (i, (owner, status)) in owners.iter().zip(statuses).enumerate() {
            let payload = json!({"i": i, "owner": owner, "status": status});
            publisher.publish(channel, payload.to_string()).await;
        }
    }
    // alice, done: 0, 3, 5 of each topic; bob, anything: 1, 4.
    let alice_seen = texts(&mut alice_live, 9).await;
    let bob_seen = texts(&mut bob_live, 6).await;
    alice_live.assert_pong(2).await;
    bob_live.assert_pong(2).await;

    let epoch = alice_live.welcome["epoch"].clone();
    let since = json!({"epoch": epoch, "seq": {"job:1": 0, "raw:1": 0, "shaped:1": 0}});
    let mut alice = connect("alice").await;
    subscribed(
        &mut alice,
        json!({"type": "subscribe", "id": 1, "topics": topics, "filter": done, "since": since}),
    )
    .await;
    assert_eq!(texts(&mut alice, 9).await, alice_seen);
    alice.assert_pong(2).await;

    let mut bob = connect("bob").await;
    subscribed(
        &mut bob,
        json!({"type": "subscribe", "id": 1, "topics": topics, "since": since}),
    )
    .await;
    assert_eq!(texts(&mut bob, 6).await, bob_seen);
    bob.assert_pong(2).await;

    // Another user's token: subscribed (the owner is per message), nothing replayed.
    let mut mallory = connect("mallory").await;
    subscribed(
        &mut mallory,
        json!({"type": "subscribe", "id": 1, "topics": topics, "since": since, "last": 50}),
    )
    .await;
    mallory.assert_pong(2).await;

    // `last` without a filter: every frame of alice's, of every format.
    let mut alice_all = connect("alice").await;
    subscribed(
        &mut alice_all,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 50}),
    )
    .await;
    let frames: Vec<Value> = texts(&mut alice_all, 4)
        .await
        .iter()
        .map(|t| parse(t))
        .collect();
    let indexes: Vec<&Value> = frames.iter().map(|f| &f["data"]["i"]).collect();
    assert_eq!(indexes, [0, 2, 3, 5]);
    alice_all.assert_pong(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_of_another_process_get_an_epoch_gap_never_a_replay() {
    let redis = RedisServer::start();
    let yaml = config("", &jobs("{ size: 50 }"));
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    let mut c = bridge.client().await;
    let old_epoch = c.welcome["epoch"].clone();
    c.subscribe(1, &["job:1"]).await;
    publish_numbered(&redis, "job:1", 1..=3).await;
    assert_eq!(seq(&c.next_json().await), 1);
    drop(c);
    drop(bridge);

    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    publish_numbered(&redis, "job:1", 1..=2).await;
    bridge.wait_received(2).await;
    let mut c = bridge.client().await;
    assert_ne!(c.welcome["epoch"], old_epoch, "a restart is a new epoch");
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 7, "topics": ["job:1"], "since": {"epoch": old_epoch, "seq": {"job:1": 1}}}),
    )
    .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "gap", "id": 7, "reason": "epoch_changed", "topics": ["job:1"]})
    );
    c.assert_pong(8).await;
    publish_numbered(&redis, "job:1", 3..=3).await;
    assert_eq!(seq(&c.next_json().await), 3);
    assert_eq!(
        bridge
            .metric("bridge_history_gaps_total{reason=\"epoch_changed\"}")
            .await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribed_answer_tells_where_the_live_stream_starts() {
    let (redis, bridge) = start("", &jobs_and_plain("{ size: 10 }")).await;
    publish_numbered(&redis, "job:1", 1..=3).await;
    publish_numbered(&redis, "plain:1", 1..=2).await;
    bridge.wait_received(5).await;
    let mut c = bridge.client().await;
    let epoch = c.welcome["epoch"].clone();
    c.send_json(&json!({"type": "subscribe", "id": 1, "topics": ["job:1", "job:2", "plain:1"]}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "subscribed", "id": 1, "topics": ["job:1", "job:2", "plain:1"],
               "position": {"epoch": epoch, "seq": {"job:1": 3, "job:2": 0}}}),
        "the retained topics' last seq (0: none yet); no position for a route without history"
    );
    c.assert_pong(2).await;
    drop(c);

    // Resuming from that position gets exactly what was published after the subscription.
    publish_numbered(&redis, "job:1", 4..=5).await;
    publish_numbered(&redis, "job:2", 1..=1).await;
    bridge.wait_retained(6).await;
    let mut d = bridge.client().await;
    subscribed(
        &mut d,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1", "job:2"], "since": {"epoch": epoch, "seq": {"job:1": 3, "job:2": 0}}}),
    )
    .await;
    let replayed = topics_and_seqs(&mut d, 3).await;
    assert_eq!(
        replayed,
        [
            ("job:1".into(), 4),
            ("job:1".into(), 5),
            ("job:2".into(), 1)
        ]
    );
    d.assert_pong(2).await;
    // Topics no route retains: no position at all.
    d.send_json(&json!({"type": "subscribe", "id": 3, "topics": ["plain:1"]}))
        .await;
    assert_eq!(
        d.next_json().await,
        json!({"type": "subscribed", "id": 3, "topics": ["plain:1"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_older_than_the_history_gets_a_gap() {
    let (redis, bridge) = start("", &jobs_and_plain("{ size: 3 }")).await;
    publish_numbered(&redis, "job:1", 1..=10).await;
    publish_numbered(&redis, "plain:1", 1..=2).await;
    bridge.wait_received(12).await;
    let mut c = bridge.client().await;
    c.assert_pong(0).await;
    let epoch = c.welcome["epoch"].clone();
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1", "plain:1"], "since": {"epoch": epoch, "seq": {"job:1": 2, "plain:1": 1}}}),
    )
    .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "gap", "id": 1, "reason": "history_exhausted", "topics": ["job:1", "plain:1"]})
    );
    c.assert_pong(2).await;
    let mut d = bridge.client().await;
    subscribed(
        &mut d,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "since": {"epoch": epoch, "seq": {"job:1": 7}}}),
    )
    .await;
    let seqs: Vec<u64> = texts(&mut d, 3)
        .await
        .iter()
        .map(|t| seq(&parse(t)))
        .collect();
    assert_eq!(seqs, [8, 9, 10]);
    d.assert_pong(2).await;
    assert_eq!(
        bridge
            .metric("bridge_history_gaps_total{reason=\"history_exhausted\"}")
            .await,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_past_their_ttl_are_released_and_positions_kept() {
    let (redis, bridge) = start("", &jobs("{ size: 10, ttl: 300ms }")).await;
    publish_numbered(&redis, "job:1", 1..=3).await;
    bridge.wait_retained(3).await;
    wait_until_async(WAIT, "the frames to expire", || async {
        bridge.metric("bridge_history_frames").await == Some(0)
            && bridge.metric("bridge_history_bytes").await == Some(0)
    })
    .await;
    let mut c = bridge.client().await;
    let epoch = c.welcome["epoch"].clone();
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 10, "since": {"epoch": epoch, "seq": {"job:1": 3}}}),
    )
    .await;
    // Seen up to the last frame: nothing missed, no gap.
    c.assert_pong(2).await;
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 3, "topics": ["job:1"], "since": {"epoch": epoch, "seq": {"job:1": 1}}}),
    )
    .await;
    assert_eq!(c.next_json().await["reason"], "history_exhausted");
    c.assert_pong(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_max_bytes_drops_the_oldest_frames_of_the_process_first() {
    let redis = RedisServer::start();
    let routes = jobs("{ size: 1000 }");
    let yaml = config("", &routes).replace("routes:\n", "history_max_bytes: 30000\nroutes:\n");
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    let mut publisher = Publisher::connect(&redis.url()).await;
    let filler = "x".repeat(1000);
    for (channel, count) in [("job:a", 10), ("job:b", 40)] {
        let payloads: Vec<Vec<u8>> = (1..=count)
            .map(|n| json!({"n": n, "filler": filler}).to_string().into_bytes())
            .collect();
        publisher.publish_many(channel, &payloads).await;
    }
    wait_until_async(WAIT, "job:b's last frame retained", || async {
        bridge
            .metric("bridge_history_frames")
            .await
            .is_some_and(|n| n > 0)
            && bridge.metric("bridge_redis_messages_received_total").await == Some(50)
    })
    .await;
    let bytes = bridge.metric("bridge_history_bytes").await.unwrap();
    let frames = bridge.metric("bridge_history_frames").await.unwrap();
    assert!(bytes <= 30000, "{bytes}");
    assert!(
        (20..40).contains(&frames),
        "{frames} frames of about 1 KiB each"
    );

    let mut c = bridge.client().await;
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["job:a", "job:b"], "last": 1000}),
    )
    .await;
    let seqs = topics_and_seqs(&mut c, frames as usize).await;
    c.assert_pong(2).await;
    let expected: Vec<(String, u64)> = (41 - frames..=40)
        .map(|n| ("job:b".to_owned(), n))
        .collect();
    assert_eq!(
        seqs, expected,
        "the newest frames of the process, job:a's went first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_trims_and_releases_retained_frames() {
    let redis = RedisServer::start();
    let with = |history: &str| config("", &jobs(history)).replace("{redis_url}", &redis.url());
    let bridge = Bridge::start_with(&with("{ size: 10 }"), &[]);
    bridge.wait_ready().await;
    publish_numbered(&redis, "job:1", 1..=6).await;
    bridge.wait_retained(6).await;

    let reloads = |n: u64| {
        let bridge = &bridge;
        async move {
            wait_until_async(WAIT, "the reload", || async {
                bridge
                    .metric("bridge_config_reloads_total{result=\"ok\"}")
                    .await
                    == Some(n)
            })
            .await
        }
    };
    std::fs::write(bridge.config_path(), with("{ size: 2 }")).unwrap();
    bridge.signal("HUP");
    reloads(1).await;
    assert_eq!(bridge.metric("bridge_history_frames").await, Some(2));
    let mut c = bridge.client().await;
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 10}),
    )
    .await;
    let seqs: Vec<u64> = texts(&mut c, 2)
        .await
        .iter()
        .map(|t| seq(&parse(t)))
        .collect();
    assert_eq!(seqs, [5, 6]);
    c.assert_pong(2).await;

    let without = config("", crate::support::JOB_ROUTE).replace("{redis_url}", &redis.url());
    std::fs::write(bridge.config_path(), without).unwrap();
    bridge.signal("HUP");
    reloads(2).await;
    assert_eq!(bridge.metric("bridge_history_frames").await, Some(0));
    assert_eq!(bridge.metric("bridge_history_bytes").await, Some(0));
    let mut d = bridge.client().await;
    subscribed(
        &mut d,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 10}),
    )
    .await;
    d.assert_pong(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_last_and_since_are_refused_whole() {
    let (redis, bridge) = start("", &jobs("{ size: 5 }")).await;
    publish_numbered(&redis, "job:1", 1..=2).await;
    let mut c = bridge.client().await;
    let epoch = c.welcome["epoch"].clone();
    let bad = [
        json!({"last": -1}),
        json!({"last": "3"}),
        json!({"last": 10_001}),
        json!({"since": "yesterday"}),
        json!({"since": {"epoch": epoch, "seq": {"job:1": -1}}}),
        json!({"since": {"epoch": epoch, "seq": {"job:2": 1}}}),
        json!({"since": {"epoch": 1, "seq": {"job:1": 1}}}),
        json!({"since": {"epoch": epoch, "seq": {"job:1": 1}, "extra": true}}),
    ];
    for (id, extra) in bad.iter().enumerate() {
        let mut command = json!({"type": "subscribe", "id": id, "topics": ["job:1"]});
        for (key, value) in extra.as_object().unwrap() {
            command[key] = value.clone();
        }
        c.send_json(&command).await;
        let answer = c.next_json().await;
        assert_eq!(answer["type"], "error", "{command}: {answer}");
        assert_eq!(answer["code"], "bad_request", "{answer}");
        assert_eq!(answer["id"], id, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing was subscribed by them.
    c.assert_pong(100).await;
    publish_numbered(&redis, "job:1", 3..=3).await;
    c.assert_pong(101).await;
    // A topic no route produces: refused as any subscribe, no gap, nothing replayed.
    c.send_json(&json!({"type": "subscribe", "id": 102, "topics": ["nope"], "since": {"epoch": epoch, "seq": {"nope": 1}}, "last": 3}))
        .await;
    let answer = c.next_json().await;
    assert_eq!(
        (&answer["code"], &answer["id"]),
        (&json!("unknown_topic"), &json!(102)),
        "{answer}"
    );
    c.assert_pong(103).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_gets_the_newest_frame_of_each_conflated_topic() {
    let routes = r#"
        - name: progress
          pattern: "job:*"
          topic: "job:{1}"
          conflate: true
        "#;
    let (redis, bridge) = start("send_queue: 4\nslow_client: disconnect", routes).await;
    let mut c = WsClient::connect_small_buffer(&bridge.ws_url("/ws"), bridge.addr(), 4096).await;
    assert_eq!(c.next_json().await["type"], "connected");
    c.subscribe(1, &["job:1", "job:2"]).await;
    // The client reads nothing from here on, while far more than its queue is published.
    let mut publisher = Publisher::connect(&redis.url()).await;
    let filler = "p".repeat(2000);
    for round in 0..20 {
        for channel in ["job:1", "job:2"] {
            let payloads: Vec<Vec<u8>> = (0..50)
                .map(|i| {
                    json!({"n": round * 50 + i, "filler": filler})
                        .to_string()
                        .into_bytes()
                })
                .collect();
            publisher.publish_many(channel, &payloads).await;
        }
    }
    for channel in ["job:1", "job:2"] {
        publisher
            .publish(channel, json!({"n": "final"}).to_string())
            .await;
    }
    wait_until_async(WAIT, "frames conflated", || async {
        bridge
            .metric("bridge_messages_conflated_total")
            .await
            .is_some_and(|n| n > 100)
            && bridge.metric("bridge_redis_messages_received_total").await == Some(2002)
    })
    .await;
    // Now it reads: no close, each topic's frames in order, ending with its newest.
    let mut last = std::collections::BTreeMap::new();
    let mut frames = 0;
    while last
        .values()
        .filter(|data: &&Value| data["n"] == "final")
        .count()
        < 2
    {
        let frame = match c.recv_frame(WAIT).await {
            Frame::Text(text) => parse(&text),
            other => panic!("expected route frames, got {other:?}"),
        };
        frames += 1;
        let topic = frame["topic"].as_str().unwrap().to_owned();
        if let Some(previous) = last.get(&topic) {
            let previous: &Value = previous;
            assert_ne!(previous["n"], "final", "nothing after the newest: {frame}");
        }
        last.insert(topic, frame["data"].clone());
    }
    assert!(
        frames < 2002,
        "a backlog was not sent whole: {frames} frames"
    );
    c.assert_pong(2).await;
    assert_eq!(
        bridge.metric("bridge_slow_client_disconnects_total").await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_topics_resume_from_the_upgrade_url_before_any_live_frame() {
    let redis = RedisServer::start();
    let sections = format!(
        "{}admin:\n  token: {ADMIN_TOKEN}\n",
        auth_section("optional", "", "")
    );
    let routes = r#"
        - name: notes
          pattern: "note:*"
          topic: "note:{1}"
          delivery: auto
          audience: { user: "{payload.to}" }
          history: { size: 10000 }
        - name: jobs
          pattern: "job:*"
          topic: "job:{1}"
          history: { size: 10 }
        "#;
    let bridge = Bridge::start(&redis, &config_with("send_queue: 10000", &sections, routes));
    bridge.wait_ready().await;
    let alice = token("alice", &["user"], json!({}));
    let mut first = bridge.client_at(&format!("/ws?token={alice}")).await;
    let epoch = first.welcome["epoch"].as_str().unwrap().to_owned();
    // A frame of the topic for someone else, and one of a subscribe route.
    let mut publisher = Publisher::connect(&redis.url()).await;
    publisher
        .publish("note:alice", json!({"to": "bob", "n": 0}).to_string())
        .await;
    publisher
        .publish("job:1", json!({"n": 0}).to_string())
        .await;
    const TOTAL: u64 = 3000;
    let (published, storm_task) = storm(&redis, "note:alice", TOTAL);
    let mut got = Vec::new();
    while got.len() < 200 {
        got.push(seq(&first.next_json().await));
    }
    let position = *got.last().unwrap();
    drop(first);
    wait_published(&published, position + 300).await;
    let since = json!({"epoch": epoch, "seq": {"note:alice": position, "job:1": 0}}).to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", &alice)
        .append_pair("since", &since)
        .finish();
    let mut second = bridge.client_at(&format!("/ws?{query}")).await;
    let resumed = seqs_until(&mut second, TOTAL + 1).await;
    storm_task.await.unwrap();
    // Seq 1 was bob's; alice's are 2 ..= TOTAL + 1.
    assert_eq!(got[0], 2);
    let expected: Vec<u64> = (position + 1..=TOTAL + 1).collect();
    assert_eq!(
        resumed, expected,
        "the missed frames first, then the live ones"
    );
    second.assert_pong(1).await;

    // Positions of another epoch: a gap, no replay; and a malformed `since` is refused.
    let stale = json!({"epoch": "another", "seq": {"note:alice": 5}}).to_string();
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", &alice)
        .append_pair("since", &stale)
        .finish();
    let mut third = bridge.client_at(&format!("/ws?{query}")).await;
    assert_eq!(
        third.next_json().await,
        json!({"type": "gap", "reason": "epoch_changed", "topics": ["note:alice"]})
    );
    third.assert_pong(1).await;
    for bad in [
        "nope",
        r#"{"epoch":"e","seq":{"a":-1}}"#,
        r#"{"epoch":"e"}"#,
    ] {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("since", bad)
            .finish();
        match WsClient::try_connect(&bridge.ws_url(&format!("/ws?{query}")), &[]).await {
            Err(crate::support::ConnectError::Status(400, body)) => {
                let body = parse(&body);
                assert_eq!(body["reason"], "bad_since", "{body}");
                assert!(
                    body["error"].as_str().is_some_and(|e| e.contains("since")),
                    "{body}"
                );
            }
            Err(other) => panic!("expected 400 for {bad}, got {other:?}"),
            Ok(_) => panic!("a malformed since was accepted: {bad}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_the_topic_that_no_history_kept_is_never_skipped_silently() {
    // Two routes on one topic: only one retains. A frame of the other that someone received
    // takes a seq the history does not hold, so a position before it cannot be resumed whole.
    let routes = r#"
        - name: kept
          channel: kept
          topic: shared
          history: { size: 50 }
        - name: not-kept
          channel: other
          topic: shared
        "#;
    let (redis, bridge) = start("", routes).await;
    let mut live = bridge.client().await;
    live.subscribe(1, &["shared"]).await;
    let mut c = bridge.client().await;
    let epoch = c.welcome["epoch"].clone();
    publish_numbered(&redis, "kept", 1..=2).await;
    publish_numbered(&redis, "other", 3..=3).await;
    publish_numbered(&redis, "kept", 4..=4).await;
    let seen: Vec<u64> = texts(&mut live, 4)
        .await
        .iter()
        .map(|t| seq(&parse(t)))
        .collect();
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(bridge.metric("bridge_history_frames").await, Some(3));
    let since = |position: u64| json!({"epoch": epoch, "seq": {"shared": position}});
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["shared"], "since": since(1)}),
    )
    .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "gap", "id": 1, "reason": "history_exhausted", "topics": ["shared"]})
    );
    c.assert_pong(2).await;
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 3, "topics": ["shared"], "since": since(3)}),
    )
    .await;
    let frame = c.next_json().await;
    assert_eq!((seq(&frame), &frame["data"]), (4, &json!({"n": 4})));
    c.assert_pong(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_overflows_the_send_queue() {
    let (redis, bridge) = start("send_queue: 4", &jobs("{ size: 10 }")).await;
    publish_numbered(&redis, "job:1", 1..=10).await;
    bridge.wait_retained(10).await;
    let mut c = bridge.client().await;
    let epoch = c.welcome["epoch"].clone();
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 1, "topics": ["job:1"], "last": 10}),
    )
    .await;
    let seqs: Vec<u64> = texts(&mut c, 4)
        .await
        .iter()
        .map(|t| seq(&parse(t)))
        .collect();
    assert_eq!(seqs, [7, 8, 9, 10], "the newest that fit");
    c.assert_pong(2).await;
    subscribed(
        &mut c,
        json!({"type": "subscribe", "id": 3, "topics": ["job:1"], "since": {"epoch": epoch, "seq": {"job:1": 2}}}),
    )
    .await;
    assert_eq!(c.next_json().await["reason"], "history_exhausted");
    c.assert_pong(4).await;
    assert_eq!(
        bridge.metric("bridge_slow_client_disconnects_total").await,
        Some(0)
    );
}
