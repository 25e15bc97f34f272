//! permessage-deflate (RFC 7692) against the real daemon: the negotiation matrix over raw
//! handshakes, one message to compressed and plain recipients at once (compressed once,
//! the same bytes for every compressed recipient, the same text for all after inflation),
//! `min_bytes` and the client's window, compressed commands, a deflate bomb, the reload of
//! the switch, replays of retained frames, and real clients that compress: Python
//! `websockets`, Node `ws` (also through the nginx wss site).

use std::path::PathBuf;
use std::process::Command;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::nginx::Nginx;
use crate::support::driver::Driver;
use crate::support::{
    Bridge, Publisher, RedisServer, WAIT, WsClient, config, log_field, raw_ws_handshake_with, repo,
    start, wait_until_async, without_position,
};

/// `news` by subscription, its payloads as published (`raw`), so that sizes are exact.
const ROUTES: &str = r#"
    - name: news
      channel: news
      topic: news
      format: raw
    "#;

const RSV1: u8 = 0x40;
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// What a client that negotiated the extension is answered (RFC 7692 §7.1).
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A raw deflate stream of `data`, flushed, its final `00 00 ff ff` removed: what a client
/// puts in a compressed message.
fn squeeze(data: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    compressor
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert_eq!(compressor.total_in() as usize, data.len(), "room enough");
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// A compressed message's payload, inflated as a client does.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 22);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("a deflate stream");
    assert_eq!(inflater.total_in() as usize, input.len(), "all inflated");
    out
}

/// A JSON payload of at least `len` bytes that compresses well, as event streams do.
fn json_payload(len: usize) -> String {
    let mut events = Vec::new();
    let mut size = 2;
    let mut n = 0;
    while size < len {
        let event = json!({"n": n, "kind": "page_view", "path": format!("/products/{}", n % 7)});
        size += event.to_string().len() + 1;
        events.push(event);
        n += 1;
    }
    Value::Array(events).to_string()
}

/// Exactly `len` bytes of text.
fn text_of(len: usize) -> String {
    "abcdefghij".repeat(len / 10 + 1)[..len].to_owned()
}

/// A subscribe to `news` (id 1), padded with whitespace past any compression threshold: a
/// client library sends it compressed.
fn padded_subscribe() -> String {
    format!(
        r#"{{"type": "subscribe", "id": 1,{}"topics": ["news"]}}"#,
        " ".repeat(2000)
    )
}

/// A WebSocket client written byte by byte, to see RSV1 and send compressed messages.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The 101's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
}

/// One server frame: its first byte and its payload.
struct RawFrame {
    first: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    fn compressed(&self) -> bool {
        self.first & RSV1 != 0
    }

    /// The message's text, inflated if it came compressed.
    fn text(&self) -> String {
        let bytes = if self.compressed() {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).expect("UTF-8 text")
    }
}

impl RawClient {
    /// Handshakes with these `Sec-WebSocket-Extensions` header values (one header each) and
    /// reads the welcome.
    async fn connect(bridge: &Bridge, offers: &[&str]) -> RawClient {
        let headers: Vec<String> = offers
            .iter()
            .map(|offer| format!("Sec-WebSocket-Extensions: {offer}"))
            .collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (stream, head, buf) = raw_ws_handshake_with(bridge.addr(), "/ws", &headers).await;
        let mut extensions = head.lines().filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        let found = extensions.next();
        assert_eq!(extensions.next(), None, "one extensions header: {head}");
        let mut client = RawClient {
            stream,
            buf,
            extensions: found,
        };
        let welcome = client.frame().await;
        assert!(!welcome.compressed(), "the server's own frames go plain");
        assert!(
            welcome.text().contains("\"connected\""),
            "{}",
            welcome.text()
        );
        client
    }

