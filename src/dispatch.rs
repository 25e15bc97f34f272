//! Fan-out of one Redis message: the router's plans applied to the hub's indexes, each frame
//! rendered once and queued to every admitted recipient. A frame is compressed (once) only
//! when a recipient that negotiated permessage-deflate is admitted, and the compressed bytes
//! are shared just as the plain ones are.
//!
//! One dispatcher runs, inside the Redis task, so messages leave in the order Redis sent them
//! and per-topic sequence numbers need no lock. It queues the frames of every message Redis
//! has already delivered, then flushes each connection it touched once: a connection with
//! several frames waiting gets them in one write, and nothing waits for a batch to fill.

use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashTable;

use crate::audience::Resolved;
use crate::config::{Compression, Delivery, Retention, Route};
use crate::deflate;
use crate::history::{Payload, RingId, Routed};
use crate::hub::{Connection, Indexes};
use crate::metrics::DropReason;
use crate::outbox::Pushed;
use crate::protocol::Filter;
use crate::router::{self, Incoming, PayloadAt, Plan};
use crate::state::Shared;
use crate::wsframe;

/// Sequence counters are dropped wholesale past this many topics, so that a stream of one-off
/// topics (job ids) cannot grow memory without bound; `seq` then restarts at 1 for them.
const MAX_SEQUENCED_TOPICS: usize = 1_000_000;

/// The fewest connections a worker thread is given to flush: below that, handing them over
/// costs more than writing them here.
const MIN_FLUSH_SHARE: usize = 512;

/// A topic's sequence counter: 32 bytes, two to a cache line and never across two (see the
/// layout test), as every frame reads one and, with history on, finds it pushed out of the
/// cache by the retained frames.
#[derive(Debug, Clone)]
struct Sequence {
    name: Name,
    last: u64,
    /// Some route retains the topic's frames: a frame of it that a route does not retain
    /// must be told to the history, which can then no longer resume positions before it.
    retained: bool,
    /// Where the history keeps the topic's frames, once it keeps some.
    ring: Option<RingId>,
}

/// Where a topic's name is in [`Sequences::names`], which stays below 4 GiB.
#[derive(Debug, Clone, Copy)]
struct Name {
    start: u32,
    len: u32,
}

impl Name {
    fn of(self, names: &str) -> Option<&str> {
        let start = self.start as usize;
        names.get(start..start + self.len as usize)
    }
}

/// The topics' sequence counters, found by name. The names lie end to end in one string
/// rather than in an allocation each: every frame's lookup compares its topic with a name,
/// and a profile of the many-topics load with history on showed that comparison, on names
/// scattered among the retained frames, as the costliest cache miss after the history's
/// own. Names are never removed one by one (the counters are dropped wholesale), so the
/// string only grows until then. Topics are hashed with the history's hasher, so that a
/// new topic's hash serves its ring too.
struct Sequences {
    names: String,
    table: HashTable<Sequence>,
    hasher: RandomState,
}

impl Sequences {
    fn with_hasher(hasher: RandomState) -> Sequences {
        Sequences {
            names: String::new(),
            table: HashTable::new(),
            hasher,
        }
    }

    /// `topic`'s hash, for [`Sequences::find`] and [`Sequences::insert`]: a new topic is
    /// hashed once for both.
    fn hash(&self, topic: &str) -> u64 {
        self.hasher.hash_one(topic)
    }

    /// Where `topic`, of `hash`, is counted: a bucket that [`Sequences::at`] reaches without
    /// a probe until the next insert.
    fn find(&self, hash: u64, topic: &str) -> Option<usize> {
        self.table.find_bucket_index(hash, |sequence| {
            sequence.name.of(&self.names) == Some(topic)
        })
    }

    /// The counter in `bucket`, if it is still `topic`'s.
    fn at(&mut self, bucket: usize, topic: &str) -> Option<&mut Sequence> {
        let sequence = self.table.get_bucket_mut(bucket)?;
        (sequence.name.of(&self.names) == Some(topic)).then_some(sequence)
    }

    #[cfg(test)]
    fn get_mut(&mut self, topic: &str) -> Option<&mut Sequence> {
        let bucket = self.find(self.hash(topic), topic)?;
        self.at(bucket, topic)
    }

