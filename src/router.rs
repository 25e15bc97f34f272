//! Redis message → topics, audience and frame bytes, per route. Pure: no I/O, no shared state.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::audience::{self, Resolved};
use crate::auth::Identity;
use crate::config::{Config, Delivery, Format, Route, Source};
use crate::glob;
use crate::metrics::{Metrics, RouteCounters};
use crate::protocol::ErrorCode;
use crate::template::Scope;

/// One message from Redis, with its payload parsed at most once and only on demand.
pub struct Incoming<'a> {
    pub channel: &'a str,
    pub payload: &'a [u8],
    json: OnceCell<Option<Value>>,
    is_json: OnceCell<bool>,
    now: OnceCell<String>,
}

impl<'a> Incoming<'a> {
    pub fn new(channel: &'a str, payload: &'a [u8]) -> Incoming<'a> {
        Incoming {
            channel,
            payload,
            json: OnceCell::new(),
            is_json: OnceCell::new(),
            now: OnceCell::new(),
        }
    }

    /// The payload as JSON, when it is JSON.
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.payload).ok())
            .as_ref()
    }

    /// Whether the payload is JSON, without building a tree when nothing needed one.
    fn is_json(&self) -> bool {
        *self.is_json.get_or_init(|| match self.json.get() {
            Some(parsed) => parsed.is_some(),
            None => serde_json::from_slice::<IgnoredAny>(self.payload).is_ok(),
        })
    }

    /// The message's timestamp, taken once so that every frame of it agrees.
    fn now(&self) -> &str {
        self.now.get_or_init(|| {
            humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
        })
    }
}

/// The compiled routing table of one configuration generation.
#[derive(Debug)]
pub struct Routing {
    pub config: Arc<Config>,
    by_channel: HashMap<String, Vec<usize>>,
    by_pattern: HashMap<String, Vec<usize>>,
    counters: Vec<Arc<RouteCounters>>,
}

/// What one route makes of one message: the topics it goes to and who may receive it.
pub struct Plan<'m> {
    pub topics: Vec<String>,
    pub audience: Resolved,
    captures: Vec<&'m str>,
}

impl Routing {
    pub fn new(config: Arc<Config>, metrics: &Metrics) -> Routing {
        let mut by_channel: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_pattern: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, route) in config.routes.iter().enumerate() {
            match &route.source {
                Source::Channel(channel) => {
                    by_channel.entry(channel.clone()).or_default().push(index)
                }
                Source::Pattern(pattern) => {
                    by_pattern.entry(pattern.clone()).or_default().push(index)
                }
            }
        }
        let counters = config
            .routes
            .iter()
            .map(|route| metrics.route(&route.name))
            .collect();
        Routing {
            config,
            by_channel,
            by_pattern,
            counters,
        }
    }

    /// Channels to SUBSCRIBE, each once however many routes share it.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.by_channel.keys().map(String::as_str)
    }

    /// Patterns to PSUBSCRIBE, each once.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.by_pattern.keys().map(String::as_str)
    }

    /// The routes a Redis message concerns: the channel's routes for a `message`, the
    /// pattern's routes for a `pmessage` (Redis sends one of each when both match, so every
    /// route sees a message once).
    pub fn routes_for(
        &self,
        channel: &str,
        pattern: Option<&str>,
    ) -> impl Iterator<Item = (&Route, &RouteCounters)> {
        let indexes = match pattern {
            Some(pattern) => self.by_pattern.get(pattern),
            None => self.by_channel.get(channel),
        };
        indexes
            .into_iter()
            .flatten()
            .map(|&i| (&self.config.routes[i], &*self.counters[i]))
    }

    /// Whether `identity` may subscribe to `topic`: some `subscribe` route produces it and
    /// its audience, with what the topic itself tells, can admit the identity.
    pub fn authorize_subscribe(&self, topic: &str, identity: &Identity) -> Result<(), ErrorCode> {
        let mut known = false;
        for route in self
            .config
            .routes
            .iter()
            .filter(|r| r.delivery == Delivery::Subscribe)
        {
            for template in &route.topics {
                let Some(found) = template.match_topic(topic) else {
                    continue;
                };
                known = true;
                let captures: Vec<&str> = found
                    .captures
                    .iter()
                    .take(route.capture_count())
                    .map(|c| c.as_deref().unwrap_or(""))
                    .collect();
                let channel = found
                    .bound
                    .iter()
                    .find(|(placeholder, _)| {
                        matches!(placeholder, crate::template::Placeholder::Channel)
                    })
                    .map_or("", |(_, text)| text.as_str());
                let scope = Scope {
                    channel,
                    captures: &captures,
                    payload: None,
                    claims: None,
                    topic: None,
                    seq: None,
                    now: None,
                    connection_id: None,
                };
                if audience::may_admit(&route.audience, &scope, identity) {
                    return Ok(());
                }
            }
        }
        Err(if known {
            ErrorCode::Forbidden
        } else {
            ErrorCode::UnknownTopic
        })
    }

    /// Whether some route can still produce `topic` (a reload keeps such subscriptions).
    pub fn produces(&self, topic: &str) -> bool {
        self.config
            .routes
            .iter()
            .filter(|r| r.delivery == Delivery::Subscribe)
            .any(|route| route.topics.iter().any(|t| t.match_topic(topic).is_some()))
    }

    /// The literal topics of `auto` routes, announced in the `connected` frame.
    pub fn auto_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .config
            .routes
            .iter()
            .filter(|r| r.delivery == Delivery::Auto)
            .flat_map(|r| {
                r.topics
                    .iter()
                    .filter_map(|t| t.as_literal().map(str::to_owned))
            })
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

