//! One task per WebSocket connection: the client's commands (rate-limited), the writes,
//! pings, idle, token expiry and refresh, and close codes.
//!
//! The writer is the session task itself; a second, smaller task reads. The writer drains the
//! connection's outbox in batches (one flush, so few socket writes, when a backlog exists)
//! and never waits on the hub; the hub never waits on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Identity, Rejection};
use crate::config::{AuthMode, Rate, Welcome};
use crate::hub::Connection;
use crate::outbox::{Closing, Outgoing};
use crate::protocol::{self, Command, ErrorCode, Reply, Request};
use crate::rate::TokenBucket;
use crate::router::Routing;
use crate::state::{Shared, Slot};
use crate::template::Scope;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

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

/// The fixed facts of one connection, for its log lines.
pub struct Peer {
    pub address: String,
}

/// Runs a connection from its first frame to its close.
pub async fn run(
    shared: Arc<Shared>,
    socket: Socket,
    connection: Arc<Connection>,
    peer: Peer,
    slot: Slot,
) {
    let started = Instant::now();
    let config = shared.config();
    let settings = &config.websocket;
    // The welcome is queued before the connection is in the hub: once there, the dispatcher
    // may queue frames to it, and the welcome must come first.
    let welcome = welcome(
        &shared,
        &shared.routing.load(),
        &connection,
        &connection.identity.load(),
    );
    connection.outbox.push_reply(Message::text(welcome));
    shared.hub.register(connection.clone());
    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    {
        let identity = connection.identity.load();
        tracing::info!(
            connection = %connection.public_id,
            peer = %peer.address,
            user = identity.user.as_deref().unwrap_or("-"),
            roles = ?identity.roles,
            "connection open"
        );
    }

    let (sink, stream) = socket.split();
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader_done = CancellationToken::new();
    let mut reader = tokio::spawn(read(
        shared.clone(),
        stream,
        connection.clone(),
        last_seen.clone(),
        started,
        RateLimit::new(settings.client_rate, Instant::now()),
        reader_done.clone(),
    ));
    let ending = write(
        &shared,
        sink,
        &connection,
        &last_seen,
        started,
        settings.ping_interval,
        settings.idle_timeout,
    )
    .await;
    // The closing handshake: the reader ends at the client's close frame (or the end of the
    // stream), discarding whatever comes before it.
    let answered = ending.close_sent
        && tokio::time::timeout(CLOSE_LINGER, &mut reader)
            .await
            .is_ok();
    if !answered {
        reader_done.cancel();
        let _ = reader.await;
    }

    shared.hub.unregister(connection.id);
    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
    let identity = connection.identity.load();
    tracing::info!(
        connection = %connection.public_id,
        peer = %peer.address,
        user = identity.user.as_deref().unwrap_or("-"),
        roles = ?identity.roles,
        duration_ms = started.elapsed().as_millis() as u64,
        frames_sent = ending.frames_sent,
        close_code = ending.code,
        reason = ending.reason,
        "connection closed"
    );
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
        let scope = Scope {
            claims: identity.authenticated.then_some(&identity.claims),
            connection_id: Some(&connection.public_id),
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
    Reply::Connected {
        connection_id: &connection.public_id,
        user: identity.user.as_deref(),
        roles: &identity.roles,
        topics: &routing.auto_topics(),
        epoch: &shared.epoch,
    }
    .to_json()
}

/// A token's expiry on tokio's clock. The leeway applied at verification does not extend
/// it: a token accepted within the leeway expires at once.
fn deadline(expires_at: SystemTime) -> tokio::time::Instant {
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

struct Ending {
    frames_sent: u64,
    code: u16,
    reason: &'static str,
    /// Whether our close frame left: the client may then answer it.
    close_sent: bool,
}

async fn write(
    shared: &Shared,
    mut sink: SplitSink<Socket, Message>,
    connection: &Connection,
    last_seen: &AtomicU64,
    started: Instant,
    ping_interval: Duration,
    idle_timeout: Duration,
) -> Ending {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut frames_sent = 0;
    // The token expiry the timer is set for. The identity is re-read on every turn: a
    // `refresh` replaces it and then queues its answer, which wakes this loop.
    let mut armed: Option<SystemTime> = None;
    let token_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(token_timer);
    loop {
        let expires_at = connection.identity.load().expires_at;
        if expires_at != armed {
            armed = expires_at;
            if let Some(at) = expires_at {
                token_timer.as_mut().reset(deadline(at));
            }
        }
        let closing = connection.outbox.drain(&mut batch);
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let written = tokio::select! {
                biased;
                _ = connection.kill.cancelled() => Err("killed"),
                written = tokio::time::timeout(idle_timeout, send_batch(&mut sink, &mut batch)) => match written {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("write failed"),
                    Err(_) => Err("write timed out"),
                },
            };
            let now = Instant::now();
            for item in batch.drain(..) {
                if let Some(received_at) = item.received_at {
                    shared.metrics.observe_delivery(now - received_at);
                }
            }
            match written {
                Ok(()) => frames_sent += count,
                Err(reason) => {
                    let code = closing.as_ref().map_or(1006, |c| c.code);
                    let reason = closing.as_ref().map_or(reason, |c| c.reason);
                    return Ending {
                        frames_sent,
                        code,
                        reason,
                        close_sent: false,
                    };
                }
            }
        }
        if let Some(Closing { code, reason }) = closing {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let sent =
                tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
            return Ending {
                frames_sent,
                code,
                reason,
                close_sent: matches!(sent, Ok(Ok(()))),
            };
        }
        tokio::select! {
            biased;
            _ = connection.kill.cancelled() => {
                // The outbox holds the reason (slow client); the loop sends the close frame.
            }
            _ = shared.shutdown.cancelled(), if !connection.outbox.is_closing() => {
                connection.outbox.close(1001, "server shutting down");
            }
            _ = connection.outbox.ready() => {}
            _ = &mut token_timer, if armed.is_some() && !connection.outbox.is_closing() => {
                reply_error(
                    connection,
                    None,
                    ErrorCode::TokenExpired,
                    "the token has expired; reconnect with a new one (send `refresh` before exp to stay connected)",
                    None,
                );
                connection.outbox.close(1008, "token expired");
            }
            _ = ping.tick() => {
                let idle_ms = millis_since(started).saturating_sub(last_seen.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= idle_timeout {
                    connection.outbox.close(1001, "idle timeout");
                } else {
                    connection.outbox.push_reply(Message::Ping(Default::default()));
                }
            }
        }
    }
}

async fn send_batch(
    sink: &mut SplitSink<Socket, Message>,
    batch: &mut [Outgoing],
) -> Result<(), WsError> {
    for item in batch.iter() {
        sink.feed(item.message.clone()).await?;
    }
    sink.flush().await
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The inbound command budget of one connection: a token bucket of `websocket.client_rate`,
/// and the count of commands it refused in the current flood window.
struct RateLimit {
    bucket: TokenBucket,
    burst: u32,
    /// The error message of a refused command (the same for every one).
    message: String,
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
            burst: rate.burst,
            message: format!(
                "too many commands: at most {} at once, refilled at {}/s",
                rate.burst, rate.per_second
            ),
            refusals: None,
        }
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
        if count > self.burst {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

async fn read(
    shared: Arc<Shared>,
    mut stream: SplitStream<Socket>,
    connection: Arc<Connection>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
    mut limit: RateLimit,
    done: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = done.cancelled() => return,
            frame = stream.next() => frame,
        };
        last_seen.store(millis_since(started), Ordering::Relaxed);
        if let Some(Ok(Message::Text(_) | Message::Binary(_))) = &frame {
            if connection.outbox.is_closing() {
                // Closing: commands are read (so that the socket is not closed on unread
                // input) and discarded until the client's close frame.
                continue;
            }
            match limit.check(Instant::now()) {
                Verdict::Admit => {}
                Verdict::Refuse => {
                    reply_error(
                        &connection,
                        None,
                        ErrorCode::RateLimited,
                        &limit.message,
                        None,
                    );
                    continue;
                }
                Verdict::Close => {
                    connection.outbox.close(1008, "rate limit");
                    continue;
                }
            }
        }
        match frame {
            None => break,
            Some(Ok(Message::Text(text))) => handle_text(&shared, &connection, text.as_str()),
            Some(Ok(Message::Binary(_))) => reply_error(
                &connection,
                None,
                ErrorCode::BadRequest,
                "binary frames are not commands; send JSON text",
                None,
            ),
            Some(Ok(Message::Close(_))) => {
                connection.outbox.close(1000, "client closed");
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                connection.outbox.close(1009, "frame too big");
                return;
            }
            Some(Err(_)) => break,
        }
    }
    connection.outbox.close(1006, "connection lost");
    connection.kill.cancel();
}

fn handle_text(shared: &Shared, connection: &Connection, text: &str) {
    let Request { id, command } = match protocol::parse(text) {
        Ok(request) => request,
        Err(bad) => {
            reply_error(
                connection,
                bad.id.as_ref(),
                ErrorCode::BadRequest,
                &bad.message,
                None,
            );
            return;
        }
    };
    let id = id.as_ref();
    match command {
        Command::Ping => reply(connection, &Reply::Pong { id }),
        Command::Subscribe { topics, filter } => {
            let identity = connection.identity.load();
            let max_subscriptions = shared.config().websocket.max_subscriptions;
            // Checked against the routing table in force under the hub's lock, so that a
            // reload dropping a topic meanwhile cannot miss the subscription (see
            // `Hub::subscribe`).
            let admit = |topic: &str| {
                let checked = shared.routing.load().authorize_subscribe(topic, &identity);
                if let Err(code) = checked {
                    let message = match code {
                        ErrorCode::UnknownTopic => "no route produces this topic",
                        _ => "not allowed to subscribe to this topic",
                    };
                    reply_error(connection, id, code, message, Some(topic));
                }
                checked.is_ok()
            };
            let answer = |admitted: &[String], over_limit: &[String]| {
                // One error for the whole command: a flood must not be amplified.
                if let Some(first) = over_limit.first() {
                    let message = format!(
                        "{} topic(s) over websocket.max_subscriptions ({max_subscriptions}), from this one on; unsubscribe first",
                        over_limit.len()
                    );
                    reply_error(
                        connection,
                        id,
                        ErrorCode::TooManySubscriptions,
                        &message,
                        Some(first),
                    );
                }
                if !admitted.is_empty() {
                    reply(
                        connection,
                        &Reply::Subscribed {
                            id,
                            topics: admitted,
                        },
                    );
                }
            };
            shared.hub.subscribe(
                connection.id,
                topics,
                filter.map(Arc::new),
                max_subscriptions,
                admit,
                answer,
            );
        }
        Command::Unsubscribe { topics } => {
            let removed = shared.hub.unsubscribe(connection.id, &topics);
            reply(
                connection,
                &Reply::Unsubscribed {
                    id,
                    topics: &removed,
                    reason: None,
                },
            );
        }
        Command::Refresh { token } => refresh(shared, connection, id, &token),
    }
}

/// Replaces the identity with a new token's, which must be for the same user; the
/// connection's expiry moves with it. Any refusal leaves the connection as it was (and its
/// old expiry in force).
fn refresh(shared: &Shared, connection: &Connection, id: Option<&serde_json::Value>, token: &str) {
    let config = shared.config();
    if config.auth.mode == AuthMode::None {
        let message = "this bridge does not authenticate connections";
        reply_error(connection, id, ErrorCode::BadRequest, message, None);
        return;
    }
    let Some(user) = connection.identity.load().user.clone() else {
        let message = "an anonymous connection cannot be refreshed; reconnect with the token";
        reply_error(connection, id, ErrorCode::Forbidden, message, None);
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
            reply_error(connection, id, code, &rejection.message(), None);
            return;
        }
    };
    if identity.user.as_deref() != Some(&*user) {
        let message = "the token is for another user; reconnect to change users";
        reply_error(connection, id, ErrorCode::Forbidden, message, None);
        return;
    }
    let expires_at = identity.expires_at_unix();
    tracing::debug!(connection = %connection.public_id, user = %user, expires_at, "token refreshed");
    shared.hub.set_identity(connection, identity);
    reply(connection, &Reply::Refreshed { id, expires_at });
}

fn reply(connection: &Connection, reply: &Reply) {
    connection.outbox.push_reply(Message::text(reply.to_json()));
}

fn reply_error(
    connection: &Connection,
    id: Option<&serde_json::Value>,
    code: ErrorCode,
    message: &str,
    topic: Option<&str>,
) {
    reply(
        connection,
        &Reply::Error {
            id,
            code,
            message,
            topic,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
