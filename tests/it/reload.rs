//! Live reload (docs/routing.md, "Reloads"): every trigger (an edit in place, a rename-over, a ConfigMap symlink
//! swap, an edit through a symlink, SIGHUP), validation first, the switch that neither loses
//! nor repeats a message, Redis subscriptions changed by difference on the live connection,
//! `route_removed`, limits for new connections, and keys that need a restart.
//!
//! Reloads are awaited through `bridge_config_reloads_total`, which counts a reload once it
//! is in force (subscriptions changed, notices queued).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::support::tokens::{ADMIN_KEY, SERVICE_KEY, auth_section, now, sha256_hex, sign, token};
use crate::support::{
    ADMIN_TOKEN, Bridge, ConnectError, Publisher, RedisServer, WAIT, WsClient, assert_envelope,
    config, config_with, log_field, start, wait_until, wait_until_async,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// How a test saves the routing file.
#[derive(Debug, Clone, Copy)]
enum Save {
    /// Truncated and rewritten (through the symlink when it is one).
    InPlace,
    /// Written to a temporary file in the same directory, renamed over it (editors, Ansible).
    Rename,
    /// What the kubelet does with a ConfigMap (see `configmap_swap`).
    ConfigMapSwap,
    /// Rewritten in place, then SIGHUP (`systemctl reload`).
    Hangup,
}

/// Saves `yaml` (with `{redis_url}` already replaced) as the bridge's routing file.
fn save(bridge: &Bridge, how: Save, yaml: &str, generation: usize) {
    let path = bridge.config_path();
    let dir = path.parent().expect("config dir");
    match how {
        Save::InPlace | Save::Hangup => std::fs::write(path, yaml).expect("write in place"),
        Save::Rename => {
            let temporary = dir.join(".bridge.yaml.tmp");
            std::fs::write(&temporary, yaml).expect("write temporary");
            std::fs::rename(&temporary, path).expect("rename over");
        }
        Save::ConfigMapSwap => configmap_swap(dir, yaml, generation),
    }
    if let Save::Hangup = how {
        bridge.signal("HUP");
    }
}

/// The kubelet's update of a ConfigMap volume: the data in a new timestamped folder, `..data`
/// re-pointed to it by renaming a new symlink over it, the previous folder removed. The
/// routing file is the symlink `bridge.yaml -> ..data/bridge.yaml` (made here on first use,
/// by a rename too), so the file the bridge was told about never changes itself.
fn configmap_swap(dir: &Path, yaml: &str, generation: usize) {
    let folder = format!("..2026_11_25_03_56_{generation:04}");
    std::fs::create_dir(dir.join(&folder)).expect("timestamped folder");
    std::fs::write(dir.join(&folder).join("bridge.yaml"), yaml).expect("write data");
    let previous = std::fs::read_link(dir.join("..data")).ok();
    symlink(&folder, dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    let file = dir.join("bridge.yaml");
    let is_link = std::fs::symlink_metadata(&file)
        .expect("stat bridge.yaml")
        .file_type()
        .is_symlink();
    if !is_link {
        symlink("..data/bridge.yaml", dir.join("bridge.yaml.link")).expect("link");
        std::fs::rename(dir.join("bridge.yaml.link"), &file).expect("rename link over");
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).expect("remove previous folder");
    }
}

/// The value of one series of `/metrics` (0 when absent).
async fn metric(bridge: &Bridge, series: &str) -> u64 {
    let (status, body) = bridge.get("/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const RELOADS_OK: &str = r#"bridge_config_reloads_total{result="ok"}"#;
const RELOADS_ERROR: &str = r#"bridge_config_reloads_total{result="error"}"#;

/// Waits until `series` reaches `at_least`; returns its value then.
async fn wait_metric(bridge: &Bridge, series: &str, at_least: u64) -> u64 {
    wait_until_async(WAIT, &format!("{series} >= {at_least}"), || async {
        metric(bridge, series).await >= at_least
    })
    .await;
    metric(bridge, series).await
}

/// Whether the log shows a completed reload after the `hangups`-th SIGHUP.
fn sighup_reload_completed(bridge: &Bridge, hangups: usize) -> bool {
    let messages: Vec<String> = bridge
        .log_values()
        .iter()
        .filter_map(|line| {
            log_field(line, "message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .collect();
    let Some(signal_at) = messages
        .iter()
        .enumerate()
        .filter(|(_, message)| message.starts_with("SIGHUP"))
        .nth(hangups - 1)
        .map(|(index, _)| index)
    else {
        return false;
    };
    messages[signal_at..]
        .iter()
        .any(|message| message == "reloaded")
}

/// The bridge's routing file for `routes` on this Redis.
fn routing_file(redis_url: &str, websocket: &str, routes: &str) -> String {
    config(websocket, routes).replace("{redis_url}", redis_url)
}

/// The next frame must be the `route_removed` notice for exactly `topics`.
async fn expect_route_removed(client: &mut WsClient, topics: &[&str]) {
    let notice = client.next_json().await;
    assert_eq!(
        notice,
        json!({"type": "unsubscribed", "topics": topics, "reason": "route_removed"}),
        "route_removed notice"
    );
}

// ---------------------------------------------------------------------------------------
// A hundred saves under a continuous stream
// ---------------------------------------------------------------------------------------

const NUMBERS: &str = "reload:numbers";

/// Generation `g` of the routing file. The `numbers` route, on the channel the publisher
/// uses, is in every generation, but it moves between SUBSCRIBE and PSUBSCRIBE every third
/// generation: then the two generations receive its messages through different Redis
/// subscriptions, and only a switch at an exact point of the stream delivers each message
/// once. Around it, one unrelated route is added and one removed at every save, and a
/// pattern route comes and goes every other one.
fn generation(g: usize) -> String {
    let numbers = if (g / 3).is_multiple_of(2) {
        format!("channel: {NUMBERS}")
    } else {
        r#"pattern: "reload:num*""#.to_owned()
    };
    let mut routes = format!(
        "
        - name: numbers
          {numbers}
          topic: numbers
        - name: extra-{g}
          channel: reload:extra:{g}
          topic: extra-{g}
        "
    );
    if g.is_multiple_of(2) {
        routes.push_str(
            r#"
        - name: every-other
          pattern: "reload:other:*"
          topic: "other:{1}"
            "#,
        );
    }
    routes
}

/// Publishes 1, 2, 3, … on `NUMBERS` until `stop`, then the string "end"; returns the last
/// number.
async fn publish_numbers(url: String, stop: Arc<AtomicBool>) -> u64 {
    let mut publisher = Publisher::connect(&url).await;
    let mut last = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<Vec<u8>> = (last + 1..=last + 10)
            .map(|n| n.to_string().into_bytes())
            .collect();
        publisher.publish_many(NUMBERS, &batch).await;
        last += 10;
        // Pacing, not waiting: a steady stream of ~2,000 messages a second keeps messages in
        // flight through every switch without outrunning a debug build.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.publish(NUMBERS, r#""end""#).await;
    last
}

/// Reads `numbers` envelopes until "end"; any other frame, or the connection ending, fails.
async fn read_numbers(mut client: WsClient) -> (Vec<u64>, WsClient) {
    let mut numbers = Vec::new();
    loop {
        let frame = client.recv_json(WAIT).await;
        assert_eq!(frame["type"], "numbers", "unexpected frame: {frame}");
        if frame["data"] == "end" {
            return (numbers, client);
        }
        let n = frame["data"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a number: {frame}"));
        numbers.push(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_saves_under_a_continuous_stream_lose_and_repeat_nothing() {
    let started = Instant::now();
    let websocket = "send_queue: 8192";
    let (redis, bridge) = start(websocket, &generation(0)).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = bridge.client().await;
        client.subscribe(1, &["numbers"]).await;
        readers.push(tokio::spawn(read_numbers(client)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(publish_numbers(redis.url(), stop.clone()));

    let ways = [
        Save::InPlace,
        Save::Rename,
        Save::ConfigMapSwap,
        Save::Hangup,
    ];
    let mut applied = 0u64;
    let mut hangups = 0usize;
    for g in 1..=100 {
        let how = ways[g % ways.len()];
        save(
            &bridge,
            how,
            &routing_file(&redis.url(), websocket, &generation(g)),
            g,
        );
        if let Save::Hangup = how {
            // The file watcher may apply the write before the signal arrives (a loaded
            // machine delays the signal past the debounce); the signal then reloads once
            // more, as SIGHUP always does. Either way the save is done once the reload the
            // signal asked for has completed.
            hangups += 1;
            wait_until(WAIT, "the SIGHUP reload completed", || {
                sighup_reload_completed(&bridge, hangups)
            })
            .await;
            let reloads = metric(&bridge, RELOADS_OK).await;
            assert!(
                reloads == applied + 1 || reloads == applied + 2,
                "save {g} ({how:?}) made {} reloads",
                reloads - applied
            );
            applied = reloads;
        } else {
            applied += 1;
            let reloads = wait_metric(&bridge, RELOADS_OK, applied).await;
            assert_eq!(
                reloads, applied,
                "save {g} ({how:?}) was not exactly one reload"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = publisher.await.expect("publisher");

    let expected: Vec<u64> = (1..=last).collect();
    for reader in readers {
        let (numbers, mut client) = reader.await.expect("reader");
        if numbers != expected {
            let missing: Vec<&u64> = expected
                .iter()
                .filter(|n| !numbers.contains(n))
                .take(10)
                .collect();
            let mut repeated = numbers.clone();
            repeated.sort_unstable();
            repeated.dedup();
            panic!(
                "{} numbers received, {} expected ({} distinct); first missing: {missing:?}",
                numbers.len(),
                expected.len(),
                repeated.len()
            );
        }
        // Never closed: still answering.
        client.assert_pong(2).await;
    }
    assert_eq!(metric(&bridge, RELOADS_OK).await, applied);
    assert_eq!(metric(&bridge, RELOADS_ERROR).await, 0);
    assert_eq!(
        metric(&bridge, "bridge_redis_reconnects_total").await,
        0,
        "a reload must not reconnect to Redis"
    );
    eprintln!(
        "100 saves, {last} messages × 3 clients in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Validation first
// ---------------------------------------------------------------------------------------

/// The `FILE:LINE:COLUMN:` of `text` where `needle` starts (1-based).
fn location_of(file: &Path, text: &str, needle: &str) -> String {
    let at = text.find(needle).expect("needle in text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |nl| nl + 1) + 1;
    format!("{}:{line}:{column}:", file.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_save_keeps_the_old_configuration_and_a_later_valid_one_recovers() {
    let route_a = r#"
        - name: a
          channel: inv:a
          topic: a
          delivery: auto
        "#;
    let (redis, bridge) = start("", route_a).await;
    let original = routing_file(&redis.url(), "", route_a);
    let path = bridge.config_path().to_path_buf();
    let mut client = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    // A typo: unknown key. Rejected, counted, logged and shown with file:line:column.
    let invalid = routing_file(
        &redis.url(),
        "",
        r#"
        - name: a
          channel: inv:a
          toppic: a
        "#,
    );
    let location = location_of(&path, &invalid, "toppic");
    save(&bridge, Save::Rename, &invalid, 0);
    wait_metric(&bridge, RELOADS_ERROR, 1).await;
    let stats = bridge.stats().await;
    let error = stats["config"]["last_reload_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_reload_error in {stats}"));
    assert!(
        error.contains(&location) && error.contains("toppic"),
        "last_reload_error {error:?} should point at {location}"
    );
    let logged = bridge
        .wait_log(WAIT, |line| {
            log_field(line, "error")
                .and_then(Value::as_str)
                .is_some_and(|e| e.contains(&location))
        })
        .await;
    assert_eq!(
        log_field(&logged, "level").and_then(Value::as_str),
        Some("ERROR")
    );
    assert_eq!(metric(&bridge, RELOADS_OK).await, 0);

    // The old configuration keeps delivering.
    p.publish("inv:a", r#"{"n":1}"#).await;
    assert_envelope(&client.next_json().await, "a", "a", 1, &json!({"n": 1}));

    // Back to the configuration in force: nothing to reload, and no error to show.
    save(&bridge, Save::InPlace, &original, 0);
    wait_until_async(WAIT, "last_reload_error cleared", || async {
        bridge.stats().await["config"]["last_reload_error"].is_null()
    })
    .await;
    assert_eq!(metric(&bridge, RELOADS_OK).await, 0);

    // Invalid again (a YAML syntax error this time), then fixed with a new route.
    let broken = original.replace("routes:\n", "routes:\n  - name: [unclosed\n");
    save(&bridge, Save::InPlace, &broken, 0);
    wait_metric(&bridge, RELOADS_ERROR, 2).await;
    let stats = bridge.stats().await;
    let error = stats["config"]["last_reload_error"].as_str().unwrap_or("");
    assert!(
        error.starts_with(&format!("{}:", path.display())),
        "syntax error located in the file: {stats}"
    );
    p.publish("inv:a", r#"{"n":2}"#).await;
    assert_envelope(&client.next_json().await, "a", "a", 2, &json!({"n": 2}));

    let fixed = routing_file(
        &redis.url(),
        "",
        r#"
        - name: a
          channel: inv:a
          topic: a
          delivery: auto
        - name: b
          channel: inv:b
          topic: b
          delivery: auto
        "#,
    );
    save(&bridge, Save::Rename, &fixed, 0);
    wait_metric(&bridge, RELOADS_OK, 1).await;
    let stats = bridge.stats().await;
    assert!(
        stats["config"]["last_reload_error"].is_null(),
        "a valid save clears the error: {stats}"
    );
    p.publish("inv:b", r#"{"n":3}"#).await;
    assert_envelope(&client.next_json().await, "b", "b", 1, &json!({"n": 3}));
    assert_eq!(metric(&bridge, RELOADS_ERROR).await, 2);
}

/// A save in place is a truncation, then a write; a writer descheduled in between leaves an
/// empty file for longer than the debounce. That is a save in progress, not an invalid
/// routing file: one reload, no error. A file left empty is rejected once it has settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_in_place_held_between_truncation_and_write_is_one_reload_not_an_error() {
    let route_a = r#"
        - name: a
          channel: trunc:a
          topic: a
          delivery: auto
        "#;
    let (redis, bridge) = start("", route_a).await;
    let path = bridge.config_path().to_path_buf();
    let mut client = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;
    let with_b = routing_file(
        &redis.url(),
        "",
        r#"
        - name: a
          channel: trunc:a
          topic: a
          delivery: auto
        - name: b
          channel: trunc:b
          topic: b
          delivery: auto
        "#,
    );

    let mut file = std::fs::File::create(&path).expect("truncate the routing file");
    // Three debounces with the file empty: long enough for the bridge to read it, well within
    // the time it gives a save in progress.
    tokio::time::sleep(Duration::from_millis(450)).await;
    std::io::Write::write_all(&mut file, with_b.as_bytes()).expect("write the routing file");
    drop(file);
    wait_metric(&bridge, RELOADS_OK, 1).await;
    assert_eq!(
        metric(&bridge, RELOADS_ERROR).await,
        0,
        "{:?}",
        bridge.stats().await
    );
    p.publish("trunc:b", r#"{"n":1}"#).await;
    assert_envelope(&client.next_json().await, "b", "b", 1, &json!({"n": 1}));

    // Emptied for good: rejected with the reason, the configuration in force kept.
    std::fs::File::create(&path).expect("truncate the routing file");
    wait_metric(&bridge, RELOADS_ERROR, 1).await;
    let error = bridge.stats().await["config"]["last_reload_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("routes"), "last_reload_error: {error:?}");
    p.publish("trunc:b", r#"{"n":2}"#).await;
    assert_envelope(&client.next_json().await, "b", "b", 2, &json!({"n": 2}));
    assert_eq!(metric(&bridge, RELOADS_OK).await, 1);
}

// ---------------------------------------------------------------------------------------
// Routes added and removed
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_added_and_removed_apply_to_connected_clients() {
    let route_a = r#"
        - name: a
          channel: rt:a
          topic: a
        "#;
    let both = r#"
        - name: a
          channel: rt:a
          topic: a
        - name: b
          channel: rt:b
          topic: b
        "#;
    let only_b = r#"
        - name: b
          channel: rt:b
          topic: b
        "#;
    let (redis, bridge) = start("", route_a).await;
    let mut p = Publisher::connect(&redis.url()).await;
    let mut one = bridge.client().await;
    let mut two = bridge.client().await;
    let ids = [
        one.welcome["connection_id"].clone(),
        two.welcome["connection_id"].clone(),
    ];
    one.subscribe(1, &["a"]).await;
    two.subscribe(1, &["a"]).await;
    one.send_json(&json!({"type": "subscribe", "id": 2, "topics": ["b"]}))
        .await;
    assert_eq!(one.next_json().await["code"], "unknown_topic");

    // Added: its channel delivers to the same connections, once they subscribe.
    save(
        &bridge,
        Save::Rename,
        &routing_file(&redis.url(), "", both),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 1).await;
    one.subscribe(3, &["b"]).await;
    two.subscribe(3, &["b"]).await;
    assert_eq!(p.publish("rt:b", r#"{"n":1}"#).await, 1);
    for client in [&mut one, &mut two] {
        assert_envelope(&client.next_json().await, "b", "b", 1, &json!({"n": 1}));
    }

    // Removed: a notice to its subscribers, then nothing more of it.
    save(
        &bridge,
        Save::InPlace,
        &routing_file(&redis.url(), "", only_b),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 2).await;
    for client in [&mut one, &mut two] {
        expect_route_removed(client, &["a"]).await;
    }
    assert_eq!(
        p.publish("rt:a", r#"{"n":"lost"}"#).await,
        0,
        "rt:a is unsubscribed in Redis"
    );
    p.publish("rt:b", r#"{"n":2}"#).await;
    for client in [&mut one, &mut two] {
        assert_envelope(&client.next_json().await, "b", "b", 2, &json!({"n": 2}));
        client.assert_pong(4).await;
    }
    // The topic is gone for new subscriptions too.
    one.send_json(&json!({"type": "subscribe", "id": 5, "topics": ["a"]}))
        .await;
    assert_eq!(one.next_json().await["code"], "unknown_topic");

    // Added back: the old subscribers were told it went away, so they subscribe again.
    save(
        &bridge,
        Save::Rename,
        &routing_file(&redis.url(), "", both),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 3).await;
    one.subscribe(6, &["a"]).await;
    p.publish("rt:a", r#"{"n":3}"#).await;
    // The first message on `a` since it came back: nothing of the removed route went out.
    assert_envelope(&one.next_json().await, "a", "a", 1, &json!({"n": 3}));
    p.publish("rt:b", r#"{"n":4}"#).await;
    assert_envelope(&two.next_json().await, "b", "b", 3, &json!({"n": 4}));

    // The same connections throughout.
    let stats = bridge.stats().await;
    assert_eq!(stats["connections"], 2, "{stats}");
    assert_eq!(one.welcome["connection_id"], ids[0]);
    assert_eq!(two.welcome["connection_id"], ids[1]);
}

// ---------------------------------------------------------------------------------------
// Redis subscriptions by difference
// ---------------------------------------------------------------------------------------

/// One `CLIENT LIST` entry: `id`, `addr`, `sub`, `psub`, …
fn client_fields(line: &str) -> std::collections::HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect()
}

/// The bridge's subscriber connection in `CLIENT LIST`: (id, addr, sub, psub).
async fn subscriber_connection(
    con: &mut redis::aio::MultiplexedConnection,
) -> (String, String, u64, u64) {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(con)
        .await
        .expect("CLIENT LIST");
    let subscribers: Vec<(String, String, u64, u64)> = list
        .lines()
        .map(client_fields)
        .filter(|f| f.get("flags").is_some_and(|flags| flags.contains('P')))
        .map(|f| {
            let count = |key: &str| f.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
            (
                f["id"].to_owned(),
                f["addr"].to_owned(),
                count("sub"),
                count("psub"),
            )
        })
        .collect();
    assert_eq!(
        subscribers.len(),
        1,
        "exactly one pub/sub connection expected:\n{list}"
    );
    subscribers.into_iter().next().expect("one")
}

/// `PUBSUB NUMSUB` of `channels`, in order.
async fn numsub(con: &mut redis::aio::MultiplexedConnection, channels: &[&str]) -> Vec<i64> {
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channels)
        .query_async(con)
        .await
        .expect("PUBSUB NUMSUB");
    reply.into_iter().map(|(_, n)| n).collect()
}

async fn numpat(con: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(con)
        .await
        .expect("PUBSUB NUMPAT")
}

/// Reads MONITOR until `count` commands from `addr` arrived; returns them as
/// `["subscribe", "sub:new", …]`, the switch marker channel written as `<marker>`.
async fn commands_from(
    monitor: &mut (impl futures_util::Stream<Item = String> + Unpin),
    addr: &str,
    count: usize,
) -> Vec<Vec<String>> {
    let from = format!("[0 {addr}] ");
    let mut commands = Vec::new();
    while commands.len() < count {
        let line = tokio::time::timeout(WAIT, monitor.next())
            .await
            .unwrap_or_else(|_| panic!("MONITOR: only {commands:?} from {addr}"))
            .expect("MONITOR stream");
        let Some(at) = line.find(&from) else { continue };
        let words: Vec<String> = line[at + from.len()..]
            .split_whitespace()
            .map(|word| {
                let word = word.trim_matches('"');
                if word.starts_with("__redis-ws-bridge__:switch:") {
                    "<marker>".to_owned()
                } else {
                    word.to_ascii_lowercase()
                }
            })
            .collect();
        commands.push(words);
    }
    commands
}

fn words(command: &[&str]) -> Vec<String> {
    command.iter().map(|w| w.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriptions_change_by_difference_on_the_same_connection() {
    let first = r#"
        - name: keep
          channel: sub:keep
          topic: keep
        - name: drop
          channel: sub:drop
          topic: drop
        - name: keep-pattern
          pattern: "sub:p:*"
          topic: "p:{1}"
        - name: drop-pattern
          pattern: "sub:q:*"
          topic: "q:{1}"
        "#;
    let second = r#"
        - name: keep
          channel: sub:keep
          topic: keep
        - name: new
          channel: sub:new
          topic: new
        - name: keep-pattern
          pattern: "sub:p:*"
          topic: "p:{1}"
        - name: new-pattern
          pattern: "sub:n:*"
          topic: "n:{1}"
        "#;
    let (redis, bridge) = start("", first).await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let monitor = client.get_async_monitor().await.expect("MONITOR");
    let mut monitor = Box::pin(monitor.into_on_message::<String>());

    // Channels: the routes' two, the watchdog's heartbeat channel and the presence events.
    let (id, addr, sub, psub) = subscriber_connection(&mut con).await;
    assert_eq!((sub, psub), (4, 2));

    save(
        &bridge,
        Save::Rename,
        &routing_file(&redis.url(), "", second),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 1).await;
    assert_eq!(
        numsub(&mut con, &["sub:keep", "sub:drop", "sub:new"]).await,
        [1, 0, 1]
    );
    assert_eq!(numpat(&mut con).await, 2);
    assert_eq!(
        subscriber_connection(&mut con).await,
        (id.clone(), addr.clone(), 4, 2),
        "same connection, the marker gone"
    );
    // Only the difference was sent: the new subscriptions with the switch marker, then the
    // dropped ones with it. Nothing about the kept channel and pattern.
    assert_eq!(
        commands_from(&mut monitor, &addr, 4).await,
        [
            words(&["subscribe", "sub:new", "<marker>"]),
            words(&["psubscribe", "sub:n:*"]),
            words(&["unsubscribe", "sub:drop", "<marker>"]),
            words(&["punsubscribe", "sub:q:*"]),
        ]
    );

    // A reload that changes no subscription sends nothing but the marker's.
    let renamed = second.replace("topic: keep", "topic: kept");
    save(
        &bridge,
        Save::InPlace,
        &routing_file(&redis.url(), "", &renamed),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 2).await;
    assert_eq!(
        commands_from(&mut monitor, &addr, 2).await,
        [
            words(&["subscribe", "<marker>"]),
            words(&["unsubscribe", "<marker>"]),
        ]
    );

    // And back: the dropped ones return, still on the same connection.
    save(
        &bridge,
        Save::Hangup,
        &routing_file(&redis.url(), "", first),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 3).await;
    assert_eq!(
        commands_from(&mut monitor, &addr, 4).await,
        [
            words(&["subscribe", "sub:drop", "<marker>"]),
            words(&["psubscribe", "sub:q:*"]),
            words(&["unsubscribe", "sub:new", "<marker>"]),
            words(&["punsubscribe", "sub:n:*"]),
        ]
    );
    assert_eq!(
        numsub(&mut con, &["sub:keep", "sub:drop", "sub:new"]).await,
        [1, 1, 0]
    );
    assert_eq!(numpat(&mut con).await, 2);
    assert_eq!(subscriber_connection(&mut con).await, (id, addr, 4, 2));
    assert_eq!(metric(&bridge, "bridge_redis_reconnects_total").await, 0);
}

// ---------------------------------------------------------------------------------------
// Triggers: a symlink to a file elsewhere
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_through_a_symlink_into_another_directory_is_a_reload() {
    let route_a = r#"
        - name: a
          channel: ln:a
          topic: a
          delivery: auto
        "#;
    let (redis, bridge) = start("", route_a).await;
    let mut client = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;

    // The configured path becomes a symlink to the same text in another directory: the
    // bytes are the same, so this is no reload.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let target = elsewhere.path().join("real.yaml");
    std::fs::write(&target, routing_file(&redis.url(), "", route_a)).expect("write target");
    let dir = bridge.config_path().parent().expect("dir").to_path_buf();
    symlink(&target, dir.join("link.tmp")).expect("symlink");
    std::fs::rename(dir.join("link.tmp"), bridge.config_path()).expect("rename link over");

    // An edit of the target, in place, in a directory the configured path does not name.
    let with_b = r#"
        - name: a
          channel: ln:a
          topic: a
          delivery: auto
        - name: b
          channel: ln:b
          topic: b
          delivery: auto
        "#;
    std::fs::write(&target, routing_file(&redis.url(), "", with_b)).expect("edit target");
    assert_eq!(wait_metric(&bridge, RELOADS_OK, 1).await, 1);
    p.publish("ln:b", r#"{"n":1}"#).await;
    assert_envelope(&client.next_json().await, "b", "b", 1, &json!({"n": 1}));
}

// ---------------------------------------------------------------------------------------
// Limits and keys that need a restart
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_max_connections_applies_to_new_connections_only() {
    let route = r#"
        - name: news
          channel: lim:news
          topic: news
          delivery: auto
        "#;
    let (redis, bridge) = start("max_connections: 10", route).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(bridge.client().await);
    }
    save(
        &bridge,
        Save::Rename,
        &routing_file(&redis.url(), "max_connections: 2", route),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 1).await;
    match WsClient::try_connect(&bridge.ws_url("/ws"), &[]).await {
        Err(ConnectError::Status(503, _)) => {}
        Err(other) => panic!("expected 503 over the new limit, got {other:?}"),
        Ok(_) => panic!("expected 503 over the new limit, got a connection"),
    }
    // The three already connected stay, and keep receiving.
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("lim:news", r#"{"n":1}"#).await;
    for client in &mut clients {
        assert_envelope(
            &client.next_json().await,
            "news",
            "news",
            1,
            &json!({"n": 1}),
        );
    }

    // Raised again: a new connection is admitted.
    save(
        &bridge,
        Save::InPlace,
        &routing_file(&redis.url(), "max_connections: 5", route),
        0,
    );
    wait_metric(&bridge, RELOADS_OK, 2).await;
    let mut fourth = bridge.client().await;
    p.publish("lim:news", r#"{"n":2}"#).await;
    assert_envelope(
        &fourth.next_json().await,
        "news",
        "news",
        2,
        &json!({"n": 2}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_websocket_path_changes_are_logged_as_needing_a_restart() {
    let route_a = r#"
        - name: a
          channel: rs:a
          topic: a
          delivery: auto
        "#;
    let (redis, bridge) = start("", route_a).await;
    let changed = routing_file(
        &redis.url(),
        "",
        r#"
        - name: a
          channel: rs:a
          topic: a
          delivery: auto
        - name: b
          channel: rs:b
          topic: b
          delivery: auto
        "#,
    )
    .replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1")
    .replace("  path: /ws\n", "  path: /live\n");
    save(&bridge, Save::Rename, &changed, 0);
    wait_metric(&bridge, RELOADS_OK, 1).await;
    for key in ["`listen`", "`websocket.path`"] {
        let line = bridge
            .wait_log(WAIT, |line| {
                log_field(line, "message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.starts_with(key) && m.contains("next restart"))
            })
            .await;
        assert_eq!(
            log_field(&line, "level").and_then(Value::as_str),
            Some("WARN")
        );
    }
    // Still served where it was; the rest of the file is in force.
    let mut client = bridge.client().await;
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("rs:b", r#"{"n":1}"#).await;
    assert_envelope(&client.next_json().await, "b", "b", 1, &json!({"n": 1}));
    let (status, _) = bridge.get("/live").await;
    assert_eq!(status, 404, "the new path takes effect at the next restart");
}

// ---------------------------------------------------------------------------------------
// Audiences and keys
// ---------------------------------------------------------------------------------------

/// Connects with `?token=TOKEN` and reads the welcome frame.
async fn connect_with_token(bridge: &Bridge, token: &str) -> WsClient {
    let mut client = WsClient::connect(&bridge.ws_url(&format!("/ws?token={token}")), &[]).await;
    client.welcome = client.recv_json(WAIT).await;
    assert_eq!(client.welcome["type"], "connected", "{}", client.welcome);
    client
}

/// `auth` (top-level YAML) and the harness's static admin token, for `config_with`.
fn with_admin(auth: &str) -> String {
    format!("{auth}admin:\n  token: {ADMIN_TOKEN}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_audience_applies_from_the_next_message() {
    let routes = |audience: &str| {
        format!(
            r#"
        - name: news
          channel: au:news
          topic: news
          audience: {audience}
        - name: marker
          channel: au:marker
          delivery: auto
        "#
        )
    };
    let sections = with_admin(&auth_section("optional", "", ""));
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config_with("", &sections, &routes("all")));
    bridge.wait_ready().await;
    let file = |audience: &str| {
        config_with("", &sections, &routes(audience)).replace("{redis_url}", &redis.url())
    };
    let mut alice = connect_with_token(&bridge, &token("alice", &["user"], json!({}))).await;
    let mut bob = connect_with_token(&bridge, &token("bob", &["user"], json!({}))).await;
    alice.subscribe(1, &["news"]).await;
    bob.subscribe(1, &["news"]).await;
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("au:news", r#"{"n":1}"#).await;
    for client in [&mut alice, &mut bob] {
        assert_envelope(
            &client.next_json().await,
            "news",
            "news",
            1,
            &json!({"n": 1}),
        );
    }

    save(&bridge, Save::Rename, &file(r#"{ user: alice }"#), 0);
    wait_metric(&bridge, RELOADS_OK, 1).await;
    p.publish("au:news", r#"{"n":2}"#).await;
    p.publish("au:marker", r#"{"m":1}"#).await;
    assert_envelope(
        &alice.next_json().await,
        "news",
        "news",
        2,
        &json!({"n": 2}),
    );
    for client in [&mut alice, &mut bob] {
        // For bob the marker comes first: the news frame was never queued to him.
        assert_envelope(
            &client.next_json().await,
            "marker",
            "marker",
            1,
            &json!({"m": 1}),
        );
    }

    // Loosened again: bob's subscription was kept, and delivers again.
    save(&bridge, Save::InPlace, &file("authenticated"), 0);
    wait_metric(&bridge, RELOADS_OK, 2).await;
    p.publish("au:news", r#"{"n":3}"#).await;
    for client in [&mut alice, &mut bob] {
        assert_envelope(
            &client.next_json().await,
            "news",
            "news",
            3,
            &json!({"n": 3}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_is_a_reload_of_its_own() {
    const FIRST: &[u8] = b"the-first-secret-of-the-reload-test-48-bytes!!!!";
    const SECOND: &[u8] = b"the-second-secret-of-the-reload-test-48-bytes!!!";
    let keys = tempfile::tempdir().expect("temp dir");
    let secret_file = keys.path().join("jwt.secret");
    // With a trailing newline, as `echo` and editors write it.
    std::fs::write(&secret_file, [FIRST, b"\n"].concat()).expect("write secret");
    let sections = with_admin(&format!(
        "auth:\n  mode: required\n  jwt:\n    algorithms: [HS256]\n    secret_file: {}\n",
        secret_file.display()
    ));
    let route = r#"
        - name: news
          channel: sf:news
          topic: news
          delivery: auto
        "#;
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config_with("", &sections, route));
    bridge.wait_ready().await;
    let signed = |secret: &[u8]| {
        let claims = json!({"sub": "alice", "exp": now() + 600});
        sign(Algorithm::HS256, &EncodingKey::from_secret(secret), &claims)
    };
    let mut before = connect_with_token(&bridge, &signed(FIRST)).await;

    // Rotated the way a Secret volume or a deploy tool does it: renamed over.
    let temporary = keys.path().join(".jwt.secret.new");
    std::fs::write(&temporary, [SECOND, b"\n"].concat()).expect("write new secret");
    std::fs::rename(&temporary, &secret_file).expect("rename over the secret");
    assert_eq!(wait_metric(&bridge, RELOADS_OK, 1).await, 1);

    match WsClient::try_connect(&bridge.ws_url(&format!("/ws?token={}", signed(FIRST))), &[]).await
    {
        Err(ConnectError::Status(401, _)) => {}
        Err(other) => panic!("a token of the old secret: expected 401, got {other:?}"),
        Ok(_) => panic!("a token of the old secret was accepted after the rotation"),
    }
    let mut after = connect_with_token(&bridge, &signed(SECOND)).await;
    // The connection made with the old secret was closed by the reload: a rotated secret
    // revokes what it signed, open connections included.
    assert_eq!(
        before.expect_close(WAIT).await,
        (1008, "credential revoked".to_owned())
    );
    assert_eq!(metric(&bridge, "bridge_connections_revoked_total").await, 1);
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("sf:news", r#"{"n":1}"#).await;
    assert_envelope(
        &after.next_json().await,
        "news",
        "news",
        1,
        &json!({"n": 1}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_connections_whose_credential_no_longer_verifies() {
    let route = r#"
        - name: news
          channel: rv:news
          topic: news
          delivery: auto
        "#;
    let redis = RedisServer::start();
    let file = |auth: &str| config_with("", &with_admin(auth), route);
    let bridge = Bridge::start(&redis, &file(&auth_section("optional", "", "")));
    bridge.wait_ready().await;
    let save_auth = |auth: &str, reloads: u64| {
        let yaml = file(auth).replace("{redis_url}", &redis.url());
        save(&bridge, Save::Rename, &yaml, 0);
        wait_metric(&bridge, RELOADS_OK, reloads)
    };
    let connect_key = |key: &'static str| {
        let url = bridge.ws_url("/ws");
        async move {
            let mut c = WsClient::connect(&url, &[("X-API-Key", key)]).await;
            c.welcome = c.next_json().await;
            c
        }
    };
    let mut service = connect_key(SERVICE_KEY).await;
    let mut robot = connect_key(ADMIN_KEY).await;
    let mut alice = connect_with_token(&bridge, &token("alice", &["user"], json!({}))).await;
    let mut anonymous = bridge.client().await;

    // The service key's line removed, as the example file says to revoke a key.
    let without_service = auth_section("optional", "", "").replace(
        &format!(
            "    - {{ sha256: {}, user: svc, roles: [service] }}\n",
            sha256_hex(SERVICE_KEY)
        ),
        "",
    );
    assert!(!without_service.contains(&sha256_hex(SERVICE_KEY)));
    save_auth(&without_service, 1).await;
    assert_eq!(
        service.expect_close(WAIT).await,
        (1008, "credential revoked".to_owned())
    );
    match WsClient::try_connect(&bridge.ws_url("/ws"), &[("X-API-Key", SERVICE_KEY)]).await {
        Err(ConnectError::Status(401, _)) => {}
        other => panic!("the removed key: expected 401, got {:?}", other.map(|_| ())),
    }

    // `required` now: the anonymous connection goes too; the others still verify.
    save_auth(
        &without_service.replace("mode: optional", "mode: required"),
        2,
    )
    .await;
    assert_eq!(
        anonymous.expect_close(WAIT).await,
        (1008, "credential revoked".to_owned())
    );
    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("rv:news", r#"{"n":1}"#).await;
    for client in [&mut robot, &mut alice] {
        assert_envelope(
            &client.next_json().await,
            "news",
            "news",
            1,
            &json!({"n": 1}),
        );
    }
    assert_eq!(metric(&bridge, "bridge_connections_revoked_total").await, 2);
    drop((service, anonymous));
    wait_until_async(WAIT, "only the two valid connections left", || async {
        bridge.stats().await["connections"] == 2
    })
    .await;
}
