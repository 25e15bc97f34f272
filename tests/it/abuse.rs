//! Hostile input and floods, each answered as documented while a polite client keeps being
//! served: slow loris, oversized request heads, garbage bytes, bad `Sec-WebSocket-Key`s,
//! subscribe floods, the per-address connection rate; and memory (the daemon's RSS, read from
//! /proc) bounded under a flood of messages to slow clients, of connections, of commands.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Bridge, ConnectError, Frame, Publisher, RedisServer, WAIT, WsClient, start, wait_until,
    wait_until_async,
};

const ROUTES: &str = r#"
    - name: live
      channel: test:live
      topic: live
      delivery: auto
      format: raw
    - name: flood
      pattern: "f:*"
      topic: "f:{1}"
    "#;

/// The most a polite client's frame may take from PUBLISH to its socket, or its ping to be
/// answered, while the bridge is being abused. Normally a millisecond or two; the bound is
/// for a debug build on a loaded 2-core machine running the whole suite at once.
const LATENCY_BOUND: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// The polite client
// ---------------------------------------------------------------------------------------

/// A client that behaves: it reads a stream of numbered messages (one every 10 ms on the
/// `live` auto route) and sends a ping every 250 ms. `finish` checks that it got every
/// message, in order, and every pong, each within `LATENCY_BOUND`.
struct Polite {
    stop: Arc<AtomicBool>,
    /// Pongs received so far.
    pongs: Arc<AtomicU64>,
    publisher: JoinHandle<i64>,
    reader: JoinHandle<Served>,
}

struct Served {
    client: WsClient,
    received: i64,
    pongs: u64,
    max_latency: Duration,
    max_rtt: Duration,
}

impl Polite {
    async fn start(bridge: &Bridge, redis: &RedisServer) -> Polite {
        Polite::with(bridge.client().await, redis).await
    }

    /// Starts the stream for `client` (whose `connected` frame was read).
    async fn with(client: WsClient, redis: &RedisServer) -> Polite {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut publisher = Publisher::connect(&redis.url()).await;
        let publisher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(Duration::from_millis(10));
                let mut n = 0i64;
                let micros = || epoch.elapsed().as_micros() as u64;
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    publisher
                        .publish("test:live", json!({"i": n, "t": micros()}).to_string())
                        .await;
                    n += 1;
                }
                publisher
                    .publish("test:live", json!({"i": -1, "t": micros()}).to_string())
                    .await;
                n
            })
        };
        let pongs = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read_politely(client, epoch, pongs.clone()));
        Polite {
            stop,
            pongs,
            publisher,
            reader,
        }
    }

    /// Stops the stream; asserts the client got all of it, in order and in time; returns it.
    async fn finish(self, what: &str) -> WsClient {
        // At least two pings answered, however short the abuse was.
        wait_until(WAIT, "two pongs for the polite client", || {
            self.pongs.load(Ordering::SeqCst) >= 2
        })
        .await;
        self.stop.store(true, Ordering::SeqCst);
        let published = self.publisher.await.expect("the polite publisher");
        let served = tokio::time::timeout(WAIT, self.reader)
            .await
            .unwrap_or_else(|_| panic!("{what}: the polite client did not get the end marker"))
            .unwrap_or_else(|e| panic!("{what}: the polite client failed: {e}"));
        eprintln!(
            "{what}: polite client got {}/{published} messages (max latency {:?}), {} pongs (max {:?})",
            served.received, served.max_latency, served.pongs, served.max_rtt
        );
        assert_eq!(served.received, published, "{what}: messages lost");
        assert!(served.pongs > 0, "{what}: no ping was answered");
        assert!(
            served.max_latency < LATENCY_BOUND && served.max_rtt < LATENCY_BOUND,
            "{what}: the polite client waited {:?} for a frame, {:?} for a pong",
            served.max_latency,
            served.max_rtt
        );
        let mut client = served.client;
        client.assert_pong(u64::MAX).await;
        client
    }
}

