//! One task per WebSocket connection: the client's frames and commands (rate-limited), the
//! writes its socket refused at first, pings, idle, token expiry and refresh, and close codes.
//!
//! The session reads only when the socket has input, into a buffer on the thread's stack: an
//! idle connection holds no read buffer, and the task's own state is a few hundred bytes.
//! Deliveries do not go through this task at all (see `outbox`): it is woken for the rare
//! write the socket could not take at once, for its timers and for its client's input.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;

use crate::audience::Resolved;
use crate::auth::{Authenticator, Credential, Identity, Rejection};
use crate::config::{AuthMode, Rate, Welcome};
use crate::history::{Recipient, Retained, Wanted};
use crate::hub::Connection;
use crate::inbound::{self, Budgets, Taken};
use crate::metrics::GapReason;
use crate::outbox::{Closing, Written};
use crate::presence;
use crate::protocol::{
    self, Command, ErrorCode, Filter, Position, Refusal, Replay, Reply, Request, Since,
};
use crate::rate::TokenBucket;
use crate::router::Routing;
use crate::state::{Shared, Slot};
use crate::template::Scope;
use crate::wsframe::{self, Decoder, Flow, Frame};

/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long, after our close frame, the client has to answer it with its own; what it sends
/// meanwhile is read and discarded. Closing the socket on unread input would make the kernel
/// reset the connection, which can destroy what was just sent (the close frame and the
/// errors before it) before the client reads it: a flooding client would never learn why.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A client that gets more than its burst of commands refused within this window is closed
/// (1008 "rate limit"): past that, it is flooding, not bursting.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// One read's worth of input, on the stack of the thread that reads.
const READ_CHUNK: usize = 4096;

/// Reads per wake-up before the session lets the other tasks of its thread run.
const MAX_READS_PER_TURN: usize = 16;

/// The fixed facts of one connection, for its log lines.
pub struct Peer {
    pub address: String,
}

/// What a session starts with, once the handshake is answered.
pub struct Start {
    pub connection: Arc<Connection>,
    pub peer: Peer,
    pub slot: Slot,
    pub max_frame_bytes: usize,
    /// What the client sent right behind its handshake, already read by the HTTP server.
    pub early_input: Bytes,
    /// Positions of `auto` topics to resume (`?since=` of the upgrade).
    pub since: Option<Since>,
}

/// Runs a connection from its first frame to its close.
pub async fn run(shared: Arc<Shared>, start: Start) {
    let Start {
        connection,
        peer,
        slot,
        max_frame_bytes,
        early_input,
        since,
    } = start;
    let started = Instant::now();
    // Only what the session needs is copied: a long-lived connection must not keep an old
    // configuration alive after a reload.
    let (ping_interval, idle_timeout, client_rate) = {
        let config = shared.config();
        let settings = &config.websocket;
        (
            settings.ping_interval,
            settings.idle_timeout,
            settings.client_rate,
        )
    };
    let registration = open(&shared, &connection, &peer, slot, since);
    let mut session = Session {
        commands: Commands {
            shared: &shared,
            connection: &connection,
            limit: RateLimit::new(client_rate, Instant::now()),
            inbound: Budgets::default(),
        },
        decoder: match connection.deflate {
            Some(_) => Decoder::new(max_frame_bytes).inflating(),
            None => Decoder::new(max_frame_bytes),
        },
        last_seen: Instant::now(),
        input_ended: false,
    };
    // The early input shares hyper's whole read buffer: it must not live as long as the
    // session.
    let mut early = early_input.to_vec();
    drop(early_input);
    if !early.is_empty() {
        session.take_input(&mut early);
    }
    drop(early);
    let closing = session.serve(ping_interval, idle_timeout).await;
    if !closing.is_abnormal() && session.send_close_frame(&closing).await && !session.input_ended {
        session.linger().await;
    }
    drop(registration);
    let identity = connection.identity.load();
    tracing::info!(
        connection = %connection.public_id,
        peer = %peer.address,
        user = identity.user.as_deref().unwrap_or("-"),
        roles = ?identity.roles,
        duration_ms = started.elapsed().as_millis() as u64,
        frames_sent = connection.outbox.frames_sent(),
        close_code = closing.code,
        reason = closing.reason,
        "connection closed"
    );
}