    /// The next frame from the server.
    async fn frame(&mut self) -> RawFrame {
        loop {
            if let Some(frame) = self.parse() {
                return frame;
            }
            let mut chunk = vec![0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("timed out waiting for a frame")
                .expect("read");
            assert!(n > 0, "the connection ended");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse(&mut self) -> Option<RawFrame> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return None;
        }
        assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
        let (header, len) = match buf[1] & 0x7f {
            126 => (4, u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize),
            127 => (
                10,
                u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            ),
            short => (2, short as usize),
        };
        if buf.len() < header + len {
            return None;
        }
        let frame = RawFrame {
            first: buf[0],
            payload: buf[header..header + len].to_vec(),
        };
        self.buf.drain(..header + len);
        Some(frame)
    }

    /// Sends one masked frame with this first byte.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        self.stream.write_all(&frame).await.expect("write a frame");
    }

    /// Sends a text message, compressed (RSV1) or not.
    async fn send_text(&mut self, text: &str, compressed: bool) {
        if compressed {
            self.send(0x80 | RSV1 | 0x1, &squeeze(text.as_bytes()))
                .await;
        } else {
            self.send(0x81, text.as_bytes()).await;
        }
    }

    /// Subscribes to `news` with a compressed command (when `compressed`) and checks the
    /// answer, which comes plain.
    async fn subscribe(&mut self, compressed: bool) {
        self.send_text(&padded_subscribe(), compressed).await;
        let answer = self.frame().await;
        assert!(!answer.compressed());
        let answer: Value = serde_json::from_str(&answer.text()).expect("JSON");
        assert_eq!(
            without_position(answer),
            json!({"type": "subscribed", "id": 1, "topics": ["news"]})
        );
    }

