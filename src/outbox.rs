//! The write side of one connection: its socket and the frames the socket has not taken yet.
//!
//! Frames arrive fully encoded and shared (`Bytes`): one route frame is built once per
//! message and topic, and every recipient's queue holds a reference to the same bytes. Whoever
//! has something to send writes it at once, non-blocking, on its own thread: the dispatcher
//! after a batch of Redis messages, a session answering its client, a reload's notice. So a
//! delivery costs no task wake-up, no copy and no buffer per connection. What the socket does
//! not take stays queued, the connection is marked blocked, and from then on only its session
//! writes, when the socket becomes writable again, with vectored writes of as many queued
//! frames as one `sendmsg` takes: a backlog leaves in few syscalls and no frame ever waits for a
//! batch to fill.
//!
//! Capacity counts route frames; the server's own frames (answers, notices, pings) are
//! bounded separately, in bytes: a client that sends commands and never reads the answers is
//! closed (1008) once they add up to [`reply_limit`], instead of growing the process.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::config::SlowClient;
use crate::metrics::Metrics;

/// Frames handed to one `sendmsg`; more than enough to fill a socket's send buffer with the
/// small frames of a fan-out.
const MAX_WRITE_SLICES: usize = 64;

/// The least room for unread server frames of one connection.
const MIN_REPLY_BYTES: usize = 256 * 1024;

/// How many bytes of the server's own frames may wait for one client: room for two answers
/// to the largest command a client may send (an answer quotes at most the topics of its
/// command), and never less than [`MIN_REPLY_BYTES`].
pub fn reply_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_mul(2).max(MIN_REPLY_BYTES)
}

/// What `push_frame` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `flush` tells whether this push made the queue non-empty, so that the caller
    /// must `flush` the connection (once, after its batch).
    Queued { flush: bool },
    /// Queued after discarding the oldest frame (`slow_client: drop_oldest`).
    DroppedOldest,
    /// Took the place of an unsent frame of the same topic (`conflate: true`).
    Conflated,
    /// The queue was full under `slow_client: disconnect`: the connection is now closing.
    Overflowed,
    /// The connection is already closing; the frame was discarded.
    Closed,
}

/// Why the session must close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

impl Closing {
    /// The socket itself failed: there is nobody left to send a close frame to.
    pub fn is_abnormal(&self) -> bool {
        self.code == 1006
    }
}

/// What writing the queue came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Everything queued is written.
    Empty,
    /// The socket's buffer is full; the session waits for it to become writable.
    Blocked,
    /// The socket failed; the connection is closing with 1006.
    Failed,
}

#[derive(Debug)]
struct Queued {
    frame: Bytes,
    kind: Kind,
    /// The topic of a frame of a `conflate: true` route, which a newer frame of the topic
    /// replaces while it waits.
    conflate: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The server's own frame (an answer, a notice, a ping).
    Reply,
    /// A route frame, with when its Redis message arrived (for the delivery-time histogram).
    Live(Instant),
    /// A retained frame sent again, which the histogram leaves out.
    Replayed,
}

impl Queued {
    fn reply(frame: Bytes) -> Queued {
        Queued {
            frame,
            kind: Kind::Reply,
            conflate: None,
        }
    }