/// Topics and audience of `route` for `message`; `None` when a placeholder has no value.
pub fn plan<'m>(
    route: &Route,
    pattern: Option<&str>,
    message: &'m Incoming<'m>,
) -> Option<Plan<'m>> {
    let captures = match pattern {
        Some(pattern) => glob::captures(pattern, message.channel)?,
        None => Vec::new(),
    };
    let payload = if route.needs_payload() {
        message.json()
    } else {
        None
    };
    let scope = Scope {
        channel: message.channel,
        captures: &captures,
        payload,
        claims: None,
        topic: None,
        seq: None,
        now: None,
        connection_id: None,
    };
    let mut topics = Vec::with_capacity(route.topics.len());
    for template in &route.topics {
        let topic = template.render(&scope)?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    let audience = audience::resolve(&route.audience, &scope)?;
    Some(Plan {
        topics,
        audience,
        captures,
    })
}

/// The frame `route` sends for `message` on `topic`; `None` when a placeholder has no value.
pub fn render_frame(
    route: &Route,
    message: &Incoming,
    plan: &Plan,
    topic: &str,
    seq: u64,
) -> Option<Message> {
    let payload = if route.needs_payload() {
        message.json()
    } else {
        None
    };
    let scope = Scope {
        channel: message.channel,
        captures: &plan.captures,
        payload,
        claims: None,
        topic: Some(topic),
        seq: Some(seq),
        now: Some(message.now()),
        connection_id: None,
    };
    match &route.format {
        Format::Raw => Some(match std::str::from_utf8(message.payload) {
            Ok(text) => Message::Text(Utf8Bytes::from(text)),
            Err(_) => Message::Binary(message.payload.to_vec().into()),
        }),
        Format::Template(template) => {
            let bytes = template.render_to_vec(&scope)?;
            String::from_utf8(bytes)
                .ok()
                .map(|text| Message::Text(text.into()))
        }
        Format::Envelope => {
            let event_type = route.event_type.render(&scope)?;
            let mut out = Vec::with_capacity(64 + topic.len() + message.payload.len());
            out.extend_from_slice(b"{\"type\":");
            serde_json::to_writer(&mut out, &event_type).ok()?;
            out.extend_from_slice(b",\"topic\":");
            serde_json::to_writer(&mut out, topic).ok()?;
            out.extend_from_slice(
                format!(",\"seq\":{seq},\"ts\":\"{}\",\"data\":", message.now()).as_bytes(),
            );
            if message.is_json() {
                out.extend_from_slice(message.payload);
            } else {
                serde_json::to_writer(&mut out, &String::from_utf8_lossy(message.payload)).ok()?;
            }
            out.push(b'}');
            String::from_utf8(out)
                .ok()
                .map(|text| Message::Text(text.into()))
        }
    }
}
