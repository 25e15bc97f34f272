//! The live connections and their subscriptions: who gets which topic.
//!
//! Lookups are by hash (topic → subscribers, user → connections), so the work for one message
//! is proportional to its recipients, never to all connections or all topics. The lock is a
//! std `RwLock` held only for in-memory work, never across an await: fan-out reads, while
//! subscribe, unsubscribe, connect and disconnect write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::auth::{Credential, HeldCredential, Identity};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{ErrorCode, Filter, Refusal, Reply};

/// Process-unique, never reused, cheap to hash.
pub type ConnId = u64;

/// The hub's handle on one WebSocket connection, shared with its session task.
#[derive(Debug)]
pub struct Connection {
    pub id: ConnId,
    /// The `connection_id` clients see (a UUID), for logs and the welcome frame.
    pub public_id: String,
    /// Replaced as a whole by a token refresh, so fan-out never sees half an identity.
    pub identity: ArcSwap<Identity>,
    /// What the identity was verified from, verified again when a reload changes the keys.
    pub credential: HeldCredential,
    /// The socket and what waits to be written to it.
    pub outbox: Outbox,
    /// The client's window (`server_max_window_bits`, 15 by default) when it negotiated
    /// permessage-deflate: route frames that fit it go to it compressed. A byte, not a
    /// compressor: frames are compressed once per message for everyone.
    pub deflate: Option<u8>,
    /// The id of the last dispatch that queued a frame here: one message reaches a connection
    /// at most once however many of its subscriptions match. Only the single dispatcher
    /// writes it.
    last_dispatch: AtomicU64,
}

impl Connection {
    pub fn new(
        id: ConnId,
        public_id: String,
        identity: Identity,
        credential: Option<Credential>,
        outbox: Outbox,
        deflate: Option<u8>,
    ) -> Connection {
        Connection {
            id,
            public_id,
            identity: ArcSwap::from_pointee(identity),
            credential: HeldCredential::new(credential),
            outbox,
            deflate,
            last_dispatch: AtomicU64::new(0),
        }
    }

    /// Claims this connection for `dispatch`; false when it already has that dispatch's frame.
    pub fn claim(&self, dispatch: u64) -> bool {
        self.last_dispatch.swap(dispatch, Ordering::Relaxed) != dispatch
    }
}

#[derive(Debug)]
pub struct Subscriber {
    pub connection: Arc<Connection>,
    pub filter: Option<Arc<Filter>>,
}

#[derive(Debug)]
struct Entry {
    connection: Arc<Connection>,
    topics: HashSet<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct Indexes {
    connections: HashMap<ConnId, Entry>,
    topics: HashMap<Arc<str>, HashMap<ConnId, Subscriber>>,
    users: HashMap<Arc<str>, HashSet<ConnId>>,
}

impl Indexes {
    /// Subscribers of `topic`, if it has any.
    pub fn subscribers(&self, topic: &str) -> Option<impl Iterator<Item = &Subscriber>> {
        self.topics.get(topic).map(|subs| subs.values())
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Connection>> {
        self.connections.values().map(|entry| &entry.connection)
    }

    /// The connections authenticated as `user`.
    pub fn of_user<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a Arc<Connection>> + 'a {
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.connections.get(id).map(|entry| &entry.connection))
    }

    /// Topics that currently have at least one subscriber.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.topics.keys()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }
}

#[derive(Debug, Default)]
pub struct Hub {
    indexes: RwLock<Indexes>,
}

