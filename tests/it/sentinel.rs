//! Redis Sentinel: three real sentinels (`redis-server --sentinel`), a master and a replica.
//! The bridge finds the master through the sentinels and follows a failover (SENTINEL
//! FAILOVER, then the new master killed with SIGKILL) without a restart, under a steady
//! publish load from a publisher that follows the failover too: what the client got twice
//! must be nothing, and what it lost must lie inside a `gap`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{Value, json};

use crate::redis_tls::Certificates;
use crate::support::{
    Bridge, JOB_ROUTE, RedisServer, WAIT, config, log_field, pick_port, publish, redis_ping,
    wait_until, wait_until_async,
};

const MASTER: &str = "mymaster";

/// How soon after the sentinels name a new master the bridge has left the old one.
const SWITCH_NOTICED: Duration = Duration::from_secs(3);

/// Three sentinels watching one master; killed on drop.
struct Sentinels {
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    /// The TLS ports of sentinels started with certificates.
    tls_ports: Vec<u16>,
    children: Vec<Child>,
}

impl Sentinels {
    fn start(master_port: u16) -> Sentinels {
        Sentinels::start_with(master_port, None)
    }

    /// With `tls`, each sentinel also listens on a TLS port (the plain one stays, for the
    /// tests' own questions) and speaks TLS to the master, the replicas and the other
    /// sentinels (`tls-replication yes`): `master_port` is then the master's TLS port.
    fn start_with(master_port: u16, tls: Option<&Certificates>) -> Sentinels {
        let dir = tempfile::tempdir().expect("temp dir for the sentinels");
        let mut ports = Vec::new();
        let mut tls_ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            let port = pick_port();
            let file = dir.path().join(format!("sentinel-{port}.conf"));
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir.path().display(),
                dir.path().join(format!("sentinel-{port}.log")).display()
            );
            if let Some(certificates) = tls {
                let tls_port = pick_port();
                conf.push_str(&format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    certificates.path("server.pem").display(),
                    certificates.path("server.key").display(),
                    certificates.path("ca.pem").display()
                ));
                tls_ports.push(tls_port);
            }
            std::fs::write(&file, conf).expect("write the sentinel's configuration");
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server --sentinel");
            children.push(child);
            ports.push(port);
        }
        let deadline = Instant::now() + WAIT;
        while !ports.iter().all(|port| redis_ping(*port)) {
            assert!(Instant::now() < deadline, "the sentinels did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinels {
            _dir: dir,
            ports,
            tls_ports,
            children,
        }
    }

    /// Kills sentinel `index` with SIGKILL.
    fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    async fn ask(&self, index: usize, command: &[&str]) -> redis::Value {
        self.try_ask(index, command)
            .await
            .unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    async fn try_ask(&self, index: usize, command: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.urls()[index].as_str()).expect("sentinel url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the sentinel");
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut connection).await
    }

    async fn master_port(&self) -> u16 {
        self.master_port_from(0).await
    }

    /// The master's port as sentinel `index` names it.
    async fn master_port_from(&self, index: usize) -> u16 {
        let client = redis::Client::open(self.urls()[index].as_str()).expect("sentinel url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the sentinel");
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query_async(&mut connection)
            .await
            .expect("SENTINEL get-master-addr-by-name");
        port
    }

    /// Waits until every sentinel knows the replica and the two other sentinels, so that a
    /// failover can be agreed on.
    async fn wait_settled(&self) {
        wait_until_async(
            Duration::from_secs(30),
            "the sentinels to settle",
            || async {
                for index in 0..3 {
                    let replicas = self.ask(index, &["SENTINEL", "replicas", MASTER]).await;
                    let sentinels = self.ask(index, &["SENTINEL", "sentinels", MASTER]).await;
                    let count = |v: &redis::Value| match v {
                        redis::Value::Array(items) => items.len(),
                        _ => 0,
                    };
                    if count(&replicas) < 1 || count(&sentinels) < 2 {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// PUBLISHes `{"n": 1}`, `{"n": 2}`, … on `job:load` every 5 ms to the master the sentinels
/// name, asking them again after any error and when they announce a new master
/// (`+switch-master`: the old one stays up until they demote it); counts what Redis
/// acknowledged.
fn spawn_publisher(
    sentinel: String,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<HashSet<u64>> {
    tokio::spawn(async move {
        let client = redis::Client::open(sentinel.as_str()).expect("sentinel url");
        let mut announcements = client.get_async_pubsub().await.expect("connect");
        announcements
            .subscribe("+switch-master")
            .await
            .expect("SUBSCRIBE +switch-master");
        let mut announcements = announcements.into_on_message();
        let mut acknowledged = HashSet::new();
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if announcements.next().now_or_never().is_some() {
                connection = None;
            }
            if connection.is_none() {
                connection = master_connection(&sentinel).await;
            }
            let Some(master) = connection.as_mut() else {
                continue;
            };
            n += 1;
            let mut command = redis::cmd("PUBLISH");
            command.arg("job:load").arg(format!("{{\"n\":{n}}}"));
            let sent = command.query_async::<i64>(master);
            match tokio::time::timeout(Duration::from_secs(1), sent).await {
                Ok(Ok(_)) => {
                    acknowledged.insert(n);
                    published.store(n, Ordering::SeqCst);
                }
                _ => connection = None,
            }
        }
        acknowledged
    })
}

async fn master_connection(sentinel: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(sentinel).ok()?;
    let mut asked = client.get_multiplexed_async_connection().await.ok()?;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query_async(&mut asked)
        .await
        .ok()?;
    let master = redis::Client::open(format!("redis://{host}:{port}/0")).ok()?;
    let mut connection = master.get_multiplexed_async_connection().await.ok()?;
    // A demoted master still accepts PUBLISH, for its own subscribers only.
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut connection).await.ok()?;
    matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
        .then_some(connection)
}

/// What the client received: message numbers in order, and where the gap notices came.
#[derive(Default)]
struct Received {
    numbers: Vec<u64>,
    /// Indexes into `numbers` at which a gap notice came.
    gaps: Vec<usize>,
    /// The longest time between two messages: the bridge's blind time at a failover.
    longest_silence: Duration,
}

#[tokio::test]
async fn the_bridge_follows_a_sentinel_failover_under_load() {
    let mut master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(master.port());
    let sentinels = Sentinels::start(master.port());
    sentinels.wait_settled().await;

    let nodes = sentinels.urls().join(", ");
    let yaml = config("", JOB_ROUTE).replacen(
        "  url: {redis_url}\n",
        &format!(
            "  url: redis://unused:1/0\n  sentinel:\n    master: {MASTER}\n    nodes: [{nodes}]\n  heartbeat_interval: 200ms\n  heartbeat_timeout: 1s\n"
        ),
        1,
    );
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let subscribed = bridge
        .wait_log(WAIT, |v| {
            log_field(v, "message").and_then(Value::as_str) == Some("redis subscribed")
        })
        .await;
    let expected = format!("redis://127.0.0.1:{}/0", master.port());
    assert_eq!(log_field(&subscribed, "redis"), Some(&json!(expected)));
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:load"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = spawn_publisher(sentinels.urls()[0].clone(), stop.clone(), published.clone());
    let mut received = Received::default();
    let mut last_at = Instant::now();

    // Reads frames until `until` holds for the number of messages received.
    macro_rules! read_until {
        ($what:expr, $cond:expr) => {{
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let cond: &dyn Fn(&Received) -> bool = &$cond;
                if cond(&received) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {}; logs:\n{}",
                    $what,
                    bridge.logs()
                );
                let Some(frame) = client.try_recv_frame(Duration::from_millis(200)).await else {
                    continue;
                };
                let crate::support::Frame::Text(text) = frame else {
                    continue;
                };
                let frame: Value = serde_json::from_str(&text).expect("a JSON frame");
                match frame["type"].as_str() {
                    Some("gap") => received.gaps.push(received.numbers.len()),
                    Some("message") | Some("event") | Some(_) if frame["topic"] == "job:load" => {
                        let now = Instant::now();
                        if !received.numbers.is_empty() {
                            received.longest_silence = received.longest_silence.max(now - last_at);
                        }
                        last_at = now;
                        received
                            .numbers
                            .push(frame["data"]["n"].as_u64().expect("n"));
                    }
                    _ => {}
                }
            }
        }};
    }

    read_until!("the first messages", |r: &Received| r.numbers.len() >= 50);
    let before = received.longest_silence;

    // A planned failover: the replica is promoted, the old master demoted.
    received.longest_silence = Duration::ZERO;
    // Refused (NOGOODSLAVE) until the sentinel has seen the replica in sync.
    wait_until_async(
        Duration::from_secs(30),
        "SENTINEL FAILOVER accepted",
        || async {
            let failover = sentinels
                .try_ask(0, &["SENTINEL", "FAILOVER", MASTER])
                .await;
            failover.is_ok()
        },
    )
    .await;
    let replica_port = replica.port();
    wait_until_async(Duration::from_secs(30), "the promotion", || async {
        sentinels.master_port().await == replica_port
    })
    .await;
    read_until!("messages after the failover", |r: &Received| {
        r.gaps.len() == 1 && r.numbers.len() > r.gaps[0] + 50
    });
    let planned = received.longest_silence;

    // The new master killed outright: the sentinels promote the old one back.
    received.longest_silence = Duration::ZERO;
    replica.kill();
    let master_port = master.port();
    wait_until_async(Duration::from_secs(30), "the second promotion", || async {
        sentinels.master_port().await == master_port
    })
    .await;
    read_until!("messages after the master was killed", |r: &Received| {
        r.gaps.len() == 2 && r.numbers.len() > r.gaps[1] + 50
    });
    let killed = received.longest_silence;

    stop.store(true, Ordering::SeqCst);
    let acknowledged = publisher.await.expect("publisher");
    let last = published.load(Ordering::SeqCst);
    read_until!("the last message", |r: &Received| r.numbers.last()
        == Some(&last));

    let distinct: HashSet<u64> = received.numbers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        received.numbers.len(),
        "a message got twice"
    );
    let mut in_order = received.numbers.clone();
    in_order.sort_unstable();
    assert_eq!(in_order, received.numbers, "messages out of order");
    // Everything lost was published while the bridge was between two servers: after the
    // last message before a gap notice and before the first one after it.
    let windows: Vec<(u64, u64)> = received
        .gaps
        .iter()
        .map(|at| (received.numbers[at - 1], received.numbers[*at]))
        .collect();
    let lost: Vec<u64> = acknowledged.difference(&distinct).copied().collect();
    for n in &lost {
        assert!(
            windows
                .iter()
                .any(|(before, after)| before < n && n < after),
            "{n} lost outside a gap {windows:?}"
        );
    }
    for n in &distinct {
        assert!(
            acknowledged.contains(n),
            "{n} received but never acknowledged"
        );
    }
    assert_eq!(
        bridge.metric("bridge_redis_reconnects_total").await,
        Some(2)
    );
    eprintln!(
        "sentinel failover: {} published, {} received, {} lost (inside gaps), 0 twice; \
         longest silence before {before:?}, SENTINEL FAILOVER {planned:?}, SIGKILL {killed:?}",
        acknowledged.len(),
        distinct.len(),
        lost.len()
    );
    master.kill();
}

#[tokio::test]
async fn an_unknown_master_name_or_no_sentinel_is_a_clear_error() {
    let master = RedisServer::start();
    let sentinels = Sentinels::start(master.port());
    let with = |name: &str, nodes: &str| {
        config("", JOB_ROUTE).replacen(
            "  url: {redis_url}\n",
            &format!(
                "  url: redis://unused:1/0\n  sentinel:\n    master: {name}\n    nodes: [{nodes}]\n"
            ),
            1,
        )
    };
    let unknown = Bridge::start_with(&with("nosuchmaster", &sentinels.urls()[0]), &[]);
    let down = format!("redis://127.0.0.1:{}", pick_port());
    let nobody = Bridge::start_with(&with(MASTER, &down), &[]);
    for (bridge, needle) in [
        (&unknown, "knows no master named `nosuchmaster`"),
        (&nobody, "no sentinel answered"),
    ] {
        wait_until_async(WAIT, "failed attempts", || async {
            let series = "bridge_redis_connect_errors_total{reason=\"sentinel\"}";
            bridge.metric(series).await.unwrap_or(0) >= 2
        })
        .await;
        bridge.wait_readyz(503, WAIT).await;
        let lines: Vec<Value> = bridge
            .log_values()
            .into_iter()
            .filter(|v| {
                log_field(v, "message").and_then(Value::as_str) == Some("redis unavailable")
            })
            .collect();
        assert_eq!(lines.len(), 1, "{}", bridge.logs());
        let error = log_field(&lines[0], "error")
            .and_then(Value::as_str)
            .unwrap_or("");
        assert!(error.contains(needle), "{}", bridge.logs());
        assert_eq!(log_field(&lines[0], "reason"), Some(&json!("sentinel")));
    }
}

/// The routing file of a bridge that asks the sentinels at `nodes` for the master, with the
/// lines of `more` (indented under `redis`).
fn sentinel_config(url: &str, nodes: &[String], more: &str) -> String {
    config("", JOB_ROUTE).replacen(
        "  url: {redis_url}\n",
        &format!(
            "  url: {url}\n{more}  sentinel:\n    master: {MASTER}\n    nodes: [{}]\n  \
             heartbeat_interval: 200ms\n  heartbeat_timeout: 1s\n",
            nodes.join(", ")
        ),
        1,
    )
}

/// The `redis` fields of the bridge's `redis subscribed` lines, in order.
fn subscribed_to(bridge: &Bridge) -> Vec<String> {
    bridge
        .log_values()
        .into_iter()
        .filter(|v| log_field(v, "message").and_then(Value::as_str) == Some("redis subscribed"))
        .filter_map(|v| {
            log_field(&v, "redis")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect()
}

/// Asks sentinel `index` for a failover until it accepts (it refuses until it has seen the
/// replica in sync), then waits until the sentinels name the master on `new_port`.
async fn fail_over(sentinels: &Sentinels, index: usize, new_port: u16) {
    wait_until_async(
        Duration::from_secs(30),
        "SENTINEL FAILOVER accepted",
        || async {
            let failover = sentinels
                .try_ask(index, &["SENTINEL", "FAILOVER", MASTER])
                .await;
            failover.is_ok()
        },
    )
    .await;
    wait_until_async(Duration::from_secs(30), "the promotion", || async {
        sentinels.master_port_from(index).await == new_port
    })
    .await;
}

/// A job frame published on `publish_url` reaches `client` (subscribed to `job:s`).
async fn assert_reaches(client: &mut crate::support::WsClient, publish_url: &str, n: u64) {
    publish(publish_url, "job:s", format!("{{\"n\":{n}}}")).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": n}), "{frame}");
}

#[tokio::test]
async fn tls_to_the_sentinels_and_the_master_follows_a_failover() {
    let certificates = Certificates::make();
    let master = RedisServer::start_with_tls_and_args(
        certificates.server_tls(false),
        &["--tls-replication", "yes"],
    );
    let master_tls = master.tls_port().to_string();
    let replica = RedisServer::start_with_tls_and_args(
        certificates.server_tls(false),
        &[
            "--tls-replication",
            "yes",
            "--replicaof",
            "127.0.0.1",
            &master_tls,
        ],
    );
    let sentinels = Sentinels::start_with(master.tls_port(), Some(&certificates));
    sentinels.wait_settled().await;

    // Only the sentinels' TLS ports: a bridge that did not speak TLS to them would find no
    // master at all.
    let nodes: Vec<String> = sentinels
        .tls_ports
        .iter()
        .map(|port| format!("rediss://localhost:{port}"))
        .collect();
    let ca = format!(
        "  tls:\n    ca_file: {}\n",
        certificates.path("ca.pem").display()
    );
    let bridge = Bridge::start_with(&sentinel_config("rediss://unused:1/0", &nodes, &ca), &[]);
    bridge.wait_ready().await;
    // Ready comes before the log line that names the server.
    wait_until(WAIT, "the `redis subscribed` line", || {
        !subscribed_to(&bridge).is_empty()
    })
    .await;
    assert_eq!(
        subscribed_to(&bridge),
        [format!("rediss://127.0.0.1:{}/0", master.tls_port())]
    );
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:s"]).await;
    assert_reaches(&mut client, &master.url(), 1).await;

    fail_over(&sentinels, 0, replica.tls_port()).await;
    // At once, from the sentinels' announcement: the old master, demoted only at their next
    // INFO round (up to 10 s later), would keep the bridge on a server nobody publishes to.
    let gap = client.recv_json(SWITCH_NOTICED).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    let new_master = format!("rediss://127.0.0.1:{}/0", replica.tls_port());
    wait_until(WAIT, "a subscription on the new master", || {
        subscribed_to(&bridge).last() == Some(&new_master)
    })
    .await;
    bridge.wait_readyz(200, WAIT).await;
    assert_reaches(&mut client, &replica.url(), 2).await;
    for reason in ["tls", "sentinel"] {
        let series = format!("bridge_redis_connect_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(bridge.metric(&series).await, Some(0), "{}", bridge.logs());
    }
}

#[tokio::test]
async fn one_sentinel_of_three_down_the_bridge_still_finds_and_follows_the_master() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(master.port());
    let mut sentinels = Sentinels::start(master.port());
    sentinels.wait_settled().await;
    // The first one the bridge asks is the one that is down.
    sentinels.kill(0);

    let bridge = Bridge::start_with(
        &sentinel_config("redis://unused:1/0", &sentinels.urls(), ""),
        &[],
    );
    bridge.wait_ready().await;
    // Ready comes before the log line that names the server.
    wait_until(WAIT, "the `redis subscribed` line", || {
        !subscribed_to(&bridge).is_empty()
    })
    .await;
    assert_eq!(
        subscribed_to(&bridge),
        [format!("redis://127.0.0.1:{}/0", master.port())]
    );
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:s"]).await;
    assert_reaches(&mut client, &master.url(), 1).await;

    fail_over(&sentinels, 1, replica.port()).await;
    // At once, from the sentinels' announcement: the old master, demoted only at their next
    // INFO round (up to 10 s later), would keep the bridge on a server nobody publishes to.
    let gap = client.recv_json(SWITCH_NOTICED).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    let new_master = format!("redis://127.0.0.1:{}/0", replica.port());
    wait_until(WAIT, "a subscription on the new master", || {
        subscribed_to(&bridge).last() == Some(&new_master)
    })
    .await;
    assert_reaches(&mut client, &replica.url(), 2).await;
    // A sentinel that does not answer is skipped, not an error, while another one answers.
    let series = "bridge_redis_connect_errors_total{reason=\"sentinel\"}";
    assert_eq!(bridge.metric(series).await, Some(0), "{}", bridge.logs());
    let unavailable = bridge
        .log_values()
        .into_iter()
        .filter(|v| log_field(v, "message").and_then(Value::as_str) == Some("redis unavailable"))
        .count();
    assert_eq!(unavailable, 0, "{}", bridge.logs());
}
