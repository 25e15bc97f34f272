//! Presence in Redis, for every bridge on it: one sorted set per topic
//! (`__redis-ws-bridge__:presence:<topic>`) whose members are connections (`["user","id"]`)
//! scored by the time they are good until. Each bridge refreshes its own every
//! `redis.heartbeat_interval` for `redis.heartbeat_timeout`, so a bridge that dies without a
//! word drops out by itself; Redis 7.0 has no expiry per hash field, hence scores. A join and
//! a leave are each one MULTI that also reads who remains, so that across bridges exactly one
//! of them sees a user's first connection arrive or last one go, and PUBLISHes the event on
//! [`EVENTS`], which every bridge subscribes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::RESERVED_PREFIX;
use crate::protocol::{ErrorCode, PresentUser, Reply};
use crate::state::{PresenceRequest, Shared};

/// Where bridges tell each other of joins and leaves.
pub(super) const EVENTS: &str = "__redis-ws-bridge__:presence";

/// Starts the presence task and opens `Shared::presence_requests` to it.
pub(super) fn spawn(shared: Arc<Shared>) {
    let (sender, requests) = mpsc::unbounded_channel();
    if shared.presence_requests.set(sender).is_ok() {
        tokio::spawn(serve(shared, requests));
    }
}

/// The task's state: its Redis connection and what this bridge has told Redis, refreshed.
struct Task {
    shared: Arc<Shared>,
    link: Option<(String, redis::aio::MultiplexedConnection)>,
    /// Topic → this bridge's members of it.
    members: HashMap<String, HashSet<String>>,
}

