//! Test harness: a real `redis-server`, the real daemon, real WebSocket clients.
//!
//! Every test owns its Redis (on a free port, in its own temp dir) and its bridge (on
//! `127.0.0.1:0`), so tests run in parallel. Nothing here sleeps and hopes: every wait polls
//! a condition and fails with a description (and the bridge's logs) when its timeout passes.

#![allow(dead_code)]

pub mod driver;
pub mod tokens;
pub mod watcher;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The default wait for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long the daemon may take to print its `listening` line.
pub const START_WAIT: Duration = Duration::from_secs(20);

/// The daemon under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_redis-ws-bridge");

/// The interval between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Removes the common leading indentation of `s` (and a leading newline), so that YAML can
/// be written indented inside a test.
pub fn dedent(s: &str) -> String {
    let s = s.strip_prefix('\n').unwrap_or(s);
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in s.lines() {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(&line[indent..]);
            out.push('\n');
        }
    }
    out
}

/// Polls `cond` until it is true; panics with `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `cond` until it is true; panics with `what` after `timeout`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A random port below the kernel's ephemeral range (32768+), so that it never collides
/// with the `127.0.0.1:0` listeners and outgoing connections of other tests.
pub fn pick_port() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 10_000 + (h.finish() % 22_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Checks an RFC 3339 UTC timestamp with milliseconds: `2026-11-25T03:56:07.123Z`.
pub fn assert_rfc3339_ms_utc(ts: &str) {
    let b = ts.as_bytes();
    let ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(
        ok,
        "not an RFC 3339 UTC timestamp with milliseconds: {ts:?}"
    );
}

/// Asserts that `frame` is exactly the envelope `{type, topic, seq, ts, data}`.
pub fn assert_envelope(frame: &Value, ty: &str, topic: &str, seq: u64, data: &Value) {
    let obj = frame
        .as_object()
        .unwrap_or_else(|| panic!("envelope is not an object: {frame}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["data", "seq", "topic", "ts", "type"],
        "envelope keys of {frame}"
    );
    assert_eq!(frame["type"], ty, "envelope type of {frame}");
    assert_eq!(frame["topic"], topic, "envelope topic of {frame}");
    assert_eq!(frame["seq"], seq, "envelope seq of {frame}");
    assert_eq!(&frame["data"], data, "envelope data of {frame}");
    assert_rfc3339_ms_utc(
        frame["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("envelope ts is not a string: {frame}")),
    );
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A real `redis-server` on its own port and in its own directory; killed on drop.
pub struct RedisServer {
    /// The TCP port, kept across `restart`.
    port: u16,
    /// TLS on a second port besides the plain one (which the tests' publishers and PING use).
    tls: Option<RedisTls>,
    /// More arguments for redis-server (e.g. `--replicaof`).
    extra: Vec<String>,
    /// The working directory (`--dir`) and its log file.
    dir: tempfile::TempDir,
    /// The running server, `None` while killed.
    child: Option<Child>,
}

/// A server's TLS port, certificate and key (PEM files), and the CA its clients' certificates
/// are verified against when `auth_clients` (mutual TLS).
pub struct RedisTls {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub auth_clients: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with_tls(None)
    }

    /// Starts a replica of the server on `master_port`.
    pub fn start_replica_of(master_port: u16) -> RedisServer {
        let mut server = RedisServer::start_with_tls(None);
        server.extra = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ];
        server.restart();
        server
    }

    /// Starts a server that also accepts TLS (`tls.port` is picked here) on 127.0.0.1 and
    /// 127.0.0.2 (an address its certificate may not name).
    pub fn start_with_tls(tls: Option<RedisTls>) -> RedisServer {
        RedisServer::start_inner(tls, Vec::new())
    }

    /// Starts a server with more redis-server arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        RedisServer::start_inner(None, args.iter().map(|a| a.to_string()).collect())
    }

    /// Starts a server with a TLS port and more redis-server arguments (a TLS cluster node,
    /// a replica that replicates over TLS).
    pub fn start_with_tls_and_args(tls: RedisTls, args: &[&str]) -> RedisServer {
        RedisServer::start_inner(Some(tls), args.iter().map(|a| a.to_string()).collect())
    }

    fn start_inner(tls: Option<RedisTls>, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            port: 0,
            tls,
            extra,
            dir,
            child: None,
        };
        let mut last_error = String::new();
        for _ in 0..10 {
            server.port = pick_port();
            if let Some(tls) = &mut server.tls {
                tls.port = pick_port();
            }
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `CONFIG SET` of every (name, value) of `settings` in one command, on the plain port.
    pub async fn config_set(&self, settings: &[(&str, &str)]) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect on the plain port");
        let mut command = redis::cmd("CONFIG");
        command.arg("SET");
        for (name, value) in settings {
            command.arg(*name).arg(*value);
        }
        command
            .query_async::<()>(&mut connection)
            .await
            .expect("CONFIG SET");
    }

    /// The TLS port of a server started with [`RedisServer::start_with_tls`].
    pub fn tls_port(&self) -> u16 {
        self.tls.as_ref().expect("a server started with TLS").port
    }

    /// Kills the server with SIGKILL (no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port; waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("could not restart redis-server on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command.arg("--port").arg(&port);
        match &self.tls {
            None => {
                command.arg("--bind").arg("127.0.0.1");
            }
            Some(tls) => {
                let auth_clients = if tls.auth_clients { "yes" } else { "no" };
                command
                    .args(["--bind", "127.0.0.1", "127.0.0.2"])
                    .arg("--tls-port")
                    .arg(tls.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", auth_clients]);
            }
        }
        command.args(&self.extra);
        let mut child = command
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server ({e}); scripts/test.sh installs it"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if redis_ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when a Redis server on `port` answers `PING` with `+PONG`.
pub fn redis_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}

/// PUBLISHes one message on a fresh connection; returns Redis's receiver count.
pub async fn publish(url: &str, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
    Publisher::connect(url)
        .await
        .publish(channel, payload)
        .await
}

/// A Redis connection kept open to publish many messages in order.
pub struct Publisher {
    /// One multiplexed connection: commands sent through it are executed in order.
    con: redis::aio::MultiplexedConnection,
}

impl Publisher {
    pub async fn connect(url: &str) -> Publisher {
        let client = redis::Client::open(url).expect("redis url");
        let con = tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
            .await
            .expect("timed out connecting to redis")
            .expect("connect to redis");
        Publisher { con }
    }

    /// PUBLISH; returns the number of receivers Redis reports.
    pub async fn publish(&mut self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let cmd = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .to_owned();
        tokio::time::timeout(WAIT, cmd.query_async::<i64>(&mut self.con))
            .await
            .expect("timed out publishing")
            .expect("PUBLISH")
    }

    /// PUBLISHes several messages in one pipeline, in order.
    pub async fn publish_many(&mut self, channel: &str, payloads: &[Vec<u8>]) {
        let mut pipe = redis::pipe();
        for p in payloads {
            pipe.cmd("PUBLISH").arg(channel).arg(p.as_slice()).ignore();
        }
        tokio::time::timeout(WAIT, pipe.query_async::<()>(&mut self.con))
            .await
            .expect("timed out publishing")
            .expect("PUBLISH pipeline");
    }
}

// ---------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------

/// The running daemon, started with `--log-format json`; killed on drop.
pub struct Bridge {
    /// The daemon process.
    child: Child,
    /// Holds the config file for the process's lifetime.
    dir: tempfile::TempDir,
    /// The config file given to `--config`.
    config: PathBuf,
    /// The address from the `listening` log line.
    addr: SocketAddr,
    /// Every stderr line so far.
    logs: Arc<Mutex<Vec<String>>>,
    /// Whether the process has been reaped (by `wait_exit`).
    exited: Option<ExitStatus>,
}

/// What a finished run of the binary gave.
#[derive(Debug)]
pub struct Exit {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The config file that was given to `--config`.
    pub config: PathBuf,
}

impl Bridge {
    /// Starts the daemon with `yaml` (`{redis_url}` replaced by the server's URL).
    pub fn start(redis: &RedisServer, yaml: &str) -> Bridge {
        Bridge::start_with(&yaml.replace("{redis_url}", &redis.url()), &[])
    }

    /// Starts the daemon with this exact config and extra environment variables.
    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Bridge {
        let dir = tempfile::tempdir().expect("temp dir for the bridge");
        let config = dir.path().join("bridge.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg("json")
            .env_remove("REDIS_WS_BRIDGE_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn redis-ws-bridge");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr pipe");
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + START_WAIT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        break addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "redis-ws-bridge exited ({status:?}) before listening; config:\n{yaml}\nlogs:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-ws-bridge printed no `listening` line within {START_WAIT:?}; logs:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        };
        Bridge {
            child,
            dir,
            config,
            addr,
            logs,
            exited: None,
        }
    }

    /// Runs `check --config FILE` on `yaml`.
    pub fn check(yaml: &str) -> Exit {
        Bridge::run_to_exit(yaml, &["check"], &[], &[])
    }

    /// Runs the binary with `args_before` + `--config FILE` + `args_after` and waits for its
    /// exit (at most `START_WAIT`, else it is killed and the test fails).
    pub fn run_to_exit(
        yaml: &str,
        args_before: &[&str],
        args_after: &[&str],
        env: &[(&str, &str)],
    ) -> Exit {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("bridge.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut args: Vec<std::ffi::OsString> = args_before.iter().map(Into::into).collect();
        args.push("--config".into());
        args.push(config.clone().into_os_string());
        args.extend(args_after.iter().map(Into::into));
        let mut exit = run_binary(&args, env, dir.path());
        exit.config = config;
        exit
    }

    /// The address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// `ws://ADDR` + `path_and_query`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Every stderr line so far, joined.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Every stderr line so far, each parsed as JSON (a plain string when it is not JSON).
    pub fn log_values(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone())))
            .collect()
    }

    /// Waits for a log line that satisfies `pred`; returns it.
    pub async fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.log_values().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching log line within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics (and kills it) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "redis-ws-bridge did not exit within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// GET `path`; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }

    /// GET `/ws/stats` as JSON, with the static admin token of [`config`] (the endpoint is
    /// for administrators only).
    pub async fn stats(&self) -> Value {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let (status, body) = http_get(
            self.addr,
            "/ws/stats",
            &[("Authorization", bearer.as_str())],
        )
        .await;
        assert_eq!(status, 200, "GET /ws/stats: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/ws/stats is not JSON ({e}): {body}"))
    }

    /// The value of one exact series of `/metrics` (`name` or `name{label="…"}`); `None`
    /// when the bridge does not export it.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    /// Waits until the history holds exactly `frames` retained frames.
    pub async fn wait_retained(&self, frames: u64) {
        wait_until_async(WAIT, &format!("{frames} frames retained"), || async {
            self.metric("bridge_history_frames").await == Some(frames)
        })
        .await;
    }

    /// Waits until the bridge has routed `messages` messages from Redis since it started:
    /// what they did to the history and to positions is then seen by any later command.
    pub async fn wait_received(&self, messages: u64) {
        wait_until_async(WAIT, &format!("{messages} messages routed"), || async {
            self.metric("bridge_redis_messages_received_total").await == Some(messages)
        })
        .await;
    }

    /// The daemon's resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status of the bridge");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/PID/status:\n{status}"))
    }

    /// The value of `field` for route `name` in `/ws/stats` (0 when absent).
    pub async fn route_stat(&self, name: &str, field: &str) -> u64 {
        route_stat(&self.stats().await, name, field)
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        self.wait_readyz(200, Duration::from_secs(30)).await;
    }

    /// Polls `/readyz` until it answers `status`; returns the body of that answer.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (got, body) = self.get("/readyz").await;
            if got == status {
                return body;
            }
            if Instant::now() >= deadline {
                panic!(
                    "/readyz still {got} ({body}) after {timeout:?}, expected {status}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Connects a WebSocket client to `/ws` and reads its `connected` frame.
    pub async fn client(&self) -> WsClient {
        self.client_at("/ws").await
    }

    /// Connects a WebSocket client to `path_and_query` and reads its `connected` frame.
    pub async fn client_at(&self, path_and_query: &str) -> WsClient {
        let mut c = WsClient::connect(&self.ws_url(path_and_query), &[]).await;
        let welcome = c.recv_json(WAIT).await;
        assert_eq!(welcome["type"], "connected", "first frame: {welcome}");
        c.welcome = welcome;
        c
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- redis-ws-bridge logs ----\n{}", self.logs());
        }
    }
}

