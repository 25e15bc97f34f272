//! One task per WebSocket connection: the client's commands, the writes, pings, idle and
//! close codes.
//!
//! The writer is the session task itself; a second, smaller task reads. The writer drains the
//! connection's outbox in batches (one flush, so few socket writes, when a backlog exists)
//! and never waits on the hub; the hub never waits on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

use crate::hub::Connection;
use crate::outbox::{Closing, Outgoing};
use crate::protocol::{self, Command, ErrorCode, Reply, Request};
use crate::state::{Shared, Slot};

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long a close frame may take to leave before the socket is dropped anyway.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

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
    let routing = shared.routing.load();
    let identity = connection.identity.load();
    let welcome = Reply::Connected {
        connection_id: &connection.public_id,
        user: identity.user.as_deref(),
        roles: &identity.roles,
        topics: &routing.auto_topics(),
        epoch: &shared.epoch,
    }
    .to_json();
    connection.outbox.push_reply(Message::text(welcome));
    drop((routing, identity));

    let (sink, stream) = socket.split();
    let last_seen = Arc::new(AtomicU64::new(0));
    let reader_done = CancellationToken::new();
    let reader = tokio::spawn(read(
        shared.clone(),
        stream,
        connection.clone(),
        last_seen.clone(),
        started,
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
    reader_done.cancel();
    let _ = reader.await;

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

struct Ending {
    frames_sent: u64,
    code: u16,
    reason: &'static str,
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
    loop {
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
                    };
                }
            }
        }
        if let Some(Closing { code, reason }) = closing {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
            return Ending {
                frames_sent,
                code,
                reason,
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

async fn read(
    shared: Arc<Shared>,
    mut stream: SplitStream<Socket>,
    connection: Arc<Connection>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
    done: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = done.cancelled() => return,
            frame = stream.next() => frame,
        };
        last_seen.store(millis_since(started), Ordering::Relaxed);
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
            let routing = shared.routing.load();
            let identity = connection.identity.load();
            let mut admitted = Vec::with_capacity(topics.len());
            for topic in topics {
                match routing.authorize_subscribe(&topic, &identity) {
                    Ok(()) => admitted.push(topic),
                    Err(code) => {
                        let message = match code {
                            ErrorCode::UnknownTopic => "no route produces this topic",
                            _ => "not allowed to subscribe to this topic",
                        };
                        reply_error(connection, id, code, message, Some(&topic));
                    }
                }
            }
            if !admitted.is_empty() {
                shared
                    .hub
                    .subscribe(connection.id, &admitted, filter.map(Arc::new));
                reply(
                    connection,
                    &Reply::Subscribed {
                        id,
                        topics: &admitted,
                    },
                );
            }
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
        Command::Refresh { .. } => reply_error(
            connection,
            id,
            ErrorCode::BadRequest,
            "this bridge does not authenticate connections",
            None,
        ),
    }
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
