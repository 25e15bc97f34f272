//! The `websocket` section.

use std::time::Duration;

use super::schema;
use super::yaml::{self, Ctx, Kind, Node, fields, join};
use crate::template::{Allowed, JsonTemplate};

/// Client-facing WebSocket limits and behaviour.
#[derive(Clone, Debug)]
pub struct WebSocketSettings {
    /// The WebSocket endpoint's path (default `/ws`; starts with `/`).
    pub path: String,
    /// Exact `Origin` values allowed; empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// Open connections above which upgrades get HTTP 503 (default 10000).
    pub max_connections: usize,
    /// Open connections one authenticated user may hold (default 100); past it upgrades get
    /// HTTP 429, so one credential cannot take every slot.
    pub max_connections_per_user: usize,
    /// Open connections from one client address (default 1000; an IPv6 address counts by
    /// its /64); past it upgrades get HTTP 429. The address is the forwarded one behind
    /// `trusted_proxies`.
    pub max_connections_per_ip: usize,
    /// Largest inbound client frame; above it the connection closes with 1009 (default 65536).
    pub max_frame_bytes: usize,
    /// Topics one connection may be subscribed to at once (default 1000, at least 1): a
    /// flood of subscribes cannot grow the hub without bound.
    pub max_subscriptions: usize,
    /// Outbound frames buffered per client (default 256).
    pub send_queue: usize,
    /// What happens when a client's send queue is full.
    pub slow_client: SlowClient,
    /// How often the server pings (default 30s).
    pub ping_interval: Duration,
    /// No pong or frame for this long closes the connection (default 120s; longer than
    /// `ping_interval`).
    pub idle_timeout: Duration,
    /// Inbound commands allowed per connection (default 20/s).
    pub client_rate: Rate,
    /// New connections per client address (`connect_rate_per_ip`, e.g. `10/s`; absent: no
    /// limit). The address is the forwarded one behind `trusted_proxies`.
    pub connect_rate_per_ip: Option<Rate>,
    /// How long a client may take to send its HTTP request headers (`handshake_timeout`,
    /// default 10s): slow-loris connections are dropped after it.
    pub handshake_timeout: Duration,
    /// The first frame sent to a new connection.
    pub welcome: Welcome,
    /// permessage-deflate (RFC 7692): offered to new connections, applied per message.
    pub compression: Compression,
}

/// `websocket.compression`. A frame is compressed once for all its recipients, so the cost
/// is per message, not per connection, and no connection keeps a compression context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Whether a client's permessage-deflate offer is accepted (default true).
    pub enabled: bool,
    /// Route frames whose payload is shorter go plain (default 512): deflate's headers
    /// outweigh what it saves on a short frame.
    pub min_bytes: usize,
    /// The deflate level, 0 (stored) to 9 (smallest, slowest); default 1.
    pub level: u32,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            enabled: true,
            min_bytes: 512,
            level: 1,
        }
    }
}

/// What to do with a client whose send queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowClient {
    /// Close it with code 4000 (`disconnect`, the default).
    Disconnect,
    /// Drop its oldest queued frame to make room (`drop_oldest`).
    DropOldest,
}

/// A token-bucket rate: `per_second` refill, `burst` capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size: the N of `N/s` or `N/m`.
    pub burst: u32,
}

/// The first frame sent to a new connection.
#[derive(Clone, Debug)]
pub enum Welcome {
    /// The `connected` frame of docs/protocol.md (`native`, the default).
    Native,
    /// A JSON template; its placeholders: `{connection_id}`, `{claims.…}`, `{now}`.
    Template(JsonTemplate),
}

/// The most compression a deflate level asks for.
const MAX_LEVEL: u64 = 9;

/// Paths the HTTP server uses for its own endpoints (listed in the README).
const RESERVED_PATHS: &[&str] = &[
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/client.js",
    "/console.js",
    "/console.css",
    "/ws/stats",
    "/api/publish",
];

const WELCOME_ALLOWED: Allowed = Allowed {
    captures: 0,
    channel: false,
    payload: false,
    claims: true,
    topic: false,
    seq: false,
    now: true,
    connection_id: true,
    epoch: true,
    user: false,
};