    /// Whether counting `topic` too would pass the bounds: the number of topics, or the
    /// names' string outgrowing what a [`Name`] can point into.
    fn is_full(&self, topic: &str) -> bool {
        self.table.len() >= MAX_SEQUENCED_TOPICS
            || u32::try_from(self.names.len() + topic.len()).is_err()
    }

    /// Counts `topic`, of `hash`, from `last`: a topic not counted yet, for which
    /// [`Sequences::is_full`] is false. Where it is counted.
    fn insert(&mut self, hash: u64, topic: &str, last: u64, retained: bool) -> usize {
        let Sequences {
            names,
            table,
            hasher,
        } = self;
        let name = Name {
            start: u32::try_from(names.len()).unwrap_or(u32::MAX),
            len: u32::try_from(topic.len()).unwrap_or(0),
        };
        names.push_str(topic);
        let sequence = Sequence {
            name,
            last,
            retained,
            ring: None,
        };
        table
            .insert_unique(hash, sequence, |sequence| {
                hasher.hash_one(sequence.name.of(names).unwrap_or_default())
            })
            .bucket_index()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }

    fn clear(&mut self) {
        self.table.clear();
        self.names.clear();
    }
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    seqs: Sequences,
    next_dispatch: u64,
    /// Connections with frames queued since the last flush.
    unflushed: Vec<Arc<Connection>>,
    /// Frames queued since the last flush.
    queued: usize,
    /// The runtime's worker threads, over which a large flush is shared out.
    workers: usize,
    /// The audiences without a value, shared by the retained frames that have them rather
    /// than allocated for each message.
    everyone: Arc<Resolved>,
    authenticated: Arc<Resolved>,
}

impl Dispatcher {
    /// Must be called on the runtime the dispatcher runs on.
    pub fn new(shared: Arc<Shared>) -> Dispatcher {
        Dispatcher {
            seqs: Sequences::with_hasher(shared.history.hasher()),
            shared,
            next_dispatch: 0,
            unflushed: Vec::new(),
            queued: 0,
            workers: tokio::runtime::Handle::current().metrics().num_workers(),
            everyone: Arc::new(Resolved::Everyone),
            authenticated: Arc::new(Resolved::Authenticated),
        }
    }

    /// Frames queued since the last flush: the caller flushes past a bound, so that the first
    /// recipients of a batch do not wait long for the last message's routing.
    pub fn pending(&self) -> usize {
        self.queued
    }

