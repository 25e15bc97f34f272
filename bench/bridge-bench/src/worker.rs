//! A worker process: holds its share of the clients (client `i` belongs to worker
//! `i % processes`), so that each process stays under its own open-file limit. It obeys one
//! JSON command per line on stdin and answers one JSON line on stdout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::stats::{Histogram, now_ns, raise_fd_limit, topic_of};
use crate::target::Target;
use crate::wsclient;
use crate::{ClientArgs, jwt};

/// A command from the coordinating process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open this worker's clients, subscribe them, and answer `Connected`.
    Connect,
    /// A measurement phase starts with message `first_seq`: reset the counters.
    Phase {
        first_seq: u64,
    },
    /// How many of messages `first_seq..=last_seq` arrived so far (for the drain).
    Count {
        last_seq: u64,
    },
    /// The phase's figures.
    Report {
        last_seq: u64,
    },
    Exit,
}

/// An answer to the coordinating process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum FromWorker {
    Connected(ConnectReport),
    PhaseStarted,
    Count {
        received: u64,
        expected: u64,
        open: u64,
    },
    Report(PhaseReport),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    /// Clients whose subscriptions were acknowledged (or sent, without an ack).
    pub subscribed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Time from the start of the TCP connect to the 101 answer.
    pub latency: Histogram,
    pub first_start_ns: u64,
    pub last_end_ns: u64,
    /// When the last client's subscriptions were acknowledged (0: none was): with an ack
    /// that only the last frame of a replay carries, when every client was live.
    pub last_ack_ns: u64,
    pub fd_limit: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Bench messages received for the first time by a client.
    pub received: u64,
    /// What should have been received: for each published message, its topic's subscribers.
    pub expected: u64,
    /// A message a client had already received (or received out of order).
    pub duplicates: u64,
    /// Messages of an earlier phase arriving in this one.
    pub late: u64,
    /// Frames that are neither bench messages nor acks (welcome, pings' answers, …).
    pub other_frames: u64,
    /// Bytes the clients read from their sockets (frames as they crossed the wire,
    /// compressed or not).
    pub wire_bytes: u64,
    /// Connections that ended during the phase, by close code or error.
    pub closed: BTreeMap<String, u64>,
    pub open: u64,
    /// Publish → receive, ns.
    pub latency: Histogram,
    pub last_rx_ns: u64,
}

struct Worker {
    args: ClientArgs,
    target: Target,
    ack: Option<Vec<u8>>,
    phase_first: Cell<u64>,
    phase: RefCell<PhaseReport>,
    expected_upto: Cell<u64>,
    /// Subscribed clients of this worker per topic index.
    subscribers: RefCell<Vec<u32>>,
    connect: RefCell<ConnectReport>,
    finished: Cell<u64>,
    open: Cell<u64>,
    slots: Semaphore,
}

thread_local! {
    /// One receive buffer per thread, so that idle connections hold none.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// Runs a worker until `Exit` or the end of its stdin.
pub fn run(args: ClientArgs, index: usize, processes: usize) -> Result<(), String> {
    let fd_limit = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(args, index, processes, fd_limit))
}

fn answer(event: &FromWorker) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, event);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