/// Reads the section (absent: every default); `None` when something in it is invalid.
pub(super) fn compile(ctx: &mut Ctx, node: Option<&Node>) -> Option<WebSocketSettings> {
    let empty = Node {
        kind: Kind::Null,
        line: 1,
        column: 1,
    };
    let node = node.unwrap_or(&empty);
    let section = fields(ctx, node, "websocket", &schema::names(schema::WEBSOCKET))?;
    let key = |name: &str| join("websocket", name);

    // A key's node, or its default's (schema::WEBSOCKET), read by the same reader.
    let value = |ctx: &mut Ctx, name: &str| schema::value(ctx, &section, schema::WEBSOCKET, name);

    let path = value(ctx, "path").and_then(|node| ws_path(ctx, &node, &key("path")));
    let allowed_origins =
        value(ctx, "allowed_origins").and_then(|node| origins(ctx, &node, &key("allowed_origins")));
    let mut size = |name: &str, min: u64| {
        let node = value(ctx, name)?;
        yaml::number_at_least(ctx, &node, &key(name), min)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    };
    let max_connections = size("max_connections", 1);
    let max_connections_per_user = size("max_connections_per_user", 1);
    let max_connections_per_ip = size("max_connections_per_ip", 1);
    let max_frame_bytes = size("max_frame_bytes", 128);
    let max_subscriptions = size("max_subscriptions", 1);
    let send_queue = size("send_queue", 1);
    let slow_client =
        value(ctx, "slow_client").and_then(|node| slow_client(ctx, &node, &key("slow_client")));
    let ping_interval = positive_duration(ctx, &section, "ping_interval");
    let idle_timeout = idle_timeout(ctx, &section, node, ping_interval);
    let client_rate =
        value(ctx, "client_rate").and_then(|node| rate(ctx, &node, &key("client_rate")));
    let connect_rate_per_ip = match section.get("connect_rate_per_ip") {
        Some(node) => rate(ctx, node, &key("connect_rate_per_ip")).map(Some),
        None => Some(None),
    };
    let handshake_timeout = positive_duration(ctx, &section, "handshake_timeout");
    let welcome = value(ctx, "welcome").and_then(|node| welcome(ctx, &node, &key("welcome")));
    let compression = match section.get("compression") {
        Some(node) => compression(ctx, node),
        None => Some(Compression::default()),
    };
    Some(WebSocketSettings {
        path: path?,
        allowed_origins: allowed_origins?,
        max_connections: max_connections?,
        max_connections_per_user: max_connections_per_user?,
        max_connections_per_ip: max_connections_per_ip?,
        max_frame_bytes: max_frame_bytes?,
        max_subscriptions: max_subscriptions?,
        send_queue: send_queue?,
        slow_client: slow_client?,
        ping_interval: ping_interval?,
        idle_timeout: idle_timeout?,
        client_rate: client_rate?,
        connect_rate_per_ip: connect_rate_per_ip?,
        handshake_timeout: handshake_timeout?,
        welcome: welcome?,
        compression: compression?,
    })
}

