//! The `routes` list: sources, topics, delivery, audiences and formats.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::schema;
use super::yaml::{self, Ctx, Kind, Node, fields, index, join};
use crate::template::{
    Allowed, JsonPart, JsonTemplate, PathSegment, Template, parse_path, path_text,
};

/// One route: which Redis messages it takes, and how it turns them into frames for whom.
#[derive(Clone, Debug)]
pub struct Route {
    /// Unique name, used in logs and metric labels.
    pub name: Arc<str>,
    /// The channel (SUBSCRIBE) or pattern (PSUBSCRIBE) it listens to.
    pub source: Source,
    /// Payload conditions a message must meet for the route to take it (`match`; empty:
    /// every message of the source). Several routes can then share one channel and each
    /// take its own kind of message, e.g. by the payload's event type.
    pub matcher: PayloadMatch,
    /// The topics each message is published on (at least one).
    pub topics: Vec<Template>,
    /// Whether clients must subscribe to get its frames.
    pub delivery: Delivery,
    /// Which connections may receive its frames.
    pub audience: Audience,
    /// How a message becomes a frame.
    pub format: Format,
    /// The envelope's `type` (YAML key `type`; default: the route name). Only set by the file
    /// for `format: envelope`; for other formats it is the literal route name.
    pub event_type: Template,
    /// What the route keeps of its recent frames, per topic, for replays (`history`).
    pub history: Option<Retention>,
    /// Whether a connection's queue holds at most one unsent frame per topic of the route,
    /// the newer replacing the older (`conflate`).
    pub conflate: bool,
    /// Who subscribes to its topics, shown to whom (`presence`; absent: nobody).
    pub presence: Option<super::Presence>,
}

/// A route's `history`: per topic, the last `size` frames, none older than `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub size: usize,
    /// `None`: no age limit (the sizes and `history_max_bytes` still bound it).
    pub ttl: Option<Duration>,
}

/// The most frames one topic may retain: a replay is a burst of them into one queue.
pub const MAX_HISTORY_SIZE: u64 = 10_000;

/// Where a route's messages come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An exact channel name (SUBSCRIBE).
    Channel(String),
    /// A Redis glob pattern (PSUBSCRIBE).
    Pattern(String),
}

/// The `match` of a route: for each payload dot path, the Redis glob patterns (`*`, `?`,
/// `[...]`, `\` escapes, as in `pattern`) one of which its value must match. A string, number
/// or boolean value is matched as its text (`42`, `true`); a missing field, `null`, an object,
/// an array or a payload that is not JSON matches nothing.
#[derive(Clone, Debug, Default)]
pub struct PayloadMatch {
    /// Every condition must hold (logical and); within one, any pattern (logical or).
    conditions: Vec<(Vec<PathSegment>, Vec<String>)>,
}

impl PayloadMatch {
    /// True when the route has no `match`: it takes every message.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The conditions: each payload path with the glob patterns one of which its value must
    /// match. The router applies them to messages.
    pub fn conditions(&self) -> &[(Vec<PathSegment>, Vec<String>)] {
        &self.conditions
    }