async fn serve(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<PresenceRequest>) {
    let interval = shared.config().redis.heartbeat_interval;
    let mut refresh = tokio::time::interval(interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut task = Task {
        shared,
        link: None,
        members: HashMap::new(),
    };
    loop {
        tokio::select! {
            () = task.shared.shutdown.cancelled() => return,
            request = requests.recv() => match request {
                Some(request) => task.handle(request).await,
                None => return,
            },
            _ = refresh.tick() => task.refresh().await,
        }
    }
}

fn key(topic: &str) -> String {
    format!("{RESERVED_PREFIX}presence:{topic}")
}

fn member(user: &str, connection_id: &str) -> String {
    serde_json::json!([user, connection_id]).to_string()
}

/// The user of a member; `None` for what this bridge did not write.
fn user_of(member: &str) -> Option<String> {
    let (user, _): (String, String) = serde_json::from_str(member).ok()?;
    Some(user)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Task {
    /// How long a member lives without a refresh.
    fn ttl(&self) -> Duration {
        self.shared.config().redis.heartbeat_timeout
    }

    async fn connection(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, String> {
        let settings = self.shared.config().redis.clone();
        if self
            .link
            .as_ref()
            .is_some_and(|(url, _)| *url != settings.url)
        {
            self.link = None;
        }
        if self.link.is_none() {
            let connection = super::requests::connect(&settings).await?;
            self.link = Some((settings.url.clone(), connection));
        }
        match &mut self.link {
            Some((_, connection)) => Ok(connection),
            None => Err("no connection to redis".to_owned()),
        }
    }

    /// Runs `pipe`; a failed connection is made again for the next one.
    async fn run<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T, String> {
        let connection = self.connection().await?;
        let ran =
            tokio::time::timeout(Duration::from_secs(5), pipe.query_async::<T>(connection)).await;
        let result = match ran {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(_) => Err("redis did not answer in time".to_owned()),
        };
        if result.is_err() {
            self.link = None;
        }
        result
    }

    async fn handle(&mut self, request: PresenceRequest) {
        match request {
            PresenceRequest::Join {
                topic,
                user,
                connection_id,
                events,
            } => self.join(topic, &user, &connection_id, events).await,
            PresenceRequest::Leave {
                topic,
                user,
                connection_id,
                events,
            } => self.leave(topic, &user, &connection_id, events).await,
            PresenceRequest::Query {
                topic,
                connection,
                id,
            } => {
                let frame = match self.present(&topic).await {
                    Ok(users) => {
                        self.shared.metrics.presence_query("ok");
                        Reply::Presence {
                            id: id.as_ref(),
                            topic: &topic,
                            count: users.len(),
                            users: &users,
                        }
                        .to_frame()
                    }
                    Err(err) => {
                        self.shared.metrics.presence_query("unavailable");
                        tracing::warn!(topic, error = %err, "presence query failed");
                        Reply::Error {
                            id: id.as_ref(),
                            code: ErrorCode::Unavailable,
                            message: "presence is not available now",
                            topic: Some(&topic),
                            refused: &[],
                        }
                        .to_frame()
                    }
                };
                connection.outbox.send(frame, &self.shared.metrics);
            }
        }
    }

    async fn join(&mut self, topic: String, user: &str, connection_id: &str, events: bool) {
        let member = member(user, connection_id);
        let now = now_ms();
        let ttl = self.ttl();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key(&topic))
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZADD")
            .arg(key(&topic))
            .arg(now + ttl.as_millis() as u64)
            .arg(&member)
            .cmd("ZRANGEBYSCORE")
            .arg(key(&topic))
            .arg(now)
            .arg("+inf")
            .cmd("PEXPIRE")
            .arg(key(&topic))
            .arg(ttl.as_millis() as u64)
            .ignore();
        self.members
            .entry(topic.clone())
            .or_default()
            .insert(member);
        match self.run::<(i64, Vec<String>)>(&pipe).await {
            Ok((added, present)) => {
                let first = added == 1 && connections_of(&present, user) == 1;
                if first && events {
                    self.publish_event("join", &topic, user).await;
                }
            }
            // The refresh adds it once Redis is back.
            Err(err) => tracing::warn!(topic, error = %err, "presence not recorded"),
        }
    }

    async fn leave(&mut self, topic: String, user: &str, connection_id: &str, events: bool) {
        let member = member(user, connection_id);
        if let Some(members) = self.members.get_mut(&topic) {
            members.remove(&member);
            if members.is_empty() {
                self.members.remove(&topic);
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREM")
            .arg(key(&topic))
            .arg(&member)
            .cmd("ZRANGEBYSCORE")
            .arg(key(&topic))
            .arg(now_ms())
            .arg("+inf");
        match self.run::<(i64, Vec<String>)>(&pipe).await {
            Ok((removed, present)) => {
                if removed == 1 && connections_of(&present, user) == 0 && events {
                    self.publish_event("leave", &topic, user).await;
                }
            }
            // Not refreshed any more: it expires.
            Err(err) => tracing::warn!(topic, error = %err, "presence leave not recorded"),
        }
    }

    async fn publish_event(&mut self, kind: &str, topic: &str, user: &str) {
        let event = serde_json::json!({"type": kind, "topic": topic, "user": user}).to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(EVENTS).arg(event).ignore();
        if let Err(err) = self.run::<()>(&pipe).await {
            tracing::warn!(topic, error = %err, "presence event not published");
        }
    }

    /// Who is on `topic` now, over every bridge, by user.
    async fn present(&mut self, topic: &str) -> Result<Vec<PresentUser>, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(key(topic))
            .arg(now_ms())
            .arg("+inf");
        let (members,): (Vec<String>,) = self.run(&pipe).await?;
        let mut users: BTreeMap<String, usize> = BTreeMap::new();
        for user in members.iter().filter_map(|member| user_of(member)) {
            *users.entry(user).or_default() += 1;
        }
        Ok(users
            .into_iter()
            .map(|(user, connections)| PresentUser { user, connections })
            .collect())
    }

    /// Pushes this bridge's members' deadlines forward (and adds back what Redis lost).
    /// Members whose subscription is gone from the hub, or whose topic has no presence any
    /// more, are left first: a reload sends no leave, and a leave still queued finds its work
    /// done (once).
    async fn refresh(&mut self) {
        if self.members.is_empty() {
            return;
        }
        let mut gone: Vec<(String, String)> = Vec::new();
        {
            let routing = self.shared.routing.load();
            let hub = self.shared.hub.read();
            self.members.retain(|topic, members| {
                let kept_route = crate::presence::of_topic(&routing, topic).is_some();
                let subscribed: HashSet<String> = hub
                    .subscribers(topic)
                    .into_iter()
                    .flatten()
                    .filter_map(|subscriber| {
                        let connection = &subscriber.connection;
                        let user = connection.identity.load().user.clone()?;
                        Some(member(&user, &connection.public_id))
                    })
                    .collect();
                members.retain(|member| {
                    let kept = kept_route && subscribed.contains(member);
                    if !kept {
                        gone.push((topic.clone(), member.clone()));
                    }
                    kept
                });
                !members.is_empty()
            });
        }
        for (topic, member) in gone {
            let Ok((user, connection_id)) = serde_json::from_str::<(String, String)>(&member)
            else {
                continue;
            };
            let events = crate::presence::of_topic(&self.shared.routing.load(), &topic)
                .is_some_and(|presence| presence.events);
            self.leave(topic, &user, &connection_id, events).await;
        }
        let ttl = self.ttl().as_millis() as u64;
        let deadline = now_ms() + ttl;
        let mut pipe = redis::pipe();
        for (topic, members) in &self.members {
            let command = pipe.cmd("ZADD").arg(key(topic));
            for member in members {
                command.arg(deadline).arg(member);
            }
            command.ignore();
            pipe.cmd("PEXPIRE").arg(key(topic)).arg(ttl).ignore();
        }
        if let Err(err) = self.run::<()>(&pipe).await {
            tracing::warn!(error = %err, "presence not refreshed");
        }
    }
}

/// How many of `present` are connections of `user`.
fn connections_of(present: &[String], user: &str) -> usize {
    present
        .iter()
        .filter(|member| user_of(member).as_deref() == Some(user))
        .count()
}
