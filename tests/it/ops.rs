//! Running it in production: the systemd notification protocol on a socket the test owns,
//! `/metrics` read by the Prometheus client library's own parser, and the client address
//! behind a trusted proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::UnixDatagram;

use crate::support::{Bridge, Publisher, RedisServer, WAIT, WsClient, config, http_get, log_field};

// ---------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------

/// The service manager's end of `NOTIFY_SOCKET`: a Unix datagram socket in a temp dir.
struct NotifySocket {
    /// Holds the socket file.
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir for the notify socket");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    fn env(&self) -> String {
        self.path.to_str().expect("UTF-8 temp path").to_owned()
    }

    /// The next datagram, or `None` when `timeout` passes first.
    async fn next(&self, timeout: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(timeout, self.socket.recv(&mut buf))
            .await
            .ok()?
            .expect("recv on the notify socket");
        Some(String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8"))
    }

    /// Every datagram already received, without waiting.
    fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// Waits for a datagram that has the line `line`; returns it and those before it.
    async fn expect(&self, line: &str) -> (String, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(message) if message.lines().any(|l| l == line) => return (message, before),
                Some(message) => before.push(message),
                None => panic!("no `{line}` notification within {WAIT:?}; got {before:?}"),
            }
        }
    }
}

fn has_line(messages: &[String], line: &str) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == line))
}

const JOBS_ROUTE: &str = r#"
    - name: jobs
      channel: test:jobs
      topic: jobs
      delivery: auto
      format: raw
    "#;