impl Hub {
    pub fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        self.indexes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.indexes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, connection: Arc<Connection>) {
        self.register_then(connection, |_| {});
    }

    /// Registers a connection and runs `then` with it under the same lock: what it queues (a
    /// replay of `auto` topics) comes before any live frame.
    pub fn register_then(&self, connection: Arc<Connection>, then: impl FnOnce(&Connection)) {
        let mut indexes = self.write();
        then(&connection);
        if let Some(user) = connection.identity.load().user.clone() {
            indexes.users.entry(user).or_default().insert(connection.id);
        }
        indexes.connections.insert(
            connection.id,
            Entry {
                connection,
                topics: HashSet::new(),
            },
        );
    }

    /// Removes a connection and all its subscriptions.
    pub fn unregister(&self, id: ConnId) {
        let mut indexes = self.write();
        let Some(entry) = indexes.connections.remove(&id) else {
            return;
        };
        for topic in entry.topics {
            remove_subscriber(&mut indexes.topics, &topic, id);
        }
        if let Some(user) = &entry.connection.identity.load().user {
            forget_user(&mut indexes.users, user, id);
        }
    }

    /// Subscribes `id` to those of `topics` that `admit` lets through (or replaces their
    /// filter), and queues the one answer that `answer` makes of what was subscribed and what
    /// was refused; returns how many topics the connection then has. The caller flushes the
    /// connection's outbox afterwards: nothing is written to a socket under the hub's lock.
    ///
    /// `admit` runs, and the answer is queued, under the lock that [`Hub::retain_topics`]
    /// takes, so a reload that drops a topic either comes first (and `admit`, reading the
    /// routing table in force, refuses the topic) or comes after (and finds the subscription,
    /// its `route_removed` notice queued after the answer): no subscription to a topic that no
    /// route produces any more goes unnoticed.
    ///
    /// A connection holds at most `limit` topics: admitted topics past it are refused with
    /// `too_many_subscriptions`.
    ///
    /// `then` runs last, still under the lock, with the connection and the subscribed topics:
    /// what it queues (a replay of retained frames) comes after the answer and before any
    /// live frame of those topics, since the dispatcher appends to the history and fans out
    /// under the read lock.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &self,
        id: ConnId,
        topics: Vec<String>,
        filter: Option<Arc<Filter>>,
        limit: usize,
        mut admit: impl FnMut(&str) -> Result<(), ErrorCode>,
        answer: impl FnOnce(&[String], &[Refusal]) -> Bytes,
        then: impl FnOnce(&Connection, &[String]),
    ) -> usize {
        let mut indexes = self.write();
        let Indexes {
            connections,
            topics: by_topic,
            ..
        } = &mut *indexes;
        let Some(entry) = connections.get_mut(&id) else {
            return 0;
        };
        let mut room = limit.saturating_sub(entry.topics.len());
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for topic in topics {
            if admitted.contains(&topic) {
                continue;
            }
            if let Err(code) = admit(&topic) {
                refused.push(Refusal { topic, code });
            } else if entry.topics.contains(topic.as_str()) {
                admitted.push(topic);
            } else if room > 0 {
                room -= 1;
                admitted.push(topic);
            } else {
                refused.push(Refusal {
                    topic,
                    code: ErrorCode::TooManySubscriptions,
                });
            }
        }
        entry
            .connection
            .outbox
            .queue_reply(answer(&admitted, &refused));
        for topic in &admitted {
            let topic: Arc<str> = match entry.topics.get(topic.as_str()) {
                Some(existing) => existing.clone(),
                None => {
                    let topic: Arc<str> = Arc::from(topic.as_str());
                    entry.topics.insert(topic.clone());
                    topic
                }
            };
            let subscriber = Subscriber {
                connection: entry.connection.clone(),
                filter: filter.clone(),
            };
            by_topic.entry(topic).or_default().insert(id, subscriber);
        }
        then(&entry.connection, &admitted);
        entry.topics.len()
    }

    /// Unsubscribes `topics`; returns those the connection was subscribed to.
    pub fn unsubscribe(&self, id: ConnId, topics: &[String]) -> Vec<String> {
        let mut indexes = self.write();
        let Indexes {
            connections,
            topics: by_topic,
            ..
        } = &mut *indexes;
        let Some(entry) = connections.get_mut(&id) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for topic in topics {
            if entry.topics.remove(topic.as_str()) {
                remove_subscriber(by_topic, topic, id);
                removed.push(topic.clone());
            }
        }
        removed
    }

    /// Replaces a connection's identity, keeping the user index true.
    pub fn set_identity(&self, connection: &Connection, identity: Identity) {
        let mut indexes = self.write();
        let old = connection.identity.swap(Arc::new(identity));
        let new_user = connection.identity.load().user.clone();
        if old.user != new_user {
            if let Some(user) = &old.user {
                forget_user(&mut indexes.users, user, connection.id);
            }
            if let Some(user) = new_user {
                indexes.users.entry(user).or_default().insert(connection.id);
            }
        }
    }

    /// Drops every subscription to a topic for which `keep` says no; returns, per connection,
    /// the topics it lost.
    pub fn retain_topics(
        &self,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<(Arc<Connection>, Vec<String>)> {
        let mut indexes = self.write();
        let Indexes {
            connections,
            topics,
            ..
        } = &mut *indexes;
        let mut lost: HashMap<ConnId, (Arc<Connection>, Vec<String>)> = HashMap::new();
        topics.retain(|topic, subscribers| {
            if keep(topic) {
                return true;
            }
            for (id, subscriber) in subscribers.drain() {
                if let Some(entry) = connections.get_mut(&id) {
                    entry.topics.remove(topic);
                }
                lost.entry(id)
                    .or_insert_with(|| (subscriber.connection.clone(), Vec::new()))
                    .1
                    .push(topic.to_string());
            }
            false
        });
        lost.into_values().collect()
    }

    /// Sends a `gap` notice to every connection, naming the topics it is subscribed to:
    /// messages published while Redis was unreachable are lost, and the client should
    /// refetch what it shows. Returns how many connections were notified. The notices are
    /// made under the read lock and written after it, so connects and subscribes never wait
    /// on a socket.
    pub fn notify_gap(&self, since: &str, metrics: &Metrics) -> usize {
        let notices: Vec<(Arc<Connection>, Bytes)> = {
            let indexes = self.read();
            indexes
                .connections
                .values()
                .map(|entry| {
                    let mut topics: Vec<&str> = entry.topics.iter().map(|topic| &**topic).collect();
                    topics.sort_unstable();
                    let notice = Reply::Gap {
                        reason: "redis_reconnected",
                        since,
                        topics: &topics,
                    };
                    (entry.connection.clone(), notice.to_frame())
                })
                .collect()
        };
        for (connection, notice) in &notices {
            connection.outbox.send(notice.clone(), metrics);
        }
        notices.len()
    }

    /// Every connection, for work done outside the lock (a reload's re-verification).
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.read().all().cloned().collect()
    }

    /// Asks every connection to close with `code` (shutdown).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for entry in self.read().connections.values() {
            entry.connection.outbox.close(code, reason);
        }
    }

    /// Users with at least one connection, and the number of connections each.
    pub fn users(&self) -> Vec<(Arc<str>, usize)> {
        self.read()
            .users
            .iter()
            .map(|(user, ids)| (user.clone(), ids.len()))
            .collect()
    }
}

