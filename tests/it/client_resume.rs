//! The browser client's resume (clients/js/client.js) under Node against the real daemon:
//! after its socket is cut while a publisher keeps publishing, the client gets exactly the
//! frames it missed, subscribed and `auto`, in order and once each; a history too short for
//! what was missed, and a restarted bridge (a new epoch), reach the application as `gap`
//! events, and no jump in `seq` is reported on top of them. A subscribe with `last` gets the
//! newest retained frames, and a reconnect resumes after them. A configured welcome resumes
//! when it names the epoch (`{epoch}`), and is reported as a `reconnected` gap when not.
//! Frames still arriving after `unsubscribe()` are not resumed.

use serde_json::{Value, json};

use crate::support::driver::Driver;
use crate::support::tokens::auth_section;
use crate::support::{
    Bridge, Publisher, RedisServer, WAIT, config_with, pick_port, wait_until_async,
};

/// `news` by subscription and `alerts` for every connection, both retaining far more than
/// a test publishes; `brief` by subscription, retaining 3 frames; `auto` topics made from the
/// channel, which no welcome can name: `personal:<user>` for that user only, `board:<n>` for
/// everyone.
const ROUTES: &str = r#"
    - name: news
      channel: news
      topic: news
      history: { size: 1000 }
    - name: alerts
      channel: alerts
      topic: alerts
      delivery: auto
      history: { size: 1000 }
    - name: brief
      channel: brief
      topic: brief
      history: { size: 3 }
    - name: personal
      pattern: "personal:*"
      topic: "personal:{1}"
      delivery: auto
      audience: { user: "{1}" }
      history: { size: 1000 }
    - name: board
      pattern: "board:*"
      topic: "board:{1}"
      delivery: auto
      history: { size: 10 }
    "#;

/// On a fixed port, so that a restarted bridge is found where it was.
fn resume_config(redis: &RedisServer, port: u16) -> String {
    config_with_welcome(redis, port, "")
}

/// `resume_config` with the `websocket` settings `websocket` (a configured welcome).
fn config_with_welcome(redis: &RedisServer, port: u16, websocket: &str) -> String {
    config_with(websocket, &auth_section("required", "", ""), ROUTES)
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
        .replace("{redis_url}", &redis.url())
}

/// Redis and a bridge of `resume_config`, ready.
async fn started() -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let bridge = Bridge::start_with(&resume_config(&redis, pick_port()), &[]);
    bridge.wait_ready().await;
    (redis, bridge)
}

/// Closes the client for good and waits for its driver to end.
async fn closed(mut node: Driver) {
    node.send(json!({"op": "close"}));
    node.event("close", |v| v["reconnect"] == false).await;
    node.finish().await;
}

/// A client under Node connected as `ada`, reconnecting after `delay` ms (jittered to half
/// of it at least), once its welcome has arrived.
async fn connected(bridge: &Bridge, delay: u64) -> (Driver, Value) {
    let mut node = Driver::start("tests/clients/node", "ws");
    let options = json!({"minDelay": delay, "maxDelay": delay});
    node.connect_minting(&bridge.ws_url("/ws"), "ada", &[600], options);
    let welcome = node.event("open", |_| true).await["value"].clone();
    (node, welcome)
}

/// The `n` of every message of `topic` the application got, in order.
fn numbers(node: &Driver, topic: &str) -> Vec<u64> {
    node.seen("message")
        .iter()
        .filter(|m| m["topic"] == topic)
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect()
}