    fn is_route_frame(&self) -> bool {
        self.kind != Kind::Reply
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Bytes of the front frame already written: a frame is never interleaved with another.
    front_written: usize,
    route_frames: usize,
    /// Bytes of the server's own frames in the queue.
    reply_bytes: usize,
    /// The socket refused the last write: only the session writes until the queue is empty.
    blocked: bool,
    closing: Option<Closing>,
    frames_sent: u64,
}

#[derive(Debug)]
pub struct Outbox {
    socket: TcpStream,
    state: Mutex<State>,
    /// The session's waker: woken when the socket refused a write, or to close.
    session: AtomicWaker,
    capacity: usize,
    policy: SlowClient,
    /// The most bytes of server frames that may wait (see [`reply_limit`]).
    reply_limit: usize,
}

impl Outbox {
    pub fn new(
        socket: TcpStream,
        capacity: usize,
        policy: SlowClient,
        reply_limit: usize,
    ) -> Outbox {
        Outbox {
            socket,
            state: Mutex::new(State::default()),
            session: AtomicWaker::new(),
            capacity,
            policy,
            reply_limit,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a route frame, applying the slow-client policy when full. Nothing is written:
    /// the caller flushes the connection when told to.
    pub fn push_frame(&self, frame: Bytes, received_at: Instant) -> Pushed {
        self.push(frame, received_at, None)
    }

    /// Queues a frame of a `conflate: true` route: in place of the newest unsent frame of
    /// `topic` when the queue holds one (it then takes no room of its own), else as
    /// [`Outbox::push_frame`] does.
    pub fn push_conflated(&self, frame: Bytes, received_at: Instant, topic: &Arc<str>) -> Pushed {
        self.push(frame, received_at, Some(topic))
    }

    fn push(&self, frame: Bytes, received_at: Instant, conflate: Option<&Arc<str>>) -> Pushed {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Pushed::Closed;
        }
        if let Some(topic) = conflate {
            // The front frame may be partly written: it has to go out as it is.
            let skip = usize::from(state.front_written > 0);
            let waiting = state.queue.iter_mut().skip(skip).rev().find(|item| {
                item.conflate
                    .as_ref()
                    .is_some_and(|queued| Arc::ptr_eq(queued, topic) || queued == topic)
            });
            if let Some(item) = waiting {
                item.frame = frame;
                item.kind = Kind::Live(received_at);
                return Pushed::Conflated;
            }
        }
        let mut outcome = None;
        if state.route_frames >= self.capacity {
            match self.policy {
                SlowClient::Disconnect => {
                    self.close_locked(
                        &mut state,
                        Closing {
                            code: 4000,
                            reason: "slow client",
                        },
                    );
                    discard_backlog(&mut state);
                    return Pushed::Overflowed;
                }
                SlowClient::DropOldest => {
                    // The front frame may be partly written: it has to go out whole.
                    let skip = usize::from(state.front_written > 0);
                    if let Some(index) = state
                        .queue
                        .iter()
                        .skip(skip)
                        .position(Queued::is_route_frame)
                    {
                        state.queue.remove(index + skip);
                        state.route_frames -= 1;
                    }
                    outcome = Some(Pushed::DroppedOldest);
                }
            }
        }
        let flush = state.queue.is_empty() && !state.blocked;
        state.queue.push_back(Queued {
            frame,
            kind: Kind::Live(received_at),
            conflate: conflate.cloned(),
        });
        state.route_frames += 1;
        outcome.unwrap_or(Pushed::Queued { flush })
    }

    /// How many more route frames the queue takes before the slow-client policy applies.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().route_frames)
    }

    /// Queues retained frames being replayed, as route frames, without writing them. The
    /// caller keeps to [`Outbox::room`], so they never set off the slow-client policy.
    pub fn push_replayed(&self, frames: Vec<Bytes>) {
        let mut state = self.lock();
        if state.closing.is_some() {
            return;
        }
        state.route_frames += frames.len();
        state.queue.extend(frames.into_iter().map(|frame| Queued {
            frame,
            kind: Kind::Replayed,
            conflate: None,
        }));
    }

    /// Writes what is queued, unless the session already waits for the socket.
    pub fn flush(&self, metrics: &Metrics) {
        let mut state = self.lock();
        if !state.blocked {
            self.write_locked(&mut state, metrics);
        }
    }

    /// Sends a frame of the server's own (an answer, a notice, a ping) after what is queued.
    pub fn send(&self, frame: Bytes, metrics: &Metrics) {
        let mut state = self.lock();
        if self.queue_reply_locked(&mut state, frame) && !state.blocked {
            self.write_locked(&mut state, metrics);
        }
    }

    /// Queues a frame of the server's own without writing it: for callers that hold a lock
    /// which must not cover socket writes, and `flush` after releasing it.
    pub fn queue_reply(&self, frame: Bytes) {
        let mut state = self.lock();
        self.queue_reply_locked(&mut state, frame);
    }

    /// False when the frame was not queued: the connection is closing, or its unread server
    /// frames would pass the limit, which closes it.
    fn queue_reply_locked(&self, state: &mut State, frame: Bytes) -> bool {
        if state.closing.is_some() {
            return false;
        }
        if state.reply_bytes + frame.len() > self.reply_limit {
            self.close_locked(
                state,
                Closing {
                    code: 1008,
                    reason: "too many unread replies",
                },
            );
            return false;
        }
        state.reply_bytes += frame.len();
        state.queue.push_back(Queued::reply(frame));
        true
    }

