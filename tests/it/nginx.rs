//! End to end through a real nginx running the shipped site file
//! (packaging/nginx/redis-ws-bridge.conf) with a certificate made at test time: TLS
//! termination, the WebSocket upgrade, the client address carried in X-Forwarded-For to the
//! bridge's logs, and the endpoints that must not be reachable from outside; three bridges
//! balanced by the same site (least_conn), sharing nothing but Redis; two bridges behind a
//! sticky upstream (README.md's hash), where a client resumes its history on its bridge.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::tokens::{auth_section, token};
use crate::support::{
    ADMIN_TOKEN, Bridge, JOB_ROUTE, Publisher, RedisServer, WAIT, WsClient, config, http_post,
    log_field,
};

/// A real nginx on a free loopback port, in its own prefix directory; stopped on drop.
pub struct Nginx {
    /// The master process; `None` while stopped.
    child: Option<Child>,
    /// Prefix, configuration, certificate, logs and temp files.
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The self-signed certificate (PEM) that clients must trust.
    cert: Vec<u8>,
}

impl Nginx {
    /// Starts nginx with the shipped site file, proxying to the bridge at `upstream`.
    pub fn start(upstream: SocketAddr) -> Nginx {
        Nginx::start_balancing(&[upstream])
    }

    /// Starts nginx with the shipped site file, balancing over the bridges at `upstreams`.
    pub fn start_balancing(upstreams: &[SocketAddr]) -> Nginx {
        Nginx::start_with(upstreams, "least_conn;")
    }

    /// [`Nginx::start_balancing`] with `balancing` in place of the site's `least_conn;`, as
    /// README.md tells to keep clients on their bridge.
    pub fn start_with(upstreams: &[SocketAddr], balancing: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        let openssl = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            openssl.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
        let cert = std::fs::read(&cert_path).expect("read the certificate");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let site = Site {
                port,
                upstreams,
                balancing,
                cert: &cert_path,
                key: &key_path,
            };
            write_config(dir.path(), &site);
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return Nginx {
                        child: Some(child),
                        dir,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        cert,
                    };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("could not start nginx: {last_error}");
    }

    /// One HTTPS request with these extra `headers` and `body`; returns (status, body).
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> (u16, String) {
        let addr = self.addr;
        let cert = self.cert.clone();
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        tokio::task::spawn_blocking(move || https_request(addr, &cert, &request))
            .await
            .expect("HTTPS thread")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, &[], "").await
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The certificate's file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Stops nginx: every connection through it is cut, and nothing listens on its port
    /// until [`Nginx::resume`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM: a fast shutdown of the master and its workers, which closes their
        // connections (SIGKILL would orphan the workers).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts nginx again, on the same port with the same configuration.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nginx is running");
        let child = spawn(self.dir.path(), self.addr.port())
            .unwrap_or_else(|e| panic!("could not start nginx again: {e}"));
        self.child = Some(child);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// What a test changes in the shipped site file.
struct Site<'a> {
    port: u16,
    upstreams: &'a [SocketAddr],
    /// The `upstream` block's balancing directive.
    balancing: &'a str,
    cert: &'a Path,
    key: &'a Path,
}

/// The shipped site file with the test's port, upstreams, balancing and certificate, inside
/// a minimal nginx.conf whose every path is in `dir`.
fn write_config(dir: &Path, test: &Site) {
    let Site {
        port,
        upstreams,
        balancing,
        cert,
        key,
    } = *test;
    let servers: Vec<String> = upstreams.iter().map(|a| format!("server {a};")).collect();
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/nginx/redis-ws-bridge.conf");
    let mut site = std::fs::read_to_string(&shipped).expect("read the nginx site file");
    for (from, to) in [
        ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("server 127.0.0.1:8080;", servers.join("\n    ")),
        ("    least_conn;", format!("    {balancing}")),
        (
            "/etc/ssl/certs/ws.example.com.pem",
            cert.display().to_string(),
        ),
        (
            "/etc/ssl/private/ws.example.com.key",
            key.display().to_string(),
        ),
    ] {
        assert_eq!(
            site.matches(from).count(),
            1,
            "`{from}` once in {}",
            shipped.display()
        );
        site = site.replace(from, &to);
    }
    std::fs::write(dir.join("site.conf"), site).expect("write site.conf");
    let d = dir.display();
    let main = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
}

/// Runs nginx in the foreground; `Ok` once it accepts connections on `port`.
fn spawn(dir: &Path, port: u16) -> Result<Child, String> {
    let mut child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nginx ({e}); scripts/test.sh installs it"))?;
    let deadline = Instant::now() + WAIT;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited with {status}: {stderr}\n{log}"));
        }
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("nginx did not listen on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx from PATH, or Debian's /usr/sbin/nginx when /usr/sbin is not on the PATH.
fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nginx")
    }
}

