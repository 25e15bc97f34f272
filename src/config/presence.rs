//! A route's `presence`: who is subscribed to its topics, over every bridge.

use super::RedisSettings;
use super::route::{Audience, Route, audience_of};
use super::schema;
use super::yaml::{self, Ctx, Kind, Node, fields, index, join};
use crate::template::Allowed;

/// Who subscribes to a route's topics is shown to connections `visible_to` admits: in answer
/// to a `presence` query, and (with `events`) as join and leave frames.
#[derive(Clone, Debug)]
pub struct Presence {
    /// Who may query and receive the events; `{topic}` is the topic asked about.
    pub visible_to: Audience,
    /// Whether subscribers get `join` and `leave` frames.
    pub events: bool,
}

/// What `visible_to` may read: the topic, and the asking connection's identity (compared by
/// the audience itself).
const PRESENCE_ALLOWED: Allowed = Allowed {
    captures: 0,
    channel: false,
    payload: false,
    claims: false,
    topic: true,
    seq: false,
    now: false,
    connection_id: false,
    epoch: false,
    user: false,
};

pub(super) fn compile(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Presence> {
    let section = fields(ctx, node, path, &schema::names(schema::PRESENCE))?;
    let visible_to = match schema::value(ctx, &section, schema::PRESENCE, "visible_to") {
        Some(value) => audience_of(ctx, &value, &join(path, "visible_to"), &PRESENCE_ALLOWED),
        None => None,
    };
    let events = match schema::value(ctx, &section, schema::PRESENCE, "events") {
        Some(value) => yaml::boolean(ctx, &value, &join(path, "events")),
        None => None,
    };
    Some(Presence {
        visible_to: visible_to?,
        events: events?,
    })
}

/// Presence keeps one key per topic, which a Redis Cluster places on any node, while the
/// bridge talks to one node: refused at the route's `presence`.
pub(super) fn check_cluster(
    ctx: &mut Ctx,
    redis: &RedisSettings,
    routes_node: &Node,
    routes: &[Route],
) {
    let Kind::Seq(items) = &routes_node.kind else {
        return;
    };
    if redis.cluster.is_none() {
        return;
    }
    for (i, (route, item)) in routes.iter().zip(items).enumerate() {
        let Kind::Map(entries) = &item.kind else {
            continue;
        };
        let entry = entries.iter().find(|entry| entry.key == "presence");
        if let (Some(_), Some(entry)) = (&route.presence, entry) {
            let message = "presence keeps a key per topic, which a Redis Cluster may place on a node the bridge does not talk to: use one Redis server or Sentinel";
            ctx.error(
                &entry.value,
                &join(&index("routes", i), "presence"),
                message,
            );
        }
    }
}
