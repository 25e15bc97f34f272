//! The subscription watchdog and Redis outages: a subscriber connection that is silently
//! black-holed (a TCP proxy in the test stops forwarding without closing anything) is noticed
//! by its heartbeat and replaced; Redis restarted again and again never takes the bridge or a
//! client down; after every recovery each client gets a `gap` notice and delivery resumes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{
    Bridge, Frame, RedisServer, WAIT, WsClient, assert_envelope, assert_rfc3339_ms_utc, config,
    log_field, publish, wait_until,
};

const ROUTES: &str = r#"
    - name: live
      channel: test:live
      topic: live
      delivery: auto
    - name: jobs
      pattern: "job:*"
      topic: "job:{1}"
    "#;

const STALLS: &str = "bridge_redis_stalls_total";
const RECONNECTS: &str = "bridge_redis_reconnects_total";

/// `config(websocket, routes)` with the watchdog's settings in the `redis` section.
fn config_with_heartbeat(websocket: &str, interval: &str, timeout: &str) -> String {
    config(websocket, ROUTES).replacen(
        "  url: {redis_url}\n",
        &format!(
            "  url: {{redis_url}}\n  heartbeat_interval: {interval}\n  heartbeat_timeout: {timeout}\n"
        ),
        1,
    )
}

// ---------------------------------------------------------------------------------------
// A TCP proxy that can black-hole what it carries
// ---------------------------------------------------------------------------------------

