//! Redis message → topics, audience and frame bytes, per route. Pure: no I/O, no shared state.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::audience::{self, Resolved};
use crate::auth::Identity;
use crate::config::{Config, Delivery, Format, PayloadMatch, Route, Source};
use crate::glob;
use crate::metrics::{Metrics, RouteCounters};
use crate::protocol::ErrorCode;
use crate::template::{PathSegment, Placeholder, Scope};
use crate::wsframe;

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
                let Some(told) = Told::by(route, template, topic) else {
                    continue;
                };
                known = true;
                let captures: Vec<&str> = told.captures.iter().map(String::as_str).collect();
                let scope = Scope {
                    channel: &told.channel,
                    captures: &captures,
                    payload: told.payload.as_ref(),
                    ..Scope::default()
                };
                if audience::may_admit(&route.audience, &scope, identity, &|placeholder| {
                    told.determines(placeholder)
                }) {
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
            .any(|route| {
                route
                    .topics
                    .iter()
                    .any(|template| Told::by(route, template, topic).is_some())
            })
    }

    /// The first route with `history` that can produce `topic`, if any.
    pub fn retaining_route(&self, topic: &str) -> Option<Arc<str>> {
        self.config
            .routes
            .iter()
            .filter(|route| route.history.is_some())
            .find(|route| {
                route
                    .topics
                    .iter()
                    .any(|template| Told::by(route, template, topic).is_some())
            })
            .map(|route| route.name.clone())
    }

    /// The literal topics of the `auto` routes whose audience can admit `identity`, announced
    /// in the `connected` frame: a connection is told only of what it may receive (naming an `admin-events` topic to an
    /// anonymous client would tell it more than it may see).
    pub fn auto_topics(&self, identity: &Identity) -> Vec<String> {
        let mut topics: Vec<String> = self
            .config
            .routes
            .iter()
            .filter(|r| r.delivery == Delivery::Auto)
            .filter(|r| audience::may_admit(&r.audience, &Scope::default(), identity, &|_| false))
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

/// What a topic tells of the messages a route sends on it, learnt by matching the topic
/// against one of the route's topic templates: the pattern's captures, the channel, and the
/// payload fields the template places in the topic (`job:{payload.id}` on `job:7` says
/// every such message has `id` 7). A subscribe checks the audience with it.
struct Told {
    /// The pattern's captures; those the topic does not fix are empty and not `known`.
    captures: Vec<String>,
    known_captures: Vec<bool>,
    channel: String,
    channel_known: bool,
    /// The fields the topic fixes, as JSON strings; `None` when it fixes none.
    payload: Option<Value>,
    payload_paths: Vec<Vec<PathSegment>>,
}

impl Told {
    /// `None` when `template` cannot produce `topic` for `route`: the text does not match,
    /// or the payload fields it fixes fail the route's `match`.
    fn by(route: &Route, template: &crate::template::Template, topic: &str) -> Option<Told> {
        let found = template.match_topic(topic)?;
        let mut channel = String::new();
        let mut channel_known = false;
        let mut payload = serde_json::Map::new();
        let mut payload_paths = Vec::new();
        for (placeholder, text) in &found.bound {
            match placeholder {
                Placeholder::Channel => {
                    channel.clone_from(text);
                    channel_known = true;
                }
                Placeholder::Payload(path) if !path.is_empty() => {
                    if !payload_may_match(&route.matcher, path, text) {
                        return None;
                    }
                    // The same field placed twice in a topic must read the same both times.
                    if place(&mut payload, path, text)? {
                        payload_paths.push(path.clone());
                    }
                }
                _ => {}
            }
        }
        let (captures, known_captures) = found
            .captures
            .into_iter()
            .take(route.capture_count())
            .map(|capture| {
                let known = capture.is_some();
                (capture.unwrap_or_default(), known)
            })
            .unzip();
        Some(Told {
            captures,
            known_captures,
            channel,
            channel_known,
            payload: (!payload.is_empty()).then_some(Value::Object(payload)),
            payload_paths,
        })
    }

    /// Whether the topic fixes what `placeholder` reads for every message on it.
    fn determines(&self, placeholder: &Placeholder) -> bool {
        match placeholder {
            Placeholder::Capture(n) => self.known_captures.get(n - 1).copied().unwrap_or(false),
            Placeholder::Channel => self.channel_known,
            Placeholder::Payload(path) => self.payload_paths.contains(path),
            _ => false,
        }
    }
}

/// Sets the string `text` at `path` in `root`. `Some(true)` when set (or already there),
/// `None` when the path already holds another text (no message can have both), and
/// `Some(false)` when another field is in the way (`a` and `a.b` both placed): that one is
/// then left out, which only makes the subscribe check less strict.
fn place(
    root: &mut serde_json::Map<String, Value>,
    path: &[PathSegment],
    text: &str,
) -> Option<bool> {
    let (last, parents) = path.split_last()?;
    let mut node = root;
    for segment in parents {
        let entry = node
            .entry(segment_key(segment))
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        match entry {
            Value::Object(map) => node = map,
            _ => return Some(false),
        }
    }
    match node.get(&segment_key(last)) {
        Some(Value::String(existing)) if existing == text => Some(true),
        Some(Value::String(_)) => None,
        Some(_) => Some(false),
        None => {
            node.insert(segment_key(last), Value::String(text.to_owned()));
            Some(true)
        }
    }
}

/// An object key for a path segment (`lookup` reads an index segment as a key on objects).
fn segment_key(segment: &PathSegment) -> String {
    match segment {
        PathSegment::Key(key) => key.clone(),
        PathSegment::Index(index) => index.to_string(),
    }
}

/// Whether `route` takes `message` at all: its `match`, when it has one, holds for the
/// payload. A message it does not take is not counted for it, as one from another channel.
pub fn takes(route: &Route, message: &Incoming) -> bool {
    route.matcher.is_empty() || payload_matches(&route.matcher, message.json())
}

/// Whether a message's payload (`None` when it is not JSON) meets every condition of a
/// route's `match`.
pub fn payload_matches(matcher: &PayloadMatch, payload: Option<&Value>) -> bool {
    let Some(payload) = payload else { return false };
    matcher.conditions().iter().all(|(path, patterns)| {
        crate::template::lookup(payload, path)
            .and_then(scalar_text)
            .is_some_and(|text| any_glob(patterns, &text))
    })
}

/// Whether a message whose field at `path` has the text `text` can meet the `match`
/// condition on that path (true when there is none). A subscribe uses it with what a topic
/// tells of the payload (`{payload.channel}` matched against the topic gives the channel).
fn payload_may_match(matcher: &PayloadMatch, path: &[PathSegment], text: &str) -> bool {
    matcher
        .conditions()
        .iter()
        .filter(|(condition, _)| condition.as_slice() == path)
        .all(|(_, patterns)| any_glob(patterns, text))
}

/// The text a scalar JSON value is matched as: a string's own text, a number's or a
/// boolean's JSON text (as templates render them); `None` for anything else.
fn scalar_text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|pattern| glob::matches(pattern, text))
}