/// Sends the welcome, then puts the connection in the hub, with the replay of the `auto`
/// topics of `since` queued before any live frame.
fn open(
    shared: &Arc<Shared>,
    connection: &Arc<Connection>,
    peer: &Peer,
    slot: Slot,
    since: Option<Since>,
) -> Registration {
    // The welcome is queued before the connection is in the hub, so that it comes before
    // any frame the dispatcher queues once it is there; and written only after, so that a
    // client that has read it receives every frame routed from then on (written at once, a
    // message published on reading it could be routed before the connection was in the hub).
    let identity = connection.identity.load();
    let welcome = welcome(shared, &shared.routing.load(), connection, &identity);
    connection
        .outbox
        .queue_reply(wsframe::text(welcome.as_bytes()));
    let registration = Registration::new(shared.clone(), connection.clone(), slot, since);
    // Writes the welcome, then any replay queued under the hub's lock (where nothing is
    // written).
    connection.outbox.flush(&shared.metrics);
    if shared.shutdown.is_cancelled() {
        // Accepted while shutting down, after the hub's connections were told.
        connection.outbox.close(1001, "server shutting down");
    }
    tracing::info!(
        connection = %connection.public_id,
        peer = %peer.address,
        user = identity.user.as_deref().unwrap_or("-"),
        roles = ?identity.roles,
        "connection open"
    );
    registration
}

/// A connection's place in the hub, the gauges and its slot, given back when dropped: at the
/// session's end, and also if its task panics or is cancelled, so that no bug can leave a
/// connection that receives frames, answers nothing and holds its socket and slot forever.
struct Registration {
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    _slot: Slot,
}

impl Registration {
    fn new(
        shared: Arc<Shared>,
        connection: Arc<Connection>,
        slot: Slot,
        since: Option<Since>,
    ) -> Registration {
        match since {
            Some(since) => shared.hub.register_then(connection.clone(), |connection| {
                let topics: Vec<String> = since.seq.keys().cloned().collect();
                let replay = Replay {
                    last: None,
                    since: Some(since),
                };
                queue_replay(
                    &shared,
                    connection,
                    None,
                    &topics,
                    None,
                    &replay,
                    Delivered::Auto,
                );
            }),
            None => shared.hub.register(connection.clone()),
        }
        shared.metrics.connections.inc();
        shared.metrics.connections_accepted.inc();
        Registration {
            shared,
            connection,
            _slot: slot,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let topics = self.shared.hub.unregister(self.connection.id);
        presence::changed(&self.shared, &self.connection, &topics, false);
        self.shared.metrics.connections.dec();
        // Nothing more is read or written; the peer learns at once instead of when the last
        // reference to the socket goes (a dispatch in flight may still hold one).
        let _ = socket2::SockRef::from(self.connection.outbox.socket())
            .shutdown(std::net::Shutdown::Both);
    }
}

/// The first frame: the native `connected` frame, or the configured template rendered with
/// the connection's id, claims and the time. A template whose placeholder has no value (an
/// anonymous connection has no claims) falls back to the native frame, so that a client
/// always learns its connection id.
fn welcome(
    shared: &Shared,
    routing: &Routing,
    connection: &Connection,
    identity: &Identity,
) -> String {
    if let Welcome::Template(template) = &routing.config.websocket.welcome {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let epoch = shared.history.epoch();
        let scope = Scope {
            claims: identity.authenticated.then_some(&identity.claims),
            connection_id: Some(&connection.public_id),
            epoch: Some(&epoch),
            now: Some(&now),
            ..Scope::default()
        };
        match template.render_to_vec(&scope).map(String::from_utf8) {
            Some(Ok(text)) => return text,
            _ => tracing::debug!(
                connection = %connection.public_id,
                "welcome template has a placeholder without a value; sending the native frame"
            ),
        }
    }
    let topics = routing.auto_topics(identity);
    // Read before the connection is in the hub: a frame routed after this and before it is
    // there is one the connection missed, which a resume from these positions replays.
    let positions = shared
        .history
        .positions(&topics, &|topic| routing.retaining_route(topic));
    Reply::Connected {
        connection_id: &connection.public_id,
        user: identity.user.as_deref(),
        roles: &identity.roles,
        topics: &topics,
        epoch: &shared.history.epoch(),
        position: positions.as_ref().map(Position::from),
    }
    .to_json()
}

/// The longest the expiry timer is set for at once; a later expiry is re-armed when it fires.
/// Far-future instants are where clock arithmetic overflows, and wall-clock time may jump.
const MAX_EXPIRY_TIMER: Duration = Duration::from_secs(24 * 3600);

/// When to look at a token's expiry again, on tokio's clock: its `exp`, or
/// [`MAX_EXPIRY_TIMER`] from now if that comes first. The leeway applied at verification
/// does not extend it: a token accepted within the leeway expires at once.
fn deadline(expires_at: SystemTime) -> tokio::time::Instant {
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(MAX_EXPIRY_TIMER);
    tokio::time::Instant::now() + left
}

/// A session's clocks: the next ping, the token's expiry, since when writes have been refused.
struct Timers {
    ping_interval: Duration,
    idle_timeout: Duration,
    next_ping: tokio::time::Instant,
    /// The token expiry the deadline was computed for (a `refresh` replaces the identity),
    /// and when to look at it next.
    expiry: Option<(SystemTime, tokio::time::Instant)>,
    /// Since when the socket has refused writes: past idle_timeout the client is gone.
    blocked_since: Option<Instant>,
}

/// What the session's timer found due.
enum Due {
    Nothing,
    Expired,
    WriteTimedOut,
    Idle,
    Ping,
}

impl Timers {
    fn new(ping_interval: Duration, idle_timeout: Duration) -> Timers {
        Timers {
            ping_interval,
            idle_timeout,
            next_ping: tokio::time::Instant::now() + ping_interval,
            expiry: None,
            blocked_since: None,
        }
    }