async fn serve(
    args: ClientArgs,
    index: usize,
    processes: usize,
    fd_limit: u64,
) -> Result<(), String> {
    let target = Target::parse(&args.url)?;
    let per_worker_slots = args.concurrency.div_ceil(processes).max(1);
    let worker = Rc::new(Worker {
        ack: (args.ack != "none" && args.subscribe != "none")
            .then(|| args.ack.clone().into_bytes()),
        subscribers: RefCell::new(vec![0; args.topics as usize]),
        args,
        target,
        phase_first: Cell::new(0),
        phase: RefCell::new(PhaseReport::default()),
        expected_upto: Cell::new(0),
        connect: RefCell::new(ConnectReport {
            fd_limit,
            first_start_ns: u64::MAX,
            ..ConnectReport::default()
        }),
        finished: Cell::new(0),
        open: Cell::new(0),
        slots: Semaphore::new(per_worker_slots),
    });
    // Commands are read by a plain thread (stdin is blocking) and handed over.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let command: ToWorker =
            serde_json::from_str(&line).map_err(|e| format!("bad command {line}: {e}"))?;
        match command {
            ToWorker::Connect => {
                let report = connect_all(&worker, index, processes).await;
                answer(&FromWorker::Connected(report));
            }
            ToWorker::Phase { first_seq } => {
                worker.phase_first.set(first_seq);
                worker.expected_upto.set(first_seq.saturating_sub(1));
                *worker.phase.borrow_mut() = PhaseReport::default();
                answer(&FromWorker::PhaseStarted);
            }
            ToWorker::Count { last_seq } => {
                worker.update_expected(last_seq);
                let phase = worker.phase.borrow();
                answer(&FromWorker::Count {
                    received: phase.received,
                    expected: phase.expected,
                    open: worker.open.get(),
                });
            }
            ToWorker::Report { last_seq } => {
                worker.update_expected(last_seq);
                let mut report = worker.phase.borrow().clone();
                report.open = worker.open.get();
                answer(&FromWorker::Report(report));
            }
            ToWorker::Exit => break,
        }
    }
    Ok(())
}

impl Worker {
    fn update_expected(&self, last_seq: u64) {
        let from = self.expected_upto.get() + 1;
        if last_seq < from {
            return;
        }
        let subscribers = self.subscribers.borrow();
        let topics = self.args.topics;
        let added: u64 = if topics <= 1 {
            (last_seq - from + 1) * u64::from(subscribers.first().copied().unwrap_or(0))
        } else {
            (from..=last_seq)
                .map(|seq| u64::from(subscribers[topic_of(seq, topics) as usize]))
                .sum()
        };
        self.phase.borrow_mut().expected += added;
        self.expected_upto.set(last_seq);
    }

    fn source_ip(&self, client: usize) -> Option<Ipv4Addr> {
        let count = self.args.source_ips;
        if count == 0 {
            return None;
        }
        // 127.1.0.1, 127.1.0.2, … : the whole 127.0.0.0/8 is the loopback, and every source
        // address has its own ~28k ephemeral ports.
        let n = (client as u32 % count) + 1;
        Some(Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8))
    }

    /// The topic indexes client `i` subscribes to.
    fn topics_of(&self, client: usize) -> Vec<u64> {
        let per = self.args.topics_per_client as u64;
        (0..per)
            .map(|j| (client as u64 * per + j) % self.args.topics.max(1))
            .collect()
    }

    fn topic_name(&self, topic: u64) -> String {
        self.args.topic.replace("{id}", &topic.to_string())
    }

    fn mark_subscribed(&self, topics: &[u64]) {
        let mut subscribers = self.subscribers.borrow_mut();
        for topic in topics {
            subscribers[*topic as usize] += 1;
        }
        let mut connect = self.connect.borrow_mut();
        connect.subscribed += 1;
        connect.last_ack_ns = connect.last_ack_ns.max(now_ns());
    }
}

async fn connect_all(worker: &Rc<Worker>, index: usize, processes: usize) -> ConnectReport {
    let mine: Vec<usize> = (index..worker.args.clients).step_by(processes).collect();
    // Tokens are signed before the clock starts: the storm measures the server.
    let tokens: Vec<Option<String>> = mine
        .iter()
        .map(|client| jwt::token_for(&worker.args, *client))
        .collect();
    worker.connect.borrow_mut().attempted = mine.len() as u64;
    for (client, token) in mine.iter().copied().zip(tokens) {
        let topics = worker.topics_of(client);
        let names: Vec<String> = topics.iter().map(|t| worker.topic_name(*t)).collect();
        let path = worker.target.path_for(client, token.as_deref(), &names);
        tokio::task::spawn_local(run_client(worker.clone(), client, path, topics, names));
    }
    let total = mine.len() as u64;
    while worker.finished.get() < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + worker.args.ack_timeout;
    while worker.connect.borrow().subscribed < worker.open.get()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::mem::take(&mut *worker.connect.borrow_mut())
}