    /// The close frame's code, after any frames before it.
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.first & 0x0f == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offer_is_negotiated_as_rfc_7692_says() {
    let (_redis, bridge) = start("", ROUTES).await;
    let limited = |bits: u8| format!("{ANSWER}; server_max_window_bits={bits}");
    let cases: Vec<(&str, Vec<&str>, Option<String>)> = vec![
        ("no offer", vec![], None),
        ("another extension", vec!["x-webkit-deflate-frame"], None),
        (
            "the plain offer",
            vec!["permessage-deflate"],
            Some(ANSWER.into()),
        ),
        (
            "what browsers send",
            vec!["permessage-deflate; client_max_window_bits"],
            Some(ANSWER.into()),
        ),
        (
            "client no context takeover",
            vec!["permessage-deflate; client_no_context_takeover"],
            Some(ANSWER.into()),
        ),
        (
            "both no context takeover, a client window",
            vec![
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10",
            ],
            Some(ANSWER.into()),
        ),
        (
            "a server window",
            vec!["permessage-deflate; server_max_window_bits=10"],
            Some(limited(10)),
        ),
        (
            "the smallest window",
            vec!["permessage-deflate; server_max_window_bits=8"],
            Some(limited(8)),
        ),
        (
            "a quoted window",
            vec!["permessage-deflate; server_max_window_bits=\"12\""],
            Some(limited(12)),
        ),
        (
            "a window out of range",
            vec!["permessage-deflate; server_max_window_bits=7"],
            None,
        ),
        (
            "a window without a value",
            vec!["permessage-deflate; server_max_window_bits"],
            None,
        ),
        (
            "a duplicate parameter",
            vec!["permessage-deflate; server_no_context_takeover; server_no_context_takeover"],
            None,
        ),
        (
            "an unknown parameter",
            vec!["permessage-deflate; mystery=1"],
            None,
        ),
        (
            "a value where none belongs",
            vec!["permessage-deflate; client_no_context_takeover=yes"],
            None,
        ),
        (
            "a bad offer, then a good one",
            vec![
                "permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=11",
            ],
            Some(limited(11)),
        ),
        (
            "offers in two headers",
            vec![
                "x-webkit-deflate-frame, permessage-deflate; mystery",
                "permessage-deflate; client_max_window_bits",
            ],
            Some(ANSWER.into()),
        ),
        (
            "the first acceptable offer wins",
            vec!["permessage-deflate; server_max_window_bits=9, permessage-deflate"],
            Some(limited(9)),
        ),
    ];
    for (name, offers, expected) in cases {
        let client = RawClient::connect(&bridge, &offers).await;
        assert_eq!(client.extensions, expected, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_compressed_once_for_its_compressed_recipients() {
    let (redis, bridge) = start("", ROUTES).await;
    let mut first = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    let mut second =
        RawClient::connect(&bridge, &["permessage-deflate; client_max_window_bits"]).await;
    // A 512-byte window: only messages that fit it come compressed.
    let mut small_window =
        RawClient::connect(&bridge, &["permessage-deflate; server_max_window_bits=9"]).await;
    let mut plain = RawClient::connect(&bridge, &[]).await;
    let mut tungstenite = bridge.client().await;
    first.subscribe(true).await;
    second.subscribe(false).await;
    small_window.subscribe(true).await;
    plain.subscribe(false).await;
    tungstenite.subscribe(1, &["news"]).await;

    let mut publisher = Publisher::connect(&redis.url()).await;
    let big = json_payload(16 * 1024);
    assert_eq!(publisher.publish("news", &big).await, 1);
    let (a, b) = (first.frame().await, second.frame().await);
    assert!(a.compressed() && b.compressed());
    assert_eq!(a.payload, b.payload, "the same compressed bytes for both");
    assert!(a.payload.len() * 3 < big.len(), "{} bytes", a.payload.len());
    assert_eq!(a.text(), big);
    let window_9 = small_window.frame().await;
    assert!(
        !window_9.compressed(),
        "16 KiB does not fit a 512-byte window"
    );
    assert_eq!(window_9.text(), big);
    let unoffered = plain.frame().await;
    assert!(!unoffered.compressed());
    assert_eq!(unoffered.text(), big);
    assert_eq!(tungstenite.recv_text().await, big);

    // Under min_bytes (512): plain for everyone. At it, and fitting a 512-byte window:
    // compressed for every client that negotiated.
    for (len, compressed) in [(511, false), (512, true)] {
        let message = text_of(len);
        publisher.publish("news", &message).await;
        for client in [&mut first, &mut second, &mut small_window] {
            let frame = client.frame().await;
            assert_eq!(frame.compressed(), compressed, "{len} bytes");
            assert_eq!(frame.text(), message);
        }
        let frame = plain.frame().await;
        assert!(!frame.compressed());
        assert_eq!(frame.text(), message);
        assert_eq!(tungstenite.recv_text().await, message);
    }

    // Commands still work both ways, and a plain command on a compressed connection too.
    for (id, compressed) in [(7, false), (8, true)] {
        let ping = json!({"type": "ping", "id": id}).to_string();
        first.send_text(&ping, compressed).await;
        let pong: Value = serde_json::from_str(&first.frame().await.text()).expect("JSON");
        assert_eq!(pong, json!({"type": "pong", "id": id}));
    }
}

/// A replay of retained frames compresses as the live delivery does: the compressed bytes a
/// live recipient got when one did, else made at the first replay that needs them; plain
/// for a client without the extension. Inflated, the same text as live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frames_come_compressed_to_the_clients_that_negotiated_it() {
    let routes = ROUTES.replace("format: raw", "format: raw\n      history: { size: 10 }");
    let (redis, bridge) = start("", &routes).await;
    let mut live = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    live.subscribe(false).await;
    let mut publisher = Publisher::connect(&redis.url()).await;
    let seen_live = json_payload(8 * 1024);
    publisher.publish("news", &seen_live).await;
    let live_frame = live.frame().await;
    assert!(live_frame.compressed());
    drop(live);
    // Published while nobody compresses: compressed at its first replay.
    let unseen = json_payload(4 * 1024);
    publisher.publish("news", &unseen).await;
    bridge.wait_retained(2).await;

    let last = r#"{"type": "subscribe", "id": 2, "topics": ["news"], "last": 2}"#;
    let mut later = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    let mut plain = RawClient::connect(&bridge, &[]).await;
    for client in [&mut later, &mut plain] {
        client.send_text(last, false).await;
        let answer: Value = serde_json::from_str(&client.frame().await.text()).expect("JSON");
        assert_eq!(answer["type"], "subscribed", "{answer}");
    }
    let (first, second) = (later.frame().await, later.frame().await);
    assert!(first.compressed() && second.compressed());
    assert_eq!(
        first.payload, live_frame.payload,
        "the live compressed bytes"
    );
    assert_eq!(
        (first.text(), second.text()),
        (seen_live.clone(), unseen.clone())
    );
    let (first, second) = (plain.frame().await, plain.frame().await);
    assert!(!first.compressed() && !second.compressed());
    assert_eq!((first.text(), second.text()), (seen_live, unseen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsv1_is_a_protocol_error_unless_negotiated() {
    let (_redis, bridge) = start("", ROUTES).await;
    let mut plain = RawClient::connect(&bridge, &[]).await;
    plain.send_text(r#"{"type":"ping","id":1}"#, true).await;
    assert_eq!(plain.close_code().await, 1002);

    let mut control = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    control.send(0x80 | RSV1 | 0x9, b"").await;
    assert_eq!(control.close_code().await, 1002, "a compressed ping");

    let mut corrupt = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    corrupt.send(0x80 | RSV1 | 0x1, &[0xff; 16]).await;
    assert_eq!(corrupt.close_code().await, 1007, "not a deflate stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_closes_1009_without_growing_the_process() {
    let (_redis, bridge) = start("max_frame_bytes: 65536", ROUTES).await;
    // 40 MiB of spaces in about 40 KiB: under the limit compressed, 640 times over inflated.
    let bomb = squeeze(&vec![b' '; 40 << 20]);
    assert!(bomb.len() < 65536, "{} bytes", bomb.len());
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(RawClient::connect(&bridge, &["permessage-deflate"]).await);
    }
    let before = bridge.rss_kib();
    for client in &mut clients {
        client.send(0x80 | RSV1 | 0x1, &bomb).await;
    }
    for client in &mut clients {
        assert_eq!(client.close_code().await, 1009);
    }
    let grown = bridge.rss_kib().saturating_sub(before);
    // Eight bombs inflated in full would be 320 MiB; each stops at 64 KiB.
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    // The bridge carries on.
    let mut next = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    next.subscribe(true).await;
}

/// The number of completed reloads so far.
fn reloads(bridge: &Bridge) -> usize {
    bridge
        .log_values()
        .iter()
        .filter(|line| log_field(line, "message").and_then(Value::as_str) == Some("reloaded"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_compression_off_applies_to_the_next_connections() {
    let (_redis, bridge) = start("", ROUTES).await;
    let mut before = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    assert_eq!(before.extensions.as_deref(), Some(ANSWER));

    let yaml = std::fs::read_to_string(bridge.config_path()).expect("read the routing file");
    let off = yaml.replace(
        "  path: /ws\n",
        "  path: /ws\n  compression:\n    enabled: false\n",
    );
    assert_ne!(off, yaml);
    let done = reloads(&bridge);
    std::fs::write(bridge.config_path(), off).expect("write the routing file");
    bridge.signal("HUP");
    wait_until_async(WAIT, "the reload", || async { reloads(&bridge) > done }).await;

    let after = RawClient::connect(&bridge, &["permessage-deflate"]).await;
    assert_eq!(after.extensions, None, "declined once switched off");
    // The connection that negotiated it keeps it.
    before.subscribe(true).await;
}

/// A client's driver: `open` tells what was negotiated, then it subscribes to `news` with a
/// command its library compresses.
async fn subscribe_through(driver: &mut Driver) -> Value {
    let open = driver.event("open", |_| true).await["value"].clone();
    let welcome = driver.event("message", |_| true).await["value"]["data"].clone();
    assert!(
        welcome
            .as_str()
            .is_some_and(|w| w.contains("\"connected\"")),
        "{welcome}"
    );
    driver.send(json!({"op": "send", "text": padded_subscribe()}));
    let answer = driver.event("message", |_| true).await["value"]["data"].clone();
    let answer: Value = serde_json::from_str(answer.as_str().expect("text")).expect("JSON");
    assert_eq!(
        answer,
        json!({"type": "subscribed", "id": 1, "topics": ["news"]})
    );
    open
}

/// Publishes a large and a small message, which must both arrive as published, then closes;
/// returns the messages.
async fn both_sizes_arrive(driver: &mut Driver, redis: &RedisServer) -> [String; 2] {
    let mut publisher = Publisher::connect(&redis.url()).await;
    let messages = [json_payload(256 * 1024), text_of(100)];
    for message in &messages {
        publisher.publish("news", message).await;
        let got = driver.event("message", |_| true).await["value"]["data"].clone();
        assert_eq!(got.as_str(), Some(message.as_str()));
    }
    driver.send(json!({"op": "close"}));
    let close = driver.event("close", |_| true).await["value"].clone();
    assert_eq!(close["code"], 1000, "{close}");
    messages
}

/// The Python with `websockets`: `$BRIDGE_TEST_PYTHON` (set by scripts/test.sh), else the
/// repository's .venv.
fn python() -> PathBuf {
    let python = std::env::var_os("BRIDGE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        ok,
        "{} cannot `import websockets`: run scripts/test.sh once (it installs it in .venv)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_negotiates_and_round_trips() {
    let (redis, bridge) = start("", ROUTES).await;
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/clients/python/deflate.py"))
        .arg(bridge.ws_url("/ws"));
    let mut driver = Driver::spawn(command);
    let open = subscribe_through(&mut driver).await;
    let extensions = open["extensions"].as_str().expect("extensions negotiated");
    assert!(extensions.starts_with(ANSWER), "{extensions}");
    both_sizes_arrive(&mut driver, &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_negotiates_and_round_trips() {
    let (redis, bridge) = start("", ROUTES).await;
    let url = bridge.ws_url("/ws");
    let mut driver = Driver::node_script("tests/clients/node", "ws", "deflate.js", &[&url]);
    let open = subscribe_through(&mut driver).await;
    assert_eq!(open["extensions"], ANSWER, "{open}");
    both_sizes_arrive(&mut driver, &redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_compresses_through_the_nginx_wss_site() {
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config("", ROUTES));
    bridge.wait_ready().await;
    let nginx = Nginx::start(bridge.addr());
    let url = format!("wss://127.0.0.1:{}/ws", nginx.addr.port());
    let ca = nginx.cert_path();
    let ca = ca.to_str().expect("a UTF-8 path");
    // A client that offers nothing, through the same site, gets the same messages plain
    // (tungstenite fails the connection on a frame with RSV1).
    let mut plain = WsClient::connect_tls(
        &url,
        nginx.addr,
        "127.0.0.1".parse().expect("address"),
        &std::fs::read(nginx.cert_path()).expect("certificate"),
        &[],
    )
    .await;
    assert_eq!(plain.next_json().await["type"], "connected");
    plain.subscribe(1, &["news"]).await;
    let mut driver = Driver::node_script("tests/clients/node", "ws", "deflate.js", &[&url, ca]);
    let open = subscribe_through(&mut driver).await;
    assert_eq!(
        open["extensions"], ANSWER,
        "nginx passes the offer and the answer"
    );
    let sent = both_sizes_arrive(&mut driver, &redis).await;
    for message in sent {
        assert_eq!(plain.recv_text().await, message);
    }
}