    /// Writes what the dispatches since the last flush queued. A large fan-out is split over
    /// the runtime's worker threads: one thread's sends are the fan-out's ceiling otherwise.
    /// Order per connection holds whoever flushes: each writes its queue from the front under
    /// the connection's lock.
    pub fn flush(&mut self) {
        self.queued = 0;
        if self.workers > 1 && self.unflushed.len() >= 2 * MIN_FLUSH_SHARE {
            let share = self
                .unflushed
                .len()
                .div_ceil(self.workers)
                .max(MIN_FLUSH_SHARE);
            while self.unflushed.len() > share {
                let split_at = self.unflushed.len() - share;
                let connections = self.unflushed.split_off(split_at);
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    for connection in connections {
                        connection.outbox.flush(&shared.metrics);
                    }
                });
            }
        }
        for connection in self.unflushed.drain(..) {
            connection.outbox.flush(&self.shared.metrics);
        }
    }

    /// Routes one message received at `received_at` on `channel` (through `pattern` for a
    /// PSUBSCRIBE match).
    pub fn dispatch(
        &mut self,
        channel: &str,
        pattern: Option<&str>,
        payload: &[u8],
        received_at: Instant,
    ) {
        let routing = self.shared.routing.load();
        let message = Incoming::new(channel, payload);
        for (route, counters) in routing.routes_for(channel, pattern) {
            if !router::takes(route, &message) {
                continue;
            }
            counters.messages.inc();
            let Some(plan) = router::plan(route, pattern, &message) else {
                counters.unroutable.inc();
                tracing::debug!(route = %route.name, channel, "unroutable message: a topic or audience placeholder has no value");
                continue;
            };
            self.next_dispatch += 1;
            let dispatch = self.next_dispatch;
            // One copy of the resolved audience for all the topics' retained frames.
            let audience = route.history.map(|_| match &plan.audience {
                Resolved::Everyone => self.everyone.clone(),
                Resolved::Authenticated => self.authenticated.clone(),
                resolved => Arc::new(resolved.clone()),
            });
            // Retained frames are appended within the same read-lock section as their
            // fan-out: a subscribe (under the write lock) sees a message either in the
            // history or live, never both and never neither.
            let hub = self.shared.hub.read();
            for topic in &plan.topics {
                let mut fan_out = FanOut {
                    dispatch,
                    message: &message,
                    plan: &plan,
                    frame: None,
                    seq: 0,
                    counted: None,
                    payload_at: None,
                    skipped_retained: false,
                    ring: None,
                    conflate_key: None,
                    compressed: None,
                    compression: routing.config.websocket.compression,
                    delivered: 0,
                    received_at,
                    shared: &self.shared,
                    unflushed: &mut self.unflushed,
                };
                let outcome = if route.history.is_some()
                    && fan_out.render(&mut self.seqs, route, topic).is_none()
                {
                    // A frame to retain is rendered whether anyone receives it live or not.
                    Rendered::Unresolvable
                } else {
                    match route.delivery {
                        Delivery::Auto => fan_out.auto(&hub, &mut self.seqs, route, topic),
                        Delivery::Subscribe => {
                            fan_out.subscribed(&hub, &mut self.seqs, route, topic)
                        }
                    }
                };
                counters.delivered.inc_by(fan_out.delivered);
                self.queued += fan_out.delivered as usize;
                if let (Some(retention), Some(audience)) = (route.history, &audience) {
                    fan_out.retain(&mut self.seqs, route, retention, audience, topic);
                } else if fan_out.skipped_retained {
                    self.shared.history.skipped(topic, fan_out.seq);
                }
                if outcome == Rendered::Unresolvable {
                    counters.unroutable.inc();
                    tracing::debug!(route = %route.name, channel, topic, "unroutable message: a format placeholder has no value");
                }
            }
        }
        // Counted once routed: a scrape that shows a message received also shows everything
        // it did to the history and the connections' queues.
        self.shared.metrics.redis_messages.inc();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Rendered {
    NotNeeded,
    Done,
    Unresolvable,
}

struct FanOut<'a, 'm> {
    dispatch: u64,
    message: &'a Incoming<'m>,
    plan: &'a Plan<'m>,
    /// Rendered on the first admitted recipient, so topics nobody receives cost nothing
    /// (unless the route retains its frames).
    frame: Option<Option<Bytes>>,
    /// The rendered frame's `seq`.
    seq: u64,
    /// The topic's hash and where its counter is, once rendered.
    counted: Option<(u64, usize)>,
    /// Where the rendered frame holds the payload.
    payload_at: Option<PayloadAt>,
    /// The frame took a `seq` of a topic some other route retains.
    skipped_retained: bool,
    /// Where the topic's frames are retained, as its sequence counter last knew it.
    ring: Option<RingId>,
    /// The topic, shared by its queued frames, when the route conflates them.
    conflate_key: Option<Arc<str>>,
    /// `frame` compressed, on the first admitted recipient that takes it so: one stream for
    /// every window, since the compressor's references never reach before the message.
    compressed: Option<Bytes>,
    compression: Compression,
    delivered: u64,
    received_at: Instant,
    shared: &'a Shared,
    unflushed: &'a mut Vec<Arc<Connection>>,
}

impl FanOut<'_, '_> {
    fn auto(
        &mut self,
        hub: &Indexes,
        seqs: &mut Sequences,
        route: &Route,
        topic: &str,
    ) -> Rendered {
        if let Some(id) = self.plan.audience.single_connection() {
            if let Some(connection) = hub.of_public_id(id)
                && !self.offer(connection, None, seqs, route, topic)
            {
                return Rendered::Unresolvable;
            }
            return self.outcome();
        }
        match self.plan.audience.single_user() {
            Some(user) => {
                for connection in hub.of_user(user) {
                    if !self.offer(connection, None, seqs, route, topic) {
                        return Rendered::Unresolvable;
                    }
                }
            }
            None => {
                for connection in hub.all() {
                    if !self.offer(connection, None, seqs, route, topic) {
                        return Rendered::Unresolvable;
                    }
                }
            }
        }
        self.outcome()
    }

    fn subscribed(
        &mut self,
        hub: &Indexes,
        seqs: &mut Sequences,
        route: &Route,
        topic: &str,
    ) -> Rendered {
        if let Some(subscribers) = hub.subscribers(topic) {
            for subscriber in subscribers {
                if !self.offer(
                    &subscriber.connection,
                    subscriber.filter.as_deref(),
                    seqs,
                    route,
                    topic,
                ) {
                    return Rendered::Unresolvable;
                }
            }
        }
        self.outcome()
    }

    fn outcome(&self) -> Rendered {
        match &self.frame {
            None => Rendered::NotNeeded,
            Some(Some(_)) => Rendered::Done,
            Some(None) => Rendered::Unresolvable,
        }
    }

    /// Queues the frame to `connection` if it is admitted; false when the frame cannot be
    /// rendered (nobody gets it then).
    fn offer(
        &mut self,
        connection: &Arc<Connection>,
        filter: Option<&Filter>,
        seqs: &mut Sequences,
        route: &Route,
        topic: &str,
    ) -> bool {
        // `all` needs no identity: skip the load on the most common fan-out.
        if !matches!(self.plan.audience, Resolved::Everyone)
            && !self
                .plan
                .audience
                .admits_connection(&connection.identity.load(), &connection.public_id)
        {
            return true;
        }
        if let Some(filter) = filter
            && !filter.admits(self.message.json())
        {
            return true;
        }
        if !connection.claim(self.dispatch) {
            return true;
        }
        let Some(frame) = self.render(seqs, route, topic) else {
            return false;
        };
        let frame = match connection.deflate {
            Some(window_bits) => self.for_window(frame, window_bits),
            None => frame,
        };
        let metrics = &self.shared.metrics;
        let pushed = if route.conflate {
            let topic = self.conflate_key.get_or_insert_with(|| Arc::from(topic));
            connection
                .outbox
                .push_conflated(frame, self.received_at, topic)
        } else {
            connection.outbox.push_frame(frame, self.received_at)
        };
        match pushed {
            Pushed::Conflated => {
                self.delivered += 1;
                metrics.conflated.inc();
            }
            Pushed::Queued { flush } => {
                self.delivered += 1;
                if flush {
                    self.unflushed.push(connection.clone());
                }
            }
            Pushed::DroppedOldest => {
                self.delivered += 1;
                metrics.dropped(DropReason::QueueFull, 1);
            }
            Pushed::Overflowed => {
                metrics.dropped(DropReason::SlowClient, 1);
                metrics.slow_client_disconnects.inc();
            }
            Pushed::Closed => metrics.dropped(DropReason::Closing, 1),
        }
        true
    }

    /// The frame, rendered on first need with the topic's next `seq`; `None` when a
    /// placeholder has no value.
    fn render(&mut self, seqs: &mut Sequences, route: &Route, topic: &str) -> Option<Bytes> {
        if let Some(frame) = &self.frame {
            return frame.clone();
        }
        // A message skipped as unroutable takes no sequence number. One lookup of the topic
        // for both the read and the update, and one hash of it even when it is new.
        let hash = seqs.hash(topic);
        let found = seqs.find(hash, topic);
        // `find` compared the name already: the bucket is read without comparing it again.
        let sequence = found.and_then(|bucket| seqs.table.get_bucket_mut(bucket));
        let seq = sequence.as_ref().map_or(1, |sequence| sequence.last + 1);
        let rendered = router::render_frame(route, self.message, self.plan, topic, seq);
        let Some((frame, payload_at)) = rendered else {
            self.frame = Some(None);
            return None;
        };
        let retains = route.history.is_some();
        let bucket = match (found, sequence) {
            (Some(bucket), Some(sequence)) => {
                sequence.last = seq;
                self.ring = sequence.ring;
                self.skipped_retained = sequence.retained && !retains;
                sequence.retained |= retains;
                bucket
            }
            _ => {
                if seqs.is_full(topic) {
                    seqs.clear();
                    // Positions taken before are void: `seq` numbers start again.
                    self.shared.history.restart();
                }
                seqs.insert(hash, topic, seq, retains)
            }
        };
        self.counted = Some((hash, bucket));
        self.seq = seq;
        self.payload_at = Some(payload_at);
        self.frame = Some(Some(frame.clone()));
        Some(frame)
    }

    /// Hands the rendered frame (and its compressed form, if a recipient needed one) to the
    /// history.
    fn retain(
        &mut self,
        seqs: &mut Sequences,
        route: &Route,
        retention: Retention,
        audience: &Arc<Resolved>,
        topic: &str,
    ) {
        let (Some(Some(frame)), Some(payload_at)) = (self.frame.take(), self.payload_at.take())
        else {
            return;
        };
        let payload = match (route.delivery, payload_at) {
            // Filters apply to subscriptions only.
            (Delivery::Auto, _) => Payload::Auto,
            (_, PayloadAt::NotJson) => Payload::NotJson,
            (_, PayloadAt::Frame(range)) => Payload::InFrame(range),
            (_, PayloadAt::Elsewhere) => match self.message.json() {
                Some(_) => Payload::Copy(Box::from(self.message.payload)),
                None => Payload::NotJson,
            },
        };
        let Some((hash, bucket)) = self.counted else {
            return;
        };
        let routed = Routed {
            seq: self.seq,
            dispatch: self.dispatch,
            received_at: self.received_at,
            frame: &frame,
            compressed: self.compressed.take(),
            audience,
            payload,
        };
        let ring =
            self.shared
                .history
                .append(self.ring, topic, hash, &route.name, retention, routed);
        if self.ring != Some(ring)
            && let Some(sequence) = seqs.at(bucket, topic)
        {
            sequence.ring = Some(ring);
        }
    }

    /// What a recipient with permessage-deflate and a window of `window_bits` gets: the
    /// compressed frame, made on first need, when the payload is long enough to be worth it
    /// and fits the window; else the plain one.
    fn for_window(&mut self, plain: Bytes, window_bits: u8) -> Bytes {
        let len = wsframe::payload(&plain).len();
        if len < self.compression.min_bytes || !deflate::fits(window_bits, len) {
            return plain;
        }
        let level = self.compression.level;
        self.compressed
            .get_or_insert_with(|| wsframe::deflated(&plain, level))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_find_every_topic_across_growth_and_forget_them_on_clear() {
        let mut seqs = Sequences::with_hasher(RandomState::new());
        for n in 0..10_000u64 {
            let topic = format!("job:{n}");
            seqs.insert(seqs.hash(&topic), &topic, n, n % 2 == 0);
        }
        assert_eq!(seqs.len(), 10_000);
        for n in 0..10_000u64 {
            let sequence = seqs.get_mut(&format!("job:{n}")).expect("counted");
            assert_eq!((sequence.last, sequence.retained), (n, n % 2 == 0));
            sequence.last += 1;
        }
        assert_eq!(seqs.get_mut("job:42").map(|s| s.last), Some(43));
        // A prefix or an extension of a name is another topic.
        assert!(seqs.get_mut("job:1000").is_some());
        assert!(seqs.get_mut("job:100000").is_none());
        assert!(seqs.get_mut("job:").is_none());
        seqs.clear();
        assert_eq!(seqs.len(), 0);
        assert!(seqs.get_mut("job:42").is_none());
        seqs.insert(seqs.hash("job:42"), "job:42", 1, false);
        assert_eq!(seqs.get_mut("job:42").map(|s| s.last), Some(1));
    }

    #[test]
    fn a_counter_takes_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Sequence>(), 32);
    }

    #[test]
    fn a_bucket_reaches_only_the_counter_it_holds_however_the_table_grew() {
        let mut seqs = Sequences::with_hasher(RandomState::new());
        let bucket = seqs.insert(seqs.hash("job:0"), "job:0", 7, true);
        assert_eq!(seqs.at(bucket, "job:0").map(|s| s.last), Some(7));
        assert!(seqs.at(bucket, "job:1").is_none());
        for n in 1..10_000u64 {
            let topic = format!("job:{n}");
            seqs.insert(seqs.hash(&topic), &topic, n, false);
        }
        // Growing moved the counters: the bucket holds one topic or none, and answers for
        // that one only.
        let holders: Vec<(String, u64)> = (0..10_000u64)
            .filter_map(|n| {
                let topic = format!("job:{n}");
                let last = seqs.at(bucket, &topic)?.last;
                Some((topic, last))
            })
            .collect();
        assert!(holders.len() <= 1, "{holders:?}");
        for (topic, last) in &holders {
            assert_eq!(seqs.find(seqs.hash(topic), topic), Some(bucket));
            assert_eq!(seqs.get_mut(topic).map(|s| s.last), Some(*last));
        }
        // Every counter is still found by name.
        assert!((0..10_000u64).all(|n| seqs.get_mut(&format!("job:{n}")).is_some()));
    }
}