/// The subscribe frames of one client: one per topic when the template has `{topic}`, else
/// one with `{topics}` (a JSON array) and `{topics_csv}` replaced.
fn subscribe_frames(template: &str, names: &[String]) -> Vec<String> {
    if template == "none" {
        return Vec::new();
    }
    if template.contains("{topic}") {
        return names
            .iter()
            .map(|name| template.replace("{topic}", &json_string_body(name)))
            .collect();
    }
    let array = serde_json::to_string(names).unwrap_or_default();
    vec![
        template
            .replace("{topics}", &array)
            .replace("{topics_csv}", &names.join(",")),
    ]
}

fn json_string_body(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

async fn run_client(
    worker: Rc<Worker>,
    client: usize,
    path: String,
    topics: Vec<u64>,
    names: Vec<String>,
) {
    let permit = worker.slots.acquire().await;
    let started = now_ns();
    let nonce = crate::stats::mix(client as u64 ^ started);
    let (server, host) = worker.target.server_for(client);
    let result = wsclient::connect(
        server,
        worker.source_ip(client),
        host,
        &path,
        worker.args.connect_timeout,
        nonce,
        worker.args.deflate,
    )
    .await;
    let done = now_ns();
    drop(permit);
    {
        let mut connect = worker.connect.borrow_mut();
        connect.first_start_ns = connect.first_start_ns.min(started);
        connect.last_end_ns = connect.last_end_ns.max(done);
        match &result {
            Ok(_) => {
                connect.connected += 1;
                connect.latency.record(done - started);
            }
            Err(err) => *connect.failures.entry(err.label()).or_default() += 1,
        }
    }
    let opened = match result {
        Ok(opened) => {
            worker.open.set(worker.open.get() + 1);
            worker.finished.set(worker.finished.get() + 1);
            opened
        }
        Err(_) => {
            worker.finished.set(worker.finished.get() + 1);
            return;
        }
    };
    let mask = (nonce as u32).to_le_bytes();
    let mut stream = opened.stream;
    let frames = subscribe_frames(&worker.args.subscribe, &names);
    let mut state = Client {
        last_seq: 0,
        acks_needed: if worker.ack.is_some() {
            frames.len()
        } else {
            0
        },
        pending: opened.leftover,
        mask,
    };
    let mut ending = None;
    for frame in &frames {
        if let Err(err) = stream
            .write_all(&wsclient::encode(
                OpCode::Data(Data::Text),
                frame.as_bytes(),
                mask,
            ))
            .await
        {
            ending = Some(format!("io:{:?}", err.kind()));
            break;
        }
    }
    if ending.is_none() {
        if state.acks_needed == 0 {
            worker.mark_subscribed(&topics);
        }
        ending = Some(read_loop(&worker, &mut stream, &mut state, &topics).await);
    }
    worker.open.set(worker.open.get() - 1);
    if let Some(reason) = ending {
        *worker.phase.borrow_mut().closed.entry(reason).or_default() += 1;
    }
}

struct Client {
    last_seq: u64,
    acks_needed: usize,
    /// Bytes of a frame not complete yet (usually empty, and then unallocated).
    pending: Vec<u8>,
    mask: [u8; 4],
}

enum Step {
    More,
    Closed(String),
}

async fn read_loop(
    worker: &Worker,
    stream: &mut TcpStream,
    client: &mut Client,
    topics: &[u64],
) -> String {
    let mut replies = Vec::new();
    // Frames that arrived with the 101 answer.
    if !client.pending.is_empty() {
        let pending = std::mem::take(&mut client.pending);
        if let Step::Closed(reason) =
            consume(worker, client, topics, &pending, now_ns(), &mut replies)
        {
            return reason;
        }
    }
    loop {
        if !replies.is_empty() {
            if let Err(err) = stream.write_all(&replies).await {
                return format!("io:{:?}", err.kind());
            }
            replies.clear();
        }
        // The shared buffer is borrowed within one poll only. `poll_read` (unlike
        // `try_read`) clears the readiness after a short read, which saves the extra read()
        // that would only return EAGAIN: one syscall per wake-up instead of two.
        let step = std::future::poll_fn(|cx| {
            READ_BUFFER.with_borrow_mut(|buffer| {
                let mut read_buf = ReadBuf::new(buffer);
                match Pin::new(&mut *stream).poll_read(cx, &mut read_buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(err)) => {
                        Poll::Ready(Step::Closed(format!("io:{:?}", err.kind())))
                    }
                    Poll::Ready(Ok(())) => {
                        let bytes = read_buf.filled();
                        if bytes.is_empty() {
                            return Poll::Ready(Step::Closed("eof".into()));
                        }
                        worker.phase.borrow_mut().wire_bytes += bytes.len() as u64;
                        let now = now_ns();
                        Poll::Ready(if client.pending.is_empty() {
                            consume(worker, client, topics, bytes, now, &mut replies)
                        } else {
                            let mut pending = std::mem::take(&mut client.pending);
                            pending.extend_from_slice(bytes);
                            consume(worker, client, topics, &pending, now, &mut replies)
                        })
                    }
                }
            })
        })
        .await;
        if let Step::Closed(reason) = step {
            if !replies.is_empty() {
                let _ = stream.write_all(&replies).await;
            }
            return reason;
        }
    }
}