/// The address of a `listening` log line (JSON, fields flattened or under `fields`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let message = log_field(&v, "message")?.as_str()?;
        if !message.starts_with("listening") {
            return None;
        }
        return log_field(&v, "addr")?.as_str()?.parse().ok();
    }
    // A text line, should the format flag be ignored: `... listening addr=127.0.0.1:1234`.
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("addr=")? + 5..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// A field of a JSON log line: top level, or under `fields` (tracing's unflattened form).
pub fn log_field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key)
        .or_else(|| v.get("fields").and_then(|f| f.get(key)))
}

/// Runs the binary to completion with a timeout, capturing its output.
pub fn run_binary(args: &[std::ffi::OsString], env: &[(&str, &str)], cwd: &Path) -> Exit {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("REDIS_WS_BRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn redis-ws-bridge");
    let (status, stdout, stderr) =
        wait_output(child, START_WAIT, &format!("redis-ws-bridge {args:?}"));
    Exit {
        code: status.code(),
        stdout,
        stderr,
        config: PathBuf::new(),
    }
}

/// Waits for a child spawned with piped stdout and stderr, reading both meanwhile (so a full
/// pipe cannot block it); kills it and fails the test, showing its stderr, past `timeout`.
pub fn wait_output(
    mut child: Child,
    timeout: Duration,
    what: &str,
) -> (ExitStatus, String, String) {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("{what} did not finish within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(POLL);
    };
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// GET over a raw HTTP/1.1 connection (`Connection: close`); returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(addr, "GET", path, headers, None).await
}