    /// When the timer must fire next, for an identity that expires at `expires_at`.
    fn wake_at(&mut self, expires_at: Option<SystemTime>) -> tokio::time::Instant {
        if self.expiry.map(|(at, _)| at) != expires_at {
            self.expiry = expires_at.map(|at| (at, deadline(at)));
        }
        let expiry = self.expiry.map(|(_, deadline)| deadline);
        expiry.map_or(self.next_ping, |at| at.min(self.next_ping))
    }

    /// What is due now that the timer fired; `last_seen` is when the client last sent
    /// anything.
    fn due(&mut self, last_seen: Instant) -> Due {
        let now = tokio::time::Instant::now();
        if let Some((at, deadline_at)) = self.expiry
            && deadline_at <= now
        {
            if SystemTime::now() >= at {
                return Due::Expired;
            }
            // The timer was capped: the token has time left.
            self.expiry = Some((at, deadline(at)));
        }
        if self.next_ping > now {
            return Due::Nothing;
        }
        self.next_ping = now + self.ping_interval;
        if self
            .blocked_since
            .is_some_and(|since| since.elapsed() >= self.idle_timeout)
        {
            Due::WriteTimedOut
        } else if last_seen.elapsed() >= self.idle_timeout {
            Due::Idle
        } else {
            Due::Ping
        }
    }
}

struct Session<'a> {
    commands: Commands<'a>,
    decoder: Decoder,
    /// When the client last sent anything (a pong counts).
    last_seen: Instant,
    /// The client sent its close frame or ended the stream: nothing more to read.
    input_ended: bool,
}