    /// Sends a pong, unless the socket is full: a client that sends pings without reading
    /// would otherwise queue pongs without bound. RFC 6455 §5.5.3 lets a pong answer only the
    /// latest ping.
    pub fn send_pong(&self, frame: Bytes, metrics: &Metrics) {
        if !self.lock().blocked {
            self.send(frame, metrics);
        }
    }

    /// Asks the session to close after what is already queued (the first reason wins).
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.lock();
        self.close_locked(&mut state, Closing { code, reason });
    }

    fn close_locked(&self, state: &mut State, closing: Closing) {
        if state.closing.is_none() {
            state.closing = Some(closing);
            self.session.wake();
        }
    }

    /// Queues the close frame after everything else; the session's last frame.
    pub fn push_close_frame(&self, frame: Bytes) {
        self.lock().queue.push_back(Queued::reply(frame));
    }

    /// Whether the session must wait for the socket before writing, and why it must close.
    pub fn status(&self) -> (bool, Option<Closing>) {
        let state = self.lock();
        (state.blocked, state.closing.clone())
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    pub fn frames_sent(&self) -> u64 {
        self.lock().frames_sent
    }

    /// The session's turn, once the socket is writable again.
    pub fn write_backlog(&self, metrics: &Metrics) -> Written {
        let mut state = self.lock();
        self.write_locked(&mut state, metrics)
    }

    /// Makes `waker` the one woken when the session has something to do: the socket refused a
    /// write, or a close was requested. Register before reading `status`, so that nothing
    /// done in between is missed.
    pub fn register(&self, waker: &Waker) {
        self.session.register(waker);
    }

    /// Writes the queue until it is empty or the socket is full. Called with the lock held, so
    /// writers never interleave; the write itself never blocks.
    fn write_locked(&self, state: &mut State, metrics: &Metrics) -> Written {
        let mut now = None;
        while !state.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
            let mut count = 0;
            for (slot, item) in slices.iter_mut().zip(&state.queue) {
                let skip = if count == 0 { state.front_written } else { 0 };
                *slot = IoSlice::new(item.frame.get(skip..).unwrap_or_default());
                count += 1;
            }
            let written = match self
                .socket
                .try_io(Interest::WRITABLE, || send(&self.socket, &slices[..count]))
            {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => Ok(written),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => Err(err),
            };
            let mut written = match written {
                Ok(written) => written,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if !state.blocked {
                        state.blocked = true;
                        self.session.wake();
                    }
                    return Written::Blocked;
                }
                Err(_) => {
                    state.queue.clear();
                    state.front_written = 0;
                    state.route_frames = 0;
                    state.reply_bytes = 0;
                    self.close_locked(
                        state,
                        Closing {
                            code: 1006,
                            reason: "write failed",
                        },
                    );
                    return Written::Failed;
                }
            };
            while let Some(front) = state.queue.front() {
                let left = front.frame.len() - state.front_written;
                if written < left {
                    state.front_written += written;
                    break;
                }
                written -= left;
                state.front_written = 0;
                state.frames_sent += 1;
                match front.kind {
                    Kind::Live(received_at) => {
                        state.route_frames -= 1;
                        let now = *now.get_or_insert_with(Instant::now);
                        metrics.observe_delivery(now.saturating_duration_since(received_at));
                    }
                    Kind::Replayed => state.route_frames -= 1,
                    Kind::Reply => {
                        state.reply_bytes = state.reply_bytes.saturating_sub(front.frame.len())
                    }
                }
                state.queue.pop_front();
            }
        }
        state.blocked = false;
        // An idle connection keeps no queue memory; a burst does not pin its peak.
        state.queue = VecDeque::new();
        Written::Empty
    }
}

/// One non-blocking `send`/`sendmsg`: unlike `write`/`writev` they go straight to the socket
/// layer, without the file layer's position lock and dispatch (8 % of a fan-out's CPU).
fn send(socket: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let socket = SockRef::from(socket);
    match slices {
        [one] => socket.send_with_flags(one, FLAGS),
        _ => socket.send_vectored_with_flags(slices, FLAGS),
    }
}