/// Topics and audience of `route` for `message`; `None` when a placeholder has no value.
///
/// A topic whose own placeholders have no value is left out and the others are kept
/// (`[executions, "workflows:{payload.data.workflow_id}"]` still delivers on `executions`
/// when the message names no workflow); the message is unroutable for the route only when
/// no topic, or the audience, resolves.
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
        epoch: None,
        user: None,
    };
    let mut topics = Vec::with_capacity(route.topics.len());
    for template in &route.topics {
        let Some(topic) = template.render(&scope) else {
            continue;
        };
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        return None;
    }
    let audience = audience::resolve(&route.audience, &scope)?;
    Some(Plan {
        topics,
        audience,
        captures,
    })
}

/// Where a rendered frame holds the message's payload, for filters applied to it later (a
/// replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadAt {
    /// The payload is not JSON.
    NotJson,
    /// These bytes of the frame are the payload as it was published.
    Frame(std::ops::Range<usize>),
    /// The frame does not hold it as it was (a JSON template).
    Elsewhere,
}

/// The WebSocket frame `route` sends for `message` on `topic`, encoded once for every
/// recipient, and where it holds the payload; `None` when a placeholder has no value.
pub fn render_frame(
    route: &Route,
    message: &Incoming,
    plan: &Plan,
    topic: &str,
    seq: u64,
) -> Option<(Bytes, PayloadAt)> {
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
        epoch: None,
        user: None,
    };
    match &route.format {
        Format::Raw => Some(match std::str::from_utf8(message.payload) {
            Ok(_) => {
                let frame = wsframe::text(message.payload);
                let start = frame.len() - message.payload.len();
                let at = PayloadAt::Frame(start..frame.len());
                (frame, at)
            }
            Err(_) => (wsframe::binary(message.payload), PayloadAt::NotJson),
        }),
        Format::Template(template) => {
            let bytes = template.render_to_vec(&scope)?;
            std::str::from_utf8(&bytes).ok()?;
            Some((wsframe::text(&bytes), PayloadAt::Elsewhere))
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
            let data = if message.is_json() {
                let start = out.len();
                out.extend_from_slice(message.payload);
                Some(start..out.len())
            } else {
                serde_json::to_writer(&mut out, &String::from_utf8_lossy(message.payload)).ok()?;
                None
            };
            out.push(b'}');
            std::str::from_utf8(&out).ok()?;
            let frame = wsframe::text(&out);
            let header = frame.len() - out.len();
            let at = match data {
                Some(data) => PayloadAt::Frame(data.start + header..data.end + header),
                None => PayloadAt::NotJson,
            };
            Some((frame, at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routing(routes: &str) -> Routing {
        let text = format!(
            "auth:\n  mode: optional\n  jwt:\n    algorithms: [HS256]\n    secret: \"{}\"\nroutes:\n{routes}",
            "s".repeat(32)
        );
        let config = Config::from_str(&text, std::path::Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Routing::new(Arc::new(config), &Metrics::default())
    }

    fn user(id: &str) -> Identity {
        Identity {
            user: Some(Arc::from(id)),
            roles: Vec::new(),
            claims: json!({"sub": id}),
            authenticated: true,
            expires_at: None,
        }
    }

    /// The topics `route` (the only one) plans for `payload` on `channel`.
    fn topics(routing: &Routing, channel: &str, payload: &str) -> Option<Vec<String>> {
        let route = &routing.config.routes[0];
        let message = Incoming::new(channel, payload.as_bytes());
        if !takes(route, &message) {
            return None;
        }
        plan(route, None, &message).map(|plan| plan.topics)
    }

    #[test]
    fn match_takes_only_messages_whose_fields_match_a_pattern() {
        let routing = routing(
            "  - name: admin-events\n    channel: events\n    match: { type: [user.created, \"health.*\"], data.level: [1, \"true\"] }\n",
        );
        let route = &routing.config.routes[0];
        let takes_payload =
            |payload: &str| takes(route, &Incoming::new("events", payload.as_bytes()));
        assert!(takes_payload(
            r#"{"type":"user.created","data":{"level":1}}"#
        ));
        assert!(takes_payload(
            r#"{"type":"health.status.changed","data":{"level":true}}"#
        ));
        assert!(!takes_payload(
            r#"{"type":"user.updated","data":{"level":1}}"#
        ));
        assert!(!takes_payload(
            r#"{"type":"user.created","data":{"level":2}}"#
        ));
        assert!(!takes_payload(r#"{"type":"user.created"}"#));
        assert!(!takes_payload(
            r#"{"type":["user.created"],"data":{"level":1}}"#
        ));
        assert!(!takes_payload("user.created"));
        assert!(
            route
                .describe()
                .contains("match(type=[user.created,health.*], data.level=[1,true])")
        );
    }

    #[test]
    fn a_topic_without_a_value_is_left_out_of_a_list() {
        let routing = routing(
            "  - name: fan\n    channel: c\n    topic: [\"{payload.channel}\", \"executions:{payload.data.execution_id}\", \"workflows:{payload.data.workflow_id}\"]\n",
        );
        assert_eq!(
            topics(
                &routing,
                "c",
                r#"{"channel":"executions","data":{"execution_id":"e1","workflow_id":"w1"}}"#
            ),
            Some(vec![
                "executions".into(),
                "executions:e1".into(),
                "workflows:w1".into()
            ])
        );
        // A step event names its execution's topic and has no workflow: one topic, once.
        assert_eq!(
            topics(
                &routing,
                "c",
                r#"{"channel":"executions:e1","data":{"execution_id":"e1"}}"#
            ),
            Some(vec!["executions:e1".into()])
        );
        // No topic resolves: the route skips the message.
        assert_eq!(topics(&routing, "c", r#"{"data":{}}"#), None);
    }

    #[test]
    fn a_subscribe_learns_payload_fields_from_the_topic() {
        let routing = routing(
            "  - name: public\n    channel: c\n    match: { channel: [executions, \"executions:*\", approvals] }\n    topic: \"{payload.channel}\"\n    audience: authenticated\n  - name: own\n    channel: c\n    match: { channel: \"user:*\" }\n    topic: \"user:{payload.user_id}\"\n    audience: { user: \"{payload.user_id}\" }\n",
        );
        let alice = user("alice");
        assert_eq!(routing.authorize_subscribe("executions", &alice), Ok(()));
        assert_eq!(routing.authorize_subscribe("executions:e9", &alice), Ok(()));
        assert_eq!(routing.authorize_subscribe("user:alice", &alice), Ok(()));
        // `user:bob` is Bob's: the `own` route's audience is Bob whatever the message.
        assert_eq!(
            routing.authorize_subscribe("user:bob", &alice),
            Err(ErrorCode::Forbidden)
        );
        // The public route's `match` keeps it from producing other topics.
        assert_eq!(
            routing.authorize_subscribe("workflows:w1", &alice),
            Err(ErrorCode::UnknownTopic)
        );
        assert!(routing.produces("approvals") && !routing.produces("elsewhere"));
        assert_eq!(
            routing.authorize_subscribe("approvals", &Identity::anonymous()),
            Err(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn a_field_placed_twice_in_a_topic_must_agree() {
        let routing = routing(
            "  - name: pair\n    channel: c\n    topic: \"{payload.a}-{payload.a}\"\n    audience: { user: \"{payload.a}\" }\n",
        );
        assert_eq!(routing.authorize_subscribe("x-x", &user("x")), Ok(()));
        assert_eq!(
            routing.authorize_subscribe("x-x", &user("y")),
            Err(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn subscribe_checks_leave_to_each_message_what_the_topic_does_not_fix() {
        // A fallback must not stand in for a payload field the topic does not fix.
        let table = routing(
            "  - name: doc\n    pattern: \"doc:*\"\n    topic: \"doc:{1}\"\n    audience: {user: \"{payload.owner|nobody}\"}\n",
        );
        assert_eq!(table.authorize_subscribe("doc:1", &user("alice")), Ok(()));
        assert_eq!(
            table.authorize_subscribe("doc:1", &Identity::anonymous()),
            Err(ErrorCode::Forbidden)
        );
        // A capture the topic does not fix is not the empty string.
        let table = routing(
            "  - name: ws\n    pattern: \"ws:*:user:*\"\n    topic: \"ws:{1}\"\n    audience: {user: \"{2}\"}\n",
        );
        assert_eq!(table.authorize_subscribe("ws:w1", &user("alice")), Ok(()));
        // What the topic does fix is still checked at once.
        let table = routing(
            "  - name: u\n    pattern: \"u:*\"\n    topic: \"u:{1}\"\n    audience: {user: \"{1}\"}\n",
        );
        assert_eq!(table.authorize_subscribe("u:alice", &user("alice")), Ok(()));
        assert_eq!(
            table.authorize_subscribe("u:alice", &user("bob")),
            Err(ErrorCode::Forbidden)
        );
    }
}