/// Handles the complete frames in `bytes`; keeps an incomplete tail in `client.pending`.
fn consume(
    worker: &Worker,
    client: &mut Client,
    topics: &[u64],
    bytes: &[u8],
    now: u64,
    replies: &mut Vec<u8>,
) -> Step {
    let mut at = 0;
    while let Some((frame, used)) = wsclient::parse(&bytes[at..]) {
        at += used;
        match frame.opcode {
            _ if frame.masked => {}
            OpCode::Data(Data::Text | Data::Binary | Data::Continue) if frame.compressed => {
                let inflated = inflate(frame.payload);
                on_data(worker, client, topics, &inflated, now);
            }
            OpCode::Data(Data::Text | Data::Binary | Data::Continue) => {
                on_data(worker, client, topics, frame.payload, now);
            }
            OpCode::Control(Control::Ping) => replies.extend(wsclient::encode(
                OpCode::Control(Control::Pong),
                frame.payload,
                client.mask,
            )),
            OpCode::Control(Control::Close) => {
                let code = frame
                    .payload
                    .get(..2)
                    .map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                replies.extend(wsclient::encode(
                    OpCode::Control(Control::Close),
                    &frame.payload[..frame.payload.len().min(2)],
                    client.mask,
                ));
                return Step::Closed(format!("close:{code}"));
            }
            _ => {}
        }
    }
    if at < bytes.len() {
        client.pending.clear();
        client.pending.extend_from_slice(&bytes[at..]);
    } else if client.pending.capacity() > 0 {
        client.pending = Vec::new();
    }
    Step::More
}

/// A permessage-deflate message's payload (RFC 7692 §7.2.2: the deflate stream is completed
/// with 00 00 ff ff). No context is kept between messages (both sides negotiated
/// no_context_takeover), so one inflater per thread serves every client. A message that does
/// not inflate counts as an empty frame (it is then neither a bench message nor an ack).
fn inflate(payload: &[u8]) -> Vec<u8> {
    thread_local! {
        static INFLATER: RefCell<flate2::Decompress> = RefCell::new(flate2::Decompress::new(false));
    }
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        let mut out = Vec::with_capacity(payload.len() * 4 + 64);
        loop {
            let (read, written) = (inflater.total_in(), inflater.total_out());
            let at = read as usize;
            let sync = flate2::FlushDecompress::Sync;
            if inflater
                .decompress_vec(&input[at..], &mut out, sync)
                .is_err()
            {
                return Vec::new();
            }
            if out.len() == out.capacity() {
                // Full: there may be more to come out.
                out.reserve(out.len());
            } else if inflater.total_in() as usize >= input.len() {
                break;
            } else if inflater.total_in() == read && inflater.total_out() == written {
                return Vec::new();
            }
        }
        out
    })
}