/// Drops the queued route frames that have not started to leave (a slow client's backlog).
fn discard_backlog(state: &mut State) {
    let keep = usize::from(state.front_written > 0);
    state.queue.truncate(keep);
    state.route_frames = state
        .queue
        .iter()
        .filter(|item| item.is_route_frame())
        .count();
    state.reply_bytes = state
        .queue
        .iter()
        .filter(|item| !item.is_route_frame())
        .map(|item| item.frame.len())
        .sum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    fn frame(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> String {
        let mut buf = vec![0; len];
        client.read_exact(&mut buf).await.unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[tokio::test]
    async fn frames_are_written_at_flush_in_order_and_replies_at_once() {
        let (server, mut client) = pair().await;
        let metrics = Metrics::default();
        let outbox = Outbox::new(server, 8, SlowClient::Disconnect, reply_limit(0));
        let now = Instant::now();
        assert_eq!(
            outbox.push_frame(frame("a"), now),
            Pushed::Queued { flush: true }
        );
        assert_eq!(
            outbox.push_frame(frame("b"), now),
            Pushed::Queued { flush: false }
        );
        outbox.send(frame("c"), &metrics);
        assert_eq!(read_exactly(&mut client, 3).await, "abc");
        assert_eq!(outbox.frames_sent(), 3);
        outbox.flush(&metrics);
        assert_eq!(outbox.status(), (false, None));
    }

    #[tokio::test]
    async fn unread_replies_are_bounded_in_bytes() {
        let (server, _client) = pair().await;
        let metrics = Metrics::default();
        let outbox = Outbox::new(server, 8, SlowClient::Disconnect, 10);
        // Nothing leaves while the session waits for the socket.
        outbox.lock().blocked = true;
        outbox.send(frame("12345"), &metrics);
        outbox.queue_reply(frame("6789"));
        assert_eq!(outbox.status(), (true, None));
        outbox.send(frame("ab"), &metrics);
        assert_eq!(
            outbox.status().1,
            Some(Closing {
                code: 1008,
                reason: "too many unread replies"
            })
        );
        assert_eq!(outbox.lock().reply_bytes, 9);
    }

    #[tokio::test]
    async fn disconnect_policy_closes_on_overflow_and_discards_the_backlog() {
        let (server, _client) = pair().await;
        let outbox = Outbox::new(server, 2, SlowClient::Disconnect, reply_limit(0));
        let now = Instant::now();
        outbox.push_frame(frame("1"), now);
        outbox.push_frame(frame("2"), now);
        assert_eq!(outbox.push_frame(frame("3"), now), Pushed::Overflowed);
        assert_eq!(outbox.push_frame(frame("4"), now), Pushed::Closed);
        assert_eq!(
            outbox.status(),
            (
                false,
                Some(Closing {
                    code: 4000,
                    reason: "slow client"
                })
            )
        );
        assert!(outbox.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_frames_and_replies() {
        let (server, mut client) = pair().await;
        let metrics = Metrics::default();
        let outbox = Outbox::new(server, 2, SlowClient::DropOldest, reply_limit(0));
        let now = Instant::now();
        outbox
            .lock()
            .queue
            .push_back(Queued::reply(frame("hello ")));
        outbox.push_frame(frame("1"), now);
        outbox.push_frame(frame("2"), now);
        assert_eq!(outbox.push_frame(frame("3"), now), Pushed::DroppedOldest);
        outbox.flush(&metrics);
        assert_eq!(read_exactly(&mut client, 8).await, "hello 23");
    }

    #[tokio::test]
    async fn a_full_socket_blocks_until_the_backlog_is_written_whole() {
        let (server, mut client) = pair().await;
        let metrics = Metrics::default();
        let outbox = Outbox::new(server, 1_000_000, SlowClient::Disconnect, reply_limit(0));
        let big = Bytes::from(vec![b'x'; 64 * 1024]);
        let now = Instant::now();
        let mut pushed = 0;
        while !outbox.status().0 {
            outbox.push_frame(big.clone(), now);
            outbox.flush(&metrics);
            pushed += 1;
            assert!(pushed < 10_000, "the socket never filled");
        }
        // Blocked: further flushes leave the writing to the session.
        outbox.push_frame(frame("end"), now);
        outbox.flush(&metrics);
        assert!(outbox.status().0);
        let total = pushed * big.len() + 3;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; total];
            client.read_exact(&mut buf).await.unwrap();
            buf
        });
        loop {
            outbox.socket().writable().await.unwrap();
            if outbox.write_backlog(&metrics) == Written::Empty {
                break;
            }
        }
        let received = reader.await.unwrap();
        assert!(received[..total - 3].iter().all(|b| *b == b'x'));
        assert_eq!(&received[total - 3..], b"end");
        assert_eq!(outbox.frames_sent(), pushed as u64 + 1);
        assert_eq!(outbox.status(), (false, None));
    }
}
