//! Presence on the topics of routes with `presence`: which routes' topics have it, who may
//! see it, the joins and leaves a session's subscriptions make, queries, and the join and
//! leave frames for this bridge's subscribers. The state itself is in Redis, kept by `pubsub`
//! (the one module that talks to Redis), asked through `Shared::presence_requests`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::audience;
use crate::auth::Identity;
use crate::config::{Presence, Source};
use crate::glob;
use crate::hub::Connection;
use crate::protocol::{ErrorCode, Reply};
use crate::router::Routing;
use crate::state::{PresenceRequest, Shared};
use crate::template::{Placeholder, Scope, TopicMatch};

/// Whether some route keeps presence: otherwise subscriptions are nothing to it.
pub fn tracked(routing: &Routing) -> bool {
    routing
        .config
        .routes
        .iter()
        .any(|route| route.presence.is_some())
}

/// The presence of `topic`: that of the first `subscribe` route with `presence` that can
/// produce it (a topic that places `{channel}` must name a channel of the route).
pub fn of_topic<'r>(routing: &'r Routing, topic: &str) -> Option<&'r Presence> {
    routing.config.routes.iter().find_map(|route| {
        let presence = route.presence.as_ref()?;
        let produces = |found: TopicMatch| {
            found
                .bound
                .iter()
                .all(|(placeholder, text)| match placeholder {
                    Placeholder::Channel => match &route.source {
                        Source::Channel(channel) => channel == text,
                        Source::Pattern(pattern) => glob::matches(pattern, text),
                    },
                    _ => true,
                })
        };
        route
            .topics
            .iter()
            .filter_map(|template| template.match_topic(topic))
            .any(produces)
            .then_some(presence)
    })
}

/// Whether the connection may see the presence of `topic`.
pub fn visible(presence: &Presence, topic: &str, identity: &Identity, connection_id: &str) -> bool {
    let scope = Scope {
        topic: Some(topic),
        ..Scope::default()
    };
    audience::resolve(&presence.visible_to, &scope)
        .is_some_and(|resolved| resolved.admits_connection(identity, connection_id))
}

/// The connection subscribed to `topics` (or left them, with `joined` false): those with
/// presence are told to Redis. Anonymous connections are not shown.
pub fn changed(shared: &Shared, connection: &Connection, topics: &[impl AsRef<str>], joined: bool) {
    let routing = shared.routing.load();
    if topics.is_empty() || !tracked(&routing) {
        return;
    }
    let Some(requests) = shared.presence_requests.get() else {
        return;
    };
    let Some(user) = connection.identity.load().user.clone() else {
        return;
    };
    for topic in topics {
        let topic = topic.as_ref();
        let Some(presence) = of_topic(&routing, topic) else {
            continue;
        };
        let (topic, user, connection_id, events) = (
            topic.to_owned(),
            user.clone(),
            connection.public_id.clone(),
            presence.events,
        );
        let request = match joined {
            true => PresenceRequest::Join {
                topic,
                user,
                connection_id,
                events,
            },
            false => PresenceRequest::Leave {
                topic,
                user,
                connection_id,
                events,
            },
        };
        // Closed only when the process is ending, and Redis forgets what it is not told.
        let _ = requests.send(request);
    }
}

/// A `presence` command: refused at once when the topic has no presence or the connection
/// may not see it; otherwise answered by `pubsub` once Redis has.
pub fn query(
    shared: &Shared,
    connection: &Arc<Connection>,
    id: Option<&Value>,
    topic: &str,
) -> Result<(), (ErrorCode, &'static str)> {
    let routing = shared.routing.load();
    let Some(presence) = of_topic(&routing, topic) else {
        shared.metrics.presence_query("unknown_topic");
        return Err((
            ErrorCode::UnknownTopic,
            "no route with presence produces this topic",
        ));
    };
    if !visible(
        presence,
        topic,
        &connection.identity.load(),
        &connection.public_id,
    ) {
        shared.metrics.presence_query("forbidden");
        return Err((
            ErrorCode::Forbidden,
            "not allowed to see who is on this topic",
        ));
    }
    let request = PresenceRequest::Query {
        topic: topic.to_owned(),
        connection: connection.clone(),
        id: id.cloned(),
    };
    let sent = shared
        .presence_requests
        .get()
        .is_some_and(|requests| requests.send(request).is_ok());
    if !sent {
        shared.metrics.presence_query("unavailable");
        return Err((ErrorCode::Unavailable, "presence is not available now"));
    }
    Ok(())
}

/// A join or leave, as bridges tell each other.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    topic: String,
    user: String,
}

/// Sends a join or leave event (`payload`, from any bridge) to this bridge's subscribers of
/// its topic that may see it, when the topic's route has `events`.
pub fn deliver_event(shared: &Shared, payload: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Event>(payload) else {
        return;
    };
    let (topic, user) = (event.topic.as_str(), event.user.as_str());
    let frame = match event.kind.as_str() {
        "join" => Reply::Join { topic, user },
        "leave" => Reply::Leave { topic, user },
        _ => return,
    }
    .to_frame();
    let routing = shared.routing.load();
    let Some(presence) = of_topic(&routing, topic).filter(|presence| presence.events) else {
        return;
    };
    let recipients: Vec<Arc<Connection>> = {
        let hub = shared.hub.read();
        let Some(subscribers) = hub.subscribers(topic) else {
            return;
        };
        subscribers
            .map(|subscriber| subscriber.connection.clone())
            .filter(|connection| {
                visible(
                    presence,
                    topic,
                    &connection.identity.load(),
                    &connection.public_id,
                )
            })
            .collect()
    };
    // Written after the hub's lock is released.
    for connection in recipients {
        connection.outbox.send(frame.clone(), &shared.metrics);
    }
}