async fn wait_message(bridge: &Bridge, message: &str) -> Value {
    bridge
        .wait_log(WAIT, |v| {
            log_field(v, "message").and_then(Value::as_str) == Some(message)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_subscribed_then_reloading_ready_and_stopping() {
    let mut redis = RedisServer::start();
    redis.kill();
    let notify = NotifySocket::bind();
    let yaml = config("", JOBS_ROUTE).replace("{redis_url}", &redis.url());
    let mut bridge = Bridge::start_with(&yaml, &[("NOTIFY_SOCKET", &notify.env())]);

    // Listening, Redis down: told why it is starting, never READY=1.
    wait_message(&bridge, "redis unavailable").await;
    let (status, _) = notify.expect("STATUS=starting: subscribing to redis").await;
    assert!(!status.contains("READY=1"), "{status}");
    assert_eq!(bridge.get("/readyz").await.0, 503);
    let early = notify.drain();
    assert!(
        !has_line(&early, "READY=1"),
        "READY=1 before Redis answered: {early:?}"
    );
    assert!(
        early
            .iter()
            .all(|m| !m.contains("STATUS=redis unavailable")),
        "the starting status stays until the first READY=1: {early:?}"
    );

    // Redis comes: READY=1, and by then the bridge is subscribed.
    redis.restart();
    let (ready, _) = notify.expect("READY=1").await;
    assert!(
        ready
            .lines()
            .any(|l| l == "STATUS=serving: redis subscribed"),
        "{ready}"
    );
    assert_eq!(
        bridge.get("/readyz").await.0,
        200,
        "READY=1 came before the subscription"
    );
    wait_message(&bridge, "redis subscribed").await;

    // A later outage is told in the status line only: the unit stays active.
    redis.kill();
    notify
        .expect("STATUS=redis unavailable: reconnecting; connections stay open")
        .await;
    redis.restart();
    let (back, _) = notify.expect("STATUS=serving: redis subscribed").await;
    assert!(!back.contains("READY=1"), "{back}");

    // SIGHUP: RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload wants, then READY=1.
    bridge.signal("HUP");
    let (reloading, _) = notify.expect("RELOADING=1").await;
    let usec: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0, "{reloading}");
    notify.expect("READY=1").await;
    wait_message(&bridge, "reloaded").await;

    // A rejected file is still a finished reload: READY=1 again, the old routes serving.
    std::fs::write(bridge.config_path(), "routes: [oops\n").expect("write a broken file");
    bridge.signal("HUP");
    notify.expect("RELOADING=1").await;
    notify.expect("READY=1").await;
    assert_eq!(bridge.get("/readyz").await.0, 200);

    bridge.signal("TERM");
    notify.expect("STOPPING=1").await;
    let status = bridge.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_kept_at_half_its_period() {
    let redis = RedisServer::start();
    let notify = NotifySocket::bind();
    let yaml = config("", JOBS_ROUTE).replace("{redis_url}", &redis.url());
    // 400 ms: a ping every 200 ms.
    let bridge = Bridge::start_with(
        &yaml,
        &[
            ("NOTIFY_SOCKET", &notify.env()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let (first, _) = notify.expect("WATCHDOG=1").await;
    let started = Instant::now();
    assert!(!first.contains("READY=1"), "{first}");
    notify.expect("WATCHDOG=1").await;
    notify.expect("WATCHDOG=1").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(350),
        "two more pings came after {elapsed:?}: faster than every 200 ms"
    );
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_unless_systemd_asked_for_them() {
    let redis = RedisServer::start();
    let notify = NotifySocket::bind();
    let yaml = config("", JOBS_ROUTE).replace("{redis_url}", &redis.url());
    let bridge = Bridge::start_with(&yaml, &[("NOTIFY_SOCKET", &notify.env())]);
    notify.expect("READY=1").await;
    // A reload round trip is a marker: anything sent before its READY=1 has arrived.
    bridge.signal("HUP");
    let (_, before) = notify.expect("RELOADING=1").await;
    notify.expect("READY=1").await;
    assert!(!has_line(&before, "WATCHDOG=1"), "{before:?}");
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

/// The Python interpreter of the venv that scripts/test.sh makes, with `prometheus_client`.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("BRIDGE_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh creates it (python3 -m venv .venv; pip install prometheus-client)",
        python.display()
    );
    python
}

/// Parses the exposition with `prometheus_client`'s OpenMetrics parser (strict: it refuses what
/// the format does not allow) and prints every family as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    })
print(json.dumps(families))
"#;

/// `/metrics` as `prometheus_client` reads it.
struct Scrape {
    /// Family name → type.
    types: BTreeMap<String, String>,
    /// `name{label="value",...}` (labels sorted) → value.
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    async fn take(bridge: &Bridge) -> Scrape {
        let (status, text) = bridge.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        let families = tokio::task::spawn_blocking(move || parse_exposition(&text))
            .await
            .expect("parser thread");
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for family in families.as_array().expect("a list of families") {
            let name = family["name"].as_str().expect("family name").to_owned();
            types.insert(name, family["type"].as_str().expect("type").to_owned());
            for sample in family["samples"].as_array().expect("samples") {
                let labels = sample["labels"].as_object().expect("labels");
                let mut key = sample["name"].as_str().expect("sample name").to_owned();
                if !labels.is_empty() {
                    let pairs: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                        .collect();
                    key = format!("{key}{{{}}}", pairs.join(","));
                }
                samples.insert(key, sample["value"].as_f64().expect("value"));
            }
        }
        Scrape { types, samples }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample `{key}` in {:#?}", self.samples.keys()))
    }

    /// The label values of `label` on the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let prefix = format!("{name}{{{label}=\"");
        self.samples
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest[..rest.find('"').unwrap_or(0)].to_owned())
            .collect()
    }
}

fn parse_exposition(text: &str) -> Value {
    use std::io::Write as _;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(PARSE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "prometheus_client refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the parser")
}

/// Polls `/metrics` until `cond` holds for a scrape; returns that scrape.
async fn wait_scrape(bridge: &Bridge, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = Scrape::take(bridge).await;
        if cond(&scrape) {
            return scrape;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out waiting for {what}; samples: {:#?}",
                scrape.samples
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const METRICS_ROUTES: &str = r#"
    - name: flood
      channel: test:flood
      topic: flood
      delivery: auto
      format: raw
    - name: needs-user
      channel: test:users
      topic: "user:{payload.user}"
      delivery: auto
    "#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_every_counter_moves() {
    let mut redis = RedisServer::start();
    let yaml = config("send_queue: 4\nslow_client: drop_oldest", METRICS_ROUTES);
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;

    let before = Scrape::take(&bridge).await;
    // README.md's table of metrics, with the types a Prometheus server expects (the parser names counter
    // families without their `_total`).
    for (family, kind) in [
        ("bridge_connections", "gauge"),
        ("bridge_connections_max", "gauge"),
        ("bridge_connections_accepted", "counter"),
        ("bridge_connections_rejected", "counter"),
        ("bridge_redis_messages", "counter"),
        ("bridge_messages_delivered", "counter"),
        ("bridge_messages_dropped", "counter"),
        ("bridge_messages_unroutable", "counter"),
        ("bridge_slow_client_disconnects", "counter"),
        ("bridge_redis_connected", "gauge"),
        ("bridge_redis_reconnects", "counter"),
        ("bridge_config_reloads", "counter"),
        ("bridge_delivery_seconds", "histogram"),
        ("bridge_history_frames", "gauge"),
        ("bridge_history_bytes", "gauge"),
        ("bridge_history_replayed_frames", "counter"),
        ("bridge_history_gaps", "counter"),
        ("bridge_messages_conflated", "counter"),
        ("process_max_fds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "family {family} in {:#?}",
            before.types
        );
    }
    // Bounded labels: the configured route names and fixed reasons, nothing from traffic.
    assert_eq!(
        before.label_values("bridge_redis_messages_total", "route"),
        ["flood", "needs-user"]
    );
    assert_eq!(
        before.label_values("bridge_messages_dropped_total", "reason"),
        ["closing", "queue_full", "slow_client"]
    );
    assert_eq!(
        before.label_values("bridge_history_gaps_total", "reason"),
        ["epoch_changed", "history_exhausted"]
    );
    assert_eq!(before.get("bridge_redis_connected"), 1.0);
    assert_eq!(before.get("bridge_connections"), 0.0);
    assert_eq!(
        before.get("bridge_connections_max"),
        10_000.0,
        "the default"
    );
    let buckets: Vec<f64> = before
        .label_values("bridge_delivery_seconds_bucket", "le")
        .iter()
        .filter(|le| *le != "+Inf")
        .map(|le| le.parse().expect("numeric le"))
        .collect();
    assert!(
        buckets.iter().any(|b| *b <= 0.0001) && buckets.iter().any(|b| *b >= 1.0),
        "buckets from sub-millisecond to seconds: {buckets:?}"
    );

    // Connections, a refused upgrade, messages, an unroutable one.
    let mut reader = bridge.client().await;
    let stalled = WsClient::connect_small_buffer(&bridge.ws_url("/ws"), bridge.addr(), 4096).await;
    let (status, _) = http_get(bridge.addr(), "/ws", &[]).await;
    assert_eq!(status, 400, "a GET without the upgrade headers");
    let mut publisher = Publisher::connect(&redis.url()).await;
    publisher.publish("test:users", r#"{"no_user":1}"#).await;
    publisher.publish("test:flood", "one").await;
    assert_eq!(reader.recv_text().await, "one");
    let scrape = wait_scrape(&bridge, "connections, messages and delivery times", |s| {
        // The dispatcher adds to `delivered` once the message is fanned out to both
        // connections, which may be after the reader got its frame.
        s.get("bridge_connections") == 2.0
            && s.get("bridge_delivery_seconds_count") >= 1.0
            && s.get("bridge_messages_delivered_total{route=\"flood\"}") == 2.0
    })
    .await;
    assert_eq!(
        scrape.get("bridge_connections_accepted_total"),
        before.get("bridge_connections_accepted_total") + 2.0
    );
    assert_eq!(
        scrape.get("bridge_connections_rejected_total{reason=\"bad_request\"}"),
        1.0
    );
    assert_eq!(
        scrape.get("bridge_redis_messages_total{route=\"needs-user\"}"),
        1.0
    );
    assert_eq!(
        scrape.get("bridge_messages_unroutable_total{route=\"needs-user\"}"),
        1.0
    );
    assert_eq!(
        scrape.get("bridge_redis_messages_total{route=\"flood\"}"),
        1.0
    );

    // Drops: a client that never reads, under drop_oldest with a queue of 4, once the
    // socket buffers are full. Published in batches until the counter moves (16 MiB at most).
    reader.close().await;
    let payload = "p".repeat(4096);
    let mut drops = 0.0;
    for _ in 0..64 {
        let batch: Vec<Vec<u8>> = (0..64).map(|_| payload.clone().into_bytes()).collect();
        publisher.publish_many("test:flood", &batch).await;
        drops = Scrape::take(&bridge)
            .await
            .get("bridge_messages_dropped_total{reason=\"queue_full\"}");
        if drops > 0.0 {
            break;
        }
    }
    assert!(drops > 0.0, "no frame dropped for the stalled client");
    drop(stalled);

    // Reloads, good and bad; the limit in force follows a good one.
    let smaller = config(
        "send_queue: 4\nslow_client: drop_oldest\nmax_connections: 50",
        METRICS_ROUTES,
    );
    std::fs::write(
        bridge.config_path(),
        smaller.replace("{redis_url}", &redis.url()),
    )
    .expect("rewrite the file");
    bridge.signal("HUP");
    wait_scrape(&bridge, "a successful reload", |s| {
        s.get("bridge_config_reloads_total{result=\"ok\"}") >= 1.0
            && s.get("bridge_connections_max") == 50.0
    })
    .await;
    std::fs::write(bridge.config_path(), "routes: [oops\n").expect("break the file");
    bridge.signal("HUP");
    wait_scrape(&bridge, "a rejected reload", |s| {
        s.get("bridge_config_reloads_total{result=\"error\"}") >= 1.0
    })
    .await;

    // Redis goes away and comes back.
    redis.kill();
    wait_scrape(&bridge, "redis_connected 0", |s| {
        s.get("bridge_redis_connected") == 0.0
    })
    .await;
    redis.restart();
    let after = wait_scrape(&bridge, "a reconnect", |s| {
        s.get("bridge_redis_connected") == 1.0 && s.get("bridge_redis_reconnects_total") >= 1.0
    })
    .await;
    assert!(
        after.get("bridge_delivery_seconds_count") >= scrape.get("bridge_delivery_seconds_count")
    );
    assert_eq!(
        after.get("bridge_delivery_seconds_bucket{le=\"+Inf\"}"),
        after.get("bridge_delivery_seconds_count")
    );
}

// ---------------------------------------------------------------------------------------
// trusted_proxies
// ---------------------------------------------------------------------------------------

/// The `peer` of the first `connection open` log line.
async fn logged_peer(bridge: &Bridge) -> String {
    let line = wait_message(bridge, "connection open").await;
    log_field(&line, "peer")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no peer in {line}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let redis = RedisServer::start();
    let headers = [("X-Forwarded-For", "6.6.6.6, 198.51.100.7")];

    // The test's connection comes from 127.0.0.1: trusted, so the right-most forwarded hop
    // that is not a proxy is the client (6.6.6.6 was made up by whoever wrote the header).
    let trusted = format!(
        "trusted_proxies: [127.0.0.1, \"10.0.0.0/8\"]\n{}",
        config("", JOBS_ROUTE)
    );
    let bridge = Bridge::start(&redis, &trusted);
    let client = WsClient::connect(&bridge.ws_url("/ws"), &headers).await;
    assert_eq!(logged_peer(&bridge).await, "198.51.100.7");
    drop(client);
    let closed = wait_message(&bridge, "connection closed").await;
    assert_eq!(
        log_field(&closed, "peer"),
        Some(&json!("198.51.100.7")),
        "{closed}"
    );
    drop(bridge);

    // Not trusted: the header is ignored, the TCP peer is logged with its port.
    let untrusted = format!(
        "trusted_proxies: [\"10.0.0.0/8\"]\n{}",
        config("", JOBS_ROUTE)
    );
    let bridge = Bridge::start(&redis, &untrusted);
    let client = WsClient::connect(&bridge.ws_url("/ws"), &headers).await;
    let peer = logged_peer(&bridge).await;
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    drop(client);
}

// ---------------------------------------------------------------------------------------
// Logs under journald
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_text_lines_carry_a_priority_and_no_timestamp() {
    use std::io::BufRead as _;

    let mut redis = RedisServer::start();
    redis.kill();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bridge.yaml");
    std::fs::write(
        &path,
        format!(
            "instance: ws-j\n{}",
            config("", JOBS_ROUTE).replace("{redis_url}", &redis.url())
        ),
    )
    .expect("write config");
    // What systemd sets for a service whose stderr goes to the journal.
    let mut child = Command::new(crate::support::BIN)
        .args(["run", "--log-format", "text", "--config"])
        .arg(&path)
        .env("JOURNAL_STREAM", "8:12345")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the daemon");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    // The listener and the Redis task start side by side: either line may come first.
    while !["redis unavailable", " listening "]
        .iter()
        .all(|wanted| seen.iter().any(|l: &String| l.contains(wanted)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let listening = seen
        .iter()
        .find(|l| l.contains(" listening "))
        .unwrap_or_else(|| panic!("no listening line in {seen:#?}"));
    assert!(listening.starts_with("<6> INFO "), "{listening}");
    let unavailable = seen
        .iter()
        .find(|l| l.contains("redis unavailable"))
        .unwrap_or_else(|| panic!("no redis unavailable line in {seen:#?}"));
    assert!(unavailable.starts_with("<4> WARN "), "{unavailable}");
    for line in &seen {
        // Several bridges may share one journal: each line says which one wrote it.
        assert!(line.ends_with(" instance=ws-j"), "{line}");
        assert!(
            !line.contains('\u{1b}'),
            "no colours for the journal: {line:?}"
        );
        // A timestamp would start `2026-11-25T...` right after the priority.
        assert!(
            !line[3..]
                .trim_start()
                .starts_with(|c: char| c.is_ascii_digit()),
            "no timestamp for the journal: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Secrets from systemd credentials
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_secret_is_read_from_the_credentials_directory() {
    use crate::support::tokens::{SECRET, now, sign, token};

    // What LoadCredential=jwt.secret:… gives the service: a directory named in
    // CREDENTIALS_DIRECTORY, holding the file.
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("jwt.secret"), format!("{SECRET}\n"))
        .expect("write the credential");
    let redis = RedisServer::start();
    let yaml = format!(
        "auth:\n  mode: required\n  jwt:\n    algorithms: [HS256]\n    \
         secret_file: ${{CREDENTIALS_DIRECTORY}}/jwt.secret\n{}",
        config("", JOBS_ROUTE).replace("{redis_url}", &redis.url())
    );
    let credentials_dir = credentials.path().to_str().expect("UTF-8 path");
    let bridge = Bridge::start_with(&yaml, &[("CREDENTIALS_DIRECTORY", credentials_dir)]);
    bridge.wait_ready().await;

    let url = format!("/ws?token={}", token("u7", &["user"], json!({})));
    let client = bridge.client_at(&url).await;
    assert_eq!(client.welcome["user"], "u7", "{}", client.welcome);

    let forged = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-in-the-credential-file!!"),
        &json!({"sub": "u7", "exp": now() + 600}),
    );
    match WsClient::try_connect(&bridge.ws_url(&format!("/ws?token={forged}")), &[]).await {
        Err(crate::support::ConnectError::Status(status, _)) => assert_eq!(status, 401),
        Err(other) => panic!("expected 401, got {other:?}"),
        Ok(_) => panic!("a token signed with another secret was accepted"),
    }
}

// ---------------------------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_wherever_get_is_with_the_same_headers_and_no_body() {
    use crate::support::{ADMIN_TOKEN, http_get_response, http_head_response, http_post};

    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config("", JOBS_ROUTE));
    bridge.wait_ready().await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    for (path, headers) in [
        ("/", &[][..]),
        ("/console.js", &[][..]),
        ("/console.css", &[][..]),
        ("/client.js", &[][..]),
        ("/healthz", &[][..]),
        ("/readyz", &[][..]),
        ("/metrics", &[][..]),
        ("/ws/stats", &[("Authorization", admin.as_str())][..]),
        // Refusals too: HEAD learns what GET would be told.
        ("/ws/stats", &[][..]),
        ("/no-such-page", &[][..]),
    ] {
        let get = http_get_response(bridge.addr(), path, headers).await;
        let head = http_head_response(bridge.addr(), path, headers).await;
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(head.body, "", "HEAD {path} sent a body");
        for name in ["content-type", "etag", "cache-control"] {
            if get.has_header(name) {
                assert_eq!(head.header(name), get.header(name), "HEAD {path}: {name}");
            }
        }
        // The length of what GET sends (/metrics and /ws/stats change between two requests).
        if !["/metrics", "/ws/stats"].contains(&path) && get.has_header("content-length") {
            assert_eq!(
                head.header("content-length"),
                get.body.len().to_string(),
                "HEAD {path}: content-length"
            );
        }
    }

    // HEAD never upgrades, even with the handshake's headers: RFC 6455 upgrades GET only.
    let handshake = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let head = http_head_response(bridge.addr(), "/ws", &handshake).await;
    assert_eq!(head.status, 400, "{head:?}");
    let (_, metrics) = bridge.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "bridge_connections 0"),
        "{metrics}"
    );

    // Other methods are still refused where only GET is served.
    let (status, _) = http_post(bridge.addr(), "/healthz", &[], "{}").await;
    assert_eq!(status, 405);
}