/// POST a body over a raw HTTP/1.1 connection (`Connection: close`); returns (status, body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request(addr, "POST", path, headers, Some(body)).await
}

/// An HTTP answer with its headers (names in lower case, in order).
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of the header `name` (lower case); panics when it is absent or repeated.
    pub fn header(&self, name: &str) -> &str {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        match values[..] {
            [value] => value,
            _ => panic!("expected one `{name}` header, got {values:?}"),
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

/// GET over a raw HTTP/1.1 connection (`Connection: close`), with the answer's headers.
pub async fn http_get_response(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let raw = http_exchange(addr, "GET", path, headers, None).await;
    parse_http_response_full(&raw)
}

/// HEAD over a raw HTTP/1.1 connection (`Connection: close`), with the answer's headers; the
/// body is whatever the server sent after them (nothing, if it is right).
pub async fn http_head_response(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let raw = http_exchange(addr, "HEAD", path, headers, None).await;
    parse_http_response_full(&raw)
}

async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let raw = http_exchange(addr, method, path, headers, body).await;
    parse_http_response(&raw)
}

/// Sends one request and reads the whole answer, raw.
async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect for HTTP");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        if let Some(body) = body {
            req.push_str(body);
        }
        s.write_all(req.as_bytes())
            .await
            .expect("write HTTP request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read HTTP response");
        raw
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {method} {path}"))
}