/// `compression: {enabled, min_bytes, level}`, each key optional.
fn compression(ctx: &mut Ctx, node: &Node) -> Option<Compression> {
    let path = join("websocket", "compression");
    let section = fields(ctx, node, &path, &schema::names(schema::COMPRESSION))?;
    let defaults = Compression::default();
    let enabled = match section.get("enabled") {
        Some(node) => yaml::boolean(ctx, node, &join(&path, "enabled")),
        None => Some(defaults.enabled),
    };
    let min_bytes = match section.get("min_bytes") {
        Some(node) => yaml::number_at_least(ctx, node, &join(&path, "min_bytes"), 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        None => Some(defaults.min_bytes),
    };
    let level = match section.get("level") {
        Some(node) => {
            let key = join(&path, "level");
            match yaml::number_at_least(ctx, node, &key, 0) {
                Some(level) if level <= MAX_LEVEL => u32::try_from(level).ok(),
                Some(_) => {
                    ctx.error(node, &key, format!("must be 0 to {MAX_LEVEL}"));
                    None
                }
                None => None,
            }
        }
        None => Some(defaults.level),
    };
    Some(Compression {
        enabled: enabled?,
        min_bytes: min_bytes?,
        level: level?,
    })
}

/// A duration longer than zero.
fn positive_duration(ctx: &mut Ctx, section: &yaml::Fields, name: &str) -> Option<Duration> {
    let key = join("websocket", name);
    let node = schema::value(ctx, section, schema::WEBSOCKET, name)?;
    match yaml::duration(ctx, &node, &key) {
        Some(d) if d.is_zero() => {
            ctx.error(&node, &key, "must be longer than 0s");
            None
        }
        other => other,
    }
}

/// `idle_timeout`, longer than `ping_interval`: else idle connections close between pings.
fn idle_timeout(
    ctx: &mut Ctx,
    section: &yaml::Fields,
    node: &Node,
    ping_interval: Option<Duration>,
) -> Option<Duration> {
    let key = join("websocket", "idle_timeout");
    let idle_node = schema::value(ctx, section, schema::WEBSOCKET, "idle_timeout")?;
    let idle = yaml::duration(ctx, &idle_node, &key)?;
    if let Some(ping) = ping_interval
        && idle <= ping
    {
        let message = format!(
            "must be longer than ping_interval ({}), else idle connections close between pings",
            humantime::format_duration(ping)
        );
        let at = section
            .get("idle_timeout")
            .or_else(|| section.get("ping_interval"))
            .unwrap_or(node);
        ctx.error(at, &key, message);
        return None;
    }
    Some(idle)
}

fn ws_path(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = yaml::string(ctx, node, path)?;
    let problem = if !text.starts_with('/') {
        Some(format!("`{text}` must start with `/`"))
    } else if text.contains(|c: char| c == '?' || c == '#' || c.is_whitespace() || c.is_control()) {
        Some(format!(
            "`{text}` must be a plain path (no query, fragment or spaces)"
        ))
    } else if RESERVED_PATHS.contains(&text.as_str()) {
        Some(format!(
            "`{text}` is used by another endpoint of the server"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            ctx.error(node, path, message);
            None
        }
        None => Some(text),
    }
}

fn origins(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<String>> {
    let Kind::Seq(items) = &node.kind else {
        if !matches!(node.kind, Kind::Invalid) {
            let message =
                "expected a list of origins, e.g. [https://app.example.com] (empty: any origin)";
            ctx.error(node, path, message);
        }
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_path = yaml::index(path, i);
        let Some(origin) = yaml::string(ctx, item, &item_path) else {
            ok = false;
            continue;
        };
        let problem = if origin == "*" {
            Some("`*` is not an origin: leave the list empty to allow any origin".to_owned())
        } else {
            match origin.split_once("://") {
                Some((scheme, host))
                    if !scheme.is_empty() && !host.is_empty() && !host.contains('/') =>
                {
                    None
                }
                Some((_, host)) if host.contains('/') => Some(format!(
                    "`{origin}` is not an origin: write scheme://host[:port] without a path or trailing `/`"
                )),
                _ => Some(format!(
                    "`{origin}` is not an origin: expected scheme://host[:port], e.g. https://app.example.com"
                )),
            }
        };
        match problem {
            Some(message) => {
                ctx.error(item, &item_path, message);
                ok = false;
            }
            None => out.push(origin),
        }
    }
    ok.then_some(out)
}

fn slow_client(ctx: &mut Ctx, node: &Node, path: &str) -> Option<SlowClient> {
    match yaml::string(ctx, node, path)?.as_str() {
        "disconnect" => Some(SlowClient::Disconnect),
        "drop_oldest" => Some(SlowClient::DropOldest),
        other => {
            let message = format!("unknown value `{other}` (expected disconnect or drop_oldest)");
            ctx.error(node, path, message);
            None
        }
    }
}

/// `N/s`, `N/m` (per minute), or a bare `N` (per second).
pub(super) fn rate(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Rate> {
    let text = yaml::string(ctx, node, path)?;
    let (count, unit) = text.split_once('/').unwrap_or((text.as_str(), "s"));
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => Some(1.0),
        "m" | "min" | "minute" => Some(60.0),
        _ => None,
    };
    match (count.trim().parse::<u32>(), seconds) {
        (Ok(burst), Some(seconds)) if burst > 0 => Some(Rate {
            per_second: f64::from(burst) / seconds,
            burst,
        }),
        _ => {
            let message =
                format!("invalid rate `{text}`: expected N/s or N/m with N ≥ 1, e.g. 20/s");
            ctx.error(node, path, message);
            None
        }
    }
}

fn welcome(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Welcome> {
    match &node.kind {
        Kind::Str(s) if s == "native" => Some(Welcome::Native),
        Kind::Map(_) | Kind::Seq(_) => {
            super::route::json_template(ctx, node, path, &WELCOME_ALLOWED).map(Welcome::Template)
        }
        Kind::Invalid => None,
        _ => {
            let message = format!(
                "expected `native` or a JSON template (a mapping), found {}",
                yaml::found_text(node)
            );
            ctx.error(node, path, message);
            None
        }
    }
}
