//! Routing: channel and pattern routes, `auto` and `subscribe` delivery, topic templates
//! and lists, the three formats, filters, and at-most-once delivery per connection.

use serde_json::{Value, json};

use crate::support::{
    Frame, JOB_ROUTE, Publisher, WAIT, assert_envelope, assert_rfc3339_ms_utc, start,
    wait_until_async,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_route_with_auto_delivery_sends_envelopes_to_every_connection() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: jobs
          channel: test:jobs
          topic: jobs
          delivery: auto
        "#,
    )
    .await;
    let mut a = bridge.client().await;
    let mut b = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    // The bridge holds one subscription to the channel.
    assert_eq!(p.publish("test:jobs", r#"{"event":"x","n":1}"#).await, 1);
    for c in [&mut a, &mut b] {
        let f = c.next_json().await;
        assert_envelope(&f, "jobs", "jobs", 1, &json!({"event": "x", "n": 1}));
    }
    // A non-JSON payload becomes a JSON string.
    p.publish("test:jobs", "plain text, not JSON").await;
    for c in [&mut a, &mut b] {
        let f = c.next_json().await;
        assert_envelope(&f, "jobs", "jobs", 2, &json!("plain text, not JSON"));
    }
    // A channel no route names is not delivered; the next frame is the marker.
    assert_eq!(p.publish("test:other", r#"{"n":"lost"}"#).await, 0);
    p.publish("test:jobs", "42").await;
    for c in [&mut a, &mut b] {
        let f = c.next_json().await;
        assert_envelope(&f, "jobs", "jobs", 3, &json!(42));
        c.assert_pong(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_route_delivers_only_to_subscribers_of_the_captured_topic() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: job-progress
          pattern: "job:*"
          topic: "job:{1}"
        "#,
    )
    .await;
    let mut a = bridge.client().await;
    let mut b = bridge.client().await;
    let mut c = bridge.client().await;
    let mut idle = bridge.client().await;
    a.subscribe(1, &["job:abc"]).await;
    b.subscribe(1, &["job:xyz"]).await;
    c.subscribe(1, &["job:c"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("job:abc", r#"{"p":1}"#).await;
    let f = a.next_json().await;
    assert_envelope(&f, "job-progress", "job:abc", 1, &json!({"p": 1}));

    p.publish("job:xyz", r#"{"p":2}"#).await;
    let f = b.next_json().await;
    assert_envelope(&f, "job-progress", "job:xyz", 1, &json!({"p": 2}));

    // `a` did not get job:xyz: its next frame is its own topic's next message (seq 2).
    p.publish("job:abc", r#"{"p":3}"#).await;
    let f = a.next_json().await;
    assert_envelope(&f, "job-progress", "job:abc", 2, &json!({"p": 3}));

    // `c` got nothing of job:abc nor job:xyz.
    p.publish("job:c", r#"{"m":1}"#).await;
    let f = c.next_json().await;
    assert_envelope(&f, "job-progress", "job:c", 1, &json!({"m": 1}));

    // `b` got nothing of job:abc.
    p.publish("job:xyz", r#"{"p":4}"#).await;
    let f = b.next_json().await;
    assert_envelope(&f, "job-progress", "job:xyz", 2, &json!({"p": 4}));

    // A connection with no subscription got nothing at all.
    idle.assert_pong(7).await;
    for x in [&mut a, &mut b, &mut c] {
        x.assert_pong(8).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_route_is_not_delivered_without_a_subscription_and_auto_route_is() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: news
          channel: test:news
          topic: news
          delivery: auto
        - name: private
          channel: test:private
          topic: private
          delivery: subscribe
        "#,
    )
    .await;
    let mut plain = bridge.client().await;
    let mut sub = bridge.client().await;
    sub.subscribe(1, &["private"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("test:private", r#"{"secret":1}"#).await;
    p.publish("test:news", r#"{"headline":"h"}"#).await;

    // `sub` gets both, in publish order; `plain` only the auto one.
    let f = sub.next_json().await;
    assert_envelope(&f, "private", "private", 1, &json!({"secret": 1}));
    let f = sub.next_json().await;
    assert_envelope(&f, "news", "news", 1, &json!({"headline": "h"}));
    let f = plain.next_json().await;
    assert_envelope(&f, "news", "news", 1, &json!({"headline": "h"}));
    plain.assert_pong(2).await;
    sub.assert_pong(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_format_sends_the_payload_byte_for_byte() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: raw
          channel: test:raw
          topic: raw
          delivery: auto
          format: raw
        "#,
    )
    .await;
    let mut c = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    // JSON stays exactly as published (no re-serialisation).
    p.publish("test:raw", r#"{ "a" : 1,   "b": [1, 2] }"#).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        Frame::Text(r#"{ "a" : 1,   "b": [1, 2] }"#.into())
    );
    // Not JSON: a text frame all the same.
    p.publish("test:raw", "hello, not json {").await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        Frame::Text("hello, not json {".into())
    );
    // UTF-8 beyond ASCII.
    p.publish("test:raw", "héllo ✓ 日本").await;
    assert_eq!(c.recv_frame(WAIT).await, Frame::Text("héllo ✓ 日本".into()));
    // Not UTF-8: a binary frame with the same bytes.
    let bytes: &[u8] = &[0xff, 0x00, 0xfe, 0x80, b'a'];
    p.publish("test:raw", bytes).await;
    assert_eq!(c.recv_frame(WAIT).await, Frame::Binary(bytes.to_vec()));
    c.assert_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_type_template_and_payload_kinds() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: env
          channel: test:env
          topic: env
          delivery: auto
          type: "{payload.event|job_update}"
        "#,
    )
    .await;
    let mut c = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("test:env", r#"{"event":"job.started","id":1}"#)
        .await;
    let f = c.next_json().await;
    assert_envelope(
        &f,
        "job.started",
        "env",
        1,
        &json!({"event": "job.started", "id": 1}),
    );

    // The alternative's literal text when the field is missing.
    p.publish("test:env", r#"{"id":2}"#).await;
    let f = c.next_json().await;
    assert_envelope(&f, "job_update", "env", 2, &json!({"id": 2}));

    // Non-JSON payload: the literal alternative, data as a string.
    p.publish("test:env", "not json").await;
    let f = c.next_json().await;
    assert_envelope(&f, "job_update", "env", 3, &json!("not json"));

    // JSON that is not an object.
    p.publish("test:env", "[1,2]").await;
    let f = c.next_json().await;
    assert_envelope(&f, "job_update", "env", 4, &json!([1, 2]));
    p.publish("test:env", r#""just a string""#).await;
    let f = c.next_json().await;
    assert_envelope(&f, "job_update", "env", 5, &json!("just a string"));

    // Not UTF-8: still one JSON text frame, data a string.
    p.publish("test:env", [0xffu8, 0xfe, b'x'].as_slice()).await;
    let f = c.next_json().await;
    assert!(
        f["data"].is_string(),
        "non-UTF-8 data must be a JSON string: {f}"
    );
    assert_envelope(&f, "job_update", "env", 6, &f["data"].clone());
    c.assert_pong(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_template_substitutes_typed_values_and_alternatives() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: tmpl
          channel: test:tmpl
          topic: tmpl
          delivery: auto
          format:
            type: "{payload.event|job_update}"
            job_id: "{payload.job_id}"
            status: "{payload.data.status|payload.status}"
            data: "{payload.data}"
            count: "{payload.data.count}"
            first: "{payload.items.0}"
            label: "job {payload.job_id} is {payload.data.status|payload.status}"
            channel: "{channel}"
            topic: "{topic}"
            seq: "{seq}"
            at: "{now}"
            fallback: "{payload.missing|payload.also|none}"
            const: 7
            flag: true
            nested:
              list: [1, "{payload.job_id}"]
        "#,
    )
    .await;
    let mut c = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish(
        "test:tmpl",
        r#"{"event":"job.done","job_id":"j1","data":{"status":"done","count":3},"items":[10,20]}"#,
    )
    .await;
    let mut f = c.next_json().await;
    assert_rfc3339_ms_utc(f["at"].as_str().unwrap_or_else(|| panic!("`at` in {f}")));
    f.as_object_mut().unwrap().remove("at");
    assert_eq!(
        f,
        json!({
            "type": "job.done",
            "job_id": "j1",
            "status": "done",
            "data": {"status": "done", "count": 3},
            "count": 3,
            "first": 10,
            "label": "job j1 is done",
            "channel": "test:tmpl",
            "topic": "tmpl",
            "seq": 1,
            "fallback": "none",
            "const": 7,
            "flag": true,
            "nested": {"list": [1, "j1"]}
        })
    );

    // Second alternatives, typed values of other kinds (number, bool) and literal text.
    p.publish(
        "test:tmpl",
        r#"{"job_id":7,"status":"queued","data":{"count":0},"items":["x"],"also":false}"#,
    )
    .await;
    let mut f = c.next_json().await;
    f.as_object_mut().unwrap().remove("at");
    assert_eq!(
        f,
        json!({
            "type": "job_update",
            "job_id": 7,
            "status": "queued",
            "data": {"count": 0},
            "count": 0,
            "first": "x",
            "label": "job 7 is queued",
            "channel": "test:tmpl",
            "topic": "tmpl",
            "seq": 2,
            "fallback": false,
            "const": 7,
            "flag": true,
            "nested": {"list": [1, 7]}
        })
    );

    // Unresolvable (`payload.job_id` missing; not JSON at all): skipped, and a skipped
    // message takes no seq number.
    p.publish(
        "test:tmpl",
        r#"{"event":"no-job-id","data":{"status":"s","count":1},"items":[1]}"#,
    )
    .await;
    p.publish("test:tmpl", "not json").await;
    p.publish(
        "test:tmpl",
        r#"{"job_id":"j3","data":{"status":"ok","count":1},"items":[{"k":"v"}]}"#,
    )
    .await;
    let f = c.next_json().await;
    assert_eq!(
        f["job_id"], "j3",
        "the skipped messages were delivered: {f}"
    );
    assert_eq!(f["first"], json!({"k": "v"}));
    assert_eq!(f["seq"], 3);
    c.assert_pong(1).await;
    wait_until_async(
        WAIT,
        "2 unroutable messages counted for route tmpl",
        || async { bridge.route_stat("tmpl", "unroutable").await == 2 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_topic_placeholder_skips_the_route_and_counts_it() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: per-user
          channel: test:u
          topic: "user:{payload.user}"
        - name: everything
          channel: test:u
          topic: all
          format: raw
        "#,
    )
    .await;
    let mut user = bridge.client().await;
    let mut all = bridge.client().await;
    user.subscribe(1, &["user:u1"]).await;
    all.subscribe(1, &["all"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("test:u", r#"{"x":1}"#).await;
    p.publish("test:u", "not json").await;
    p.publish("test:u", [0xffu8, 0x01].as_slice()).await;
    p.publish("test:u", r#"{"user":"u1"}"#).await;

    // The other route of the same channel is unaffected.
    assert_eq!(all.recv_frame(WAIT).await, Frame::Text(r#"{"x":1}"#.into()));
    assert_eq!(all.recv_frame(WAIT).await, Frame::Text("not json".into()));
    assert_eq!(all.recv_frame(WAIT).await, Frame::Binary(vec![0xff, 0x01]));
    assert_eq!(
        all.recv_frame(WAIT).await,
        Frame::Text(r#"{"user":"u1"}"#.into())
    );
    // The skipped messages never reached the subscriber of user:u1.
    let f = user.next_json().await;
    assert_envelope(&f, "per-user", "user:u1", 1, &json!({"user": "u1"}));
    user.assert_pong(2).await;
    all.assert_pong(2).await;

    wait_until_async(
        WAIT,
        "3 unroutable messages counted for route per-user",
        || async { bridge.route_stat("per-user", "unroutable").await == 3 },
    )
    .await;
    assert_eq!(bridge.route_stat("everything", "unroutable").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_routed_by_two_routes() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: jobs-envelope
          channel: test:shared
          topic: jobs
        - name: jobs-legacy
          channel: test:shared
          topic: legacy
          format: raw
        "#,
    )
    .await;
    let mut modern = bridge.client().await;
    let mut legacy = bridge.client().await;
    modern.subscribe(1, &["jobs"]).await;
    legacy.subscribe(1, &["legacy"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    // Two routes on one channel: still one Redis subscription.
    assert_eq!(p.publish("test:shared", r#"{"k":1}"#).await, 1);
    let f = modern.next_json().await;
    assert_envelope(&f, "jobs-envelope", "jobs", 1, &json!({"k": 1}));
    assert_eq!(
        legacy.recv_frame(WAIT).await,
        Frame::Text(r#"{"k":1}"#.into())
    );
    modern.assert_pong(2).await;
    legacy.assert_pong(2).await;

    wait_until_async(
        WAIT,
        "1 message and 1 delivery counted per route",
        || async {
            let s = bridge.stats().await;
            crate::support::route_stat(&s, "jobs-envelope", "messages") == 1
                && crate::support::route_stat(&s, "jobs-legacy", "messages") == 1
                && crate::support::route_stat(&s, "jobs-envelope", "delivered") == 1
                && crate::support::route_stat(&s, "jobs-legacy", "delivered") == 1
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_list_delivers_each_topic_and_a_connection_gets_a_message_once() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: multi
          channel: test:multi
          topic: [all-jobs, "job:{payload.id}"]
        "#,
    )
    .await;
    let mut all = bridge.client().await;
    let mut five = bridge.client().await;
    let mut six = bridge.client().await;
    let mut both = bridge.client().await;
    all.subscribe(1, &["all-jobs"]).await;
    five.subscribe(1, &["job:5"]).await;
    six.subscribe(1, &["job:6"]).await;
    both.subscribe(1, &["all-jobs", "job:5"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("test:multi", r#"{"id":5}"#).await;
    let f = all.next_json().await;
    assert_envelope(&f, "multi", "all-jobs", 1, &json!({"id": 5}));
    let f = five.next_json().await;
    assert_envelope(&f, "multi", "job:5", 1, &json!({"id": 5}));
    // Subscribed to both topics the message produced: delivered once.
    let f = both.next_json().await;
    let topic = f["topic"].as_str().unwrap_or_default().to_owned();
    assert!(topic == "all-jobs" || topic == "job:5", "topic of {f}");
    assert_envelope(&f, "multi", &topic, 1, &json!({"id": 5}));

    p.publish("test:multi", r#"{"id":6}"#).await;
    let f = all.next_json().await;
    assert_envelope(&f, "multi", "all-jobs", 2, &json!({"id": 6}));
    let f = six.next_json().await;
    assert_envelope(&f, "multi", "job:6", 1, &json!({"id": 6}));
    // The next frame of `both` is message 2: no duplicate of message 1 came before it.
    let f = both.next_json().await;
    assert_envelope(&f, "multi", "all-jobs", 2, &json!({"id": 6}));

    // `five` got nothing of id 6.
    p.publish("test:multi", r#"{"id":5,"n":2}"#).await;
    let f = five.next_json().await;
    assert_envelope(&f, "multi", "job:5", 2, &json!({"id": 5, "n": 2}));
    let f = all.next_json().await;
    assert_envelope(&f, "multi", "all-jobs", 3, &json!({"id": 5, "n": 2}));
    let f = both.next_json().await;
    assert_eq!(f["data"], json!({"id": 5, "n": 2}), "{f}");
    // And nothing else anywhere.
    for c in [&mut all, &mut five, &mut six, &mut both] {
        c.assert_pong(9).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_filter_admits_only_listed_values() {
    let (redis, bridge) = start("", JOB_ROUTE).await;
    let mut any = bridge.client().await;
    let mut status = bridge.client().await;
    let mut both = bridge.client().await;
    let mut prio = bridge.client().await;
    any.subscribe(1, &["job:1"]).await;
    status
        .subscribe_filtered(1, &["job:1"], json!({"status": ["running", "failed"]}))
        .await;
    both.subscribe_filtered(
        1,
        &["job:1"],
        json!({"status": ["running"], "data.kind": ["gpu"]}),
    )
    .await;
    prio.subscribe_filtered(1, &["job:1"], json!({"prio": [1]}))
        .await;
    let mut p = Publisher::connect(&redis.url()).await;

    let messages = [
        r#"{"status":"queued","prio":1}"#,
        r#"{"status":"running","data":{"kind":"cpu"},"prio":2}"#,
        r#"{"status":"running","data":{"kind":"gpu"}}"#,
        "not json",
        r#"{"status":"failed","prio":1}"#,
        r#"{"status":"running","data":{"kind":"gpu"},"prio":1,"marker":true}"#,
    ];
    for m in messages {
        p.publish("job:1", m).await;
    }
    let data = |i: usize| -> Value {
        serde_json::from_str(messages[i]).unwrap_or_else(|_| json!(messages[i]))
    };
    // (client, indexes of the messages it must receive, in order)
    let expect: [(&mut crate::support::WsClient, &[usize]); 4] = [
        (&mut any, &[0, 1, 2, 3, 4, 5]),
        (&mut status, &[1, 2, 4, 5]),
        (&mut both, &[2, 5]),
        (&mut prio, &[0, 4, 5]),
    ];
    for (client, wanted) in expect {
        for &i in wanted {
            let f = client.next_json().await;
            // seq counts per topic, whoever receives it.
            assert_envelope(&f, "jobs", "job:1", i as u64 + 1, &data(i));
        }
        client.assert_pong(2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_to_that_connection_only() {
    let (redis, bridge) = start("", JOB_ROUTE).await;
    let mut a = bridge.client().await;
    let mut b = bridge.client().await;
    a.subscribe(1, &["job:1", "job:m"]).await;
    b.subscribe(1, &["job:1"]).await;
    let mut p = Publisher::connect(&redis.url()).await;

    p.publish("job:1", r#"{"n":1}"#).await;
    assert_envelope(&a.next_json().await, "jobs", "job:1", 1, &json!({"n": 1}));
    assert_envelope(&b.next_json().await, "jobs", "job:1", 1, &json!({"n": 1}));

    a.send_json(&json!({"type": "unsubscribe", "id": 2, "topics": ["job:1"]}))
        .await;
    assert_eq!(
        a.next_json().await,
        json!({"type": "unsubscribed", "id": 2, "topics": ["job:1"]})
    );

    p.publish("job:1", r#"{"n":2}"#).await;
    p.publish("job:m", r#"{"marker":true}"#).await;
    // `a` skips job:1 now; its next frame is the marker.
    assert_envelope(
        &a.next_json().await,
        "jobs",
        "job:m",
        1,
        &json!({"marker": true}),
    );
    // `b` still receives job:1.
    assert_envelope(&b.next_json().await, "jobs", "job:1", 2, &json!({"n": 2}));
    a.assert_pong(3).await;
    b.assert_pong(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_topics_and_route_traffic() {
    let (redis, bridge) = start(
        "",
        r#"
        - name: xs
          pattern: "x:*"
          topic: "x:{1}"
        "#,
    )
    .await;
    let mut a = bridge.client().await;
    let mut b = bridge.client().await;
    a.subscribe(1, &["x:1", "x:2"]).await;
    b.subscribe(1, &["x:1"]).await;

    let s = bridge.stats().await;
    assert_eq!(s["connections"], 2, "{s}");
    assert_eq!(s["topics"], 2, "{s}");
    assert_eq!(s["redis"]["connected"], true, "{s}");

    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("x:1", "1").await;
    p.publish("x:2", "2").await;
    p.publish("x:3", "3").await;
    assert_envelope(&a.next_json().await, "xs", "x:1", 1, &json!(1));
    assert_envelope(&a.next_json().await, "xs", "x:2", 1, &json!(2));
    assert_envelope(&b.next_json().await, "xs", "x:1", 1, &json!(1));
    a.assert_pong(2).await;
    b.assert_pong(2).await;
    wait_until_async(WAIT, "3 messages and 3 deliveries for route xs", || async {
        let s = bridge.stats().await;
        crate::support::route_stat(&s, "xs", "messages") == 3
            && crate::support::route_stat(&s, "xs", "delivered") == 3
    })
    .await;

    b.close().await;
    wait_until_async(WAIT, "1 connection left", || async {
        bridge.stats().await["connections"] == 1
    })
    .await;
    assert_eq!(bridge.stats().await["topics"], 2);
    a.send_json(&json!({"type": "unsubscribe", "id": 3, "topics": ["x:2"]}))
        .await;
    assert_eq!(
        a.next_json().await,
        json!({"type": "unsubscribed", "id": 3, "topics": ["x:2"]})
    );
    wait_until_async(WAIT, "1 topic left", || async {
        bridge.stats().await["topics"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_reaches_every_subscriber_once_and_in_order() {
    // More subscribers than the bridge flushes on one thread (2 × 512): the writes of each
    // message are split over its worker threads, and order and once-only must hold per
    // connection whoever writes.
    const SUBSCRIBERS: usize = 1_200;
    const MESSAGES: u64 = 30;
    // Every test client comes from 127.0.0.1.
    let (redis, bridge) = start("max_connections_per_ip: 2000", JOB_ROUTE).await;
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut client = bridge.client().await;
        client.subscribe(1, &["job:big"]).await;
        subscribers.push(client);
    }
    let mut other = bridge.client().await;
    other.subscribe(1, &["job:other"]).await;

    let payloads: Vec<Vec<u8>> = (1..=MESSAGES)
        .map(|i| format!(r#"{{"i":{i}}}"#).into_bytes())
        .collect();
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish_many("job:big", &payloads).await;

    let checks: Vec<_> = subscribers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for i in 1..=MESSAGES {
                    let f = client.next_json().await;
                    assert_envelope(&f, "jobs", "job:big", i, &json!({ "i": i }));
                }
                // Nothing after the last one.
                client.assert_pong(2).await;
            })
        })
        .collect();
    for check in checks {
        check
            .await
            .expect("every subscriber got every message once, in order");
    }
    other.assert_pong(2).await;
}

/// The bridge routes a pattern's messages by its own reading of the pattern: that reading
/// must be Redis's. Every pattern of up to three elements over the bytes that make edge cases
/// (classes, ranges, escapes, `?`, `*`, a two-byte character), and a few longer ones, is
/// PSUBSCRIBEd on a real Redis; every channel of up to three such characters is PUBLISHed;
/// a (pattern, channel) pair that Redis delivers is exactly one `glob::matches` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_match_the_channels_redis_delivers_to_them_and_no_others() {
    use futures_util::StreamExt;
    use std::collections::HashSet;

    fn words(alphabet: &[&str], longest: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut last = vec![String::new()];
        for _ in 0..longest {
            last = last
                .iter()
                .flat_map(|word| alphabet.iter().map(move |symbol| format!("{word}{symbol}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }
    const END: &str = "end-of-the-channels";
    let mut patterns = words(&["a", "-", "]", "[", "^", "\\", "?", "*", "é"], 3);
    patterns.extend(
        [
            "[a-]x]", "[a-]", "[a-\\]]*", "[a-\\]*", "h[^e]llo", "[]a]", "[^]a]", "[z-a]", "*[a-]",
            "[é-z]", "[^é]", "\\[*\\]", "a*?*", END,
        ]
        .map(String::from),
    );
    let mut channels = words(&["a", "b", "-", "]", "[", "^", "\\", "*", "?", "é"], 3);
    channels.extend(["hello", "hallo", "x]", "_x", "ü", "ab]", "a-]"].map(String::from));

    let redis = crate::support::RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("redis url");
    // The messages wait in Redis until the test reads them, all of them.
    redis
        .config_set(&[("client-output-buffer-limit", "pubsub 0 0 0")])
        .await;
    let mut pubsub = tokio::time::timeout(WAIT, client.get_async_pubsub())
        .await
        .expect("connecting timed out")
        .expect("connect");
    pubsub
        .psubscribe(&patterns)
        .await
        .expect("PSUBSCRIBE every pattern");
    let mut messages = pubsub.into_on_message();
    let mut publisher = Publisher::connect(&redis.url()).await;
    for channel in channels.iter().chain([&END.to_owned()]) {
        publisher.publish(channel, "").await;
    }
    // One connection gets the messages in the order Redis routed them: all the channels'
    // come before any of the last one's.
    let mut delivered = HashSet::new();
    loop {
        let message = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("Redis delivers every message in time")
            .expect("the subscription stays open");
        let channel = message.get_channel_name().to_owned();
        if channel == END {
            break;
        }
        let pattern: String = message.get_pattern().expect("a pattern message");
        delivered.insert((pattern, channel));
    }
    assert!(delivered.len() > 10_000, "{} pairs", delivered.len());
    let mut disagreements = Vec::new();
    for pattern in &patterns {
        for channel in &channels {
            let by_redis = delivered.contains(&(pattern.clone(), channel.clone()));
            if by_redis != redis_ws_bridge::glob::matches(pattern, channel) {
                disagreements.push(format!("{pattern:?} ~ {channel:?}: Redis {by_redis}"));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements, e.g. {:?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(20)]
    );
}