async fn read_politely(mut client: WsClient, epoch: Instant, counter: Arc<AtomicU64>) -> Served {
    const PING_EVERY: Duration = Duration::from_millis(250);
    let mut received = 0i64;
    let mut pongs = 0;
    let mut max_latency = Duration::ZERO;
    let mut max_rtt = Duration::ZERO;
    let mut ping: Option<(u64, Instant)> = None;
    let mut next_ping = Instant::now() + PING_EVERY;
    // Once the end marker came, only the pong of a ping in flight may follow.
    let mut ended = false;
    loop {
        if ended && ping.is_none() {
            return Served {
                client,
                received,
                pongs,
                max_latency,
                max_rtt,
            };
        }
        let now = Instant::now();
        match ping {
            None if now >= next_ping && !ended => {
                let id = pongs + 1;
                client.send_json(&json!({"type": "ping", "id": id})).await;
                ping = Some((id, now));
            }
            Some((id, sent)) => assert!(sent.elapsed() < WAIT, "ping {id} unanswered for {WAIT:?}"),
            None => {}
        }
        let wait = match ping {
            Some(_) => WAIT,
            None if ended => continue,
            None => next_ping.saturating_duration_since(now),
        };
        let Some(frame) = client.try_recv_frame(wait).await else {
            assert!(ping.is_none(), "the polite client got nothing for {WAIT:?}");
            continue;
        };
        let Frame::Text(text) = frame else {
            panic!("the polite client was cut off: {frame:?}")
        };
        let v: Value = serde_json::from_str(&text).expect("JSON frame");
        if v["type"] == "pong" {
            let (id, sent) = ping.take().unwrap_or_else(|| panic!("unasked pong {v}"));
            assert_eq!(v, json!({"type": "pong", "id": id}));
            max_rtt = max_rtt.max(sent.elapsed());
            pongs += 1;
            counter.store(pongs, Ordering::SeqCst);
            next_ping = Instant::now() + PING_EVERY;
            continue;
        }
        assert!(!ended, "a frame after the end marker: {v}");
        let i = v["i"]
            .as_i64()
            .unwrap_or_else(|| panic!("unexpected frame {v}"));
        let t = Duration::from_micros(v["t"].as_u64().expect("t"));
        max_latency = max_latency.max(epoch.elapsed().saturating_sub(t));
        if i == -1 {
            ended = true;
            continue;
        }
        assert_eq!(i, received, "the polite client's messages in order: {v}");
        received += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/// What the server answered a raw request: its status line's code (`None` when the server
/// closed the connection without an answer), head and body.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    head: String,
    body: String,
}

/// Sends `request` (write errors ignored: the server may close before taking it all) and
/// reads one response head and its `Content-Length` body, or up to the connection's end.
/// Panics when the server neither answers nor closes within `WAIT`.
async fn exchange(addr: SocketAddr, what: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    return;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("{what}: neither an answer nor a close within {WAIT:?}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn upgrade_request(addr: SocketAddr, key_header: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {key_header}Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Bytes that look like nothing in particular (a fixed xorshift sequence).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Slow loris
// ---------------------------------------------------------------------------------------

/// Opens a connection, sends `prelude` (and, when `dribble`, one more header byte every
/// 100 ms, as a slow loris does to look alive) and never finishes the request. Returns how
/// long the server kept it open and what it sent.
async fn loris(addr: SocketAddr, prelude: &'static [u8], dribble: bool) -> (Duration, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    let (mut rx, mut tx) = stream.into_split();
    let _ = tx.write_all(prelude).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let run = async {
        loop {
            tokio::select! {
                read = rx.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                },
                _ = tick.tick(), if dribble => {
                    let _ = tx.write_all(b"X").await;
                }
            }
        }
    };
    if tokio::time::timeout(WAIT, run).await.is_err() {
        panic!("a slow-loris connection was still open after {WAIT:?}");
    }
    (opened.elapsed(), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_dropped_after_the_handshake_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const SLACK: Duration = Duration::from_secs(2);
    let (redis, bridge) = start("handshake_timeout: 1s", ROUTES).await;
    let polite = Polite::start(&bridge, &redis).await;
    let addr = bridge.addr();

    // 60 that send nothing, 60 that stop in the middle of the head, 10 that dribble.
    let mut lorises = Vec::new();
    for i in 0..130 {
        let (prelude, dribble): (&'static [u8], bool) = match i {
            0..60 => (b"", false),
            60..120 => (
                b"GET /ws HTTP/1.1\r\nHost: bridge\r\nUpgrade: websocket\r\n",
                false,
            ),
            _ => (b"GET /ws HTTP/1.1\r\nX-Slow: ", true),
        };
        lorises.push(tokio::spawn(loris(addr, prelude, dribble)));
    }

    // While they hang on, the bridge serves: a new client connects, /healthz answers, and a
    // client slow but within the timeout (its head in pieces over 300 ms) is upgraded.
    let mut fresh = bridge.client().await;
    assert!(
        fresh.next_json().await["i"].is_i64(),
        "the stream reaches a new client"
    );
    assert_eq!(bridge.get("/healthz").await.0, 200);
    let mut honest = TcpStream::connect(addr).await.expect("connect");
    let head = upgrade_request(addr, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    for piece in head.chunks(head.len() / 3 + 1) {
        honest.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, honest.read(&mut chunk))
            .await
            .expect("timed out waiting for the honest client's answer")
            .expect("read");
        assert!(n > 0, "the honest client was closed");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "a slow but timely head is served: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let mut longest = Duration::ZERO;
    let mut shortest = Duration::MAX;
    for loris in lorises {
        let (open, got) = loris.await.expect("loris task");
        longest = longest.max(open);
        shortest = shortest.min(open);
        // Not at once (the honest client above shows a timely head is served); the clock
        // starts at the server's accept, which a loaded machine may show a little late here.
        assert!(
            open >= TIMEOUT / 2,
            "a slow loris was dropped after {open:?}, long before handshake_timeout"
        );
        assert!(
            open <= TIMEOUT + SLACK,
            "a slow loris stayed {open:?} (handshake_timeout {TIMEOUT:?})"
        );
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408"),
            "a slow loris got {got:?}"
        );
    }
    eprintln!("slow loris: 130 connections dropped after {shortest:?} to {longest:?}");
    // Upgraded in time, the honest client is not dropped by the timeout: its socket is open
    // (reading finds a frame or nothing, not the end).
    let read = tokio::time::timeout(Duration::from_millis(300), honest.read(&mut chunk)).await;
    assert!(
        matches!(read, Err(_) | Ok(Ok(1..))),
        "the upgraded honest client was closed: {read:?}"
    );
    assert!(
        fresh.next_json().await["i"].is_i64(),
        "the new client is still served"
    );
    polite.finish("slow loris").await;
}

// ---------------------------------------------------------------------------------------
// Malformed requests
// ---------------------------------------------------------------------------------------

const BAD_REQUESTS: &str = r#"bridge_connections_rejected_total{reason="bad_request"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_garbage_and_bad_keys_get_their_answers() {
    // Whatever the parser cannot refuse at once (blank lines before a request line are
    // skipped, as HTTP/1.1 allows) ends at the handshake timeout.
    let (redis, bridge) = start("handshake_timeout: 2s", ROUTES).await;
    let polite = Polite::start(&bridge, &redis).await;
    let addr = bridge.addr();
    let pid = bridge.pid();
    let rejected_before = bridge.metric(BAD_REQUESTS).await.unwrap_or(0);

    // Heads over 16 KiB: 431, or the connection closed; never an upgrade.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let big_value = format!("{key}X-Big: {}\r\n", "a".repeat(20 * 1024));
    let many: String = (0..220)
        .map(|i| format!("X-Many-{i}: {}\r\n", "b".repeat(80)))
        .collect();
    let too_many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!(
        "GET /ws?{} HTTP/1.1\r\nHost: b\r\n\r\n",
        "q".repeat(20 * 1024)
    );
    let oversized: Vec<(&str, Vec<u8>)> = vec![
        ("one 20 KiB header", upgrade_request(addr, &big_value)),
        (
            "220 headers of 90 bytes",
            upgrade_request(addr, &format!("{key}{many}")),
        ),
        (
            "150 small headers",
            upgrade_request(addr, &format!("{key}{too_many}")),
        ),
        ("a 20 KiB request target", long_target.into_bytes()),
    ];
    for (what, request) in &oversized {
        let answer = exchange(addr, what, request).await;
        eprintln!("{what}: {:?}", answer.status);
        assert!(
            matches!(answer.status, None | Some(431) | Some(414)),
            "{what}: expected 431 or a close, got {answer:?}"
        );
        assert!(
            answer.status.is_some() || answer.head.is_empty(),
            "{what}: {answer:?}"
        );
    }

    // Garbage on the port: 400, or the connection closed.
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls_hello.extend(noise(505));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("4 KiB of noise", noise(4096)),
        ("a TLS ClientHello", tls_hello),
        (
            "an HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("a request line then zeros", {
            let mut b = b"GET /ws HTTP/1.1\r\n".to_vec();
            b.extend([0u8; 512]);
            b.extend(b"\r\n\r\n");
            b
        }),
        ("a bare newline storm", b"\r\n".repeat(4096)),
        ("not HTTP at all", b"HELLO REDIS\r\nPING\r\n\r\n".to_vec()),
    ];
    for (what, request) in &garbage {
        let answer = exchange(addr, what, request).await;
        eprintln!("{what}: {:?}", answer.status);
        assert!(
            matches!(answer.status, None | Some(400) | Some(505)),
            "{what}: expected 400 or a close, got {answer:?}"
        );
        assert!(
            answer.status.is_some() || answer.head.is_empty(),
            "{what}: {answer:?}"
        );
    }
    // None of that reached the upgrade, so none was counted as a refused upgrade.
    assert_eq!(
        bridge.metric(BAD_REQUESTS).await.unwrap_or(0),
        rejected_before,
        "refused upgrades after garbage"
    );

    // A well-formed upgrade with a bad Sec-WebSocket-Key: 400 before any upgrade, counted.
    let bad_keys = [
        "Sec-WebSocket-Key: not-a-valid-key\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Key: \r\n",
        "",
    ];
    for key in bad_keys {
        let answer = exchange(addr, key, &upgrade_request(addr, key)).await;
        assert_eq!(answer.status, Some(400), "{key:?}: {answer:?}");
        let head = answer.head.to_ascii_lowercase();
        assert!(
            !head.contains("sec-websocket-accept") && !head.contains("upgrade: websocket"),
            "{key:?}: {answer:?}"
        );
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{key:?}: the body is not JSON ({e}): {answer:?}"));
        assert_eq!(
            body,
            json!({"error": "missing or malformed Sec-WebSocket-Key"}),
            "{key:?}"
        );
    }
    assert_eq!(
        bridge.metric(BAD_REQUESTS).await.unwrap_or(0),
        rejected_before + bad_keys.len() as u64,
        "each refused upgrade counted once"
    );

    // The bridge is the same process, still answering, still upgrading good requests.
    assert_eq!(bridge.pid(), pid);
    assert_eq!(bridge.get("/healthz").await.0, 200);
    let mut fresh = bridge.client().await;
    assert!(fresh.next_json().await["i"].is_i64());
    polite.finish("malformed requests").await;
}