fn parse_http_response(raw: &[u8]) -> (u16, String) {
    let response = parse_http_response_full(raw);
    (response.status, response.body)
}

fn parse_http_response_full(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP status line: {head}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// One frame as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: (code, reason), `None` without a code.
    Close(Option<(u16, String)>),
    /// The stream ended without a close frame.
    Ended,
    /// A transport or protocol error (e.g. a TCP reset).
    Error(String),
}

/// Why a WebSocket connection was not established.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade request with this HTTP status and body.
    Status(u16, String),
    Other(String),
}

/// A real WebSocket client (tokio-tungstenite; it answers pings by itself while reading).
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `connected` frame, when read by `Bridge::client`.
    pub welcome: Value,
}

impl WsClient {
    /// Connects or panics.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> WsClient {
        match WsClient::try_connect(url, headers).await {
            Ok(c) => c,
            Err(e) => panic!("WebSocket connect to {url} failed: {e:?}"),
        }
    }

    /// Connects with extra request headers.
    pub async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, ConnectError> {
        let req = request(url, headers);
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
            Err(_) => Err(ConnectError::Other("timed out".into())),
            Ok(Ok((ws, _))) => Ok(WsClient {
                ws,
                welcome: Value::Null,
            }),
            Ok(Err(e)) => Err(connect_error(e)),
        }
    }

    /// Connects over a socket whose receive buffer is `recv_buffer` bytes: a client that
    /// stops reading fills up fast.
    pub async fn connect_small_buffer(url: &str, addr: SocketAddr, recv_buffer: u32) -> WsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("timed out connecting")
            .expect("connect");
        let req = request(url, &[]);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("timed out in the WebSocket handshake")
        .unwrap_or_else(|e| panic!("WebSocket handshake failed: {:?}", connect_error(e)));
        WsClient {
            ws,
            welcome: Value::Null,
        }
    }

    /// Connects from the local address `from` (every 127.x.y.z is this machine: a client
    /// address of its own, e.g. for per-address limits); the upgrade may be refused.
    pub async fn try_connect_from(
        url: &str,
        server: SocketAddr,
        from: std::net::IpAddr,
    ) -> Result<WsClient, ConnectError> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client address");
        let stream = tokio::time::timeout(WAIT, socket.connect(server))
            .await
            .map_err(|_| ConnectError::Other("timed out connecting".into()))?
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let req = request(url, &[]);
        match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)),
        )
        .await
        {
            Err(_) => Err(ConnectError::Other("timed out".into())),
            Ok(Ok((ws, _))) => Ok(WsClient {
                ws,
                welcome: Value::Null,
            }),
            Ok(Err(e)) => Err(connect_error(e)),
        }
    }

    /// Connects over TLS (`wss://`) to `server` from the local address `from` (every
    /// 127.x.y.z is this machine, so a proxy in front sees a client address of its own),
    /// trusting the PEM certificate `ca`; `headers` go with the handshake.
    pub async fn connect_tls(
        url: &str,
        server: SocketAddr,
        from: std::net::IpAddr,
        ca: &[u8],
        headers: &[(&str, &str)],
    ) -> WsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client address");
        let stream = tokio::time::timeout(WAIT, socket.connect(server))
            .await
            .expect("timed out connecting")
            .expect("connect");
        let tls = native_tls::TlsConnector::builder()
            .add_root_certificate(native_tls::Certificate::from_pem(ca).expect("PEM certificate"))
            .build()
            .expect("TLS connector");
        let req = request(url, headers);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async_tls_with_config(
                req,
                stream,
                None,
                Some(tokio_tungstenite::Connector::NativeTls(tls)),
            ),
        )
        .await
        .expect("timed out in the TLS or WebSocket handshake")
        .unwrap_or_else(|e| panic!("wss handshake failed: {:?}", connect_error(e)));
        WsClient {
            ws,
            welcome: Value::Null,
        }
    }

    /// The next frame of any kind, or `None` when `timeout` passes first.
    pub async fn try_recv_raw(&mut self, timeout: Duration) -> Option<Frame> {
        let next = tokio::time::timeout(timeout, self.ws.next()).await.ok()?;
        Some(match next {
            None => Frame::Ended,
            Some(Err(e)) => Frame::Error(e.to_string()),
            Some(Ok(m)) => match m {
                Message::Text(t) => Frame::Text(t.as_str().to_owned()),
                Message::Binary(b) => Frame::Binary(b.to_vec()),
                Message::Ping(b) => Frame::Ping(b.to_vec()),
                Message::Pong(b) => Frame::Pong(b.to_vec()),
                Message::Close(c) => {
                    Frame::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
                }
                Message::Frame(f) => Frame::Error(format!("unexpected raw frame {f:?}")),
            },
        })
    }

    /// The next frame of any kind (pings and pongs included); panics on timeout.
    pub async fn recv_raw(&mut self, timeout: Duration) -> Frame {
        match self.try_recv_raw(timeout).await {
            Some(f) => f,
            None => panic!("no frame within {timeout:?}"),
        }
    }

    /// The next frame, skipping WebSocket pings and pongs; `None` on timeout.
    pub async fn try_recv_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_recv_raw(left).await? {
                Frame::Ping(_) | Frame::Pong(_) => continue,
                f => return Some(f),
            }
        }
    }

    /// The next text, binary or close frame (pings and pongs skipped); panics on timeout.
    pub async fn recv_frame(&mut self, timeout: Duration) -> Frame {
        match self.try_recv_frame(timeout).await {
            Some(f) => f,
            None => panic!("no frame within {timeout:?}"),
        }
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.recv_frame(timeout).await {
            Frame::Text(t) => serde_json::from_str(&t)
                .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {t:?}")),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// `recv_json` with the default wait.
    pub async fn next_json(&mut self) -> Value {
        self.recv_json(WAIT).await
    }

    /// The next frame, which must be a text frame; returns its exact text.
    pub async fn recv_text(&mut self) -> String {
        match self.recv_frame(WAIT).await {
            Frame::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn send(&mut self, m: Message) {
        tokio::time::timeout(WAIT, self.ws.send(m))
            .await
            .expect("timed out sending")
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: &str) {
        self.send(Message::text(t)).await;
    }

    pub async fn send_binary(&mut self, b: &[u8]) {
        self.send(Message::binary(b.to_vec())).await;
    }

    /// Writes every text frame with one flush, as fast as the socket takes them; false when
    /// the connection failed on the way (a server may close a flooding client meanwhile).
    pub async fn send_burst(&mut self, texts: &[String]) -> bool {
        let ws = &mut self.ws;
        let burst = async {
            for t in texts {
                ws.feed(Message::text(t.as_str())).await?;
            }
            ws.flush().await
        };
        matches!(tokio::time::timeout(WAIT, burst).await, Ok(Ok(())))
    }

    /// The next frame must be a close frame with a code; returns (code, reason).
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        match self.recv_frame(timeout).await {
            Frame::Close(Some((code, reason))) => (code, reason),
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }

    /// Subscribes and expects exactly `{"type":"subscribed","id":id,"topics":topics}`, but
    /// for the `position` of topics with history.
    pub async fn subscribe(&mut self, id: u64, topics: &[&str]) {
        self.send_json(&serde_json::json!({"type": "subscribe", "id": id, "topics": topics}))
            .await;
        let ack = without_position(self.next_json().await);
        assert_eq!(
            ack,
            serde_json::json!({"type": "subscribed", "id": id, "topics": topics}),
            "subscribe ack"
        );
    }

    /// Subscribes with a filter and expects the exact `subscribed` answer, but for the
    /// `position` of topics with history.
    pub async fn subscribe_filtered(&mut self, id: u64, topics: &[&str], filter: Value) {
        self.send_json(&serde_json::json!({
            "type": "subscribe", "id": id, "topics": topics, "filter": filter
        }))
        .await;
        let ack = without_position(self.next_json().await);
        assert_eq!(
            ack,
            serde_json::json!({"type": "subscribed", "id": id, "topics": topics}),
            "subscribe ack"
        );
    }

    /// Sends `{"type":"ping","id":id}`; the very next frame must be exactly the pong. Proves
    /// the connection is alive and that nothing else was queued before it.
    pub async fn assert_pong(&mut self, id: u64) {
        self.send_json(&serde_json::json!({"type": "ping", "id": id}))
            .await;
        let pong = self.next_json().await;
        assert_eq!(
            pong,
            serde_json::json!({"type": "pong", "id": id}),
            "ping answer"
        );
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}

/// A `subscribed` answer without its `position` (checked where it is the point).
pub fn without_position(mut answer: Value) -> Value {
    if let Some(fields) = answer.as_object_mut() {
        fields.remove("position");
    }
    answer
}

fn request(url: &str, headers: &[(&str, &str)]) -> tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().expect("WebSocket request");
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    req
}

fn connect_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            ConnectError::Status(status, body)
        }
        other => ConnectError::Other(other.to_string()),
    }
}