/// Sends `request` on a fresh HTTPS connection and reads one response; returns (status,
/// body).
fn https_request(addr: SocketAddr, cert: &[u8], request: &str) -> (u16, String) {
    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(cert).expect("PEM"))
        .build()
        .expect("TLS connector");
    let tcp = StdTcpStream::connect_timeout(&addr, WAIT).expect("connect to nginx");
    tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut stream = tls
        .connect("127.0.0.1", tcp)
        .expect("TLS handshake with nginx");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    // Read one response: its headers, then Content-Length bytes (nginx's own pages and the
    // bridge's JSON answers both carry it), so a kept-alive connection does not stall.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, length) = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or_else(|| panic!("no Content-Length from nginx: {head}"));
            raw.drain(..end + 4);
            break (head, length);
        }
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(n > 0, "nginx closed before the headers: {raw:?}");
        raw.extend_from_slice(&chunk[..n]);
    };
    while raw.len() < length {
        let n = stream.read(&mut chunk).expect("read the body");
        assert!(n > 0, "nginx closed inside the body");
        raw.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from nginx: {head}"));
    let body = String::from_utf8_lossy(&raw[..length]).into_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_behind_nginx_gets_frames_and_its_own_address_is_logged() {
    let redis = RedisServer::start();
    let yaml = format!(
        "trusted_proxies: [127.0.0.1]\n{}{}",
        auth_section("required", "", ""),
        config(
            "",
            r#"
            - name: jobs
              channel: test:jobs
              topic: jobs
              delivery: auto
              format: raw
            "#,
        )
    );
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    let nginx = Nginx::start(bridge.addr());

    // The browser is 127.0.0.2 (nginx is the bridge's peer, on 127.0.0.1), and it sends a
    // made-up X-Forwarded-For that nginx must extend, not replace.
    let browser: IpAddr = "127.0.0.2".parse().expect("address");
    let url = format!(
        "wss://127.0.0.1:{}/ws?token={}",
        nginx.addr.port(),
        token("u42", &["user"], json!({}))
    );
    let mut client = WsClient::connect_tls(
        &url,
        nginx.addr,
        browser,
        &nginx.cert,
        &[("X-Forwarded-For", "6.6.6.6")],
    )
    .await;
    let welcome = client.next_json().await;
    assert_eq!(welcome["type"], "connected", "{welcome}");
    assert_eq!(welcome["user"], "u42", "{welcome}");

    assert_eq!(
        Publisher::connect(&redis.url())
            .await
            .publish("test:jobs", "through nginx")
            .await,
        1
    );
    assert_eq!(client.recv_text().await, "through nginx");

    let open = bridge
        .wait_log(WAIT, |v| {
            log_field(v, "message").and_then(Value::as_str) == Some("connection open")
        })
        .await;
    assert_eq!(
        log_field(&open, "peer"),
        Some(&json!("127.0.0.2")),
        "{open}"
    );
    assert_eq!(log_field(&open, "user"), Some(&json!("u42")), "{open}");

    // Without a token nginx passes the bridge's 401 through.
    let (status, body) = nginx
        .request(
            "GET",
            "/ws",
            &[
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ],
            "",
        )
        .await;
    assert_eq!(status, 401, "{body}");

    // Liveness and the client library are proxied; the admin endpoints, the metrics and the
    // console are not.
    let (status, body) = nginx.get("/healthz").await;
    assert_eq!(status, 200, "{body}\n{}", nginx.error_log());
    let (status, body) = nginx.get("/client.js").await;
    assert_eq!(status, 200, "{}", nginx.error_log());
    assert!(body.contains("class RedisWsBridge"), "{body}");
    for path in ["/metrics", "/ws/stats", "/", "/console.js"] {
        assert_eq!(nginx.get(path).await.0, 404, "GET {path} through nginx");
    }
    let publish = nginx
        .request(
            "POST",
            "/api/publish",
            &["Content-Type: application/json"],
            r#"{"channel":"test:jobs","payload":"x"}"#,
        )
        .await;
    assert_eq!(publish.0, 404, "POST /api/publish through nginx");
    client.close().await;
}

/// `POST /api/publish` of `{"n": n}` on `job:9` to `bridge`, as the administrator.
async fn publish_through(bridge: &Bridge, n: u64) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let body = format!(r#"{{"channel": "job:9", "payload": {{"n": {n}}}}}"#);
    let (status, answer) = http_post(
        bridge.addr(),
        "/api/publish",
        &[("Authorization", bearer.as_str())],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn three_bridges_behind_nginx_share_the_clients_and_one_redis() {
    let redis = RedisServer::start();
    let names = ["bridge-a", "bridge-b", "bridge-c"];
    let bridges: Vec<Bridge> = names
        .iter()
        .map(|name| {
            let yaml = format!("instance: {name}\n{}", config("", JOB_ROUTE));
            Bridge::start(&redis, &yaml)
        })
        .collect();
    for bridge in &bridges {
        bridge.wait_ready().await;
    }
    let upstreams: Vec<SocketAddr> = bridges.iter().map(Bridge::addr).collect();
    let nginx = Nginx::start_balancing(&upstreams);
    let url = format!("wss://127.0.0.1:{}/ws", nginx.addr.port());
    let local: IpAddr = "127.0.0.1".parse().expect("address");
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut client = WsClient::connect_tls(&url, nginx.addr, local, &nginx.cert, &[]).await;
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "connected", "{welcome}");
        client.subscribe(1, &["job:9"]).await;
        clients.push(client);
    }
    // least_conn: each new connection went to a bridge with the fewest.
    for (bridge, name) in bridges.iter().zip(names) {
        let stats = bridge.stats().await;
        assert_eq!(stats["instance"], name, "{stats}");
        assert_eq!(stats["connections"], 2, "{name}: {stats}");
        let listening = bridge
            .wait_log(WAIT, |v| {
                log_field(v, "message").and_then(Value::as_str) == Some("listening")
            })
            .await;
        assert_eq!(log_field(&listening, "instance"), Some(&json!(name)));
    }

    // A publish on one bridge reaches the clients of all, through Redis.
    publish_through(&bridges[0], 1).await;
    for client in &mut clients {
        let frame = client.next_json().await;
        assert_eq!(frame["data"], json!({"n": 1}), "{frame}");
    }

    // A reload of one bridge disturbs none of the clients, its own included: the next frame
    // of each is the next message, with no notice between.
    let path = bridges[1].config_path();
    let yaml = std::fs::read_to_string(path).expect("read the routing file");
    let yaml = yaml.replace(
        "routes:\n",
        "routes:\n  - name: extra\n    channel: extra\n    topic: extra\n",
    );
    std::fs::write(path, yaml).expect("rewrite the routing file");
    bridges[1].signal("HUP");
    bridges[1]
        .wait_log(WAIT, |v| {
            log_field(v, "message").and_then(Value::as_str) == Some("reloaded")
        })
        .await;
    publish_through(&bridges[2], 2).await;
    for client in &mut clients {
        let frame = client.next_json().await;
        assert_eq!(frame["data"], json!({"n": 2}), "{frame}");
    }
    for bridge in &bridges {
        assert_eq!(
            bridge.metric("bridge_redis_reconnects_total").await,
            Some(0)
        );
        assert_eq!(bridge.stats().await["connections"], 2);
    }
}

/// README.md's sticky upstream: a client that reconnects from the same address lands on the
/// bridge that holds its positions and resumes what it missed; on the other bridge the same
/// positions get an `epoch_changed` gap, never that bridge's frames.
#[tokio::test]
async fn a_sticky_upstream_keeps_a_client_on_the_bridge_that_holds_its_history() {
    let redis = RedisServer::start();
    let route = r#"
        - name: jobs
          pattern: "job:*"
          topic: "job:{1}"
          history: { size: 100 }
        "#;
    let bridges: Vec<Bridge> = ["bridge-a", "bridge-b"]
        .iter()
        .map(|name| Bridge::start(&redis, &format!("instance: {name}\n{}", config("", route))))
        .collect();
    for bridge in &bridges {
        bridge.wait_ready().await;
    }
    let upstreams: Vec<SocketAddr> = bridges.iter().map(Bridge::addr).collect();
    let nginx = Nginx::start_with(&upstreams, "hash $remote_addr consistent;");
    let url = format!("wss://127.0.0.1:{}/ws", nginx.addr.port());
    let from: IpAddr = "127.0.0.7".parse().expect("address");
    let connect = || WsClient::connect_tls(&url, nginx.addr, from, &nginx.cert, &[]);
    let mut client = connect().await;
    let welcome = client.next_json().await;
    let epoch = welcome["epoch"].clone();
    client.subscribe(1, &["job:9"]).await;
    publish_through(&bridges[0], 1).await;
    assert_eq!(client.next_json().await["seq"], 1);
    drop(client);
    for n in 2..=3 {
        publish_through(&bridges[1], n).await;
    }

    let mut again = connect().await;
    assert_eq!(again.next_json().await["epoch"], epoch, "the same bridge");
    let since = json!({"epoch": epoch, "seq": {"job:9": 1}});
    again
        .send_json(&json!({"type": "subscribe", "id": 2, "topics": ["job:9"], "since": since}))
        .await;
    assert_eq!(again.next_json().await["type"], "subscribed");
    for n in 2..=3 {
        let frame = again.next_json().await;
        assert_eq!(
            (&frame["seq"], &frame["data"]),
            (&json!(n), &json!({"n": n}))
        );
    }
    again.assert_pong(3).await;

    // The other bridge has the same frames under its own epoch: a gap, no replay.
    let mut home = None;
    for bridge in &bridges {
        let mut direct = bridge.client().await;
        if direct.welcome["epoch"] == epoch {
            home = Some(bridge.stats().await["instance"].clone());
            continue;
        }
        direct
            .send_json(&json!({"type": "subscribe", "id": 4, "topics": ["job:9"], "since": since}))
            .await;
        assert_eq!(direct.next_json().await["type"], "subscribed");
        assert_eq!(
            direct.next_json().await,
            json!({"type": "gap", "id": 4, "reason": "epoch_changed", "topics": ["job:9"]})
        );
        direct.assert_pong(5).await;
    }
    assert!(home.is_some(), "the client was on one of the bridges");
}
