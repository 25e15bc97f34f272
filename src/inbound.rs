//! Client frames that inbound routes publish to Redis: the first route whose `match` takes a
//! frame checks its sender (`allow`) and its rate, renders the channel, and wraps the frame in
//! an envelope whose identity is the connection's verified one. The PUBLISH itself is
//! `pubsub`'s (the one module that talks to Redis), asked through `Shared::redis_requests`;
//! nothing here waits on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;

use crate::audience;
use crate::config::{InboundRoute, Rate};
use crate::hub::Connection;
use crate::metrics::InboundRefusal;
use crate::protocol::{self, ErrorCode};
use crate::rate::TokenBucket;
use crate::router;
use crate::state::{Outgoing, RedisRequest, Shared};
use crate::template::Scope;

/// A connection's budgets per inbound route with a `rate`, made at the route's first use (a
/// connection that never sends holds none). Kept by name across reloads, made again when the
/// route's rate changed.
#[derive(Default)]
pub struct Budgets(HashMap<Arc<str>, (Rate, TokenBucket)>);

impl Budgets {
    fn try_take(&mut self, route: &InboundRoute, now: Instant) -> bool {
        let Some(rate) = route.rate else { return true };
        let (held, bucket) = self
            .0
            .entry(route.name.clone())
            .or_insert_with(|| (rate, TokenBucket::new(rate, now)));
        if *held != rate {
            *held = rate;
            *bucket = TokenBucket::new(rate, now);
        }
        bucket.try_take(now)
    }
}

/// What became of a client frame.
pub enum Taken {
    /// No inbound route takes it: it is answered as a command.
    No,
    /// Handed to Redis; with `ack`, answered once Redis took it.
    Queued,
    /// Refused: answer this error with the frame's `id`.
    Refused {
        id: Option<Value>,
        code: ErrorCode,
        message: String,
    },
}

/// The envelope a worker receives, but for `data`: the client's frame as it was sent, put
/// after these fields byte for byte.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    route: &'a str,
    user: Option<&'a str>,
    roles: &'a [Arc<str>],
    connection_id: &'a str,
    instance: &'a str,
    ts: &'a str,
}

/// Offers the client frame `text` to the inbound routes in force.
pub fn offer(
    shared: &Shared,
    connection: &Arc<Connection>,
    budgets: &mut Budgets,
    text: &str,
) -> Taken {
    let routing = shared.routing.load();
    let routes = &routing.config.inbound;
    if routes.is_empty() {
        return Taken::No;
    }
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return Taken::No;
    };
    let is_command = frame
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|kind| protocol::COMMAND_TYPES.contains(&kind));
    if is_command || !frame.is_object() {
        return Taken::No;
    }
    let Some(route) = routes
        .iter()
        .find(|route| router::payload_matches(&route.matcher, Some(&frame)))
    else {
        return Taken::No;
    };
    let id = protocol::echoable_id(&frame);
    let refuse = |reason: InboundRefusal, code: ErrorCode, message: String| {
        shared.metrics.inbound_refused(reason);
        Taken::Refused {
            id: id.clone(),
            code,
            message,
        }
    };
    let identity = connection.identity.load();
    let scope = Scope {
        payload: Some(&frame),
        claims: identity.authenticated.then_some(&identity.claims),
        connection_id: Some(&connection.public_id),
        user: identity.user.as_deref(),
        ..Scope::default()
    };
    let allowed = audience::resolve(&route.allow, &scope)
        .is_some_and(|allow| allow.admits_connection(&identity, &connection.public_id));
    if !allowed {
        let message = format!("not allowed to send `{}` frames", route.name);
        return refuse(InboundRefusal::Forbidden, ErrorCode::Forbidden, message);
    }
    if !budgets.try_take(route, Instant::now()) {
        let message = format!(
            "too many `{}` frames: at most {} at once, refilled at {}/s",
            route.name,
            route.rate.map_or(0, |rate| rate.burst),
            route.rate.map_or(0.0, |rate| rate.per_second)
        );
        return refuse(InboundRefusal::RateLimited, ErrorCode::RateLimited, message);
    }
    let Some(channel) = route.channel.render(&scope) else {
        let message = format!(
            "the frame does not give what the channel `{}` needs",
            route.channel.source()
        );
        return refuse(InboundRefusal::Unresolved, ErrorCode::BadRequest, message);
    };
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let envelope = Envelope {
        kind: "client_message",
        route: &route.name,
        user: identity.user.as_deref(),
        roles: &identity.roles,
        connection_id: &connection.public_id,
        instance: &shared.instance,
        ts: &ts,
    };
    let Ok(mut payload) = serde_json::to_vec(&envelope) else {
        return Taken::No;
    };
    payload.pop();
    payload.extend_from_slice(b",\"data\":");
    payload.extend_from_slice(text.as_bytes());
    payload.push(b'}');
    let outgoing = Outgoing {
        route: route.name.clone(),
        channel,
        payload,
        ack: route.ack.then(|| (connection.clone(), id.clone())),
    };
    let sent = match shared.redis_requests.get() {
        Some(requests) => requests.try_send(RedisRequest::Publish(outgoing)),
        None => Err(TrySendError::Closed(RedisRequest::Publish(outgoing))),
    };
    match sent {
        Ok(()) => Taken::Queued,
        Err(_) => refuse(
            InboundRefusal::Unavailable,
            ErrorCode::Unavailable,
            "the bridge cannot publish to Redis now; try again later".to_owned(),
        ),
    }
}
