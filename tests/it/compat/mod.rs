//! The five existing backends (README.md, "Migrating an existing backend"), each served by its example routing file
//! under `examples/`, unchanged but for the variables it reads (listen address, Redis URL,
//! secret file, admin token), with the payloads its workers publish sent by a real publisher
//! in the worker's own language: redis-py (`tests/publishers/publish.py`) for the Python
//! workers, node-redis (`tests/publishers/node/publish.js`) for the Node one.
//!
//! Every profile connects several clients at once (users, roles, workspaces, anonymous where
//! allowed) and asserts the exact frames each one receives, in order. Absence is proven with
//! markers: what must not arrive is published before a message the client does receive, and
//! the next frame must be that message (one Redis connection delivers in order).

mod botrix;
mod intelligent_workflows;
mod mangamotion;
mod shadower_analytics;
mod user_hub;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::support::tokens::{SECRET, SERVICE_KEY, sha256_hex};
use crate::support::{
    ADMIN_TOKEN, Bridge, ConnectError, RedisServer, WAIT, WsClient, assert_rfc3339_ms_utc, node,
    node_project, repo, wait_output,
};

/// The examples, with the number of routes and inbound routes `check` must report for each.
const EXAMPLES: &[(&str, usize)] = &[
    ("botrix", 1),
    ("user-hub", 4),
    ("shadower-analytics", 3),
    ("intelligent-workflows", 2),
    ("mangamotion", 1),
];

/// How long a publisher process may take (an interpreter start and a few PUBLISHes).
const PUBLISHER_WAIT: Duration = Duration::from_secs(30);

