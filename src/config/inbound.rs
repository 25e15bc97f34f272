//! The `inbound` list: which client frames are published to Redis, where, by whom and how
//! often.

use std::collections::HashMap;
use std::sync::Arc;

use super::route::{
    Audience, PayloadMatch, audience_of, compile_each, payload_match, template, unique_name,
};
use super::websocket::{Rate, rate};
use super::yaml::{self, Ctx, Kind, Node, fields, join};
use super::{RESERVED_PREFIX, schema};
use crate::template::{Allowed, Template};

/// One inbound route: the client frames it takes and the channel it publishes them on.
#[derive(Clone, Debug)]
pub struct InboundRoute {
    /// Unique among inbound routes; the envelope's `route` and the metrics' label.
    pub name: Arc<str>,
    /// Fields of the client's frame, as a route's `match` reads a payload (empty: every frame
    /// that is not a command).
    pub matcher: PayloadMatch,
    /// Where the envelope is PUBLISHed; `{payload.…}` reads the client's frame.
    pub channel: Template,
    /// Who may send through this route.
    pub allow: Audience,
    /// Per connection, on top of `websocket.client_rate`.
    pub rate: Option<Rate>,
    /// Whether a frame published is answered `published`.
    pub ack: bool,
}

impl InboundRoute {
    /// One line for `check`: name, match, channel, allow, rate and ack.
    pub fn describe(&self) -> String {
        let mut out = format!("inbound {}:", self.name);
        if !self.matcher.is_empty() {
            out.push_str(&format!(" match({})", self.matcher.describe()));
        }
        out.push_str(&format!(
            " channel={} allow={}",
            self.channel.source(),
            self.allow.describe()
        ));
        if let Some(rate) = self.rate {
            // N/s refills N a second, N/m N a minute.
            let unit = if rate.per_second >= f64::from(rate.burst) {
                "s"
            } else {
                "m"
            };
            out.push_str(&format!(" rate={}/{unit}", rate.burst));
        }
        out.push_str(&format!(" ack={}", self.ack));
        out
    }
}

/// What an inbound template may read: the client's frame and who sent it.
const INBOUND_ALLOWED: Allowed = Allowed {
    captures: 0,
    channel: false,
    payload: true,
    claims: true,
    topic: false,
    seq: false,
    now: false,
    connection_id: true,
    epoch: false,
    user: true,
};

/// Reads the `inbound` list; `None` when any entry is invalid (all are still checked).
pub(super) fn compile_all(ctx: &mut Ctx, node: &Node) -> Option<Vec<InboundRoute>> {
    let items = match &node.kind {
        Kind::Seq(items) => items,
        Kind::Null => return Some(Vec::new()),
        Kind::Invalid => return None,
        _ => {
            let message = format!(
                "expected a list of inbound routes, found {}",
                yaml::found_text(node)
            );
            ctx.error(node, "inbound", message);
            return None;
        }
    };
    compile_each(ctx, items, "inbound", compile)
}

fn compile(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    names: &mut HashMap<String, u64>,
) -> Option<InboundRoute> {
    if !matches!(node.kind, Kind::Map(_) | Kind::Invalid) {
        let message = format!(
            "expected an inbound route (a mapping with name and channel), found {}",
            yaml::found_text(node)
        );
        ctx.error(node, path, message);
        return None;
    }
    let route = fields(ctx, node, path, &schema::names(schema::INBOUND))?;
    let key = |name: &str| join(path, name);
    let name = match route.get("name") {
        Some(name_node) => unique_name(ctx, name_node, &key("name"), names, "inbound route"),
        None => {
            ctx.error(node, &key("name"), "missing key `name`");
            None
        }
    };
    let matcher = match route.get("match") {
        Some(node) => payload_match(ctx, node, &key("match")),
        None => Some(PayloadMatch::default()),
    };
    let channel = match route.get("channel") {
        Some(node) => channel(ctx, node, &key("channel")),
        None => {
            ctx.error(node, &key("channel"), "missing key `channel`");
            None
        }
    };
    let allow = match schema::value(ctx, &route, schema::INBOUND, "allow") {
        Some(node) => audience_of(ctx, &node, &key("allow"), &INBOUND_ALLOWED),
        None => None,
    };
    let rate = match route.get("rate") {
        Some(node) => rate(ctx, node, &key("rate")).map(Some),
        None => Some(None),
    };
    let ack = match schema::value(ctx, &route, schema::INBOUND, "ack") {
        Some(node) => yaml::boolean(ctx, &node, &key("ack")),
        None => None,
    };
    Some(InboundRoute {
        name: Arc::from(name?),
        matcher: matcher?,
        channel: channel?,
        allow: allow?,
        rate: rate?,
        ack: ack?,
    })
}

/// The channel template, refused when some frame could make it name one of the bridge's own
/// channels: a client must not be able to forge a heartbeat or a reload marker.
fn channel(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Template> {
    let channel = template(ctx, node, path, &INBOUND_ALLOWED)?;
    let reserved = match channel.as_literal() {
        Some("") => {
            ctx.error(node, path, "must not be empty");
            return None;
        }
        Some(text) => text.starts_with(RESERVED_PREFIX),
        // What a placeholder renders is the client's to choose: only a literal start that
        // leaves the reserved prefix keeps it out.
        None => {
            let start = channel.leading_literal();
            RESERVED_PREFIX.starts_with(start) || start.starts_with(RESERVED_PREFIX)
        }
    };
    if reserved {
        let message = format!(
            "`{}` can name a channel starting with `{RESERVED_PREFIX}`, the bridge's own (reload markers, heartbeats): start the channel with literal text of your own, e.g. \"chat:{{payload.topic}}\"",
            channel.source()
        );
        ctx.error(node, path, message);
        return None;
    }
    Some(channel)
}