fn on_data(worker: &Worker, client: &mut Client, topics: &[u64], payload: &[u8], now: u64) {
    if let Some(seq) = number_after(payload, b"__bseq") {
        let sent = number_after(payload, b"__bts").unwrap_or(now);
        let mut phase = worker.phase.borrow_mut();
        if seq < worker.phase_first.get() {
            phase.late += 1;
        } else if seq <= client.last_seq {
            phase.duplicates += 1;
        } else {
            client.last_seq = seq;
            phase.received += 1;
            phase.latency.record(now.saturating_sub(sent));
            phase.last_rx_ns = now;
        }
        return;
    }
    if client.acks_needed > 0
        && let Some(ack) = &worker.ack
        && wsclient::find(payload, ack).is_some()
    {
        client.acks_needed -= 1;
        if client.acks_needed == 0 {
            worker.mark_subscribed(topics);
        }
        return;
    }
    worker.phase.borrow_mut().other_frames += 1;
}

/// The unsigned number that follows `key` in JSON text, escaped or not (`"key":12`,
/// `\"key\":12`).
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = wsclient::find(text, key)? + key.len();
    let rest = text.get(at..)?;
    let start = rest.iter().take(4).position(u8::is_ascii_digit)?;
    let mut value = 0u64;
    for byte in &rest[start..] {
        if !byte.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflates_a_permessage_deflate_payload() {
        let message =
            br#"{"event":"execution_completed","metrics":[1,2,3,4,5,6,7,8,9]}"#.repeat(50);
        let mut deflater = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut compressed = Vec::with_capacity(message.len());
        deflater
            .compress_vec(&message, &mut compressed, flate2::FlushCompress::Sync)
            .unwrap();
        // RFC 7692 §7.2.1: the sender drops the 00 00 ff ff the sync flush ends with.
        assert!(compressed.ends_with(&[0x00, 0x00, 0xff, 0xff]));
        compressed.truncate(compressed.len() - 4);
        assert!(compressed.len() < message.len() / 4);
        assert_eq!(inflate(&compressed), message);
        assert!(inflate(b"not deflate at all").is_empty());
    }

    #[test]
    fn numbers_are_found_in_plain_and_escaped_json() {
        let plain = br#"{"type":"x","data":{"__bseq":42,"__bts":1234567}}"#;
        assert_eq!(number_after(plain, b"__bseq"), Some(42));
        assert_eq!(number_after(plain, b"__bts"), Some(1_234_567));
        let escaped = br#"{"data":"{\"__bseq\":7,\"__bts\":9}"}"#;
        assert_eq!(number_after(escaped, b"__bseq"), Some(7));
        assert_eq!(number_after(escaped, b"__bts"), Some(9));
        assert_eq!(number_after(br#"{"type":"connected"}"#, b"__bseq"), None);
    }

    #[test]
    fn subscribe_frames_follow_the_template() {
        let names = vec!["job:1".to_owned(), "job:2".to_owned()];
        assert_eq!(
            subscribe_frames(r#"{"type":"subscribe","topics":{topics}}"#, &names),
            [r#"{"type":"subscribe","topics":["job:1","job:2"]}"#]
        );
        assert_eq!(
            subscribe_frames(r#"{"op":"sub","channel":"{topic}"}"#, &names),
            [
                r#"{"op":"sub","channel":"job:1"}"#,
                r#"{"op":"sub","channel":"job:2"}"#
            ]
        );
        assert!(subscribe_frames("none", &names).is_empty());
    }
}