fn forget_user(users: &mut HashMap<Arc<str>, HashSet<ConnId>>, user: &str, id: ConnId) {
    if let Some(ids) = users.get_mut(user) {
        ids.remove(&id);
        if ids.is_empty() {
            users.remove(user);
        }
    }
}

fn remove_subscriber(
    topics: &mut HashMap<Arc<str>, HashMap<ConnId, Subscriber>>,
    topic: &str,
    id: ConnId,
) {
    if let Some(subscribers) = topics.get_mut(topic) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            topics.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowClient;

    /// A connection whose socket is connected to a listener nobody accepts on: the hub never
    /// writes, but an outbox needs a socket.
    async fn connection(id: ConnId, user: Option<&str>) -> Arc<Connection> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut identity = Identity::anonymous();
        identity.user = user.map(Arc::from);
        Arc::new(Connection::new(
            id,
            id.to_string(),
            identity,
            None,
            Outbox::new(socket, 4, SlowClient::Disconnect, 1 << 20),
            None,
        ))
    }

    fn admit_all(_: &str) -> Result<(), ErrorCode> {
        Ok(())
    }

    fn no_answer(_: &[String], _: &[Refusal]) -> Bytes {
        Bytes::new()
    }

    fn no_replay(_: &Connection, _: &[String]) {}

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[tokio::test]
    async fn subscribe_keeps_and_answers_only_what_admit_lets_through() {
        let hub = Hub::default();
        hub.register(connection(1, None).await);
        let mut answered = (Vec::new(), Vec::new());
        let count = hub.subscribe(
            1,
            topics(&["yes", "no", "yes too"]),
            None,
            10,
            |topic| {
                if topic.starts_with("yes") {
                    Ok(())
                } else {
                    Err(ErrorCode::Forbidden)
                }
            },
            |admitted, refused| {
                answered = (admitted.to_vec(), refused.to_vec());
                Bytes::new()
            },
            no_replay,
        );
        assert_eq!(count, 2);
        assert_eq!(answered.0, ["yes", "yes too"]);
        assert_eq!(
            answered.1,
            [Refusal {
                topic: "no".into(),
                code: ErrorCode::Forbidden
            }]
        );
        assert!(hub.read().subscribers("no").is_none());
    }

    #[tokio::test]
    async fn subscribe_stops_at_the_limit_but_keeps_existing_topics() {
        let hub = Hub::default();
        hub.register(connection(1, None).await);
        hub.subscribe(
            1,
            topics(&["a", "b"]),
            None,
            3,
            admit_all,
            no_answer,
            no_replay,
        );
        let mut answer = (Vec::new(), Vec::new());
        let count = hub.subscribe(
            1,
            topics(&["a", "c", "c", "d", "e"]),
            None,
            3,
            admit_all,
            |admitted, refused| {
                answer = (admitted.to_vec(), refused.to_vec());
                Bytes::new()
            },
            no_replay,
        );
        assert_eq!(count, 3);
        assert_eq!(answer.0, ["a", "c"]);
        let over: Vec<_> = answer
            .1
            .iter()
            .map(|r| (r.topic.as_str(), r.code))
            .collect();
        assert_eq!(
            over,
            [
                ("d", ErrorCode::TooManySubscriptions),
                ("e", ErrorCode::TooManySubscriptions)
            ]
        );
        assert!(hub.read().subscribers("d").is_none());
    }

    #[tokio::test]
    async fn subscriptions_are_indexed_by_topic_and_removed_with_the_connection() {
        let hub = Hub::default();
        hub.register(connection(1, Some("alice")).await);
        hub.register(connection(2, None).await);
        assert_eq!(
            hub.subscribe(
                1,
                topics(&["a", "b"]),
                None,
                10,
                admit_all,
                no_answer,
                no_replay
            ),
            2
        );
        assert_eq!(
            hub.subscribe(2, topics(&["a"]), None, 10, admit_all, no_answer, no_replay),
            1
        );
        assert_eq!(hub.read().subscribers("a").unwrap().count(), 2);
        assert_eq!(hub.unsubscribe(1, &["a".into(), "zzz".into()]), ["a"]);
        assert_eq!(hub.read().subscribers("a").unwrap().count(), 1);
        assert_eq!(hub.read().of_user("alice").count(), 1);
        hub.unregister(1);
        assert!(hub.read().subscribers("b").is_none());
        assert_eq!(hub.read().of_user("alice").count(), 0);
        assert_eq!(hub.read().topics().count(), 1);
    }

    #[tokio::test]
    async fn retain_topics_reports_what_each_connection_lost() {
        let hub = Hub::default();
        hub.register(connection(1, None).await);
        hub.subscribe(
            1,
            topics(&["keep", "drop"]),
            None,
            10,
            admit_all,
            no_answer,
            no_replay,
        );
        let lost = hub.retain_topics(|topic| topic == "keep");
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].1, ["drop"]);
        assert_eq!(hub.read().connections[&1].topics.len(), 1);
    }

    #[tokio::test]
    async fn claim_dedupes_one_dispatch() {
        let c = connection(1, None).await;
        assert!(c.claim(7));
        assert!(!c.claim(7));
        assert!(c.claim(8));
    }
}