/// Every message of `topic` carries `seq` = its `n`: one frame per message, none skipped.
fn assert_seq_is_n(node: &Driver, topic: &str) {
    for m in node.seen("message").iter().filter(|m| m["topic"] == topic) {
        assert_eq!(m["seq"], m["data"]["n"], "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_with_exactly_the_missed_frames() {
    let (redis, bridge) = started().await;
    let (mut node, welcome) = connected(&bridge, 400).await;
    assert_eq!(welcome["topics"], json!(["alerts"]));
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    assert_eq!(node.reply("subscribe").await, json!(["news"]));

    // A publisher at full speed on both topics, cut in the middle by the drop.
    let url = redis.url();
    let total = 300u64;
    let publisher = tokio::spawn(async move {
        let mut publisher = Publisher::connect(&url).await;
        for n in 1..=total {
            let payload = json!({"n": n}).to_string();
            publisher.publish("news", &payload).await;
            if n % 3 == 0 {
                publisher
                    .publish("alerts", json!({"n": n / 3}).to_string())
                    .await;
            }
            if n % 2 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    node.event("message", |m| m["topic"] == "news" && m["data"]["n"] == 20)
        .await;
    node.send(json!({"op": "drop"}));
    let close = node.event("close", |_| true).await["value"].clone();
    assert_eq!(
        (&close["code"], &close["reconnect"]),
        (&json!(1006), &json!(true))
    );
    let reopened = node.event("open", |_| true).await["value"].clone();
    assert_eq!(reopened["epoch"], welcome["epoch"], "the same bridge");
    publisher.await.expect("the publisher");
    node.event("message", |m| {
        m["topic"] == "news" && m["data"]["n"] == total
    })
    .await;
    node.event("message", |m| {
        m["topic"] == "alerts" && m["data"]["n"] == total / 3
    })
    .await;

    // Everything, in order, once: what came before the cut, what was replayed, what came
    // live after it.
    assert_eq!(numbers(&node, "news"), (1..=total).collect::<Vec<_>>());
    assert_eq!(
        numbers(&node, "alerts"),
        (1..=total / 3).collect::<Vec<_>>()
    );
    assert_seq_is_n(&node, "news");
    assert_seq_is_n(&node, "alerts");
    assert!(node.seen("gap").is_empty(), "{}", node.transcript());
    assert_eq!(node.seen("open").len(), 2);
    // Something was missed, so something was replayed: the resume did the work.
    let replayed = bridge
        .metric("bridge_history_replayed_frames_total")
        .await
        .expect("the replay counter");
    assert!(replayed > 0, "nothing replayed: {}", node.transcript());
    assert_eq!(
        bridge
            .metric(r#"bridge_history_gaps_total{reason="history_exhausted"}"#)
            .await,
        Some(0)
    );

    // Missed more than `brief` retains: the application is told, and the next frame's jump
    // in `seq` is not reported a second time.
    node.send(json!({"op": "subscribe", "topics": ["brief"]}));
    assert_eq!(node.reply("subscribe").await, json!(["brief"]));
    let mut publisher = Publisher::connect(&redis.url()).await;
    publisher.publish("brief", r#"{"n":1}"#).await;
    node.event("message", |m| m["topic"] == "brief").await;
    node.send(json!({"op": "drop"}));
    node.event("reconnecting", |_| true).await;
    for n in 2..=6 {
        publisher
            .publish("brief", json!({"n": n}).to_string())
            .await;
    }
    let gap = node.event("gap", |_| true).await["value"].clone();
    assert_eq!(
        gap,
        json!({"reason": "history_exhausted", "topics": ["brief"]})
    );
    publisher.publish("brief", r#"{"n":7}"#).await;
    let next = node.event("message", |m| m["topic"] == "brief").await["value"].clone();
    assert_eq!((&next["data"]["n"], &next["seq"]), (&json!(7), &json!(7)));
    assert_eq!(numbers(&node, "brief"), [1, 7], "nothing of 2..=6 replayed");
    assert_eq!(node.seen("gap").len(), 1, "{}", node.transcript());
    // The other topics resumed without a loss: no gap for them.
    assert_eq!(numbers(&node, "news").len() as u64, total);

    closed(node).await;
}

/// An `auto` topic the welcome cannot name (made from the channel) resumes from the last
/// frame the client got of it, and only with frames its audience admits for this user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_topic_made_from_the_message_resumes_with_exactly_the_missed_frames() {
    let (redis, bridge) = started().await;
    let (mut node, welcome) = connected(&bridge, 400).await;
    assert_eq!(
        welcome["topics"],
        json!(["alerts"]),
        "nothing to name for `personal`"
    );

    // Ada's topic and Bob's at full speed, cut in the middle by the drop.
    let url = redis.url();
    let total = 200u64;
    let publisher = tokio::spawn(async move {
        let mut publisher = Publisher::connect(&url).await;
        for n in 1..=total {
            for user in ["ada", "bob"] {
                let payload = json!({"n": n}).to_string();
                publisher
                    .publish(&format!("personal:{user}"), &payload)
                    .await;
            }
            if n % 2 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    node.event("message", |m| {
        m["topic"] == "personal:ada" && m["data"]["n"] == 20
    })
    .await;
    node.send(json!({"op": "drop"}));
    node.event("close", |_| true).await;
    let reopened = node.event("open", |_| true).await["value"].clone();
    assert_eq!(reopened["epoch"], welcome["epoch"], "the same bridge");
    publisher.await.expect("the publisher");
    node.event("message", |m| {
        m["topic"] == "personal:ada" && m["data"]["n"] == total
    })
    .await;
    node.send(json!({"op": "ping"}));
    node.reply("ping").await;

    assert_eq!(
        numbers(&node, "personal:ada"),
        (1..=total).collect::<Vec<_>>(),
        "{}",
        node.transcript()
    );
    assert_seq_is_n(&node, "personal:ada");
    assert!(
        numbers(&node, "personal:bob").is_empty(),
        "Bob's frames, live or replayed"
    );
    assert!(node.seen("gap").is_empty(), "{}", node.transcript());
    let replayed = bridge
        .metric("bridge_history_replayed_frames_total")
        .await
        .expect("the replay counter");
    assert!(replayed > 0, "nothing replayed: {}", node.transcript());

    closed(node).await;
}

/// The positions of unnamed `auto` topics go on the upgrade URL, so a reconnect resumes the
/// 100 most recently active of them; the older ones are reported as a gap, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_hundred_unnamed_auto_topics_the_least_active_are_reported_as_a_gap() {
    let (redis, bridge) = started().await;
    let (mut node, _) = connected(&bridge, 2000).await;
    let mut publisher = Publisher::connect(&redis.url()).await;
    let topics = 105;
    for b in 0..topics {
        publisher.publish(&format!("board:{b}"), r#"{"n":1}"#).await;
    }
    let last = format!("board:{}", topics - 1);
    node.event("message", |m| m["topic"] == last.as_str()).await;

    node.send(json!({"op": "drop"}));
    node.event("reconnecting", |_| true).await;
    for b in 0..topics {
        publisher.publish(&format!("board:{b}"), r#"{"n":2}"#).await;
    }
    let gap = node.event("gap", |_| true).await["value"].clone();
    let oldest: Vec<String> = (0..5).map(|b| format!("board:{b}")).collect();
    assert_eq!(gap, json!({"reason": "reconnected", "topics": oldest}));
    node.event("message", |m| {
        m["topic"] == last.as_str() && m["data"]["n"] == 2
    })
    .await;
    node.send(json!({"op": "ping"}));
    node.reply("ping").await;

    for b in 0..topics {
        let topic = format!("board:{b}");
        let expected: &[u64] = if b < 5 { &[1] } else { &[1, 2] };
        assert_eq!(
            numbers(&node, &topic),
            expected,
            "{topic}: {}",
            node.transcript()
        );
    }
    assert_eq!(node.seen("gap").len(), 1, "{}", node.transcript());

    closed(node).await;
}

/// Frames of a topic sent before its unsubscribe took effect still arrive after
/// `unsubscribe()`: they are not taken for an unnamed `auto` topic's, so a reconnect asks for
/// nothing of that topic, and gets nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_still_arriving_after_unsubscribe_are_not_resumed_as_an_auto_topic() {
    let (redis, bridge) = started().await;
    let (mut node, _) = connected(&bridge, 400).await;
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    node.reply("subscribe").await;
    node.send(json!({"op": "unsubscribe", "topics": ["news"], "when": {"topic": "news", "n": 1}}));
    // One pipeline: the frames after the first are queued to the client before its
    // unsubscribe, sent from within the first's `message` event, reaches the bridge.
    let mut publisher = Publisher::connect(&redis.url()).await;
    let burst: Vec<Vec<u8>> = (1..=500)
        .map(|n| json!({"n": n}).to_string().into_bytes())
        .collect();
    publisher.publish_many("news", &burst).await;
    assert_eq!(node.reply("unsubscribe").await, json!(["news"]));
    let after = numbers(&node, "news");
    assert!(
        after.len() > 1,
        "no frame arrived after unsubscribe(): {after:?}"
    );

    node.send(json!({"op": "drop"}));
    let reconnect = node.event("socket", |_| true).await["value"].clone();
    let reconnect = reconnect.as_str().expect("the upgrade URL");
    assert!(reconnect.contains("since="), "alerts resumes: {reconnect}");
    assert!(
        !reconnect.contains("news"),
        "news is asked for: {reconnect}"
    );
    node.event("open", |_| true).await;
    publisher.publish("news", r#"{"n":9999}"#).await;
    publisher.publish("alerts", r#"{"n":1}"#).await;
    node.event("message", |m| m["topic"] == "alerts").await;
    assert_eq!(numbers(&node, "news"), after, "{}", node.transcript());
    assert!(node.seen("gap").is_empty(), "{}", node.transcript());

    closed(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_last_gets_the_latest_frames_then_resumes_after_them() {
    let (redis, bridge) = started().await;
    // A job that has been running before the page subscribes.
    let mut publisher = Publisher::connect(&redis.url()).await;
    for n in 1..=5 {
        publisher.publish("news", json!({"n": n}).to_string()).await;
    }
    wait_until_async(WAIT, "the job's five frames retained", || async {
        bridge.metric("bridge_history_frames").await == Some(5)
    })
    .await;
    let (mut node, _) = connected(&bridge, 400).await;
    node.send(json!({"op": "subscribe", "topics": ["news"], "options": {"last": 2}}));
    // The replayed frames follow the answer; the promise it resolves may be reported after
    // them, so the answer is awaited as a frame.
    let subscribed = node.event("frame", |f| f["type"] == "subscribed").await["value"].clone();
    assert_eq!(subscribed["topics"], json!(["news"]), "{subscribed}");
    node.event("message", |m| m["data"]["n"] == 5).await;
    assert_eq!(
        numbers(&node, "news"),
        [4, 5],
        "the newest two, oldest first"
    );

    // Cut while the job goes on: the reconnect resumes after the frames received, and
    // `last` is not asked again (4 and 5 would come twice).
    node.send(json!({"op": "drop"}));
    node.event("reconnecting", |_| true).await;
    for n in 6..=7 {
        publisher.publish("news", json!({"n": n}).to_string()).await;
    }
    node.event("open", |_| true).await;
    node.event("message", |m| m["data"]["n"] == 7).await;
    publisher.publish("news", r#"{"n":8}"#).await;
    node.event("message", |m| m["data"]["n"] == 8).await;
    assert_eq!(numbers(&node, "news"), [4, 5, 6, 7, 8]);
    assert_seq_is_n(&node, "news");
    assert!(node.seen("gap").is_empty(), "{}", node.transcript());

    closed(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_without_a_frame_yet_resumes_from_where_it_started_not_from_older_frames() {
    let (redis, bridge) = started().await;
    let mut publisher = Publisher::connect(&redis.url()).await;
    for n in 1..=3 {
        for topic in ["news", "alerts"] {
            publisher.publish(topic, json!({"n": n}).to_string()).await;
        }
    }
    bridge.wait_retained(6).await;
    let (mut node, welcome) = connected(&bridge, 200).await;
    assert_eq!(
        welcome["position"],
        json!({"epoch": welcome["epoch"], "seq": {"alerts": 3}}),
        "where the retained auto topic starts for this connection"
    );
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    assert_eq!(node.reply("subscribe").await, json!(["news"]));

    // Cut before any frame of either topic came: the resume starts where the subscription
    // and the connection did.
    node.send(json!({"op": "drop"}));
    node.event("reconnecting", |_| true).await;
    for n in 4..=5 {
        for topic in ["news", "alerts"] {
            publisher.publish(topic, json!({"n": n}).to_string()).await;
        }
    }
    // The last frame of each topic, whichever comes first.
    for _ in 0..2 {
        node.event("message", |m| m["data"]["n"] == 5).await;
    }
    node.send(json!({"op": "ping"}));
    node.reply("ping").await;
    for topic in ["news", "alerts"] {
        assert_eq!(
            numbers(&node, topic),
            [4, 5],
            "nothing of {topic} from before: {}",
            node.transcript()
        );
        assert_seq_is_n(&node, topic);
    }
    assert!(node.seen("gap").is_empty(), "{}", node.transcript());
    assert_eq!(node.seen("open").len(), 2);

    closed(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_reaches_the_application_as_an_epoch_gap() {
    let redis = RedisServer::start();
    let yaml = resume_config(&redis, pick_port());
    let mut bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let (mut node, welcome) = connected(&bridge, 200).await;
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    assert_eq!(node.reply("subscribe").await, json!(["news"]));
    let mut publisher = Publisher::connect(&redis.url()).await;
    for n in 1..=3 {
        publisher.publish("news", json!({"n": n}).to_string()).await;
        publisher
            .publish("alerts", json!({"n": n}).to_string())
            .await;
    }
    node.event("message", |m| m["topic"] == "news" && m["data"]["n"] == 3)
        .await;
    node.event("message", |m| m["topic"] == "alerts" && m["data"]["n"] == 3)
        .await;

    bridge.signal("TERM");
    bridge.wait_exit(WAIT).await;
    node.event("close", |v| v["code"] == 1001).await;
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let reopened = node.event("open", |_| true).await["value"].clone();
    assert_ne!(reopened["epoch"], welcome["epoch"], "a new process");

    // The positions were the old process's: neither the subscription nor the auto topic
    // is replayed anything, and both are named in an epoch gap.
    let mut gaps = Vec::new();
    for _ in 0..2 {
        let gap = node.event("gap", |_| true).await["value"].clone();
        gaps.push(gap);
    }
    gaps.sort_by_key(Value::to_string);
    assert_eq!(
        gaps,
        [
            json!({"reason": "epoch_changed", "topics": ["alerts"]}),
            json!({"reason": "epoch_changed", "topics": ["news"]}),
        ]
    );
    // The news gap answers the restored subscription (it came after its `subscribed`).
    let resubscribed = node
        .seen("frame")
        .iter()
        .filter(|f| f["type"] == "subscribed" && f["topics"] == json!(["news"]))
        .count();
    assert_eq!(resubscribed, 2, "{}", node.transcript());
    // Numbered from 1 by the new process: no jump reported, nothing replayed twice.
    publisher.publish("news", r#"{"n":4}"#).await;
    let next = node
        .event("message", |m| m["topic"] == "news" && m["data"]["n"] == 4)
        .await["value"]
        .clone();
    assert_eq!(next["seq"], 1);
    assert_eq!(numbers(&node, "news"), [1, 2, 3, 4]);
    assert_eq!(numbers(&node, "alerts"), [1, 2, 3]);
    assert_eq!(node.seen("gap").len(), 2, "{}", node.transcript());

    closed(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_during_a_redis_outage_is_told_of_it_when_it_resumes() {
    let (mut redis, bridge) = started().await;
    // Away long enough for the outage below to begin and end.
    let (mut node, _) = connected(&bridge, 8000).await;
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    assert_eq!(node.reply("subscribe").await, json!(["news"]));
    Publisher::connect(&redis.url())
        .await
        .publish("news", r#"{"n":1}"#)
        .await;
    node.event("message", |m| m["data"]["n"] == 1).await;
    node.send(json!({"op": "drop"}));
    node.event("reconnecting", |_| true).await;

    // Redis restarts while the bridge is frozen: message 2 reaches nobody, and takes no
    // `seq`. The `redis_reconnected` notice goes out while the client is away.
    bridge.signal("STOP");
    redis.restart();
    let unheard = Publisher::connect(&redis.url())
        .await
        .publish("news", r#"{"n":2}"#)
        .await;
    assert_eq!(unheard, 0, "published while the bridge was not subscribed");
    bridge.signal("CONT");
    bridge
        .wait_log(WAIT, |line| line["message"] == "gap notices sent")
        .await;
    Publisher::connect(&redis.url())
        .await
        .publish("news", r#"{"n":3}"#)
        .await;
    assert!(
        node.seen("open").len() == 1,
        "the client came back too early for this test: {}",
        node.transcript()
    );

    // The resume from seq 1 is answered with a gap, not with message 3 alone as if nothing
    // had been lost before it; so is the auto topic's (nothing of it was ever received, and
    // the outage may have taken some).
    let auto = node.event("gap", |_| true).await["value"].clone();
    assert_eq!(
        auto,
        json!({"reason": "history_exhausted", "topics": ["alerts"]})
    );
    let gap = node.event("gap", |_| true).await["value"].clone();
    assert_eq!(
        gap,
        json!({"reason": "history_exhausted", "topics": ["news"]})
    );
    Publisher::connect(&redis.url())
        .await
        .publish("news", r#"{"n":4}"#)
        .await;
    node.event("message", |m| m["data"]["n"] == 4).await;
    assert_eq!(numbers(&node, "news"), [1, 4]);
    assert_eq!(node.seen("gap").len(), 2, "{}", node.transcript());

    closed(node).await;
}

/// A configured welcome with `epoch: "{epoch}"` resumes the subscriptions as the `connected`
/// frame does, and the `auto` topics the client got frames of; one without it cannot, and
/// the application is told so, for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_welcome_resumes_when_it_names_the_epoch() {
    for names_epoch in [true, false] {
        let redis = RedisServer::start();
        let welcome = if names_epoch {
            r#"welcome: { type: hello, id: "{connection_id}", epoch: "{epoch}" }"#
        } else {
            r#"welcome: { type: hello, id: "{connection_id}" }"#
        };
        let config = config_with_welcome(&redis, pick_port(), welcome);
        let bridge = Bridge::start_with(&config, &[]);
        bridge.wait_ready().await;
        // Away for 0.5 s at least: long enough to publish what it misses.
        let (mut node, welcome) = connected(&bridge, 1000).await;
        assert_eq!(welcome["type"], "hello");
        assert_eq!(welcome["epoch"].is_string(), names_epoch, "{welcome}");
        node.send(json!({"op": "subscribe", "topics": ["news"]}));
        assert_eq!(node.reply("subscribe").await, json!(["news"]));
        // `news` by subscription, `alerts` (`auto`, which a configured welcome does not
        // name: the client knows it from its frames).
        let mut publisher = Publisher::connect(&redis.url()).await;
        for n in 1..=3 {
            for topic in ["news", "alerts"] {
                publisher.publish(topic, json!({"n": n}).to_string()).await;
            }
        }
        for topic in ["news", "alerts"] {
            node.event("message", |m| m["topic"] == topic && m["data"]["n"] == 3)
                .await;
        }
        node.send(json!({"op": "drop"}));
        node.event("reconnecting", |_| true).await;
        for n in 4..=6 {
            for topic in ["news", "alerts"] {
                publisher.publish(topic, json!({"n": n}).to_string()).await;
            }
        }
        let reopened = node.event("open", |_| true).await["value"].clone();
        assert_eq!(reopened["epoch"], welcome["epoch"]);
        // The subscription is back either way; what it missed follows when it resumed.
        node.event("frame", |f| f["type"] == "subscribed").await;
        // The `auto` topic's replay comes first, right after the welcome.
        if names_epoch {
            for topic in ["news", "alerts"] {
                if !numbers(&node, topic).contains(&6) {
                    node.event("message", |m| m["topic"] == topic && m["data"]["n"] == 6)
                        .await;
                }
            }
        }
        for topic in ["news", "alerts"] {
            publisher.publish(topic, r#"{"n":7}"#).await;
            node.event("message", |m| m["topic"] == topic && m["data"]["n"] == 7)
                .await;
        }
        let expected: Vec<u64> = if names_epoch {
            (1..=7).collect()
        } else {
            vec![1, 2, 3, 7]
        };
        for topic in ["news", "alerts"] {
            assert_eq!(
                numbers(&node, topic),
                expected,
                "{topic}: {}",
                node.transcript()
            );
            assert_seq_is_n(&node, topic);
        }
        let gaps: Vec<&Value> = node.seen("gap");
        let told: Vec<Value> = if names_epoch {
            vec![]
        } else {
            vec![json!({"reason": "reconnected", "topics": ["news", "alerts"]})]
        };
        assert_eq!(
            gaps,
            told.iter().collect::<Vec<_>>(),
            "{}",
            node.transcript()
        );

        node.send(json!({"op": "close"}));
        node.event("close", |v| v["reconnect"] == false).await;
        node.finish().await;
    }
}