// ---------------------------------------------------------------------------------------
// Subscribe flood
// ---------------------------------------------------------------------------------------

fn flood_topics(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("f:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_flood_is_bounded_by_max_subscriptions_then_rate_limited() {
    const MAX: usize = 1000;
    const BURST: usize = 20;
    let (redis, bridge) = start(
        "max_subscriptions: 1000\nclient_rate: 20/s\nmax_frame_bytes: 65536",
        ROUTES,
    )
    .await;
    let polite = Polite::start(&bridge, &redis).await;
    let mut flooder = bridge.client().await;
    // `auto` frames of the stream reach the flooder too; they are not answers.
    async fn answer(c: &mut WsClient) -> Value {
        loop {
            match c.recv_frame(WAIT).await {
                Frame::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v.get("i").is_none() {
                        return v;
                    }
                }
                Frame::Close(close) => return json!({"close": close}),
                other => panic!("the flooder got {other:?}"),
            }
        }
    }

    // More than 1000 topics in one command is a bad request, whatever the limit: nothing of
    // it is subscribed.
    flooder
        .send_json(&json!({"type": "subscribe", "id": 1, "topics": flood_topics(0..1001)}))
        .await;
    let error = answer(&mut flooder).await;
    assert_eq!(
        (&error["type"], &error["code"], &error["id"]),
        (&json!("error"), &json!("bad_request"), &json!(1)),
        "{error}"
    );
    assert_eq!(bridge.stats().await["topics"], 0);

    // 800, then 400 more: the first 200 of those reach the limit; the one answer lists the
    // 200 it refused.
    flooder
        .send_json(&json!({"type": "subscribe", "id": 2, "topics": flood_topics(0..800)}))
        .await;
    assert_eq!(
        answer(&mut flooder).await,
        json!({"type": "subscribed", "id": 2, "topics": flood_topics(0..800)})
    );
    let over = |topics: Vec<String>| -> Value {
        topics
            .into_iter()
            .map(|topic| json!({"topic": topic, "code": "too_many_subscriptions"}))
            .collect()
    };
    flooder
        .send_json(&json!({"type": "subscribe", "id": 3, "topics": flood_topics(800..1200)}))
        .await;
    assert_eq!(
        answer(&mut flooder).await,
        json!({"type": "subscribed", "id": 3, "topics": flood_topics(800..MAX),
               "refused": over(flood_topics(MAX..1200))})
    );
    assert_eq!(bridge.stats().await["topics"], MAX);

    // At the limit, topics already held are still answered; new ones are refused.
    flooder
        .send_json(
            &json!({"type": "subscribe", "id": 4, "topics": ["f:0", "f:5000", "f:5", "f:5001"]}),
        )
        .await;
    assert_eq!(
        answer(&mut flooder).await,
        json!({"type": "subscribed", "id": 4, "topics": ["f:0", "f:5"],
               "refused": over(vec!["f:5000".into(), "f:5001".into()])})
    );

    // Then 500 new topics a command, 10 commands a burst: each command gets exactly one
    // answer, in order (one error, however many topics it refuses), until the command budget
    // is spent: `rate_limited` errors, then close 1008 (what is still in flight is read and
    // discarded by the bridge, so the answers and the close arrive).
    const PER_BURST: usize = 10;
    let mut too_many = 0;
    let mut limited = 0;
    let mut id = 4;
    let close = 'flood: loop {
        assert!(id < 200, "never rate limited");
        let ids = id + 1..=id + PER_BURST;
        let burst: Vec<String> = ids
            .clone()
            .map(|k| {
                json!({"type": "subscribe", "id": k, "topics": flood_topics(k * 500..k * 500 + 500)})
                    .to_string()
            })
            .collect();
        flooder.send_burst(&burst).await;
        for k in ids {
            id = k;
            let a = answer(&mut flooder).await;
            if let Some(close) = a.get("close") {
                break 'flood close.clone();
            }
            assert_eq!(a["type"], "error", "{a}");
            match a["code"].as_str() {
                Some("too_many_subscriptions") => {
                    assert_eq!(a["id"], k, "{a}");
                    assert_eq!(a["topic"], format!("f:{}", k * 500), "{a}");
                    too_many += 1;
                }
                Some("rate_limited") => {
                    assert!(a.get("id").is_none(), "{a}");
                    limited += 1;
                }
                _ => panic!("unexpected answer {a}"),
            }
        }
    };
    eprintln!(
        "subscribe flood: {} topics in {id} commands; {too_many} too_many_subscriptions, {limited} rate_limited",
        1001 + 1200 + 4 + (id - 4) * 500
    );
    assert_eq!(close, json!([1008, "rate limit"]));
    // The budget: a burst of 20 (4 spent above), plus what refilled meanwhile.
    assert!(too_many >= BURST - 4, "{too_many} commands answered");
    assert_eq!(limited, BURST, "rate_limited errors before the close");
    // The hub never held more than the limit, and the flooder's subscriptions went with it.
    wait_until_async(WAIT, "the flooder's subscriptions dropped", || async {
        let stats = bridge.stats().await;
        stats["topics"] == 0 && stats["connections"] == 1
    })
    .await;
    polite.finish("subscribe flood").await;
}