/// The value of `field` for route `name` in a `/ws/stats` document (0 when absent).
pub fn route_stat(stats: &Value, name: &str, field: &str) -> u64 {
    stats["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("/ws/stats has no routes array: {stats}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("/ws/stats has no route {name}: {stats}"))
        .get(field)
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A raw WebSocket handshake over TCP, after which the test decides what (not) to do.
pub async fn raw_ws_handshake(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let (s, _, rest) = raw_ws_handshake_with(addr, path, &[]).await;
    (s, rest)
}

/// [`raw_ws_handshake`] with extra request header lines (`Name: value`); also returns the
/// 101 answer's head.
pub async fn raw_ws_handshake_with(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for header in headers {
        req.push_str(header);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write handshake");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("timed out reading the handshake answer")
            .expect("read handshake answer");
        assert!(n > 0, "connection closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101 Switching Protocols, got {head}"
    );
    let rest = buf[split + 4..].to_vec();
    (s, head, rest)
}

/// Parses unmasked server frames; returns their opcodes (and leaves a partial tail).
pub fn parse_server_opcodes(buf: &mut Vec<u8>) -> Vec<u8> {
    let mut ops = Vec::new();
    loop {
        if buf.len() < 2 {
            break;
        }
        let op = buf[0] & 0x0f;
        let masked = buf[1] & 0x80 != 0;
        let mut len = (buf[1] & 0x7f) as usize;
        let mut at = 2;
        if len == 126 {
            if buf.len() < 4 {
                break;
            }
            len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            at = 4;
        } else if len == 127 {
            if buf.len() < 10 {
                break;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            len = u64::from_be_bytes(b) as usize;
            at = 10;
        }
        if masked {
            at += 4;
        }
        if buf.len() < at + len {
            break;
        }
        ops.push(op);
        buf.drain(..at + len);
    }
    ops
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// The static admin token that [`config`] sets (`admin.token`) and [`Bridge::stats`] sends.
pub const ADMIN_TOKEN: &str = "support-admin-token-0123456789";

/// A routing file: `listen: 127.0.0.1:0`, the test's Redis (`{redis_url}`), `websocket:`
/// with `path: /ws` plus `websocket` (indented for you), `admin.token: ADMIN_TOKEN`,
/// `shutdown_grace: 5s`, and `routes` (a YAML list, indented for you).
pub fn config(websocket: &str, routes: &str) -> String {
    config_with(
        websocket,
        &format!("admin:\n  token: {ADMIN_TOKEN}\n"),
        routes,
    )
}

/// [`config`] with `sections` (top-level YAML such as `auth:` and `admin:`, written as they
/// are, not indented) in place of the default `admin` section.
pub fn config_with(websocket: &str, sections: &str, routes: &str) -> String {
    let mut s =
        String::from("listen: 127.0.0.1:0\nredis:\n  url: {redis_url}\nwebsocket:\n  path: /ws\n");
    for line in dedent(websocket).lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&dedent(sections));
    s.push_str("shutdown_grace: 5s\nroutes:\n");
    for line in dedent(routes).lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The route most tests need: `job:<id>` channels to `job:<id>` topics, by subscription.
pub const JOB_ROUTE: &str = r#"
    - name: jobs
      pattern: "job:*"
      topic: "job:{1}"
    "#;

/// Starts Redis and a bridge on `config(websocket, routes)`, and waits until it is ready.
pub async fn start(websocket: &str, routes: &str) -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config(websocket, routes));
    bridge.wait_ready().await;
    (redis, bridge)
}

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `node` (or `$BRIDGE_TEST_NODE`), checked once to run.
pub fn node() -> &'static Path {
    static NODE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let node = std::env::var_os("BRIDGE_TEST_NODE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("node"));
        let runs = Command::new(&node)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            runs,
            "cannot run `{}`: run scripts/test.sh once (it installs nodejs and npm when they \
             are missing)",
            node.display()
        );
        node
    })
}

/// The Node project `dir` (relative to the repository), whose node_modules must hold
/// `package`.
pub fn node_project(dir: &str, package: &str) -> PathBuf {
    let dir = repo().join(dir);
    assert!(
        dir.join("node_modules")
            .join(package)
            .join("package.json")
            .is_file(),
        "{} has no node_modules/{package}: run scripts/test.sh once (it runs `npm ci` there)",
        dir.display()
    );
    dir
}
