//! TLS to Redis: a real `redis-server` with a TLS port and certificates made by `openssl` for
//! each test. Every connection the bridge makes (subscriber, heartbeats, `/api/publish`) goes
//! through TLS with the configured CA, and mutual TLS with the client certificate; a server
//! the bridge cannot verify keeps it not ready, with one log line, a metric and retries, until
//! the files are right, without a restart. The tests publish on the server's plain port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, Bridge, JOB_ROUTE, RedisServer, RedisTls, WAIT, config, http_post, log_field,
    publish, wait_until_async,
};

/// A CA, a server certificate for `localhost` and 127.0.0.1 (not 127.0.0.2), a client
/// certificate of the same CA, and a second CA that signed none of them.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let certificates = Certificates { dir };
        certificates.authority("ca");
        certificates.authority("other-ca");
        certificates.signed(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        );
        certificates.signed("client", "bridge", "extendedKeyUsage=clientAuth");
        // The server's names, but no longer valid: its end lies a day before its start.
        certificates.signed_for(
            "expired",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-1",
        );
        certificates
    }

    /// `ca.pem`, `other-ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`, `expired.pem`/`.key`
    /// (the server's names, expired).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn authority(&self, name: &str) {
        let subject = format!("/CN=test {name}");
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn signed(&self, name: &str, common_name: &str, extension: &str) {
        self.signed_for(name, common_name, extension, "2");
    }

    fn signed_for(&self, name: &str, common_name: &str, extension: &str, days: &str) {
        let subject = format!("/CN={common_name}");
        std::fs::write(self.path(&format!("{name}.ext")), format!("{extension}\n"))
            .expect("write the extension file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A Redis with a TLS port serving the server certificate; with `auth_clients`, clients
    /// must present a certificate of the CA.
    fn redis(&self, auth_clients: bool) -> RedisServer {
        RedisServer::start_with_tls(Some(self.server_tls(auth_clients)))
    }

    /// The TLS settings of a server that presents the server certificate (its port is picked
    /// when it starts).
    pub fn server_tls(&self, auth_clients: bool) -> RedisTls {
        RedisTls {
            port: 0,
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            ca: self.path("ca.pem"),
            auth_clients,
        }
    }
}

/// The routing file of these tests: `url`, the `tls` lines (indented under `redis`), a fast
/// watchdog (so that heartbeats flow during the test), and the jobs route.
fn tls_config(url: &str, tls: &str) -> String {
    config("", JOB_ROUTE).replacen(
        "  url: {redis_url}\n",
        &format!("  url: {url}\n{tls}  heartbeat_interval: 200ms\n  heartbeat_timeout: 2s\n"),
        1,
    )
}

fn tls_section(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> String {
    let mut yaml = String::from("  tls:\n");
    if let Some(ca) = ca {
        yaml.push_str(&format!("    ca_file: {}\n", ca.display()));
    }
    if let Some((cert, key)) = client {
        yaml.push_str(&format!(
            "    cert_file: {}\n    key_file: {}\n",
            cert.display(),
            key.display()
        ));
    }
    yaml
}

const TLS_ERRORS: &str = "bridge_redis_connect_errors_total{reason=\"tls\"}";

/// The sum of `bridge_redis_connect_errors_total` over its reasons.
async fn connect_errors(bridge: &Bridge) -> u64 {
    let mut total = 0;
    for reason in ["tls", "auth", "denied", "unreachable", "other"] {
        let series = format!("bridge_redis_connect_errors_total{{reason=\"{reason}\"}}");
        total += bridge
            .metric(&series)
            .await
            .unwrap_or_else(|| panic!("{series} is exported"));
    }
    total
}

/// The bridge's `redis unavailable` log lines.
fn unavailable_lines(bridge: &Bridge) -> Vec<Value> {
    bridge
        .log_values()
        .into_iter()
        .filter(|v| log_field(v, "message").and_then(Value::as_str) == Some("redis unavailable"))
        .collect()
}

/// A job frame published on the server's plain port reaches a client subscribed through the
/// bridge, and one sent with `POST /api/publish` (the bridge's own TLS connection) too.
async fn assert_delivers(redis: &RedisServer, bridge: &Bridge) {
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:7"]).await;
    publish(&redis.url(), "job:7", r#"{"n":1}"#).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["topic"], "job:7", "{frame}");
    assert_eq!(frame["data"], json!({"n": 1}), "{frame}");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http_post(
        bridge.addr(),
        "/api/publish",
        &[("Authorization", bearer.as_str())],
        r#"{"channel": "job:7", "payload": {"n": 2}}"#,
    )
    .await;
    assert_eq!(status, 200, "POST /api/publish over TLS: {body}");
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": 2}), "{frame}");
}

#[tokio::test]
async fn tls_with_a_ca_file_carries_subscriptions_heartbeats_and_api_publish() {
    let certificates = Certificates::make();
    let redis = certificates.redis(false);
    // The heartbeats are watched on the plain port: they can only come from the bridge's
    // TLS connection.
    let watcher = redis::Client::open(redis.url()).expect("redis url");
    let mut heartbeats = watcher.get_async_pubsub().await.expect("subscribe");
    heartbeats
        .psubscribe("__redis-ws-bridge__:heartbeat:*")
        .await
        .expect("PSUBSCRIBE");
    let url = format!("rediss://localhost:{}/0", redis.tls_port());
    let tls = tls_section(Some(&certificates.path("ca.pem")), None);
    let bridge = Bridge::start_with(&tls_config(&url, &tls), &[]);
    bridge.wait_ready().await;
    assert_delivers(&redis, &bridge).await;
    let mut messages = heartbeats.on_message();
    for n in 0..3 {
        tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap_or_else(|_| panic!("heartbeat {n} did not come over TLS"))
            .expect("the heartbeat subscription ended");
    }
    assert_eq!(bridge.metric("bridge_redis_stalls_total").await, Some(0));
    assert_eq!(connect_errors(&bridge).await, 0, "{}", bridge.logs());
    assert!(unavailable_lines(&bridge).is_empty(), "{}", bridge.logs());
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let certificates = Certificates::make();
    let redis = certificates.redis(true);
    let url = format!("rediss://localhost:{}/0", redis.tls_port());
    let ca = certificates.path("ca.pem");
    let identity = (
        certificates.path("client.pem").clone(),
        certificates.path("client.key").clone(),
    );
    let with_certificate = tls_section(Some(&ca), Some((&identity.0, &identity.1)));
    let bridge = Bridge::start_with(&tls_config(&url, &with_certificate), &[]);
    bridge.wait_ready().await;
    assert_delivers(&redis, &bridge).await;
    assert_eq!(connect_errors(&bridge).await, 0, "{}", bridge.logs());

    // The same server refuses a bridge that presents none: never ready, and it says why.
    let without = Bridge::start_with(&tls_config(&url, &tls_section(Some(&ca), None)), &[]);
    wait_until_async(
        WAIT,
        "failed attempts without a client certificate",
        || async { connect_errors(&without).await >= 2 },
    )
    .await;
    without.wait_readyz(503, WAIT).await;
    let lines = unavailable_lines(&without);
    assert_eq!(lines.len(), 1, "one line for one error: {}", without.logs());
    assert_eq!(log_field(&lines[0], "reason"), Some(&json!("tls")));
    let error = log_field(&lines[0], "error")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(error.contains("CertificateRequired"), "{}", without.logs());
}

#[tokio::test]
async fn an_unknown_ca_or_a_wrong_host_name_keeps_the_bridge_not_ready_and_says_so() {
    let certificates = Certificates::make();
    let redis = certificates.redis(false);
    // The CA file the bridge trusts holds another CA at first.
    let trusted = tempfile::tempdir().expect("temp dir");
    let ca_file = trusted.path().join("redis-ca.pem");
    std::fs::copy(certificates.path("other-ca.pem"), &ca_file).expect("copy the CA");
    let url = format!("rediss://localhost:{}/0", redis.tls_port());
    let bridge = Bridge::start_with(&tls_config(&url, &tls_section(Some(&ca_file), None)), &[]);
    wait_until_async(WAIT, "several refused TLS handshakes", || async {
        bridge.metric(TLS_ERRORS).await.unwrap_or(0) >= 3
    })
    .await;
    let (status, body) = bridge.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let lines = unavailable_lines(&bridge);
    assert_eq!(
        lines.len(),
        1,
        "one line per distinct error: {}",
        bridge.logs()
    );
    let line = &lines[0];
    assert_eq!(log_field(line, "reason"), Some(&json!("tls")), "{line}");
    let error = log_field(line, "error")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(error.contains("UnknownIssuer"), "{line}");
    assert_eq!(
        bridge.metric("bridge_redis_connected").await,
        Some(0),
        "not connected"
    );

    // Replacing the CA file is picked up without a restart: the retries then succeed.
    std::fs::copy(certificates.path("ca.pem"), &ca_file).expect("replace the CA");
    bridge.wait_readyz(200, Duration::from_secs(20)).await;
    assert_delivers(&redis, &bridge).await;

    // A name the server's certificate does not hold.
    let wrong_host = format!("rediss://127.0.0.2:{}/0", redis.tls_port());
    let tls = tls_section(Some(&certificates.path("ca.pem")), None);
    let misnamed = Bridge::start_with(&tls_config(&wrong_host, &tls), &[]);
    wait_until_async(WAIT, "refused handshakes for a wrong name", || async {
        misnamed.metric(TLS_ERRORS).await.unwrap_or(0) >= 2
    })
    .await;
    misnamed.wait_readyz(503, WAIT).await;
    let lines = unavailable_lines(&misnamed);
    assert_eq!(lines.len(), 1, "{}", misnamed.logs());
    let error = log_field(&lines[0], "error")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(error.contains("not valid for name"), "{}", misnamed.logs());
}

#[tokio::test]
async fn an_expired_server_certificate_is_named_retried_with_backoff_and_recovered_from() {
    let certificates = Certificates::make();
    let redis = RedisServer::start_with_tls(Some(RedisTls {
        cert: certificates.path("expired.pem"),
        key: certificates.path("expired.key"),
        ..certificates.server_tls(false)
    }));
    let url = format!("rediss://localhost:{}/0", redis.tls_port());
    let tls = tls_section(Some(&certificates.path("ca.pem")), None);
    let bridge = Bridge::start_with(&tls_config(&url, &tls), &[]);
    wait_until_async(WAIT, "refused handshakes", || async {
        bridge.metric(TLS_ERRORS).await.unwrap_or(0) >= 3
    })
    .await;
    let (status, body) = bridge.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(bridge.metric("bridge_redis_connected").await, Some(0));

    // Retried with a growing delay (0.1 s doubling up to 2 s), not in a tight loop: over 4 s
    // at most the attempts at about 0.7, 1.5, 3.1 and 5.1 s after the first fall in.
    let before = bridge.metric(TLS_ERRORS).await.unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = bridge.metric(TLS_ERRORS).await.unwrap_or(0) - before;
    assert!((1..=5).contains(&during), "{during} attempts in 4 s");

    // One line, however many attempts, though the error counts the seconds since expiry.
    let lines = unavailable_lines(&bridge);
    assert_eq!(
        lines.len(),
        1,
        "one line per distinct error: {}",
        bridge.logs()
    );
    assert_eq!(log_field(&lines[0], "reason"), Some(&json!("tls")));
    let error = log_field(&lines[0], "error")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(
        error.contains("Expired") && error.contains("has expired: renew it"),
        "{}",
        bridge.logs()
    );

    // The server is given a valid certificate (Redis reloads it on CONFIG SET): the next
    // attempt succeeds, without a restart of the bridge.
    let path = |name| {
        certificates
            .path(name)
            .to_str()
            .expect("a UTF-8 path")
            .to_owned()
    };
    redis
        .config_set(&[
            ("tls-cert-file", &path("server.pem")),
            ("tls-key-file", &path("server.key")),
        ])
        .await;
    bridge.wait_readyz(200, WAIT).await;
    assert_delivers(&redis, &bridge).await;
    assert_eq!(unavailable_lines(&bridge).len(), 1, "{}", bridge.logs());
}