impl Session<'_> {
    /// Serves the connection until it must close, and says why.
    ///
    /// A hand-written poll rather than a `select!`: the socket's readiness and the outbox's
    /// waker need no future of their own, so an idle session is little more than its timer.
    async fn serve(&mut self, ping_interval: Duration, idle_timeout: Duration) -> Closing {
        let shared = self.commands.shared;
        let connection = self.commands.connection;
        let outbox = &connection.outbox;
        let socket = outbox.socket();
        let mut timers = Timers::new(ping_interval, idle_timeout);
        let timer = tokio::time::sleep_until(timers.next_ping);
        tokio::pin!(timer);
        std::future::poll_fn(|cx| {
            loop {
                outbox.register(cx.waker());
                let (blocked, closing) = outbox.status();
                if let Some(closing) = closing {
                    return Poll::Ready(closing);
                }
                if blocked {
                    timers.blocked_since.get_or_insert_with(Instant::now);
                    match socket.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            outbox.write_backlog(&shared.metrics);
                            continue;
                        }
                        Poll::Ready(Err(_)) => {
                            outbox.close(1006, "connection lost");
                            continue;
                        }
                        Poll::Pending => {}
                    }
                } else {
                    timers.blocked_since = None;
                }
                match socket.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if self.read_available() {
                            continue;
                        }
                        // More input than one turn reads: the thread's other tasks go first.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => {
                        outbox.close(1006, "connection lost");
                        continue;
                    }
                    Poll::Pending => {}
                }
                let wake_at = timers.wake_at(connection.identity.load().expires_at);
                if timer.deadline() != wake_at {
                    timer.as_mut().reset(wake_at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.on_timer(timers.due(self.last_seen));
            }
        })
        .await
    }

    fn on_timer(&self, due: Due) {
        let outbox = &self.commands.connection.outbox;
        match due {
            Due::Nothing => {}
            Due::Expired => {
                self.commands.reply_error(
                    None,
                    ErrorCode::TokenExpired,
                    "the token has expired; reconnect with a new one (send `refresh` before exp to stay connected)",
                    None,
                );
                outbox.close(1008, "token expired");
            }
            Due::WriteTimedOut => outbox.close(1006, "write timed out"),
            Due::Idle => outbox.close(1001, "idle timeout"),
            Due::Ping => outbox.send(wsframe::ping(&[]), &self.commands.shared.metrics),
        }
    }

    /// Reads what the socket has, without waiting; false when it may have more than one turn
    /// reads.
    fn read_available(&mut self) -> bool {
        let connection = self.commands.connection;
        let mut buffer = [0; READ_CHUNK];
        for _ in 0..MAX_READS_PER_TURN {
            match read_some(connection.outbox.socket(), &mut buffer) {
                Input::Data(read) => {
                    self.last_seen = Instant::now();
                    if !self.take_input(&mut buffer[..read]) {
                        return true;
                    }
                }
                Input::Drained => return true,
                Input::Ended => {
                    self.input_ended = true;
                    connection.outbox.close(1006, "connection lost");
                    return true;
                }
            }
        }
        false
    }

    /// Decodes and handles `input`; false once the connection is closing.
    fn take_input(&mut self, input: &mut [u8]) -> bool {
        let commands = &mut self.commands;
        let mut client_closed = false;
        let decoded = self.decoder.feed(input, &mut |frame| {
            let flow = commands.on_frame(frame);
            client_closed |= flow == Flow::Stop;
            flow
        });
        let outbox = &self.commands.connection.outbox;
        if client_closed {
            self.input_ended = true;
        }
        if let Err(violation) = decoded {
            // The input stays open: what the client still sends (the rest of an oversized
            // frame) is drained while it reads the close frame, so that the socket closes
            // without a reset.
            outbox.close(violation.close_code(), violation.reason());
        }
        !outbox.is_closing()
    }

    /// Writes what is queued, then the close frame; true when it left.
    async fn send_close_frame(&self, closing: &Closing) -> bool {
        let shared = self.commands.shared;
        let outbox = &self.commands.connection.outbox;
        outbox.push_close_frame(wsframe::close(closing.code, closing.reason));
        let written = async {
            loop {
                match outbox.write_backlog(&shared.metrics) {
                    Written::Empty => return true,
                    Written::Failed => return false,
                    Written::Blocked => {
                        if outbox.socket().writable().await.is_err() {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(CLOSE_WRITE_TIMEOUT, written)
            .await
            .unwrap_or(false)
    }

    /// The closing handshake: reads and discards until the client's close frame or the end of
    /// the stream, for at most [`CLOSE_LINGER`].
    async fn linger(&mut self) {
        let socket = self.commands.connection.outbox.socket();
        let decoder = &mut self.decoder;
        let answered = async {
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                if discard_until_close(socket, decoder) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, answered).await;
    }
}

/// Reads what the socket has and drops it; true at the client's close frame, the end of the
/// stream or an error. After a violation the decoder yields nothing more: the input is
/// drained until the client ends the stream.
fn discard_until_close(socket: &tokio::net::TcpStream, decoder: &mut Decoder) -> bool {
    let mut buffer = [0; READ_CHUNK];
    loop {
        match read_some(socket, &mut buffer) {
            Input::Data(read) => {
                let mut closed = false;
                let decoded = decoder.feed(&mut buffer[..read], &mut |frame| {
                    if matches!(frame, Frame::Close(_)) {
                        closed = true;
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                });
                if closed || decoded.is_err() {
                    return true;
                }
            }
            Input::Drained => return false,
            Input::Ended => return true,
        }
    }
}

/// What one non-blocking read gave.
enum Input {
    /// This many bytes.
    Data(usize),
    /// Nothing more for now.
    Drained,
    /// The end of the stream, or a socket error: nothing more will come.
    Ended,
}

fn read_some(socket: &tokio::net::TcpStream, buffer: &mut [u8]) -> Input {
    loop {
        match socket.try_read(buffer) {
            Ok(0) => return Input::Ended,
            Ok(read) => return Input::Data(read),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Input::Drained,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Input::Ended,
        }
    }
}

/// The inbound command budget of one connection: a token bucket of `websocket.client_rate`,
/// and the count of commands it refused in the current flood window.
struct RateLimit {
    bucket: TokenBucket,
    rate: Rate,
    /// When the current window of refusals began, and how many it has.
    refusals: Option<(Instant, u32)>,
}

/// What to do with one inbound command.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Admit,
    /// Answer `rate_limited`.
    Refuse,
    /// More than the burst refused within [`FLOOD_WINDOW`]: close with 1008.
    Close,
}

impl RateLimit {
    fn new(rate: Rate, now: Instant) -> RateLimit {
        RateLimit {
            bucket: TokenBucket::new(rate, now),
            rate,
            refusals: None,
        }
    }

    /// The error message of a refused command.
    fn message(&self) -> String {
        format!(
            "too many commands: at most {} at once, refilled at {}/s",
            self.rate.burst, self.rate.per_second
        )
    }

    fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.try_take(now) {
            return Verdict::Admit;
        }
        let (since, count) = match self.refusals {
            Some((since, count)) if now.saturating_duration_since(since) < FLOOD_WINDOW => {
                (since, count + 1)
            }
            _ => (now, 1),
        };
        self.refusals = Some((since, count));
        if count > self.rate.burst {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

/// The client's side of the protocol: its frames, its commands and the answers.
struct Commands<'a> {
    shared: &'a Shared,
    connection: &'a Arc<Connection>,
    limit: RateLimit,
    /// The per-route budgets of inbound routes with a `rate`.
    inbound: Budgets,
}

impl Commands<'_> {
    /// Handles one frame from the client; `Stop` at its close frame.
    fn on_frame(&mut self, frame: Frame<'_>) -> Flow {
        let outbox = &self.connection.outbox;
        match frame {
            Frame::Close(_) => {
                outbox.close(1000, "client closed");
                return Flow::Stop;
            }
            Frame::Ping(payload) => {
                outbox.send_pong(wsframe::pong(payload), &self.shared.metrics);
                return Flow::Continue;
            }
            Frame::Pong(_) => return Flow::Continue,
            Frame::Text(_) | Frame::Binary(_) => {}
        }
        if outbox.is_closing() {
            // Closing: commands are read (so that the socket is not closed on unread input)
            // and discarded until the client's close frame.
            return Flow::Continue;
        }
        match self.limit.check(Instant::now()) {
            Verdict::Admit => {}
            Verdict::Refuse => {
                let message = self.limit.message();
                self.reply_error(None, ErrorCode::RateLimited, &message, None);
                return Flow::Continue;
            }
            Verdict::Close => {
                outbox.close(1008, "rate limit");
                return Flow::Continue;
            }
        }
        match frame {
            Frame::Text(text) => self.handle_text(text),
            _ => self.reply_error(
                None,
                ErrorCode::BadRequest,
                "binary frames are not commands; send JSON text",
                None,
            ),
        }
        Flow::Continue
    }

    fn handle_text(&mut self, text: &str) {
        #[cfg(test)]
        if text == tests::PANIC_COMMAND {
            panic!("the test-only trigger of a session panic");
        }
        let (shared, connection) = (self.shared, self.connection);
        match inbound::offer(shared, connection, &mut self.inbound, text) {
            Taken::No => {}
            Taken::Queued => return,
            Taken::Refused { id, code, message } => {
                self.reply_error(id.as_ref(), code, &message, None);
                return;
            }
        }
        let Request { id, command } = match protocol::parse(text) {
            Ok(request) => request,
            Err(bad) => {
                self.reply_error(bad.id.as_ref(), ErrorCode::BadRequest, &bad.message, None);
                return;
            }
        };
        let id = id.as_ref();
        match command {
            Command::Ping => self.reply(&Reply::Pong { id }),
            Command::Subscribe {
                topics,
                filter,
                replay,
            } => self.subscribe(id, topics, filter, &replay),
            Command::Unsubscribe { topics } => {
                let removed = shared.hub.unsubscribe(connection.id, &topics);
                presence::changed(shared, connection, &removed, false);
                self.reply(&Reply::Unsubscribed {
                    id,
                    topics: &removed,
                    reason: None,
                });
            }
            Command::Refresh { token } => self.refresh(id, &token),
            Command::Presence { topic } => {
                if let Err((code, message)) = presence::query(shared, connection, id, &topic) {
                    self.reply_error(id, code, message, Some(&topic));
                }
            }
        }
    }

    /// Subscribes what the routing table in force lets this connection have, and answers once
    /// for the whole command: `subscribed` (listing what was refused, if anything was), or
    /// one `error` when nothing was taken. One answer per command, whatever its size, so a
    /// flood of refused topics is not amplified into a flood of answers.
    fn subscribe(
        &self,
        id: Option<&Value>,
        topics: Vec<String>,
        filter: Option<Filter>,
        replay: &Replay,
    ) {
        let (shared, connection) = (self.shared, self.connection);
        let identity = connection.identity.load();
        let max_subscriptions = shared.config().websocket.max_subscriptions;
        // Checked against the routing table in force under the hub's lock, so that a reload
        // dropping a topic meanwhile cannot miss the subscription (see `Hub::subscribe`).
        let admit = |topic: &str| shared.routing.load().authorize_subscribe(topic, &identity);
        // Copied only when some route keeps presence, for its joins after the lock.
        let tracked = presence::tracked(&shared.routing.load());
        let mut taken = Vec::new();
        let answer = |admitted: &[String], refused: &[Refusal]| match refused.first() {
            Some(first) if admitted.is_empty() => Reply::Error {
                id,
                code: first.code,
                message: &refusal_message(first.code, refused.len(), max_subscriptions),
                topic: Some(&first.topic),
                // One refused topic is already named by `topic`.
                refused: if refused.len() > 1 { refused } else { &[] },
            }
            .to_frame(),
            _ => {
                if tracked {
                    taken = admitted.to_vec();
                }
                // Under the hub's lock, like the replay after it: exactly where the live
                // stream of these topics starts for this connection.
                let routing = shared.routing.load();
                let positions = shared
                    .history
                    .positions(admitted, &|topic| routing.retaining_route(topic));
                Reply::Subscribed {
                    id,
                    topics: admitted,
                    refused,
                    position: positions.as_ref().map(Position::from),
                }
                .to_frame()
            }
        };
        let filter = filter.map(Arc::new);
        let then = |connection: &Connection, subscribed: &[String]| {
            let filter = filter.as_deref();
            queue_replay(
                shared,
                connection,
                id,
                subscribed,
                filter,
                replay,
                Delivered::Any,
            );
        };
        shared.hub.subscribe(
            connection.id,
            topics,
            filter.clone(),
            max_subscriptions,
            admit,
            answer,
            then,
        );
        connection.outbox.flush(&shared.metrics);
        presence::changed(shared, connection, &taken, true);
    }

    /// Replaces the identity with a new token's, which must be for the same user; the
    /// connection's expiry moves with it. Any refusal leaves the connection as it was (and its
    /// old expiry in force).
    fn refresh(&self, id: Option<&Value>, token: &str) {
        let (shared, connection) = (self.shared, self.connection);
        let config = shared.config();
        if config.auth.mode == AuthMode::None {
            let message = "this bridge does not authenticate connections";
            self.reply_error(id, ErrorCode::BadRequest, message, None);
            return;
        }
        let Some(user) = connection.identity.load().user.clone() else {
            let message = "an anonymous connection cannot be refreshed; reconnect with the token";
            self.reply_error(id, ErrorCode::Forbidden, message, None);
            return;
        };
        let identity = match Authenticator::new(&config.auth).verify_token(token) {
            Ok(identity) => identity,
            Err(rejection) => {
                let code = if rejection == Rejection::Expired {
                    ErrorCode::TokenExpired
                } else {
                    ErrorCode::BadRequest
                };
                self.reply_error(id, code, &rejection.message(), None);
                return;
            }
        };
        if identity.user.as_deref() != Some(&*user) {
            let message = "the token is for another user; reconnect to change users";
            self.reply_error(id, ErrorCode::Forbidden, message, None);
            return;
        }
        let expires_at = identity.expires_at_unix();
        tracing::debug!(connection = %connection.public_id, user = %user, expires_at, "token refreshed");
        shared.hub.set_identity(connection, identity);
        connection
            .credential
            .replace(Credential::Token(token.to_owned()));
        self.reply(&Reply::Refreshed { id, expires_at });
    }

    fn reply(&self, reply: &Reply) {
        self.connection
            .outbox
            .send(reply.to_frame(), &self.shared.metrics);
    }

    fn reply_error(
        &self,
        id: Option<&serde_json::Value>,
        code: ErrorCode,
        message: &str,
        topic: Option<&str>,
    ) {
        self.reply(&Reply::Error {
            id,
            code,
            message,
            topic,
            refused: &[],
        });
    }
}

/// Which retained frames a replay may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Those of any route (a subscribe's).
    Any,
    /// Those of `delivery: auto` routes (the upgrade's `since`, which subscribes nothing).
    Auto,
}

/// Queues what `replay` asks for the `subscribed` topics, for `connection` (under the hub's
/// write lock, so that the live frames follow without a seam): a `gap` per reason for the
/// positions that cannot be resumed, then the retained frames, oldest first, each checked
/// now against its audience for this identity and against `filter`.
fn queue_replay(
    shared: &Shared,
    connection: &Connection,
    id: Option<&Value>,
    subscribed: &[String],
    filter: Option<&Filter>,
    replay: &Replay,
    delivered: Delivered,
) {
    if subscribed.is_empty() || (replay.last.is_none() && replay.since.is_none()) {
        return;
    }
    let epoch = shared.history.epoch();
    let mut wanted: Vec<(&str, Wanted)> = Vec::new();
    let mut other_epoch: Vec<String> = Vec::new();
    for topic in subscribed {
        let position = replay.since.as_ref().and_then(|since| {
            let seq = *since.seq.get(topic)?;
            Some((since.epoch == *epoch, seq))
        });
        match (position, replay.last) {
            (Some((true, seq)), _) => wanted.push((topic, Wanted::After(seq))),
            (Some((false, _)), _) => other_epoch.push(topic.clone()),
            (None, Some(last)) if last > 0 => wanted.push((topic, Wanted::Last(last))),
            (None, _) => {}
        }
    }
    let identity = connection.identity.load();
    let admits = |frame: &Retained| {
        (delivered == Delivered::Any || frame.is_auto())
            && (matches!(frame.audience(), Resolved::Everyone)
                || frame.audience().admits(&identity))
            && filter.is_none_or(|filter| filter.admits(frame.json().as_ref()))
    };
    let routing = shared.routing.load();
    let recipient = Recipient {
        admits: &admits,
        deflate: connection.deflate,
        compression: routing.config.websocket.compression,
    };
    let found = shared
        .history
        .replay(&wanted, &recipient, connection.outbox.room(), &|topic| {
            routing.retaining_route(topic)
        });
    for (reason, topics) in [
        (GapReason::EpochChanged, &other_epoch),
        (GapReason::HistoryExhausted, &found.exhausted),
    ] {
        if topics.is_empty() {
            continue;
        }
        shared.metrics.resume_gap(reason, topics.len());
        let gap = Reply::ResumeGap {
            id,
            reason: reason.label(),
            topics,
        };
        connection.outbox.queue_reply(gap.to_frame());
    }
    shared.metrics.replayed.inc_by(found.frames.len() as u64);
    connection.outbox.push_replayed(found.frames);
}

/// The message of a subscribe that took no topic, after its first refusal's code.
fn refusal_message(code: ErrorCode, refused: usize, max_subscriptions: usize) -> String {
    match code {
        ErrorCode::UnknownTopic => format!("no route produces this topic ({refused} refused)"),
        ErrorCode::TooManySubscriptions => format!(
            "over websocket.max_subscriptions ({max_subscriptions}); unsubscribe first ({refused} refused)"
        ),
        _ => format!("not allowed to subscribe to this topic ({refused} refused)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::config::{Config, SlowClient};
    use crate::outbox::{Outbox, reply_limit};
    use crate::state::SlotRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A command that makes the session panic, in tests only.
    pub(super) const PANIC_COMMAND: &str = "__panic__";

    /// A client's text frame: masked, with a zero mask (the bytes are the payload).
    fn client_text(text: &str) -> Vec<u8> {
        assert!(text.len() < 126);
        let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    #[tokio::test]
    async fn a_session_that_panics_leaves_nothing_behind() {
        let config = Config::from_str(
            "routes:\n  - name: r\n    channel: c\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let shared = Shared::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let request = || SlotRequest {
            max_connections: 1,
            user: None,
            address: ([127, 0, 0, 1].into(), 1),
        };
        let slot = shared.take_slot(request()).unwrap();
        let outbox = Outbox::new(server, 4, SlowClient::Disconnect, reply_limit(0));
        let connection = Arc::new(Connection::new(
            1,
            "c1".into(),
            Identity::anonymous(),
            None,
            outbox,
            None,
        ));
        let start = Start {
            connection,
            peer: Peer {
                address: "test".into(),
            },
            slot,
            max_frame_bytes: 1024,
            early_input: Bytes::new(),
            since: None,
        };
        let task = tokio::spawn(run(shared.clone(), start));
        let mut welcome = [0; 2];
        client.read_exact(&mut welcome).await.unwrap();
        assert_eq!(shared.hub.read().connection_count(), 1);

        client.write_all(&client_text(PANIC_COMMAND)).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the session task ends");
        assert!(ended.unwrap_err().is_panic());
        assert_eq!(shared.hub.read().connection_count(), 0);
        assert_eq!(shared.metrics.connections.get(), 0);
        assert!(
            shared.take_slot(request()).is_ok(),
            "the slot is free again"
        );
        // The client sees the end of the stream, not a socket left half open.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the socket is closed")
            .unwrap();
    }

    #[test]
    fn the_bucket_admits_the_burst_then_the_rate_and_closes_a_flood() {
        let start = Instant::now();
        let mut limit = RateLimit::new(
            Rate {
                per_second: 10.0,
                burst: 3,
            },
            start,
        );
        let at = |ms: u64| start + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(limit.check(at(0)), Verdict::Admit);
        }
        assert_eq!(limit.check(at(0)), Verdict::Refuse);
        // One token every 100 ms.
        assert_eq!(limit.check(at(100)), Verdict::Admit);
        assert_eq!(limit.check(at(100)), Verdict::Refuse);
        assert_eq!(limit.check(at(150)), Verdict::Refuse);
        // The fourth refusal within the window is more than the burst of 3.
        assert_eq!(limit.check(at(160)), Verdict::Close);

        // Refusals further apart than the window do not add up.
        let mut limit = RateLimit::new(
            Rate {
                per_second: 0.05,
                burst: 1,
            },
            start,
        );
        assert_eq!(limit.check(at(0)), Verdict::Admit);
        assert_eq!(limit.check(at(1)), Verdict::Refuse);
        assert_eq!(limit.check(at(10_100)), Verdict::Refuse);
        assert_eq!(limit.check(at(10_200)), Verdict::Close);
        // The bucket refills in 20 s.
        assert_eq!(limit.check(at(20_000)), Verdict::Admit);
    }
}