    /// `type=[user.created,user.deleted], data.kind=[gpu*]`, for `check`.
    pub(super) fn describe(&self) -> String {
        self.conditions
            .iter()
            .map(|(path, patterns)| format!("{}=[{}]", path_text(path), patterns.join(",")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Who gets a route's frames without asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every admitted connection gets the frames without subscribing.
    Auto,
    /// Only connections subscribed to the topic (the default).
    Subscribe,
}

/// Which connections a route's frames may reach (docs/routing.md, "Audiences"). The templates
/// resolve against the message (captures, channel, payload); the results are compared with
/// the connection's identity and claims.
#[derive(Clone, Debug)]
pub enum Audience {
    /// Every connection, anonymous ones included (YAML `all`).
    Everyone,
    /// Any connection with a valid token or API key.
    Authenticated,
    /// The connection whose user equals the rendered value.
    User(Template),
    /// The one connection whose id (`connection_id`) equals the rendered value.
    Connection(Template),
    /// Connections with at least one of these roles.
    Roles(Vec<String>),
    /// Connections whose claim at each path equals the rendered value (or, for an array
    /// claim, contains it).
    Claims(Vec<(Vec<PathSegment>, Template)>),
    /// Any of these (logical or).
    AnyOf(Vec<Audience>),
    /// All of these (logical and; YAML `all: [...]`).
    AllOf(Vec<Audience>),
}

/// How a message becomes a frame.
#[derive(Clone, Debug)]
pub enum Format {
    /// `{"type", "topic", "seq", "ts", "data"}` (the default).
    Envelope,
    /// The payload byte for byte.
    Raw,
    /// A JSON template.
    Template(JsonTemplate),
}

const AUDIENCE_KEYS: &[&str] = &["user", "connection", "roles", "claims", "any", "all"];

impl Route {
    /// Whether some template of the route (topics, type, audience, format) reads the
    /// payload, so the payload must be parsed as JSON for it.
    pub fn needs_payload(&self) -> bool {
        !self.matcher.is_empty()
            || self.topics.iter().any(Template::needs_payload)
            || self.event_type.needs_payload()
            || self.audience.needs_payload()
            || matches!(&self.format, Format::Template(template) if template.needs_payload())
    }

    /// The number of capturing `*` in the pattern (0 for a channel), as [`crate::glob`]
    /// captures them: only `*` captures; `?` and `[...]` match without capturing, and `\*`
    /// or a `*` inside `[...]` is literal.
    pub fn capture_count(&self) -> usize {
        match &self.source {
            Source::Channel(_) => 0,
            Source::Pattern(pattern) => crate::glob::capture_count(pattern),
        }
    }

    /// One line for `check`: name, source, topics, delivery, audience and format.
    /// A warning when the route looks like it carries one user's or one tenant's messages
    /// (a topic template with a placeholder and a word such as `user` or `tenant`) while its
    /// audience is `all`: then anyone who subscribes to `user:alice` receives alice's frames.
    pub fn exposure_warning(&self) -> Option<String> {
        const PERSONAL: &[&str] = &["user", "tenant", "account", "customer", "owner", "member"];
        if !matches!(self.audience, Audience::Everyone) {
            return None;
        }
        let topic = self.topics.iter().find(|topic| {
            let source = topic.source().to_ascii_lowercase();
            topic.placeholders().next().is_some()
                && PERSONAL.iter().any(|word| source.contains(word))
        })?;
        Some(format!(
            "route `{}`: topic `{}` looks per-user or per-tenant, but the audience is `all` (the default): anyone who subscribes to it receives its frames; give the route an audience such as {{user: \"{{payload.user_id}}\"}}",
            self.name,
            topic.source()
        ))
    }

    pub fn describe(&self) -> String {
        let mut out = format!("{}: ", self.name);
        match &self.source {
            Source::Channel(channel) => {
                let _ = write!(out, "channel={channel}");
            }
            Source::Pattern(pattern) => {
                let _ = write!(out, "pattern={pattern}");
            }
        }
        if !self.matcher.is_empty() {
            let _ = write!(out, " match({})", self.matcher.describe());
        }
        let topics: Vec<&str> = self.topics.iter().map(Template::source).collect();
        let delivery = match self.delivery {
            Delivery::Auto => "auto",
            Delivery::Subscribe => "subscribe",
        };
        let _ = write!(
            out,
            " topics=[{}] delivery={delivery} audience={}",
            topics.join(", "),
            self.audience.describe()
        );
        match &self.format {
            Format::Envelope => {
                let _ = write!(out, " format=envelope type={}", self.event_type.source());
            }
            Format::Raw => out.push_str(" format=raw"),
            Format::Template(_) => out.push_str(" format=template"),
        }
        if let Some(history) = &self.history {
            let _ = write!(out, " history(size={}", history.size);
            if let Some(ttl) = history.ttl {
                let _ = write!(out, ", ttl={}", humantime::format_duration(ttl));
            }
            out.push(')');
        }
        if self.conflate {
            out.push_str(" conflate");
        }
        if let Some(presence) = &self.presence {
            let _ = write!(
                out,
                " presence(visible_to={}, events={})",
                presence.visible_to.describe(),
                presence.events
            );
        }
        out
    }
}

impl Audience {
    /// Whether some template of the audience reads the payload.
    pub fn needs_payload(&self) -> bool {
        match self {
            Audience::Everyone | Audience::Authenticated | Audience::Roles(_) => false,
            Audience::User(template) | Audience::Connection(template) => template.needs_payload(),
            Audience::Claims(claims) => claims.iter().any(|(_, template)| template.needs_payload()),
            Audience::AnyOf(audiences) | Audience::AllOf(audiences) => {
                audiences.iter().any(Audience::needs_payload)
            }
        }
    }

    /// A short text for `check`, e.g. `all`, `user={payload.user_id}`,
    /// `roles=[admin,superadmin]`, `claims(tenant={1})`, `any(...)`, `all(...)`.
    pub fn describe(&self) -> String {
        let list = |audiences: &[Audience]| {
            audiences
                .iter()
                .map(Audience::describe)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Audience::Everyone => "all".to_owned(),
            Audience::Authenticated => "authenticated".to_owned(),
            Audience::User(template) => format!("user={}", template.source()),
            Audience::Connection(template) => format!("connection={}", template.source()),
            Audience::Roles(roles) => format!("roles=[{}]", roles.join(",")),
            Audience::Claims(claims) => {
                let claims: Vec<String> = claims
                    .iter()
                    .map(|(path, template)| format!("{}={}", path_text(path), template.source()))
                    .collect();
                format!("claims({})", claims.join(", "))
            }
            Audience::AnyOf(audiences) => format!("any({})", list(audiences)),
            Audience::AllOf(audiences) => format!("all({})", list(audiences)),
        }
    }
}

/// Reads the `routes` list; `None` when any route is invalid (all are still checked).
pub(super) fn compile_all(ctx: &mut Ctx, node: &Node) -> Option<Vec<Route>> {
    let items = match &node.kind {
        Kind::Seq(items) if !items.is_empty() => items,
        Kind::Invalid => return None,
        Kind::Seq(_) | Kind::Null => {
            ctx.error(node, "routes", "at least one route is required");
            return None;
        }
        _ => {
            let message = format!(
                "expected a list of routes, found {}",
                yaml::found_text(node)
            );
            ctx.error(node, "routes", message);
            return None;
        }
    };
    compile_each(ctx, items, "routes", compile)
}

/// Compiles every item of the list `section` with `compile`, which also keeps the names seen
/// so far unique (name → line); `None` when any item is invalid (all are still checked, so
/// that every error is told at once).
pub(super) fn compile_each<T>(
    ctx: &mut Ctx,
    items: &[Node],
    section: &str,
    mut compile: impl FnMut(&mut Ctx, &Node, &str, &mut HashMap<String, u64>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut names = HashMap::new();
    let mut compiled = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match compile(ctx, item, &index(section, i), &mut names) {
            Some(one) => compiled.push(one),
            None => ok = false,
        }
    }
    ok.then_some(compiled)
}

/// Reads one route. `names` maps the names seen so far to their line.
fn compile(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    names: &mut HashMap<String, u64>,
) -> Option<Route> {
    if !matches!(node.kind, Kind::Map(_) | Kind::Invalid) {
        let message = format!(
            "expected a route (a mapping with name and channel or pattern), found {}",
            yaml::found_text(node)
        );
        ctx.error(node, path, message);
        return None;
    }
    let route = fields(ctx, node, path, &schema::names(schema::ROUTE))?;
    let key = |name: &str| join(path, name);

    let name = match route.get("name") {
        Some(name_node) => unique_name(ctx, name_node, &key("name"), names, "route"),
        None => {
            ctx.error(node, &key("name"), "missing key `name`");
            None
        }
    };

    let source = source(ctx, &route, node, path);
    // Without a valid source the capture count is unknown: allow every capture rather than
    // report errors that only follow from the first one.
    let captures = match &source {
        Some(Source::Pattern(pattern)) => crate::glob::capture_count(pattern),
        Some(Source::Channel(_)) => 0,
        None => 9,
    };
    let message_scope = Allowed {
        captures,
        channel: true,
        payload: true,
        ..Allowed::default()
    };
    let format_scope = Allowed {
        topic: true,
        seq: true,
        now: true,
        ..message_scope
    };

    let matcher = match route.get("match") {
        Some(node) => payload_match(ctx, node, &key("match")),
        None => Some(PayloadMatch::default()),
    };
    let topics = match route.get("topic") {
        Some(topic) => topics(ctx, topic, &key("topic"), &message_scope),
        None => name.as_deref().map(|name| vec![Template::literal(name)]),
    };
    let delivery = match route.get("delivery") {
        Some(delivery) => delivery_of(ctx, delivery, &key("delivery")),
        None => Some(Delivery::Subscribe),
    };
    let audience = match route.get("audience") {
        Some(audience) => audience_of(ctx, audience, &key("audience"), &message_scope),
        None => Some(Audience::Everyone),
    };
    let format = match route.get("format") {
        Some(format) => format_of(ctx, format, &key("format"), &format_scope),
        None => Some(Format::Envelope),
    };
    let event_type = event_type(ctx, &route, path, &format, name.as_deref(), &message_scope);
    let history = match route.get("history") {
        Some(node) => retention(ctx, node, &key("history")).map(Some),
        None => Some(None),
    };
    let conflate = match route.get("conflate") {
        Some(node) => yaml::boolean(ctx, node, &key("conflate")),
        None => Some(false),
    };
    let presence = match (route.get("presence"), delivery) {
        (Some(node), Some(Delivery::Auto)) => {
            let message =
                "`presence` counts subscribers: only `delivery: subscribe` routes have it";
            ctx.error(node, &key("presence"), message);
            None
        }
        (Some(node), _) => super::presence::compile(ctx, node, &key("presence")).map(Some),
        (None, _) => Some(None),
    };

    Some(Route {
        name: Arc::from(name?),
        source: source?,
        matcher: matcher?,
        topics: topics?,
        delivery: delivery?,
        audience: audience?,
        format: format?,
        event_type: event_type?,
        history: history?,
        conflate: conflate?,
        presence: presence?,
    })
}

/// `history: {size, ttl}`: `size` required, `ttl` optional.
fn retention(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Retention> {
    if !matches!(node.kind, Kind::Map(_) | Kind::Invalid) {
        let message = format!(
            "expected a mapping such as {{size: 50, ttl: 10m}}, found {}",
            yaml::found_text(node)
        );
        ctx.error(node, path, message);
        return None;
    }
    let section = fields(ctx, node, path, &schema::names(schema::HISTORY))?;
    let size = match section.get("size") {
        Some(size_node) => {
            let key = join(path, "size");
            match yaml::number_at_least(ctx, size_node, &key, 1) {
                Some(size) if size <= MAX_HISTORY_SIZE => usize::try_from(size).ok(),
                Some(_) => {
                    let message = format!("must be 1 to {MAX_HISTORY_SIZE}");
                    ctx.error(size_node, &key, message);
                    None
                }
                None => None,
            }
        }
        None => {
            ctx.error(node, &join(path, "size"), "missing key `size`");
            None
        }
    };
    let ttl = match section.get("ttl") {
        Some(ttl_node) => {
            let key = join(path, "ttl");
            match yaml::duration(ctx, ttl_node, &key) {
                Some(ttl) if ttl.is_zero() => {
                    ctx.error(ttl_node, &key, "must be longer than 0s");
                    None
                }
                other => other.map(Some),
            }
        }
        None => Some(None),
    };
    Some(Retention {
        size: size?,
        ttl: ttl?,
    })
}

/// The envelope's `type` (default: the route's name); only `format: envelope` has one.
fn event_type(
    ctx: &mut Ctx,
    route: &yaml::Fields,
    path: &str,
    format: &Option<Format>,
    name: Option<&str>,
    scope: &Allowed,
) -> Option<Template> {
    let key = join(path, "type");
    match (route.get("type"), format) {
        (Some(type_node), Some(Format::Raw | Format::Template(_))) => {
            let message = "`type` is only used by `format: envelope`";
            ctx.error(type_node, &key, message);
            None
        }
        (Some(type_node), _) => template(ctx, type_node, &key, scope),
        (None, _) => name.map(Template::literal),
    }
}

/// Exactly one of `channel` (SUBSCRIBE) and `pattern` (PSUBSCRIBE).
fn source(ctx: &mut Ctx, route: &yaml::Fields, node: &Node, path: &str) -> Option<Source> {
    let key = |name: &str| join(path, name);
    match (route.get("channel"), route.get("pattern")) {
        (Some(_), Some(pattern)) => {
            let message = "a route has exactly one of `channel` and `pattern`, not both";
            ctx.error(pattern, &key("pattern"), message);
            None
        }
        (None, None) => {
            let message = "missing key `channel` or `pattern` (exactly one is required)";
            ctx.error(node, path, message);
            None
        }
        (Some(channel), None) => channel_source(ctx, channel, &key("channel")),
        (None, Some(pattern)) => non_empty(ctx, pattern, &key("pattern")).map(Source::Pattern),
    }
}

/// A non-empty name not in `names` (name → line), then added to it; `what` names the list's
/// items in the error.
pub(super) fn unique_name(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    names: &mut HashMap<String, u64>,
    what: &str,
) -> Option<String> {
    let name = non_empty(ctx, node, path)?;
    if let Some(first) = names.get(&name) {
        let message = format!("duplicate {what} name `{name}` (first used on line {first})");
        ctx.error(node, path, message);
        return None;
    }
    names.insert(name.clone(), node.line);
    Some(name)
}

pub(super) fn non_empty(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = yaml::string(ctx, node, path)?;
    if text.trim().is_empty() {
        ctx.error(node, path, "must not be empty");
        return None;
    }
    Some(text)
}

fn channel_source(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Source> {
    let channel = non_empty(ctx, node, path)?;
    if channel.contains('*') {
        let message = format!(
            "`channel` is an exact channel name: for the glob `{channel}` write `pattern: \"{channel}\"`"
        );
        ctx.error(node, path, message);
        return None;
    }
    if channel.starts_with(super::RESERVED_PREFIX) {
        let message = format!(
            "channels starting with `{}` are the bridge's own (reload markers, heartbeats) and never delivered",
            super::RESERVED_PREFIX
        );
        ctx.error(node, path, message);
        return None;
    }
    Some(Source::Channel(channel))
}

pub(super) fn template(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    allowed: &Allowed,
) -> Option<Template> {
    let text = yaml::string(ctx, node, path)?;
    match Template::compile(&text, allowed) {
        Ok(template) => Some(template),
        Err(e) => {
            ctx.error(node, path, e.to_string());
            None
        }
    }
}

fn topics(ctx: &mut Ctx, node: &Node, path: &str, allowed: &Allowed) -> Option<Vec<Template>> {
    let items: Vec<(&Node, String)> = match &node.kind {
        Kind::Seq(items) if items.is_empty() => {
            ctx.error(node, path, "at least one topic is required");
            return None;
        }
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, index(path, i)))
            .collect(),
        _ => vec![(node, path.to_owned())],
    };
    let mut out: Vec<Template> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (item, item_path) in items {
        let Some(topic) = template(ctx, item, &item_path, allowed) else {
            ok = false;
            continue;
        };
        if topic.as_literal() == Some("") {
            ctx.error(item, &item_path, "must not be empty");
            ok = false;
        } else if out.iter().any(|seen| seen.source() == topic.source()) {
            let message = format!("duplicate topic `{}`", topic.source());
            ctx.error(item, &item_path, message);
            ok = false;
        } else {
            out.push(topic);
        }
    }
    ok.then_some(out)
}

/// Reads `match`: a mapping of payload dot paths to a glob pattern or a list of them.
pub(super) fn payload_match(ctx: &mut Ctx, node: &Node, path: &str) -> Option<PayloadMatch> {
    let entries = match &node.kind {
        Kind::Map(entries) if !entries.is_empty() => entries,
        Kind::Invalid => return None,
        _ => {
            let message = "expected a mapping of payload paths to patterns, e.g. {type: [user.created, \"user.*\"]}";
            ctx.error(node, path, message);
            return None;
        }
    };
    let mut conditions = Vec::with_capacity(entries.len());
    let mut ok = true;
    for entry in entries {
        let key = join(path, &entry.key);
        let field = match parse_path(&entry.key) {
            Ok(field) => Some(field),
            Err(e) => {
                ctx.error_at(entry.line, entry.column, &key, e.to_string());
                None
            }
        };
        let patterns = match yaml::string_list(ctx, &entry.value, &key) {
            Some(patterns) if patterns.is_empty() => {
                ctx.error(&entry.value, &key, "expected at least one pattern");
                None
            }
            other => other,
        };
        match (field, patterns) {
            (Some(field), Some(patterns)) => conditions.push((field, patterns)),
            _ => ok = false,
        }
    }
    ok.then_some(PayloadMatch { conditions })
}

fn delivery_of(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Delivery> {
    match yaml::string(ctx, node, path)?.as_str() {
        "auto" => Some(Delivery::Auto),
        "subscribe" => Some(Delivery::Subscribe),
        other => {
            let message = format!("unknown delivery `{other}` (expected auto or subscribe)");
            ctx.error(node, path, message);
            None
        }
    }
}

pub(super) fn audience_of(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    allowed: &Allowed,
) -> Option<Audience> {
    const EXPECTED: &str = "expected `all`, `authenticated` or a mapping with one of user, connection, roles, claims, any, all";
    match &node.kind {
        Kind::Str(s) if s == "all" => return Some(Audience::Everyone),
        Kind::Str(s) if s == "authenticated" => return Some(Audience::Authenticated),
        Kind::Map(_) | Kind::Invalid => {}
        _ => {
            let message = format!("{EXPECTED}, found {}", yaml::found_text(node));
            ctx.error(node, path, message);
            return None;
        }
    }
    let audience = fields(ctx, node, path, AUDIENCE_KEYS)?;
    if audience.len() != 1 {
        // Unknown keys were reported already; here the mapping had none or several known ones.
        if audience.len() > 1 || matches!(&node.kind, Kind::Map(entries) if entries.is_empty()) {
            let message = "an audience mapping has exactly one key: user, connection, roles, claims, any or all";
            ctx.error(node, path, message);
        }
        return None;
    }
    let (name, entry) = AUDIENCE_KEYS
        .iter()
        .find_map(|name| audience.entry(name).map(|entry| (*name, entry)))?;
    let value = &entry.value;
    let key = join(path, name);
    match name {
        "user" => template(ctx, value, &key, allowed).map(Audience::User),
        "connection" => template(ctx, value, &key, allowed).map(Audience::Connection),
        "roles" => {
            let roles = yaml::string_list(ctx, value, &key)?;
            if roles.is_empty() || roles.iter().any(|role| role.trim().is_empty()) {
                ctx.error(
                    value,
                    &key,
                    "expected a non-empty list of non-empty role names",
                );
                return None;
            }
            Some(Audience::Roles(roles))
        }
        "claims" => claims(ctx, value, &key, allowed).map(Audience::Claims),
        _ => {
            let Kind::Seq(items) = &value.kind else {
                if !matches!(value.kind, Kind::Invalid) {
                    let message = format!(
                        "expected a list of audiences, found {}",
                        yaml::found_text(value)
                    );
                    ctx.error(value, &key, message);
                }
                return None;
            };
            if items.is_empty() {
                ctx.error(value, &key, "expected at least one audience");
                return None;
            }
            let mut audiences = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match audience_of(ctx, item, &index(&key, i), allowed) {
                    Some(audience) => audiences.push(audience),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            Some(if name == "any" {
                Audience::AnyOf(audiences)
            } else {
                Audience::AllOf(audiences)
            })
        }
    }
}

fn claims(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    allowed: &Allowed,
) -> Option<Vec<(Vec<PathSegment>, Template)>> {
    let entries = match &node.kind {
        Kind::Map(entries) if !entries.is_empty() => entries,
        Kind::Invalid => return None,
        _ => {
            let message = "expected a mapping of claim names to values, e.g. {tenant: \"{1}\"}";
            ctx.error(node, path, message);
            return None;
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut ok = true;
    for entry in entries {
        let key = join(path, &entry.key);
        let claim = match parse_path(&entry.key) {
            Ok(claim) => Some(claim),
            Err(e) => {
                ctx.error_at(entry.line, entry.column, &key, e.to_string());
                None
            }
        };
        match (claim, template(ctx, &entry.value, &key, allowed)) {
            (Some(claim), Some(value)) => out.push((claim, value)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn format_of(ctx: &mut Ctx, node: &Node, path: &str, allowed: &Allowed) -> Option<Format> {
    match &node.kind {
        Kind::Str(s) if s == "envelope" => Some(Format::Envelope),
        Kind::Str(s) if s == "raw" => Some(Format::Raw),
        Kind::Map(_) | Kind::Seq(_) => {
            json_template(ctx, node, path, allowed).map(Format::Template)
        }
        Kind::Invalid => None,
        _ => {
            let message = format!(
                "expected `envelope`, `raw` or a JSON template (a mapping), found {}",
                yaml::found_text(node)
            );
            ctx.error(node, path, message);
            None
        }
    }
}

/// Compiles a YAML value as a JSON template, keeping the file's key order and reporting
/// each bad string at its own position.
pub(super) fn json_template(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    allowed: &Allowed,
) -> Option<JsonTemplate> {
    json_part(ctx, node, path, allowed).map(|part| JsonTemplate::from_parts(&part))
}

fn json_part(ctx: &mut Ctx, node: &Node, path: &str, allowed: &Allowed) -> Option<JsonPart> {
    match &node.kind {
        Kind::Null => Some(JsonPart::Scalar(serde_json::Value::Null)),
        Kind::Bool(b) => Some(JsonPart::Scalar(serde_json::Value::Bool(*b))),
        Kind::Number(n) => Some(JsonPart::Scalar(serde_json::Value::Number(n.clone()))),
        Kind::Str(_) => template(ctx, node, path, allowed).map(JsonPart::Text),
        Kind::Invalid => None,
        Kind::Seq(items) => {
            let parts: Vec<Option<JsonPart>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| json_part(ctx, item, &index(path, i), allowed))
                .collect();
            parts
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(JsonPart::Array)
        }
        Kind::Map(entries) => {
            let parts: Vec<Option<(String, JsonPart)>> = entries
                .iter()
                .map(|entry| {
                    json_part(ctx, &entry.value, &join(path, &entry.key), allowed)
                        .map(|part| (entry.key.clone(), part))
                })
                .collect();
            parts
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(JsonPart::Object)
        }
    }
}