/// A TCP proxy in front of Redis. `black_hole` freezes every connection it carries at that
/// moment: both sockets stay open, nothing is forwarded any more either way, nothing is
/// closed (what a dead NAT entry, a failed-over proxy or a half-open connection looks like).
/// `hold_new` keeps new connections waiting (accepted, not forwarded) until `release`.
struct Proxy {
    addr: SocketAddr,
    /// Cancelled by `black_hole`; each connection watches the one current when it came.
    freeze: Arc<std::sync::Mutex<CancellationToken>>,
    /// Whether new connections are forwarded (true) or held.
    open: watch::Sender<bool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// The accept loop; its connection tasks end with it.
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let freeze = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (open, _) = watch::channel(true);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = {
            let freeze = freeze.clone();
            let open = open.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let frozen = freeze.lock().unwrap().clone();
                    let mut opened = open.subscribe();
                    connections.spawn(async move {
                        // Held connections wait here, accepted and silent.
                        if opened.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        if frozen.is_cancelled() {
                            return;
                        }
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        pipe(client, server, frozen).await;
                    });
                    // Reap finished connections as we go.
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Proxy {
            addr,
            freeze,
            open,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Freezes every connection carried now; later connections are not affected.
    fn black_hole(&self) {
        let old = std::mem::take(&mut *self.freeze.lock().unwrap());
        old.cancel();
    }

    /// New connections are accepted but wait, silent, until `release`.
    fn hold_new(&self) {
        self.open.send_replace(false);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards both ways until either side closes, or until `freeze`: then nothing moves any
/// more and both sockets stay open (held by this task) until the proxy is dropped.
async fn pipe(client: TcpStream, server: TcpStream, freeze: CancellationToken) {
    use tokio::io::AsyncWriteExt;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let forward = async {
        tokio::join!(
            async {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            },
            async {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                let _ = client_write.shutdown().await;
            },
        )
    };
    tokio::select! {
        _ = forward => {}
        _ = freeze.cancelled() => std::future::pending::<()>().await,
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Asserts `frame` is exactly `{"type":"gap","reason":"redis_reconnected","since":…,
/// "topics":topics}`; returns `since`.
fn assert_gap(frame: &Value, topics: &[&str]) -> SystemTime {
    let obj = frame
        .as_object()
        .unwrap_or_else(|| panic!("gap notice is not an object: {frame}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["reason", "since", "topics", "type"],
        "gap notice keys: {frame}"
    );
    assert_eq!(frame["type"], "gap", "{frame}");
    assert_eq!(frame["reason"], "redis_reconnected", "{frame}");
    assert_eq!(frame["topics"], json!(topics), "gap topics: {frame}");
    let since = frame["since"]
        .as_str()
        .unwrap_or_else(|| panic!("since is not a string: {frame}"));
    assert_rfc3339_ms_utc(since);
    humantime::parse_rfc3339(since).unwrap_or_else(|e| panic!("since {since:?}: {e}"))
}

/// The `message` of a JSON log line.
fn message(line: &Value) -> &str {
    log_field(line, "message")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn stall_lines(bridge: &Bridge) -> Vec<Value> {
    bridge
        .log_values()
        .into_iter()
        .filter(|l| message(l).starts_with("redis subscription stalled"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Stall
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_subscription_is_detected_replaced_and_clients_get_a_gap_notice() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // What a loaded 2-core machine may add to the watchdog's own deadline (its tick, the
    // reconnect, the /readyz polls).
    const SLACK: Duration = Duration::from_secs(3);

    let redis = RedisServer::start();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port()))).await;
    let yaml = config_with_heartbeat("", "200ms", "1s").replace("{redis_url}", &proxy.url());
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let pid = bridge.pid();

    let mut auto = bridge.client().await;
    let mut sub = bridge.client().await;
    sub.subscribe(1, &["job:1"]).await;

    // Delivery works (published straight to Redis, not through the proxy).
    let url = redis.url();
    let mut seq_live = 0;
    let mut seq_job = 0;
    let mut round = async |auto: &mut WsClient, sub: &mut WsClient, n: u64| {
        publish(&url, "test:live", json!({"n": n}).to_string()).await;
        publish(&url, "job:1", json!({"n": n}).to_string()).await;
        seq_live += 1;
        seq_job += 1;
        for c in [&mut *auto, &mut *sub] {
            assert_envelope(
                &c.next_json().await,
                "live",
                "live",
                seq_live,
                &json!({"n": n}),
            );
        }
        assert_envelope(
            &sub.next_json().await,
            "jobs",
            "job:1",
            seq_job,
            &json!({"n": n}),
        );
    };
    round(&mut auto, &mut sub, 1).await;

    // Heartbeats flow: a healthy subscription is never taken for a stalled one.
    assert_eq!(bridge.metric(STALLS).await, Some(0), "stalls while healthy");
    assert!(stall_lines(&bridge).is_empty(), "{}", bridge.logs());

    // 1. Half-open: what the proxy carries goes silent, new connections work. The watchdog
    //    notices the missing heartbeat and replaces the connection through the proxy.
    let accepted = proxy.accepted();
    let frozen_at = Instant::now();
    let frozen_wall = SystemTime::now();
    proxy.black_hole();
    let line = bridge
        .wait_log(TIMEOUT + SLACK, |l| {
            message(l).starts_with("redis subscription stalled")
        })
        .await;
    let detected = frozen_at.elapsed();
    eprintln!("half-open: stall logged {detected:?} after the black hole");
    assert!(
        detected <= TIMEOUT + SLACK,
        "stall detected after {detected:?}"
    );
    assert_eq!(
        log_field(&line, "level").and_then(Value::as_str),
        Some("ERROR"),
        "{line}"
    );
    let silent_ms = log_field(&line, "silent_ms")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no silent_ms: {line}"));
    assert!(
        silent_ms > TIMEOUT.as_millis() as u64,
        "a stall declared after {silent_ms} ms of silence, before heartbeat_timeout: {line}"
    );
    bridge
        .wait_log(WAIT, |l| {
            message(l).starts_with("redis connection lost")
                && log_field(l, "reason").and_then(Value::as_str) == Some("subscription stalled")
        })
        .await;
    bridge.wait_readyz(200, WAIT).await;
    assert!(
        proxy.accepted() > accepted,
        "the bridge did not reconnect through the proxy"
    );
    assert_eq!(bridge.metric(STALLS).await, Some(1));
    assert!(bridge.metric(RECONNECTS).await >= Some(1));

    // Each client is told, once, before anything published after the recovery.
    let now = SystemTime::now();
    let since = assert_gap(&auto.next_json().await, &[]);
    assert_gap(&sub.next_json().await, &["job:1"]);
    assert!(
        since + Duration::from_millis(1) >= frozen_wall && since <= now,
        "since {since:?} is not between the black hole ({frozen_wall:?}) and now ({now:?})"
    );
    round(&mut auto, &mut sub, 2).await;

    // 2. Partition: the connections carried go silent and new ones hang until the network
    //    heals. /readyz is 503 within the watchdog's deadline, and 200 once it heals.
    let stalls = bridge.metric(STALLS).await.unwrap();
    let lines = stall_lines(&bridge).len();
    proxy.hold_new();
    let frozen_at = Instant::now();
    proxy.black_hole();
    let body = bridge.wait_readyz(503, TIMEOUT + SLACK).await;
    let detected = frozen_at.elapsed();
    eprintln!("partition: /readyz 503 {detected:?} after the black hole");
    assert!(
        detected <= TIMEOUT + SLACK,
        "/readyz 503 after {detected:?}"
    );
    let body: Value = serde_json::from_str(&body).expect("/readyz body is JSON");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(bridge.metric(STALLS).await, Some(stalls + 1));
    wait_until(WAIT, "the second stall's error line", || {
        stall_lines(&bridge).len() > lines
    })
    .await;
    let line = stall_lines(&bridge).pop().unwrap();
    let silent_ms = log_field(&line, "silent_ms").and_then(Value::as_u64);
    assert!(
        silent_ms > Some(TIMEOUT.as_millis() as u64),
        "a stall declared before heartbeat_timeout of silence: {line}"
    );
    assert_eq!(bridge.stats().await["redis"]["connected"], false);
    // Clients stay connected while Redis is out of reach.
    auto.assert_pong(10).await;
    sub.assert_pong(10).await;

    proxy.release();
    bridge.wait_readyz(200, WAIT).await;
    assert_gap(&auto.next_json().await, &[]);
    assert_gap(&sub.next_json().await, &["job:1"]);
    round(&mut auto, &mut sub, 3).await;

    // Nobody was disconnected, nothing else is queued, and the bridge is the same process.
    auto.assert_pong(20).await;
    sub.assert_pong(20).await;
    assert_eq!(bridge.stats().await["connections"], 2);
    assert_eq!(bridge.pid(), pid);
    assert_eq!(bridge.metric(STALLS).await, Some(2));
    assert_eq!(stall_lines(&bridge).len(), 2, "one error line per stall");
    // The control channel never reached a client: every frame above was accounted for.
}

// ---------------------------------------------------------------------------------------
// Redis restarted again and again
// ---------------------------------------------------------------------------------------

/// A client read continuously by a task of its own (so that its queue never fills while the
/// test restarts Redis); its frames arrive on `frames`. `stop` hands the client back.
struct Drained {
    frames: mpsc::UnboundedReceiver<Frame>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<WsClient>,
}

impl Drained {
    fn start(mut client: WsClient) -> Drained {
        let (tx, frames) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(frame) = client.try_recv_frame(Duration::from_millis(50)).await {
                        let ended = !matches!(frame, Frame::Text(_));
                        let _ = tx.send(frame);
                        if ended {
                            break;
                        }
                    }
                }
                client
            })
        };
        Drained { frames, stop, task }
    }

    async fn next_json(&mut self, what: &str) -> Value {
        match tokio::time::timeout(WAIT, self.frames.recv()).await {
            Ok(Some(Frame::Text(t))) => serde_json::from_str(&t).expect("JSON frame"),
            Ok(other) => panic!("{what}: the connection ended: {other:?}"),
            Err(_) => panic!("{what}: no frame within {WAIT:?}"),
        }
    }

    async fn stop(self) -> WsClient {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("reader task")
    }
}

/// PUBLISHes `{"loop": n}` on `test:live` every few milliseconds until `stop`, reconnecting
/// whenever Redis goes away (what is published meanwhile fails, and that is fine); `last` is
/// the last `n` Redis acknowledged.
async fn publish_loop(url: String, stop: Arc<AtomicBool>, last: Arc<AtomicU64>) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        pace.tick().await;
        if connection.is_none() {
            let connect = client.get_multiplexed_async_connection();
            connection = tokio::time::timeout(Duration::from_millis(500), connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(publisher) = connection.as_mut() else {
            continue;
        };
        n += 1;
        let mut command = redis::cmd("PUBLISH");
        command.arg("test:live").arg(json!({"loop": n}).to_string());
        let sent = command.query_async::<i64>(publisher);
        if matches!(
            tokio::time::timeout(Duration::from_millis(500), sent).await,
            Ok(Ok(_))
        ) {
            last.store(n, Ordering::SeqCst);
        } else {
            connection = None;
        }
    }
    n
}

/// What one client has seen of the `live` topic so far.
#[derive(Default)]
struct LiveState {
    seq: u64,
    last_loop: u64,
    loops: u64,
}

impl LiveState {
    /// Checks a `live` envelope: the bridge's seq never skips (nothing dispatched was lost
    /// on the way to this client) and loop numbers only grow (no duplicate, no reordering).
    /// Returns the marker number, if it is a marker.
    fn take(&mut self, frame: &Value, who: &str) -> Option<u64> {
        assert_eq!(frame["type"], "live", "{who}: {frame}");
        let seq = frame["seq"].as_u64().expect("seq");
        assert_eq!(
            seq,
            self.seq + 1,
            "{who}: a live frame was lost or repeated: {frame}"
        );
        self.seq = seq;
        if let Some(n) = frame["data"]["loop"].as_u64() {
            assert!(
                n > self.last_loop,
                "{who}: loop {n} after {}",
                self.last_loop
            );
            self.last_loop = n;
            self.loops += 1;
            return None;
        }
        Some(
            frame["data"]["marker"]
                .as_u64()
                .expect("a loop or a marker"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_20_times_during_a_publish_loop_never_takes_the_bridge_or_a_client_down() {
    const RESTARTS: u64 = 20;
    let mut redis = RedisServer::start();
    let mut bridge = Bridge::start(&redis, &config("", ROUTES));
    bridge.wait_ready().await;
    let pid = bridge.pid();

    let auto = bridge.client().await;
    let mut sub = bridge.client().await;
    sub.subscribe(1, &["job:1"]).await;
    let mut multi = bridge.client().await;
    multi.subscribe(1, &["job:2", "job:1"]).await;
    // (name, subscribed topics sorted, whether it receives job:1)
    let who: [(&str, &[&str]); 3] = [
        ("auto", &[]),
        ("sub", &["job:1"]),
        ("multi", &["job:1", "job:2"]),
    ];
    let mut clients: Vec<Drained> = [auto, sub, multi].into_iter().map(Drained::start).collect();
    let mut live: Vec<LiveState> = (0..3).map(|_| LiveState::default()).collect();
    let mut job_seq = 0;

    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_loop(redis.url(), stop.clone(), last.clone()));
    let started = Instant::now();

    for restart in 1..=RESTARTS {
        tokio::task::block_in_place(|| redis.kill());
        bridge.wait_readyz(503, WAIT).await;
        tokio::task::block_in_place(|| redis.restart());
        bridge.wait_readyz(200, WAIT).await;
        assert!(
            bridge.is_running(),
            "the bridge exited at restart {restart}"
        );
        assert_eq!(bridge.pid(), pid);

        // Published once the bridge is subscribed again: every client must get it.
        publish(
            &redis.url(),
            "test:live",
            json!({"marker": restart}).to_string(),
        )
        .await;
        publish(
            &redis.url(),
            "job:1",
            json!({"marker": restart}).to_string(),
        )
        .await;
        job_seq += 1;
        for (i, client) in clients.iter_mut().enumerate() {
            let (name, topics) = who[i];
            let gets_job = !topics.is_empty();
            let mut gaps = 0;
            let mut live_marker = false;
            let mut job_marker = !gets_job;
            while !(live_marker && job_marker) {
                let what = format!("{name} after restart {restart}");
                let frame = client.next_json(&what).await;
                match frame["type"].as_str() {
                    Some("gap") => {
                        assert!(
                            !live_marker && (!gets_job || !job_marker),
                            "{what}: the gap notice came after a marker"
                        );
                        assert_gap(&frame, topics);
                        gaps += 1;
                    }
                    Some("live") => {
                        if let Some(marker) = live[i].take(&frame, name) {
                            assert_eq!(marker, restart, "{what}: {frame}");
                            assert_eq!(gaps, 1, "{what}: gap notices before the marker");
                            live_marker = true;
                        }
                    }
                    Some("jobs") if gets_job => {
                        assert_envelope(
                            &frame,
                            "jobs",
                            "job:1",
                            job_seq,
                            &json!({"marker": restart}),
                        );
                        assert_eq!(gaps, 1, "{what}: gap notices before the job marker");
                        job_marker = true;
                    }
                    _ => panic!("{what}: unexpected frame {frame}"),
                }
            }
        }
        // The loop's own messages flow again too: one published after the markers arrives.
        let after = last.load(Ordering::SeqCst);
        wait_until(WAIT, "the publish loop to publish again", || {
            last.load(Ordering::SeqCst) > after
        })
        .await;
        for (i, client) in clients.iter_mut().enumerate() {
            let what = format!("{} after restart {restart}", who[i].0);
            while live[i].last_loop <= after {
                let frame = client.next_json(&what).await;
                if frame["type"] == "jobs" || frame["type"] == "gap" {
                    panic!("{what}: unexpected frame {frame}");
                }
                assert!(live[i].take(&frame, who[i].0).is_none(), "{what}: {frame}");
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    let elapsed = started.elapsed();

    // Every client is still connected, with nothing unexpected queued.
    let mut back = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let mut rest = client;
        // Frames of the loop still on their way.
        while let Ok(frame) = rest.frames.try_recv() {
            let Frame::Text(t) = frame else {
                panic!("{}: the connection ended: {frame:?}", who[i].0)
            };
            let frame: Value = serde_json::from_str(&t).expect("JSON");
            assert!(
                live[i].take(&frame, who[i].0).is_none(),
                "{}: {frame}",
                who[i].0
            );
        }
        back.push(rest.stop().await);
    }
    for (i, c) in back.iter_mut().enumerate() {
        // Pong is the next frame once the loop's last frames are read.
        c.send_json(&json!({"type": "ping", "id": 99})).await;
        loop {
            let frame = c.next_json().await;
            if frame["type"] == "pong" {
                assert_eq!(frame, json!({"type": "pong", "id": 99}));
                break;
            }
            assert!(live[i].take(&frame, who[i].0).is_none(), "{frame}");
        }
        assert!(
            live[i].loops > 0,
            "{}: no frame of the publish loop arrived",
            who[i].0
        );
    }
    assert_eq!(bridge.stats().await["connections"], 3);
    assert!(bridge.metric(RECONNECTS).await >= Some(RESTARTS));
    assert_eq!(
        bridge.metric(STALLS).await,
        Some(0),
        "an outage is not a stall"
    );
    assert!(bridge.is_running());
    assert_eq!(bridge.pid(), pid);
    eprintln!(
        "{RESTARTS} restarts in {elapsed:?}; {published} messages published in the loop, {:?} delivered to each client",
        live.iter().map(|l| l.loops).collect::<Vec<_>>()
    );
}