// ---------------------------------------------------------------------------------------
// Connection rate per address
// ---------------------------------------------------------------------------------------

const RATE_LIMITED: &str = r#"bridge_connections_rejected_total{reason="rate_limited"}"#;
const ACCEPTED: &str = "bridge_connections_accepted_total";

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_connection_in_a_second_from_one_address_gets_429() {
    let (redis, bridge) = start("connect_rate_per_ip: 5/s", ROUTES).await;
    let url = bridge.ws_url("/ws");
    let addr = bridge.addr();
    // The polite client comes from an address of its own, so it has its own budget.
    let polite = WsClient::try_connect_from(&url, addr, local(2))
        .await
        .unwrap_or_else(|e| panic!("the polite client: {e:?}"));
    let mut polite = polite;
    assert_eq!(polite.next_json().await["type"], "connected");
    let polite = Polite::with(polite, &redis).await;
    assert_eq!(bridge.metric(RATE_LIMITED).await, Some(0));

    // From 127.0.0.1, as fast as possible: the burst of 5 is admitted, then 429.
    let started = Instant::now();
    let mut admitted = Vec::new();
    let refused = loop {
        match WsClient::try_connect_from(&url, addr, local(1)).await {
            Ok(c) => admitted.push(c),
            Err(ConnectError::Status(status, body)) => break (status, body),
            Err(other) => panic!("connection {}: {other:?}", admitted.len() + 1),
        }
        assert!(admitted.len() <= 20, "never rate limited");
    };
    let elapsed = started.elapsed();
    assert_eq!(refused.0, 429, "{refused:?}");
    let body: Value = serde_json::from_str(&refused.1).expect("a JSON body");
    assert_eq!(
        body,
        json!({"error": "too many new connections from this address"})
    );
    // 5 at once, plus one a 200 ms refilled while connecting (a loaded machine is slow).
    let refilled = (elapsed.as_secs_f64() * 5.0).ceil() as usize;
    eprintln!(
        "connect rate: {} admitted in {elapsed:?}, then 429",
        admitted.len()
    );
    assert!(
        (5..=5 + refilled).contains(&admitted.len()),
        "{} connections admitted in {elapsed:?} before the 429",
        admitted.len()
    );
    assert_eq!(
        bridge.metric(RATE_LIMITED).await,
        Some(1),
        "the 429 counted"
    );

    // Another address is not affected, and every admitted connection is served.
    let mut other = WsClient::try_connect_from(&url, addr, local(3))
        .await
        .unwrap_or_else(|e| panic!("another address: {e:?}"));
    assert_eq!(other.next_json().await["type"], "connected");
    for c in &mut admitted {
        assert_eq!(c.next_json().await["type"], "connected");
    }
    // Refused connections were never accepted: polite + admitted + other.
    assert_eq!(
        bridge.metric(ACCEPTED).await,
        Some(admitted.len() as u64 + 2)
    );
    assert_eq!(bridge.stats().await["connections"], admitted.len() + 2);
    // The budget refills at 5/s: 127.0.0.1 may connect again shortly.
    wait_until_async(WAIT, "127.0.0.1 admitted again", || async {
        WsClient::try_connect_from(&url, addr, local(1))
            .await
            .is_ok()
    })
    .await;
    polite.finish("connect rate").await;
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1024;

/// `{"i":n,"pad":"…"}`, 4 KiB.
fn flood_payload(i: usize) -> Vec<u8> {
    let mut p = format!(r#"{{"i":{i},"pad":""#).into_bytes();
    p.resize(4096 - 2, b'p');
    p.extend(b"\"}");
    p
}

/// Publishes `count` 4 KiB messages on `channel` in pipelines of `batch`, each time waiting
/// until the bridge has taken them all from Redis (so that Redis never holds a backlog, which
/// its pub/sub output-buffer limit would cut); calls `sample` after each batch.
async fn flood(
    bridge: &Bridge,
    redis: &RedisServer,
    route: &str,
    from: usize,
    count: usize,
    mut sample: impl FnMut(),
) {
    const BATCH: usize = 256;
    let mut p = Publisher::connect(&redis.url()).await;
    let base = bridge.route_stat(route, "messages").await;
    let mut sent = 0;
    while sent < count {
        let n = BATCH.min(count - sent);
        let batch: Vec<Vec<u8>> = (from + sent..from + sent + n).map(flood_payload).collect();
        p.publish_many("test:flood", &batch).await;
        sent += n;
        let want = base + sent as u64;
        wait_until_async(WAIT, "the bridge to take the batch", || async {
            bridge.route_stat(route, "messages").await >= want
        })
        .await;
        sample();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_message_flood_to_clients_that_never_read() {
    const CLIENTS: usize = 50;
    const SEND_QUEUE: usize = 16;
    const WARM_UP: usize = 1024;
    const FLOOD: usize = 16_384;
    let (redis, bridge) = start(
        &format!("send_queue: {SEND_QUEUE}\nslow_client: drop_oldest"),
        r#"
        - name: flood
          channel: test:flood
          delivery: auto
          format: raw
        "#,
    )
    .await;
    // Clients that never read, with 4 KiB receive buffers: their queues fill at once and stay
    // full, the worst case for the bridge's memory.
    let mut slow = Vec::new();
    for _ in 0..CLIENTS {
        slow.push(WsClient::connect_small_buffer(&bridge.ws_url("/ws"), bridge.addr(), 4096).await);
    }
    wait_until_async(WAIT, "every slow client connected", || async {
        bridge.stats().await["connections"] == CLIENTS
    })
    .await;

    // Warm up: every queue and every blocked writer is full; this is the plateau.
    flood(&bridge, &redis, "flood", 0, WARM_UP, || {}).await;
    let plateau = bridge.rss_kib();
    let mut peak = plateau;
    let started = Instant::now();
    flood(&bridge, &redis, "flood", WARM_UP, FLOOD, || {
        peak = peak.max(bridge.rss_kib());
    })
    .await;
    let elapsed = started.elapsed();
    let growth = peak.saturating_sub(plateau);
    // What may be held per client: its queue (SEND_QUEUE frames) and the batch its writer is
    // blocked on (as many again), counted as if no frame were shared between clients:
    // 2 × 16 × 4 KiB × 50 = 6.25 MiB; plus 16 MiB for the allocator's slack. Without the
    // bound, the 64 MiB published would stay queued (the clients never read them).
    let bound = 2 * (SEND_QUEUE as u64) * 4 * (CLIENTS as u64) + 16 * MIB;
    eprintln!(
        "message flood: {FLOOD} × 4 KiB to {CLIENTS} stalled clients in {elapsed:?}: RSS {plateau} KiB → peak {peak} KiB (+{growth} KiB, bound {bound} KiB)"
    );
    assert!(
        growth < bound,
        "RSS grew by {growth} KiB (bound {bound} KiB) while flooding stalled clients"
    );
    // The bound held because the slow-client policy dropped frames, not because the clients
    // drained them; and every client is still connected (drop_oldest keeps them).
    let dropped = bridge
        .metric(r#"bridge_messages_dropped_total{reason="queue_full"}"#)
        .await
        .unwrap_or(0);
    assert!(
        dropped >= ((FLOOD - 4 * SEND_QUEUE) * CLIENTS) as u64,
        "only {dropped} frames dropped"
    );
    assert_eq!(bridge.stats().await["connections"], CLIENTS);
    // A stalled client that reads at last gets the newest frames.
    let reader = &mut slow[0];
    assert_eq!(reader.next_json().await["type"], "connected");
    let last = (WARM_UP + FLOOD - 1) as i64;
    loop {
        let v = reader.next_json().await;
        let i = v["i"].as_i64().expect("a flood frame");
        if i == last {
            break;
        }
        assert!(i < last, "{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_its_plateau_after_a_flood_of_connections() {
    const WAVES: usize = 10;
    const PER_WAVE: usize = 200;
    let (redis, bridge) = start("", ROUTES).await;
    let polite = Polite::start(&bridge, &redis).await;
    let url = bridge.ws_url("/ws");

    // A wave: PER_WAVE clients connect at once, each subscribes to 20 topics, then all close.
    let wave = |n: usize| {
        let url = url.clone();
        async move {
            let clients = futures_util::future::join_all((0..PER_WAVE).map(|k| {
                let url = url.clone();
                async move {
                    let mut c = WsClient::connect(&url, &[]).await;
                    assert_eq!(c.next_json().await["type"], "connected");
                    let topics: Vec<String> = (0..20).map(|t| format!("f:{n}:{k}:{t}")).collect();
                    c.send_json(&json!({"type": "subscribe", "id": 1, "topics": topics}))
                        .await;
                    loop {
                        let v = c.next_json().await;
                        if v["type"] == "subscribed" {
                            break;
                        }
                        assert!(v["i"].is_i64(), "{v}");
                    }
                    c
                }
            }))
            .await;
            futures_util::future::join_all(clients.into_iter().map(WsClient::close)).await;
        }
    };
    let settled = async || {
        wait_until_async(WAIT, "every wave client gone", || async {
            let stats = bridge.stats().await;
            stats["connections"] == 1 && stats["topics"] == 0
        })
        .await;
    };

    let started = Instant::now();
    let mut after = Vec::new();
    for n in 0..WAVES {
        wave(n).await;
        settled().await;
        after.push(bridge.rss_kib());
    }
    let elapsed = started.elapsed();
    // The first two waves set the plateau: the allocator keeps what it was given for the
    // next wave. Then each wave reuses it. A connection that leaked its buffers (4 KiB read,
    // 8 KiB write), its outbox, its tasks and its 20 subscriptions would cost at least 16 KiB:
    // 8 waves × 200 = 1600 of them, 25 MiB. The bound leaves room for fragmentation.
    let plateau = after[1];
    let last = *after.last().unwrap();
    let bound = 8 * MIB;
    eprintln!(
        "connection flood: {} connections in {WAVES} waves in {elapsed:?}; RSS after each wave (KiB): {after:?}",
        WAVES * PER_WAVE
    );
    assert!(
        after[2..].iter().all(|&rss| rss < plateau + bound),
        "RSS kept growing after the plateau ({plateau} KiB, bound +{bound} KiB): {after:?}"
    );
    assert!(last < plateau + bound, "{after:?}");
    assert_eq!(
        bridge.metric("bridge_connections_accepted_total").await,
        Some((WAVES * PER_WAVE + 1) as u64)
    );
    polite.finish("connection flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_flood_of_commands_from_one_client() {
    const BURST: usize = 20;
    const COMMANDS: usize = 3000;
    let (redis, bridge) = start("client_rate: 20/s", ROUTES).await;
    let polite = Polite::start(&bridge, &redis).await;

    // Each command re-subscribes the same 1000 topics (9 KiB): admitted, it is answered with
    // all 1000 (9 KiB more). 3000 of them are 27 MiB in, and would be 27 MiB of answers out
    // if the bridge read and answered them all.
    let topics: Vec<String> = (0..1000).map(|i| format!("f:{i:03}")).collect();
    let command = json!({"type": "subscribe", "topics": topics}).to_string();
    let (ws, _) = tokio_tungstenite::connect_async(bridge.ws_url("/ws"))
        .await
        .expect("connect the flooder");
    let (mut tx, mut rx) = ws.split();
    let baseline = bridge.rss_kib();
    let mut peak = baseline;
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0;
        for _ in 0..COMMANDS {
            if tx.feed(Message::text(command.clone())).await.is_err() {
                break;
            }
            sent += 1;
        }
        let _ = tx.flush().await;
        sent
    });
    let answers = tokio::spawn(async move {
        let (mut subscribed, mut limited, mut close) = (0, 0, None);
        while let Some(Ok(message)) = rx.next().await {
            match message {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    match (v["type"].as_str(), v["code"].as_str()) {
                        (Some("subscribed"), _) => subscribed += 1,
                        (Some("error"), Some("rate_limited")) => limited += 1,
                        (Some("connected"), _) => {}
                        _ if v["i"].is_i64() => {}
                        _ => panic!("the flooder got {v}"),
                    }
                }
                Message::Close(frame) => {
                    close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    break;
                }
                _ => {}
            }
        }
        (subscribed, limited, close)
    });

    while !answers.is_finished() {
        peak = peak.max(bridge.rss_kib());
        assert!(started.elapsed() < WAIT, "the flooder was never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (subscribed, limited, close) = answers.await.expect("the flooder's reader");
    let elapsed = started.elapsed();
    let sent = tokio::time::timeout(WAIT, flood)
        .await
        .expect("the flood ends once the bridge closes")
        .expect("flood task");
    peak = peak.max(bridge.rss_kib());
    let growth = peak.saturating_sub(baseline);
    // What the bridge may hold for the flooder: one command at a time (a 4 KiB read buffer
    // grown to one 9 KiB frame; after the close what still comes is read and dropped frame by
    // frame), the answers to the admitted ones (burst + refill, under 100 × 9 KiB), under
    // 1 MiB; plus 8 MiB for the allocator.
    let bound = 9 * MIB;
    eprintln!(
        "command flood: {sent}/{COMMANDS} commands written, {subscribed} answered, {limited} rate_limited, closed {close:?} after {:?}; RSS {baseline} KiB → peak {peak} KiB (+{growth} KiB, bound {bound} KiB)",
        started.elapsed()
    );
    assert_eq!(close, Some((1008, "rate limit".to_owned())));
    assert_eq!(limited, BURST, "rate_limited errors before the close");
    // The burst, and what the bucket refilled (20/s) while the flood lasted.
    let refilled = (elapsed.as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(
        (BURST..=BURST + refilled).contains(&subscribed),
        "{subscribed} commands answered in {elapsed:?}"
    );
    assert!(
        growth < bound,
        "RSS grew by {growth} KiB (bound {bound} KiB) under a command flood"
    );
    wait_until_async(WAIT, "the flooder gone", || async {
        let stats = bridge.stats().await;
        stats["connections"] == 1 && stats["topics"] == 0
    })
    .await;
    polite.finish("command flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_pings_from_a_client_that_never_reads() {
    const PINGS: usize = 200_000;
    let (redis, bridge) = start("", ROUTES).await;
    let polite = Polite::start(&bridge, &redis).await;

    // 200,000 pings of 125 bytes: answered in full they would be 25 MiB of pongs, queued
    // behind a socket the client never reads.
    let (ws, _) = tokio_tungstenite::connect_async(bridge.ws_url("/ws"))
        .await
        .expect("connect the flooder");
    let (mut tx, rx) = ws.split();
    let baseline = bridge.rss_kib();
    let flood = tokio::spawn(async move {
        for _ in 0..PINGS {
            tx.feed(Message::Ping(vec![b'p'; 125].into()))
                .await
                .expect("the bridge reads every ping");
        }
        tx.flush().await.expect("flush the pings");
        tx
    });
    let mut peak = baseline;
    while !flood.is_finished() {
        peak = peak.max(bridge.rss_kib());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _tx = flood.await.expect("the flooder");
    // The last pings are read once the socket has delivered them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    peak = peak.max(bridge.rss_kib());
    let growth = peak.saturating_sub(baseline);
    let bound = 8 * MIB;
    eprintln!(
        "ping flood: RSS {baseline} KiB → peak {peak} KiB (+{growth} KiB, bound {bound} KiB)"
    );
    assert!(
        growth < bound,
        "RSS grew by {growth} KiB (bound {bound} KiB) under a ping flood"
    );
    assert_eq!(
        bridge.stats().await["connections"],
        2,
        "both still connected"
    );
    drop(rx);
    polite.finish("ping flood").await;
}