/// The text of `examples/NAME.yaml`.
fn example(name: &str) -> String {
    let path = repo().join("examples").join(format!("{name}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The secret file the examples' `secret_file: ${BRIDGE_JWT_SECRET_FILE:-…}` reads: the
/// tests' HS256 secret, so that `tokens::hs256` signs tokens the bridge accepts.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::tempdir().expect("temp dir for the secret");
        std::fs::write(dir.path().join("jwt.secret"), format!("{SECRET}\n")).expect("write secret");
        Secrets { dir }
    }

    /// The variables every example may read, for a bridge on a free port and `redis_url`.
    fn env(&self, redis_url: &str) -> Vec<(String, String)> {
        let secret_file = self.dir.path().join("jwt.secret");
        vec![
            ("BRIDGE_LISTEN".into(), "127.0.0.1:0".into()),
            ("BRIDGE_REDIS_URL".into(), redis_url.into()),
            (
                "BRIDGE_JWT_SECRET_FILE".into(),
                secret_file.display().to_string(),
            ),
            ("BRIDGE_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            // intelligent-workflows' reporting service authenticates with the tests' key.
            (
                "WORKFLOWS_REPORTING_KEY_SHA256".into(),
                sha256_hex(SERVICE_KEY),
            ),
        ]
    }
}

/// A real Redis and the daemon running one example file.
struct Profile {
    redis: RedisServer,
    bridge: Bridge,
    /// Holds the secret file for the daemon's lifetime.
    _secrets: Secrets,
}

impl Profile {
    /// Starts Redis and the daemon with `examples/NAME.yaml`; waits until it is ready.
    async fn start(name: &str) -> Profile {
        let redis = RedisServer::start();
        let secrets = Secrets::new();
        let env = secrets.env(&redis.url());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bridge = Bridge::start_with(&example(name), &env);
        bridge.wait_ready().await;
        Profile {
            redis,
            bridge,
            _secrets: secrets,
        }
    }

    /// Connects to `path_and_query` with `headers` and reads the first frame (the welcome)
    /// into `welcome`.
    async fn connect(&self, path_and_query: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut client = WsClient::connect(&self.bridge.ws_url(path_and_query), headers).await;
        client.welcome = client.recv_json(WAIT).await;
        client
    }

    /// Connects with `?token=TOKEN` and reads the welcome frame.
    async fn connect_token(&self, token: &str) -> WsClient {
        self.connect(&format!("/ws?token={token}"), &[]).await
    }

    /// The HTTP status of a refused upgrade of `path_and_query`.
    async fn refused(&self, path_and_query: &str, headers: &[(&str, &str)]) -> u16 {
        match WsClient::try_connect(&self.bridge.ws_url(path_and_query), headers).await {
            Err(ConnectError::Status(status, _)) => status,
            Err(other) => panic!("expected an HTTP refusal of {path_and_query}, got {other:?}"),
            Ok(_) => panic!("the upgrade of {path_and_query} was accepted"),
        }
    }

    /// GET /ws/stats with `Authorization: <authorization>`; (status, body as JSON or null).
    async fn stats_as(&self, authorization: &str) -> (u16, Value) {
        let (status, body) = crate::support::http_get(
            self.bridge.addr(),
            "/ws/stats",
            &[("Authorization", authorization)],
        )
        .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

#[test]
fn every_example_passes_check() {
    let secrets = Secrets::new();
    let env = secrets.env("redis://127.0.0.1:6379/0");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (name, routes) in EXAMPLES {
        let exit = Bridge::run_to_exit(&example(name), &["check"], &[], &env);
        assert_eq!(
            exit.code,
            Some(0),
            "check examples/{name}.yaml\nstdout:\n{}\nstderr:\n{}",
            exit.stdout,
            exit.stderr
        );
        let lines = exit.stdout.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(
            lines, *routes,
            "one line per route and inbound route of {name}:\n{}",
            exit.stdout
        );
    }
    // The secret file is required: without it the daemon refuses to start, naming the
    // missing file, and `check` warns about it (the file itself is valid).
    let without: Vec<(&str, &str)> = env
        .iter()
        .map(|&(k, v)| match k {
            "BRIDGE_JWT_SECRET_FILE" => (k, "/nonexistent/jwt.secret"),
            _ => (k, v),
        })
        .collect();
    let exit = Bridge::run_to_exit(&example("user-hub"), &["run"], &[], &without);
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("/nonexistent/jwt.secret"),
        "{}",
        exit.stderr
    );
    let exit = Bridge::run_to_exit(&example("user-hub"), &["check"], &[], &without);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        exit.stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains("`/nonexistent/jwt.secret` does not exist yet")),
        "{}",
        exit.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------------------

/// A worker's message for a publisher: `json` is the message as the documents show it; the
/// publisher parses it into its language's objects (keeping the key order) and serialises
/// it with its own JSON library before PUBLISHing, as the worker does.
fn worker(channel: &str, json: &str) -> Value {
    serde_json::from_str::<Value>(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    serde_json::json!({"channel": channel, "json": json})
}

/// A message published as it is, as typed into redis-cli.
fn by_hand(channel: &str, text: &str) -> Value {
    serde_json::json!({"channel": channel, "text": text})
}

/// One message as a publisher sent it.
#[derive(Debug, Clone)]
struct Published {
    channel: String,
    /// The exact text PUBLISHed.
    payload: String,
    /// Redis's receiver count: 1 when the bridge subscribes the channel.
    receivers: i64,
}

/// The Python with redis-py: `$BRIDGE_TEST_PYTHON` (set by scripts/test.sh), else the
/// repository's `.venv`. Checked once: a missing interpreter or package fails with what to run.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var_os("BRIDGE_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".venv/bin/python"));
        let ok = Command::new(&python)
            .args(["-c", "import redis"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{} cannot `import redis`: the Python publisher needs redis-py in the repository's \
             .venv; run scripts/test.sh once (it creates .venv and installs it)",
            python.display()
        );
        python
    })
}

/// Publishes `messages` (stdin lines of `tests/publishers/publish.py`) with redis-py.
async fn publish_python(redis_url: &str, messages: &[Value]) -> Vec<Published> {
    let script = repo().join("tests/publishers/publish.py");
    run_publisher(python().to_path_buf(), script, redis_url, messages).await
}

/// Publishes `messages` (stdin lines of `tests/publishers/node/publish.js`) with node-redis.
async fn publish_node(redis_url: &str, messages: &[Value]) -> Vec<Published> {
    let dir = node_project("tests/publishers/node", "redis");
    let node = node();
    run_publisher(
        node.to_path_buf(),
        dir.join("publish.js"),
        redis_url,
        messages,
    )
    .await
}

/// Runs a publisher to completion off the async runtime; every message must have reached
/// exactly one subscriber (the bridge).
async fn run_publisher(
    program: PathBuf,
    script: PathBuf,
    redis_url: &str,
    messages: &[Value],
) -> Vec<Published> {
    let input: String = messages.iter().map(|m| format!("{m}\n")).collect();
    let url = redis_url.to_owned();
    let published = tokio::task::spawn_blocking(move || {
        run_publisher_blocking(&program, &script, &url, &input)
    })
    .await
    .expect("publisher task");
    assert_eq!(
        published.len(),
        messages.len(),
        "one line per message: {published:?}"
    );
    for p in &published {
        assert_eq!(
            p.receivers, 1,
            "the bridge must be the one subscriber: {p:?}"
        );
    }
    published
}

fn run_publisher_blocking(program: &Path, script: &Path, url: &str, input: &str) -> Vec<Published> {
    let mut child = Command::new(program)
        .arg(script)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", program.display(), script.display()));
    let mut stdin = child.stdin.take().expect("stdin pipe");
    stdin.write_all(input.as_bytes()).expect("write messages");
    drop(stdin);
    let what = script.display().to_string();
    let (status, stdout, stderr) = wait_output(child, PUBLISHER_WAIT, &what);
    assert!(
        status.success(),
        "{} failed ({status}); stderr:\n{stderr}",
        script.display()
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("publisher line is not JSON ({e}): {line}"));
            Published {
                channel: v["channel"].as_str().expect("channel").to_owned(),
                payload: v["payload"].as_str().expect("payload").to_owned(),
                receivers: v["receivers"].as_i64().expect("receivers"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// `frame` with its timestamp field `key` checked (RFC 3339 UTC, milliseconds) and
/// replaced by `"<ts>"`, so that the rest can be compared exactly.
fn stamped(mut frame: Value, key: &str) -> Value {
    let ts = frame
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("frame has no string `{key}`: {frame}"))
        .to_owned();
    assert_rfc3339_ms_utc(&ts);
    frame[key] = Value::from("<ts>");
    frame
}

/// The next frames of `client` must be exactly `expected`, in order (each frame's
/// timestamp field `ts_key` checked and compared as `"<ts>"`); `who` names the client in
/// failures.
async fn expect_frames(client: &mut WsClient, who: &str, ts_key: &str, expected: &[Value]) {
    for (i, want) in expected.iter().enumerate() {
        let got = client.next_json().await;
        let got = stamped(got, ts_key);
        assert_eq!(&got, want, "{who}: frame {i}");
    }
}

/// The next text frames of `client` must be exactly the payloads of `expected`, byte for
/// byte (format: raw).
async fn expect_raw(client: &mut WsClient, who: &str, expected: &[&Published]) {
    for (i, want) in expected.iter().enumerate() {
        let got = client.recv_text().await;
        assert_eq!(
            got, want.payload,
            "{who}: frame {i} must be the published JSON unchanged"
        );
    }
}
