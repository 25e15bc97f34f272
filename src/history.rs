//! Topics with memory: the recent frames of the routes that have `history`, per topic, for
//! replays (`last` and `since` on `subscribe`, `since` on the upgrade URL).
//!
//! A retained frame is a copy of the bytes its live delivery queued (so a replay is the same
//! bytes, `seq` and `ts`), kept once per topic whatever the number of recipients, with what
//! a replay needs to check it again for one connection: the audience the message resolved
//! to, and where its payload is (for subscription filters). Memory is bounded per topic
//! (`size`, `ttl`) and for the process (`history_max_bytes`, oldest first across topics).
//!
//! The dispatcher appends while it holds the hub's read lock, and a subscribe reads while it
//! holds the hub's write lock, which is what makes the seam between a replay and the live
//! stream exact (see `Hub::subscribe`). The rings have a lock of their own, taken after the
//! hub's and never held while a socket is written.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::num::NonZeroU64;
use std::ops::{AddAssign, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hashbrown::hash_table::{Entry, HashTable};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

use crate::audience::Resolved;
use crate::config::{Compression, Config, Retention};
use crate::deflate;
use crate::protocol::Position;
use crate::wsframe;

mod order;
mod store;

use order::{Order, Reach};
use store::{Held, Store};

/// What one retained frame costs beyond its slot: its entry in the ring and in the global
/// order, and its share of its topic's ring and name. Measured: `bench/run.sh history-memory`
/// (100,000 topics × 10 frames of 188 bytes, in slots of 208 with where the payload is)
/// grows the RSS by 338 bytes per retained frame once the rings are full, and by 375 once
/// they have replaced their frames twice, as in a bridge that has run for a while (the
/// global order then also holds entries of frames dropped since its last compaction: at most
/// about twice as many as frames retained): 167 more than the slot.
const ENTRY_OVERHEAD: usize = 168;

/// The most topics kept with nothing retained (only their position, so that a client that
/// saw their last frame resumes without a gap); past it they are all forgotten, and resuming
/// one of them is a gap.
const MAX_POSITIONS: usize = 100_000;

/// Where a retained frame's payload is, for the filters a replay applies.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The payload is not JSON: no filter admits it.
    NotJson,
    /// The payload's bytes are these bytes of the frame (envelope and raw formats).
    InFrame(Range<usize>),
    /// A copy (JSON templates, whose frame does not hold the payload as it was).
    Copy(Box<[u8]>),
    /// Not kept: a frame of a `delivery: auto` route, which filters never apply to.
    Auto,
}

/// A frame as the dispatcher routed it live, for [`History::append`] to retain.
pub struct Routed<'a> {
    pub seq: u64,
    /// The dispatch it came from: one message reaches a connection once, replays included.
    pub dispatch: u64,
    pub received_at: Instant,
    pub frame: &'a [u8],
    /// The compressed form, if the live fan-out made one.
    pub compressed: Option<Bytes>,
    /// Shared by the topics of one message.
    pub audience: &'a Arc<Resolved>,
    pub payload: Payload,
}

/// After a retained frame's bytes in its slot: where its payload is, as two little-endian
/// `u32`s, the payload's start and end in the frame, or [`NOT_IN_FRAME`] and one of the kinds
/// below. Kept there rather than in the entry, which then fits one cache line; a replay that
/// filters reads the buffer anyway.
const TRAILER: usize = 8;
const NOT_IN_FRAME: u32 = u32::MAX;
const NOT_JSON: u32 = 0;
const AUTO: u32 = 1;
const COPIED: u32 = 2;

/// One retained frame: 64 bytes, one cache line (see the layout test). Appending to a full
/// ring reads its oldest entry and writes the new one in its place, both cold, on every
/// frame; an entry of 96 bytes lay across two or three lines.
#[derive(Debug)]
#[repr(align(64))]
struct Kept {
    seq: u64,
    dispatch: u64,
    /// When its message was received, in nanoseconds since the history's origin.
    received: u64,
    /// A copy of the live frame's bytes, then the [`TRAILER`], in the history's [`Store`]
    /// (a full ring's new frame takes the slot of the frame it drops).
    held: Held,
    audience: Arc<Resolved>,
    /// What few frames have, out of line.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    /// The compressed form, once made (by the live fan-out or a first replay).
    compressed: Option<Bytes>,
    /// The payload's copy ([`Payload::Copy`]).
    payload: Option<Box<[u8]>>,
}

impl Kept {
    /// `routed`, received `received` nanoseconds after the history's origin, copied into
    /// `store`: into the slot `spare` when it is of the size the frame takes.
    fn new(routed: Routed<'_>, received: u64, spare: Option<Held>, store: &mut Store) -> Kept {
        let span = |at: usize| u32::try_from(at).ok().filter(|&at| at != NOT_IN_FRAME);
        let mut extra = Extra {
            compressed: routed.compressed,
            payload: None,
        };
        let (start, end) = match routed.payload {
            Payload::InFrame(range) => match (span(range.start), span(range.end)) {
                (Some(start), Some(end)) => (start, end),
                // Past 4 GiB, which no frame reaches: a copy serves as well.
                _ => {
                    extra.payload = routed.frame.get(range).map(Box::from);
                    (NOT_IN_FRAME, COPIED)
                }
            },
            Payload::Copy(bytes) => {
                extra.payload = Some(bytes);
                (NOT_IN_FRAME, COPIED)
            }
            Payload::NotJson => (NOT_IN_FRAME, NOT_JSON),
            Payload::Auto => (NOT_IN_FRAME, AUTO),
        };
        let mut trailer = [0; TRAILER];
        trailer[..4].copy_from_slice(&start.to_le_bytes());
        trailer[4..].copy_from_slice(&end.to_le_bytes());
        let held = match spare {
            Some(spare) => store.replace(spare, routed.frame, &trailer),
            None => store.put(routed.frame, &trailer),
        };
        let has_extra = extra.compressed.is_some() || extra.payload.is_some();
        Kept {
            seq: routed.seq,
            dispatch: routed.dispatch,
            received,
            held,
            audience: routed.audience.clone(),
            extra: has_extra.then(|| Box::new(extra)),
        }
    }

    fn compressed(&self) -> Option<&Bytes> {
        self.extra.as_ref()?.compressed.as_ref()
    }

    fn cost(&self) -> usize {
        let extra = self.extra.as_ref().map_or(0, |extra| {
            extra.compressed.as_ref().map_or(0, Bytes::len)
                + extra.payload.as_ref().map_or(0, |payload| payload.len())
        });
        self.held.capacity() + extra + ENTRY_OVERHEAD
    }

    /// Gives its slot back to `store`, where it was put.
    fn release(self, store: &mut Store) {
        store.free(self.held);
    }
}

/// A retained frame with its bytes, as a replay checks it for one connection.
pub struct Retained<'a> {
    entry: &'a Kept,
    /// The frame, then the [`TRAILER`].
    bytes: &'a [u8],
}

impl<'a> Retained<'a> {
    fn of(entry: &'a Kept, store: &'a Store) -> Retained<'a> {
        Retained {
            entry,
            bytes: store.bytes(&entry.held),
        }
    }

    /// The frame's bytes, as its live delivery queued them.
    pub fn frame(&self) -> &'a [u8] {
        let len = self.bytes.len().saturating_sub(TRAILER);
        self.bytes.get(..len).unwrap_or_default()
    }

    /// Who the message was for.
    pub fn audience(&self) -> &'a Resolved {
        &self.entry.audience
    }

    /// The payload's start and end in the frame, or [`NOT_IN_FRAME`] and its kind.
    fn trailer(&self) -> (u32, u32) {
        let at = self.bytes.len().saturating_sub(TRAILER);
        let word = |from: usize| {
            self.bytes
                .get(from..from + 4)
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(NOT_IN_FRAME, u32::from_le_bytes)
        };
        (word(at), word(at + 4))
    }

    /// A frame of a `delivery: auto` route.
    pub fn is_auto(&self) -> bool {
        self.trailer() == (NOT_IN_FRAME, AUTO)
    }

    /// The payload as JSON, for a filter; `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        let payload = match self.trailer() {
            (NOT_IN_FRAME, COPIED) => self.entry.extra.as_ref()?.payload.as_deref()?,
            (NOT_IN_FRAME, _) => return None,
            (start, end) => self.frame().get(start as usize..end as usize)?,
        };
        serde_json::from_slice(payload).ok()
    }
}

/// One topic's frames. What appending to a full ring reads and writes comes first, so that
/// with the slot's generation it fills the slot's first cache line (see the layout test);
/// the rest is read when the route changes, by sweeps, reloads and replays.
#[derive(Debug)]
#[repr(C)]
struct Ring {
    frames: VecDeque<Kept>,
    /// The `seq` of the topic's last frame, retained or not.
    last_seq: u64,
    /// Every frame from this `seq` to `last_seq` is in `frames`: a position at or after
    /// `complete_from - 1` can be resumed.
    complete_from: u64,
    /// The address of `route`'s name, to tell without reading `route` that the same route
    /// appends again (its `history` then reaches the ring through reloads).
    route_at: usize,
    /// The topic's name, in the store.
    topic: Held,
    /// The route whose `history` applies (the last one that appended).
    route: Arc<str>,
    retention: Retention,
}

/// Where a route's name is, for [`Ring::route_at`].
fn address(route: &Arc<str>) -> usize {
    Arc::as_ptr(route).cast::<u8>().addr()
}

/// Nanoseconds from `origin` to `at` (0 for an instant before it).
fn ticks(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

impl Ring {
    /// Whether every frame after `seq` is held: a client that saw up to `seq` resumes whole.
    fn resumes_from(&self, seq: u64) -> bool {
        seq <= self.last_seq && seq + 1 >= self.complete_from
    }

    /// Takes the oldest frame out, keeping the room it took; its slot is the caller's to free.
    fn pop_oldest(&mut self) -> Option<Kept> {
        let popped = self.frames.pop_front()?;
        // The frame after it need not be read: were there a gap before it, `complete_from`
        // would be past the gap already (a frame that did not follow the last one, or one
        // not retained, moved it there).
        self.complete_from = self.complete_from.max(popped.seq + 1);
        Some(popped)
    }

    /// Drops the oldest frames while more than `keep` are held or, given `now` (in the
    /// history's ticks), the oldest is older than `ttl`, keeping the room they took; what it
    /// freed, and the slot of the last frame dropped, not given back to `store`.
    fn drop_oldest(
        &mut self,
        keep: usize,
        now: Option<u64>,
        store: &mut Store,
    ) -> (Freed, Option<Held>) {
        let mut freed = Freed::default();
        let mut spare = None;
        while let Some(front) = self.frames.front() {
            // `now` first: appending passes none, and reads no `ttl` off the second line.
            let expired = now.is_some_and(|now| {
                self.retention.ttl.is_some_and(|ttl| {
                    u128::from(now.saturating_sub(front.received)) > ttl.as_nanos()
                })
            });
            if self.frames.len() <= keep && !expired {
                break;
            }
            let Some(popped) = self.pop_oldest() else {
                break;
            };
            freed += Freed::of(&popped);
            if let Some(earlier) = spare.replace(popped.held) {
                store.free(earlier);
            }
        }
        (freed, spare)
    }

    /// Gives the room of a ring with nothing retained back to `store`: its topic keeps only
    /// its position. Whether it was empty.
    fn release_if_empty(&mut self, store: &mut Store) -> bool {
        let empty = self.frames.is_empty();
        if empty {
            store.rooms.give(std::mem::take(&mut self.frames));
        }
        empty
    }

    /// Drops what is over `size` or older than `ttl` at `now` (in the history's ticks); what
    /// it freed.
    fn trim(&mut self, now: u64, store: &mut Store) -> Freed {
        let (freed, spare) = self.drop_oldest(self.retention.size, Some(now), store);
        if let Some(spare) = spare {
            store.free(spare);
        }
        self.release_if_empty(store);
        freed
    }

    /// Gives its topic's and every frame's slot and its room back to `store`, as it goes.
    fn release(self, store: &mut Store) {
        let mut frames = self.frames;
        for frame in frames.drain(..) {
            frame.release(store);
        }
        store.rooms.give(frames);
        store.free(self.topic);
    }
}

/// Frames dropped and what they cost: what the process's counts lose.
#[derive(Debug, Default, Clone, Copy)]
struct Freed {
    frames: usize,
    bytes: usize,
}

impl Freed {
    fn of(frame: &Kept) -> Freed {
        Freed {
            frames: 1,
            bytes: frame.cost(),
        }
    }
}

impl AddAssign for Freed {
    fn add_assign(&mut self, other: Freed) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

/// How far back a replay of one topic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The newest `n` frames the connection may see.
    Last(usize),
    /// Every frame after this `seq`, or none (a gap).
    After(u64),
}

/// What a replay found: the frames to queue, oldest first, and the topics that cannot be
/// resumed.
#[derive(Debug, Default)]
pub struct Replay {
    pub frames: Vec<Bytes>,
    pub exhausted: Vec<String>,
}

/// Who a replay is for: whether a frame may go to it, and the window it compresses with.
pub struct Recipient<'a> {
    pub admits: &'a dyn Fn(&Retained<'_>) -> bool,
    pub deflate: Option<u8>,
    pub compression: Compression,
}

/// The gauges the history keeps true.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub frames: Gauge,
    pub bytes: Gauge,
}

/// Where a topic's ring is, as the dispatcher keeps it with the topic's `seq` so that
/// retaining a frame needs no lookup of the topic: a profile of many cold topics showed the
/// second lookup (hashing the topic, comparing its bytes) as a sixth of what retaining cost.
/// A ring removed since is told by its generation, which no other ring ever has.
///
/// Packed to 12 bytes, so that the dispatcher's counter holding it fits in 32: every frame
/// reads its topic's counter, which the retained frames push out of the cache, and a counter
/// that straddles two cache lines is two misses instead of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct RingId {
    generation: NonZeroU64,
    index: u32,
}

/// Two cache lines, aligned: appending to a full ring reads and writes only the first
/// (see [`Ring`]), where a slot of 112 bytes anywhere lay across two or three.
#[derive(Debug)]
#[repr(C, align(64))]
struct Slot {
    generation: NonZeroU64,
    ring: Option<Ring>,
}

/// A topic's ring in the topic map: its slot, and the topic's hash, so that growing the map
/// reads no ring.
#[derive(Debug, Clone, Copy)]
struct Located {
    hash: u64,
    index: u32,
}

#[derive(Debug, Default)]
struct Rings {
    /// Where each topic's ring is in `slots`, by the topic's hash with `hasher`; the name is
    /// the ring's.
    topics: HashTable<Located>,
    /// Shared with the dispatcher's sequence counters: a new topic is hashed once for its
    /// counter and its ring.
    hasher: RandomState,
    slots: Vec<Slot>,
    /// Slots without a ring, for the next new ones.
    vacant: Vec<u32>,
    /// Given to the next ring; kept across restarts, so that no `RingId` taken before one
    /// finds a ring after it.
    next_generation: u64,
    /// Every retained frame by ring and `seq`, oldest first, across topics; entries of
    /// frames already gone are skipped (and compacted away).
    order: Order<(RingId, u64)>,
    /// The retained frames' bytes.
    store: Store,
    frames: usize,
    bytes: usize,
    max_bytes: usize,
    /// Routes that began to retain after the process started: a topic of theirs without a
    /// ring may have had frames before.
    late: HashSet<Arc<str>>,
    /// Positions were forgotten (see [`MAX_POSITIONS`]): any topic without a ring may have
    /// had frames.
    forgot: bool,
    /// No ring's oldest frame passes its `ttl` before this (`None`: none has a `ttl`). The
    /// sweep walks every ring, 3 ms at 100,000 topics, so it waits for it: with rings kept
    /// short by their `size`, that is seldom.
    next_expiry: Option<Instant>,
    /// A ring lost its last frame since the last sweep (which then counts the empty ones).
    emptied: bool,
    /// Redis was lost at least once: a topic without a ring may have had messages that never
    /// reached the bridge.
    interrupted: bool,
}

impl Rings {
    fn at(&self, id: RingId) -> Option<&Ring> {
        let RingId { generation, index } = id;
        let slot = self.slots.get(index as usize)?;
        slot.ring.as_ref().filter(|_| slot.generation == generation)
    }

    /// The ring `id` names, borrowing only the slots.
    fn at_mut(slots: &mut [Slot], id: RingId) -> Option<&mut Ring> {
        let RingId { generation, index } = id;
        let slot = slots.get_mut(index as usize)?;
        slot.ring.as_mut().filter(|_| slot.generation == generation)
    }

    /// Whether slot `index` holds `topic`'s ring.
    fn holds(slots: &[Slot], store: &Store, index: u32, topic: &str) -> bool {
        slots
            .get(index as usize)
            .and_then(|slot| slot.ring.as_ref())
            .is_some_and(|ring| store.bytes(&ring.topic) == topic.as_bytes())
    }

    fn id_of(&self, topic: &str) -> Option<RingId> {
        let hash = self.hasher.hash_one(topic);
        let found = self.topics.find(hash, |located| {
            located.hash == hash && Rings::holds(&self.slots, &self.store, located.index, topic)
        })?;
        Rings::id_at(&self.slots, found.index)
    }

    /// The ring in slot `index`, named so that it is told apart from any later one there.
    fn id_at(slots: &[Slot], index: u32) -> Option<RingId> {
        let slot = slots.get(index as usize)?;
        Some(RingId {
            index,
            generation: slot.generation,
        })
    }

    fn get(&self, topic: &str) -> Option<&Ring> {
        self.at(self.id_of(topic)?)
    }

    /// `topic`'s ring, and the store of its frames' bytes.
    fn get_mut(&mut self, topic: &str) -> Option<(&mut Ring, &mut Store)> {
        let id = self.id_of(topic)?;
        Some((Rings::at_mut(&mut self.slots, id)?, &mut self.store))
    }

    /// Every ring, and the store of their frames' bytes.
    fn rings_mut(&mut self) -> (impl Iterator<Item = &mut Ring>, &mut Store) {
        let rings = self.slots.iter_mut().filter_map(|slot| slot.ring.as_mut());
        (rings, &mut self.store)
    }

    /// The ring of `topic`, of `hash`, made by `new` (with the store) when it has none: one
    /// probe of the map, as a ring is made for every new topic.
    fn ring_of(&mut self, hash: u64, topic: &str, new: impl FnOnce(&mut Store) -> Ring) -> RingId {
        let Rings {
            topics,
            slots,
            vacant,
            next_generation,
            store,
            ..
        } = self;
        let entry = topics.entry(
            hash,
            |located| located.hash == hash && Rings::holds(slots, store, located.index, topic),
            |located| located.hash,
        );
        let free = match entry {
            Entry::Occupied(entry) => {
                let index = entry.get().index;
                // Every index in the map has its slot: the fallback names no ring.
                return Rings::id_at(slots, index).unwrap_or(RingId {
                    index,
                    generation: NonZeroU64::MAX,
                });
            }
            Entry::Vacant(free) => free,
        };
        let generation = NonZeroU64::MIN.saturating_add(*next_generation);
        *next_generation += 1;
        let slot = Slot {
            generation,
            ring: Some(new(store)),
        };
        let index = match vacant.pop() {
            Some(index) => {
                slots[index as usize] = slot;
                index
            }
            None => {
                slots.push(slot);
                u32::try_from(slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        free.insert(Located { hash, index });
        RingId { index, generation }
    }

    /// Removes the rings `keep` refuses (given the store of their frames' bytes).
    fn retain(&mut self, mut keep: impl FnMut(&mut Ring, &mut Store) -> bool) {
        let Rings {
            topics,
            slots,
            vacant,
            store,
            ..
        } = self;
        topics.retain(|&mut Located { index, .. }| {
            let Some(slot) = slots.get_mut(index as usize) else {
                return false;
            };
            let kept = slot.ring.as_mut().is_some_and(|ring| keep(ring, store));
            if !kept {
                if let Some(ring) = slot.ring.take() {
                    ring.release(store);
                }
                vacant.push(index);
            }
            kept
        });
    }

    /// Drops the process's oldest frames until the bound holds.
    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((id, seq)) = self.order.pop_front() else {
                return;
            };
            let Some(ring) = Rings::at_mut(&mut self.slots, id) else {
                continue;
            };
            // The entry of a frame its ring's own bounds dropped already.
            if ring.frames.front().is_none_or(|front| front.seq != seq) {
                continue;
            }
            let Some(popped) = ring.pop_oldest() else {
                continue;
            };
            self.emptied |= ring.release_if_empty(&mut self.store);
            self.freed(Freed::of(&popped));
            popped.release(&mut self.store);
        }
    }

    /// `ring`'s oldest frame may expire at its `ttl`: the sweep must not wait past that.
    /// `origin` is the history's.
    fn expires(next_expiry: &mut Option<Instant>, ring: &Ring, origin: Instant) {
        let Some(ttl) = ring.retention.ttl else {
            return;
        };
        let Some(at) = ring.frames.front().and_then(|front| {
            origin
                .checked_add(Duration::from_nanos(front.received))?
                .checked_add(ttl)
        }) else {
            return;
        };
        if next_expiry.is_none_or(|next| at < next) {
            *next_expiry = Some(at);
        }
    }

    /// Moves the compaction of the global order on as far as `reach`: a few entries after an
    /// append, to the end after a reload or a sweep, which walk every ring anyway.
    fn compact(&mut self, reach: Reach) {
        let Rings {
            order,
            slots,
            frames,
            ..
        } = self;
        order.compact(*frames, reach, |(id, seq)| {
            Rings::still_retains(slots, id, seq)
        });
    }

    /// Whether ring `id` still holds its frame `seq` (rings drop frames oldest first).
    fn still_retains(slots: &mut [Slot], id: RingId, seq: u64) -> bool {
        Rings::at_mut(slots, id)
            .is_some_and(|ring| ring.frames.front().is_some_and(|front| front.seq <= seq))
    }

    /// Nothing can have been published, since the epoch began, on a topic that has no ring
    /// and that `route` retains.
    fn never_published(&self, route: &str) -> bool {
        !self.forgot && !self.interrupted && !self.late.contains(route)
    }

    fn freed(&mut self, freed: Freed) {
        self.frames -= freed.frames;
        self.bytes -= freed.bytes;
    }
}

/// Where topics resume from at one moment ([`History::positions`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Positions<'t> {
    pub epoch: Arc<String>,
    pub seq: Vec<(&'t str, u64)>,
}

impl<'a> From<&'a Positions<'_>> for Position<'a> {
    fn from(positions: &'a Positions<'_>) -> Position<'a> {
        Position {
            epoch: &positions.epoch,
            seq: &positions.seq,
        }
    }
}

/// The retained frames of the process.
#[derive(Debug)]
pub struct History {
    rings: Mutex<Rings>,
    /// The positions' namespace: the process's epoch, and a new one whenever `seq` numbers
    /// restart within the process (see [`History::restart`]).
    epoch: ArcSwap<String>,
    base_epoch: String,
    restarts: AtomicU64,
    gauges: Gauges,
    /// Frames keep when they were received as nanoseconds since this (8 bytes, where an
    /// `Instant` takes 16).
    origin: Instant,
}

impl History {
    pub fn new(epoch: &str, config: &Config, gauges: Gauges) -> History {
        History {
            origin: Instant::now(),
            rings: Mutex::new(Rings {
                max_bytes: config.history_max_bytes,
                ..Rings::default()
            }),
            epoch: ArcSwap::from_pointee(epoch.to_owned()),
            base_epoch: epoch.to_owned(),
            restarts: AtomicU64::new(0),
            gauges,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish_gauges(&self, rings: &Rings) {
        self.gauges
            .frames
            .set(i64::try_from(rings.frames).unwrap_or(i64::MAX));
        self.gauges
            .bytes
            .set(i64::try_from(rings.bytes).unwrap_or(i64::MAX));
    }

    /// The hasher of topics' names: [`History::append`] takes a topic's hash from it.
    pub fn hasher(&self) -> RandomState {
        self.lock().hasher.clone()
    }

    /// The epoch positions are valid in, as the `connected` frame tells it.
    pub fn epoch(&self) -> Arc<String> {
        self.epoch.load_full()
    }

    /// `seq` numbers restart (the dispatcher dropped its counters): every position taken so
    /// far is void, so everything retained goes and the epoch changes. What made topics
    /// without a ring doubtful (an outage, forgotten positions, routes that began to retain
    /// late) belongs to the old epoch: in the new one, such a topic had no frame.
    pub fn restart(&self) {
        let mut rings = self.lock();
        // Everything but the configured bound starts afresh, whatever is added to the rings.
        *rings = Rings {
            max_bytes: rings.max_bytes,
            next_generation: rings.next_generation,
            hasher: rings.hasher.clone(),
            ..Rings::default()
        };
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        self.epoch
            .store(Arc::new(format!("{}.{n}", self.base_epoch)));
        self.publish_gauges(&rings);
    }

    /// Redis was lost and is back: what was published meanwhile never reached the bridge, and
    /// no `seq` was taken for it. A position up to a topic's last `seq` can no longer be
    /// resumed whole (a client that was away when the `redis_reconnected` notice went out
    /// would miss it unawares); one taken after the next frame can.
    pub fn interrupted(&self) {
        let mut rings = self.lock();
        let (all, _) = rings.rings_mut();
        for ring in all {
            ring.complete_from = ring.last_seq + 2;
        }
        rings.interrupted = true;
    }

    /// Retains `routed`, a frame of `topic` (of `hash`, by [`History::hasher`]) routed by
    /// `route` with `retention`, in the ring `ring` when it is still that topic's. Where the
    /// topic's ring is now.
    pub fn append(
        &self,
        ring: Option<RingId>,
        topic: &str,
        hash: u64,
        route: &Arc<str>,
        retention: Retention,
        routed: Routed<'_>,
    ) -> RingId {
        let mut guard = self.lock();
        let rings = &mut *guard;
        let seq = routed.seq;
        let route_at = address(route);
        let id = match ring.filter(|&id| rings.at(id).is_some()) {
            Some(id) => id,
            None => rings.ring_of(hash, topic, |store| Ring {
                frames: VecDeque::new(),
                last_seq: seq.saturating_sub(1),
                // Frames before this one were not retained, unless it is the first.
                complete_from: seq,
                route_at,
                topic: store.put(topic.as_bytes(), &[]),
                route: route.clone(),
                retention,
            }),
        };
        let Some(ring) = Rings::at_mut(&mut rings.slots, id) else {
            return id;
        };
        let store = &mut rings.store;
        if seq != ring.last_seq + 1 {
            ring.complete_from = seq;
        }
        // The sweep's schedule already covers the ring's oldest frame unless the new one
        // becomes it, or the `ttl` changes. The same route's `history` is the ring's already
        // (reloads apply it), and not read: it lies on the slot's second line.
        let mut schedule = ring.frames.is_empty();
        if ring.route_at != route_at {
            schedule |= ring.retention.ttl != retention.ttl;
            ring.route = route.clone();
            ring.route_at = route_at;
            ring.retention = retention;
        }
        // A full ring drops its oldest frame before it takes the new one, which then goes
        // where the oldest was: one cold entry touched instead of two (a profile of every
        // ring full showed the second as a fifth of what retaining cost). Only `size` is
        // applied here, so that the frame after the oldest is not read either: frames past
        // their `ttl` wait for the sweep, which `next_expiry` brings on time.
        let (freed, dropped) = ring.drop_oldest(retention.size.max(1) - 1, None, store);
        ring.last_seq = seq;
        // Grown by hand up to `size`: doubling would leave a full ring of 10 in room for 16,
        // and a topic with one frame in room for 4. A new ring starts with room for two
        // frames, as most topics get a second one: on many new topics, the move from one to
        // two was a third of what history added (on ÷ off 1.11 → 1.07, `bench/run.sh
        // history`); a topic that never gets a second frame leaves one entry unused. The room
        // comes from the store's rooms, made a batch at a time (see `store::Rooms`).
        if ring.frames.len() == ring.frames.capacity() {
            let len = ring.frames.len();
            let room = (2 * len).clamp(2.min(retention.size.max(1)), retention.size.max(len + 1));
            let mut grown = store.rooms.take(room);
            grown.extend(ring.frames.drain(..));
            store.rooms.give(std::mem::replace(&mut ring.frames, grown));
        }
        let received = ticks(self.origin, routed.received_at);
        // A copy, not the live frame's `Bytes`: shared with the queues, that one has a
        // reference count of its own in a separate allocation, which dropping the frame when
        // its ring is full would touch, cold, on every frame (1.6 % of the bridge's CPU with
        // every ring full, `bench/run.sh history` with `PERF_OUT`). The live frame is freed
        // while still hot. The copy goes into the slot of the frame the ring dropped for it
        // when it is of the same size: with every ring full, a frame then costs no slot taken
        // and none freed, where freeing a buffer gone cold since its frame was written read a
        // cold line (2 % of the bridge's CPU on the many-topics load).
        let frame = Kept::new(routed, received, dropped, store);
        let cost = frame.cost();
        ring.frames.push_back(frame);
        if schedule {
            Rings::expires(&mut rings.next_expiry, ring, self.origin);
        }
        rings.frames += 1;
        rings.bytes += cost;
        rings.freed(freed);
        rings.order.push((id, seq));
        rings.evict();
        rings.compact(Reach::Step);
        self.publish_gauges(rings);
        id
    }

    /// A frame of `topic` that its route does not retain took `seq`: a position before it
    /// cannot be resumed any more.
    pub fn skipped(&self, topic: &str, seq: u64) {
        let mut rings = self.lock();
        if let Some((ring, _)) = rings.get_mut(topic) {
            ring.last_seq = seq;
            ring.complete_from = seq + 1;
        }
    }

    /// Drops frames past their `ttl`, and the positions of empty topics past
    /// [`MAX_POSITIONS`].
    pub fn expire(&self, now: Instant) {
        let mut guard = self.lock();
        let rings = &mut *guard;
        let expiring = rings.next_expiry.is_some_and(|next| next <= now);
        let forgetting = rings.emptied && rings.topics.len() > MAX_POSITIONS;
        if !expiring && !forgetting {
            return;
        }
        let mut freed = Freed::default();
        let mut empty = 0;
        let mut next_expiry = None;
        let ticks_now = ticks(self.origin, now);
        let (all, store) = rings.rings_mut();
        for ring in all {
            if ring.retention.ttl.is_some() {
                freed += ring.trim(ticks_now, store);
                Rings::expires(&mut next_expiry, ring, self.origin);
            }
            empty += usize::from(ring.frames.is_empty());
        }
        rings.next_expiry = next_expiry;
        rings.emptied = false;
        if empty > MAX_POSITIONS {
            rings.retain(|ring, _| !ring.frames.is_empty());
            rings.forgot = true;
        }
        rings.freed(freed);
        rings.compact(Reach::Whole);
        self.publish_gauges(rings);
    }

    /// Applies a configuration: its bound, and each route's `history` to the topics it
    /// retains (a route without it any more releases them). `previous` is the configuration
    /// it replaces.
    pub fn configure(&self, config: &Config, previous: &Config) {
        let retentions: HashMap<&str, Retention> = config
            .routes
            .iter()
            .filter_map(|route| Some((&*route.name, route.history?)))
            .collect();
        let mut rings = self.lock();
        for route in &config.routes {
            let retained_before = previous
                .routes
                .iter()
                .any(|old| old.name == route.name && old.history.is_some());
            if route.history.is_some() && !retained_before {
                rings.late.insert(route.name.clone());
            }
        }
        rings.max_bytes = config.history_max_bytes;
        let now = ticks(self.origin, Instant::now());
        let mut freed = Freed::default();
        let mut next_expiry = None;
        let mut emptied = false;
        rings.retain(|ring, store| match retentions.get(&*ring.route) {
            Some(retention) => {
                ring.retention = *retention;
                freed += ring.trim(now, store);
                Rings::expires(&mut next_expiry, ring, self.origin);
                emptied |= ring.frames.is_empty();
                true
            }
            None => {
                freed += Freed {
                    frames: ring.frames.len(),
                    bytes: ring.frames.iter().map(Kept::cost).sum(),
                };
                false
            }
        });
        rings.next_expiry = next_expiry;
        rings.emptied |= emptied;
        rings.freed(freed);
        rings.evict();
        rings.compact(Reach::Whole);
        self.publish_gauges(&rings);
    }

    /// The positions that resume `topics` from now (those a route retains, per `retains`):
    /// a topic's last `seq`, or 0 for one never published to in this epoch, with the epoch
    /// they belong to (read together, so a restart cannot come between). Read under the
    /// hub's write lock, as a subscribe answers, they are exactly where the subscription's
    /// live stream starts. A topic that could not be resumed from now (its position was
    /// forgotten, or Redis was lost since its last frame) is left out; `None` when none is
    /// left.
    pub fn positions<'t>(
        &self,
        topics: &'t [String],
        retains: &dyn Fn(&str) -> Option<Arc<str>>,
    ) -> Option<Positions<'t>> {
        let retained: Vec<(&str, Arc<str>)> = topics
            .iter()
            .filter_map(|topic| Some((topic.as_str(), retains(topic)?)))
            .collect();
        if retained.is_empty() {
            return None;
        }
        let rings = self.lock();
        let seq: Vec<(&str, u64)> = retained
            .into_iter()
            .filter_map(|(topic, route)| match rings.get(topic) {
                Some(ring) => ring
                    .resumes_from(ring.last_seq)
                    .then_some((topic, ring.last_seq)),
                None => rings.never_published(&route).then_some((topic, 0)),
            })
            .collect();
        (!seq.is_empty()).then(|| Positions {
            epoch: self.epoch(),
            seq,
        })
    }

    /// The frames `recipient` gets for `wanted` (each topic with how far back), at most
    /// `budget` of them: `After` topics first, each whole or named in `exhausted`, then
    /// `Last` topics, newest kept. `retains` tells whether a topic without a ring is one that
    /// a route retains from the start of the epoch on (so that nothing was published on it).
    /// Frames come oldest first, across topics in the order they were routed, and one
    /// message once.
    pub fn replay(
        &self,
        wanted: &[(&str, Wanted)],
        recipient: &Recipient,
        budget: usize,
        retains: &dyn Fn(&str) -> Option<Arc<str>>,
    ) -> Replay {
        let mut rings = self.lock();
        let now = ticks(self.origin, Instant::now());
        let mut replay = Replay::default();
        let mut chosen: Vec<(u64, usize, &str, usize)> = Vec::new();
        let mut left = budget;
        let mut freed = Freed::default();
        let mut emptied = false;
        // `After` topics first: they are whole or nothing.
        for pass in [true, false] {
            for (order, (topic, from)) in wanted.iter().enumerate() {
                if matches!(from, Wanted::After(_)) != pass {
                    continue;
                }
                let Some((ring, store)) = rings.get_mut(topic) else {
                    if let Wanted::After(seq) = from {
                        let fresh = *seq == 0
                            && retains(topic).is_some_and(|route| rings.never_published(&route));
                        if !fresh {
                            replay.exhausted.push((*topic).to_owned());
                        }
                    }
                    continue;
                };
                freed += ring.trim(now, store);
                emptied |= ring.frames.is_empty();
                let admits = |frame: &Kept| (recipient.admits)(&Retained::of(frame, store));
                match *from {
                    Wanted::After(seq) => {
                        if !ring.resumes_from(seq) {
                            replay.exhausted.push((*topic).to_owned());
                            continue;
                        }
                        let start = ring.frames.partition_point(|frame| frame.seq <= seq);
                        let picked: Vec<usize> = (start..ring.frames.len())
                            .filter(|&i| admits(&ring.frames[i]))
                            .collect();
                        if picked.len() > left {
                            replay.exhausted.push((*topic).to_owned());
                            continue;
                        }
                        left -= picked.len();
                        chosen.extend(
                            picked
                                .into_iter()
                                .map(|i| (ring.frames[i].dispatch, order, *topic, i)),
                        );
                    }
                    Wanted::Last(n) => {
                        let mut picked: Vec<usize> = (0..ring.frames.len())
                            .rev()
                            .filter(|&i| admits(&ring.frames[i]))
                            .take(n.min(left))
                            .collect();
                        picked.reverse();
                        left -= picked.len();
                        chosen.extend(
                            picked
                                .into_iter()
                                .map(|i| (ring.frames[i].dispatch, order, *topic, i)),
                        );
                    }
                }
            }
        }
        rings.freed(freed);
        rings.emptied |= emptied;
        chosen.sort_unstable_by_key(|&(dispatch, order, _, index)| (dispatch, order, index));
        chosen.dedup_by_key(|&mut (dispatch, ..)| dispatch);
        replay.frames.reserve(chosen.len());
        for (_, _, topic, index) in chosen {
            let Some((ring, store)) = rings.get_mut(topic) else {
                continue;
            };
            let frame = &mut ring.frames[index];
            let (bytes, grown) = for_recipient(frame, store, recipient);
            replay.frames.push(bytes);
            rings.bytes += grown;
        }
        rings.evict();
        self.publish_gauges(&rings);
        replay
    }
}

/// The bytes of `frame` for `recipient`: compressed when it negotiated permessage-deflate and
/// the frame is long enough and fits its window (compressed once, then kept with the frame),
/// else plain. Also what keeping the compressed form added.
fn for_recipient(frame: &mut Kept, store: &Store, recipient: &Recipient) -> (Bytes, usize) {
    let plain = Retained::of(frame, store).frame();
    let len = wsframe::payload(plain).len();
    let compresses = recipient.deflate.is_some_and(|window_bits| {
        len >= recipient.compression.min_bytes && deflate::fits(window_bits, len)
    });
    if !compresses {
        return (Bytes::copy_from_slice(plain), 0);
    }
    if let Some(compressed) = frame.compressed() {
        return (Bytes::clone(compressed), 0);
    }
    let compressed = wsframe::deflated(plain, recipient.compression.level);
    let grown = compressed.len();
    frame.extra.get_or_insert_default().compressed = Some(compressed.clone());
    (compressed, grown)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(text: &str) -> Config {
        Config::from_str(text, std::path::Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = "routes:\n  - name: r\n    pattern: \"t:*\"\n    topic: \"t:{1}\"\n    history: { size: 3 }\n";

    fn history(max_bytes: usize) -> History {
        History::new(
            "epoch",
            &config(&format!("history_max_bytes: {max_bytes}\n{ROUTES}")),
            Gauges::default(),
        )
    }

    fn route() -> Arc<str> {
        Arc::from("r")
    }

    fn retention(size: usize) -> Retention {
        Retention { size, ttl: None }
    }

    /// A frame as the dispatcher routes it, owning what [`Routed`] borrows.
    struct Frame {
        seq: u64,
        dispatch: u64,
        received_at: Instant,
        bytes: Vec<u8>,
        audience: Arc<Resolved>,
        payload: Payload,
    }

    impl Frame {
        fn routed(&self) -> Routed<'_> {
            Routed {
                seq: self.seq,
                dispatch: self.dispatch,
                received_at: self.received_at,
                frame: &self.bytes,
                compressed: None,
                audience: &self.audience,
                payload: self.payload.clone(),
            }
        }

        /// What it costs retained.
        fn cost(&self) -> usize {
            Kept::new(self.routed(), 0, None, &mut Store::default()).cost()
        }
    }

    /// Frame `seq` of message `dispatch` for `audience`, received now: its bytes are its
    /// `seq`.
    fn frame(seq: u64, dispatch: u64, audience: Resolved) -> Frame {
        Frame {
            seq,
            dispatch,
            received_at: Instant::now(),
            bytes: format!("{seq}").into_bytes(),
            audience: Arc::new(audience),
            payload: Payload::Auto,
        }
    }

    fn anyone(_: &Retained<'_>) -> bool {
        true
    }

    /// [`History::append`] of route `r`, hashing the topic.
    fn keep(
        history: &History,
        ring: Option<RingId>,
        topic: &str,
        retention: Retention,
        frame: Frame,
    ) -> RingId {
        let hash = history.hasher().hash_one(topic);
        history.append(ring, topic, hash, &route(), retention, frame.routed())
    }

    /// Retains frame `seq` of `topic` (message `dispatch`, audience `all`) with `size: 3`.
    fn append(history: &History, topic: &str, seq: u64, dispatch: u64) {
        keep(
            history,
            None,
            topic,
            retention(3),
            frame(seq, dispatch, Resolved::Everyone),
        );
    }

    /// Every slot taken holds a retained frame or a ring's topic, and there are `n`: none is
    /// lost when frames or rings go.
    fn assert_slots_held(history: &History, n: usize) {
        let rings = history.lock();
        assert_eq!(rings.store.live(), rings.frames + rings.topics.len());
        assert_eq!(rings.store.live(), n);
    }

    fn replay(
        history: &History,
        wanted: &[(&str, Wanted)],
        budget: usize,
    ) -> (Vec<String>, Vec<String>) {
        let recipient = Recipient {
            admits: &anyone,
            deflate: None,
            compression: Compression::default(),
        };
        let found = history.replay(wanted, &recipient, budget, &|_| Some(route()));
        let frames = found
            .frames
            .iter()
            .map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
            .collect();
        (frames, found.exhausted)
    }

    #[test]
    fn a_ring_keeps_the_newest_and_resumes_only_what_it_holds_whole() {
        let history = history(1 << 20);
        for seq in 1..=5 {
            append(&history, "t:a", seq, seq);
        }
        assert_eq!(history.lock().frames, 3);
        assert_eq!(
            replay(&history, &[("t:a", Wanted::Last(2))], 100).0,
            ["4", "5"]
        );
        assert_eq!(
            replay(&history, &[("t:a", Wanted::Last(9))], 100).0,
            ["3", "4", "5"]
        );
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(2))], 100).0,
            ["3", "4", "5"]
        );
        assert_eq!(replay(&history, &[("t:a", Wanted::After(4))], 100).0, ["5"]);
        let nothing: (Vec<String>, Vec<String>) = (vec![], vec![]);
        assert_eq!(replay(&history, &[("t:a", Wanted::After(5))], 100), nothing);
        // Frame 2 is gone, and a position past the last is not one of this topic's.
        for seq in [1, 6] {
            assert_eq!(
                replay(&history, &[("t:a", Wanted::After(seq))], 100),
                (vec![], vec!["t:a".to_owned()])
            );
        }
        // Over the budget: `After` is whole or a gap, `Last` keeps the newest.
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(2))], 2),
            (vec![], vec!["t:a".to_owned()])
        );
        assert_eq!(
            replay(&history, &[("t:a", Wanted::Last(3))], 2).0,
            ["4", "5"]
        );
    }

    #[test]
    fn a_ring_takes_room_for_two_frames_then_doubles_up_to_its_size_and_releases_it_empty() {
        let history = history(1 << 20);
        let room = |topic: &str| history.lock().get(topic).map(|ring| ring.frames.capacity());
        let add = |topic: &str, retention: Retention, seq: u64| {
            let retained = frame(seq, seq, Resolved::Everyone);
            keep(&history, None, topic, retention, retained);
        };
        let mut rooms = Vec::new();
        for seq in 1..=12 {
            add("t:a", retention(10), seq);
            rooms.push(room("t:a").unwrap_or_default());
        }
        assert_eq!(rooms, [2, 2, 4, 4, 8, 8, 8, 8, 10, 10, 10, 10]);
        add("t:b", retention(1), 1);
        add("t:b", retention(1), 2);
        assert_eq!(room("t:b"), Some(1));
        // A ring whose frames all expire keeps its topic's position, not its room.
        let ttl = Retention {
            size: 10,
            ttl: Some(Duration::from_secs(1)),
        };
        for seq in 1..=3 {
            add("t:c", ttl, seq);
        }
        assert_eq!(room("t:c"), Some(4));
        history.expire(Instant::now() + Duration::from_secs(2));
        assert_eq!(room("t:c"), Some(0));
        assert_eq!(history.lock().get("t:c").map(|ring| ring.last_seq), Some(3));
    }

    #[test]
    fn a_frame_the_history_did_not_keep_breaks_the_positions_before_it() {
        let history = history(1 << 20);
        append(&history, "t:a", 1, 1);
        history.skipped("t:a", 2);
        append(&history, "t:a", 3, 3);
        assert_eq!(replay(&history, &[("t:a", Wanted::After(2))], 100).0, ["3"]);
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(0))], 100).1,
            ["t:a"]
        );
        // A ring first made after the topic had frames cannot resume from before it.
        append(&history, "t:b", 7, 4);
        assert_eq!(
            replay(&history, &[("t:b", Wanted::After(5))], 100).1,
            ["t:b"]
        );
        assert_eq!(replay(&history, &[("t:b", Wanted::After(6))], 100).0, ["7"]);
        // A topic without a ring: nothing published since the start, unless a position says
        // otherwise.
        assert_eq!(
            replay(&history, &[("t:c", Wanted::After(0))], 100).1.len(),
            0
        );
        assert_eq!(
            replay(&history, &[("t:c", Wanted::After(1))], 100).1,
            ["t:c"]
        );
    }

    #[test]
    fn positions_are_where_a_subscription_starts_and_each_resumes() {
        let history = history(1 << 20);
        let retains = |topic: &str| (topic != "t:plain").then(route);
        let topics = |names: &[&str]| names.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let asked = topics(&["t:a", "t:new", "t:plain"]);
        append(&history, "t:a", 1, 1);
        append(&history, "t:a", 2, 2);
        let positions = history.positions(&asked, &retains).expect("positions");
        assert_eq!(positions.epoch.as_str(), "epoch");
        assert_eq!(positions.seq, [("t:a", 2), ("t:new", 0)]);
        // Resuming from them replays nothing from before and is no gap.
        let wanted: Vec<(&str, Wanted)> = positions
            .seq
            .iter()
            .map(|&(topic, seq)| (topic, Wanted::After(seq)))
            .collect();
        assert_eq!(replay(&history, &wanted, 100), (vec![], vec![]));
        append(&history, "t:a", 3, 3);
        append(&history, "t:new", 1, 4);
        assert_eq!(
            replay(&history, &wanted, 100),
            (vec!["3".into(), "1".into()], vec![])
        );

        // After a Redis outage, no position until the topic's next frame.
        history.interrupted();
        assert_eq!(history.positions(&asked, &retains), None);
        append(&history, "t:a", 4, 5);
        let positions = history.positions(&asked, &retains).expect("positions");
        assert_eq!(positions.seq, [("t:a", 4)]);
        assert_eq!(history.positions(&topics(&["t:plain"]), &retains), None);

        // A restart is a new epoch, whose topics start afresh: the outage was in the old one.
        history.restart();
        append(&history, "t:a", 1, 1);
        let positions = history.positions(&asked, &retains).expect("positions");
        assert_eq!(positions.epoch.as_str(), "epoch.1");
        assert_eq!(positions.seq, [("t:a", 1), ("t:new", 0)]);
    }

    #[test]
    fn a_redis_outage_breaks_the_positions_taken_before_it() {
        let history = history(1 << 20);
        for seq in 1..=2 {
            append(&history, "t:a", seq, seq);
        }
        history.interrupted();
        append(&history, "t:a", 3, 3);
        // Messages may have been lost between 2 and 3: from 2 or before, a gap.
        for from in [0, 1, 2] {
            assert_eq!(
                replay(&history, &[("t:a", Wanted::After(from))], 100).1,
                ["t:a"]
            );
        }
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(3))], 100),
            (Vec::<String>::new(), Vec::<String>::new())
        );
        // A topic without a ring may have lost messages in the outage too.
        assert_eq!(
            replay(&history, &[("t:c", Wanted::After(0))], 100).1,
            ["t:c"]
        );
        // `last` is not a resume: it gets what is there.
        assert_eq!(
            replay(&history, &[("t:a", Wanted::Last(5))], 100).0,
            ["1", "2", "3"]
        );
    }

    #[test]
    fn replays_merge_topics_in_routing_order_once_per_message_and_check_each_frame() {
        let history = history(1 << 20);
        let mine = || Resolved::User("alice".into());
        keep(&history, None, "t:a", retention(3), frame(1, 1, mine()));
        append(&history, "t:b", 1, 2);
        keep(
            &history,
            None,
            "t:a",
            retention(3),
            frame(2, 3, Resolved::User("bob".into())),
        );
        // One message routed to both topics.
        keep(&history, None, "t:a", retention(3), frame(3, 4, mine()));
        keep(&history, None, "t:b", retention(3), frame(2, 4, mine()));
        let alice = crate::auth::Identity {
            user: Some(Arc::from("alice")),
            roles: Vec::new(),
            claims: serde_json::json!({"sub": "alice"}),
            authenticated: true,
            expires_at: None,
        };
        let admits = |frame: &Retained<'_>| frame.audience().admits(&alice);
        let recipient = Recipient {
            admits: &admits,
            deflate: None,
            compression: Compression::default(),
        };
        let wanted = [("t:a", Wanted::After(0)), ("t:b", Wanted::Last(5))];
        let found = history.replay(&wanted, &recipient, 100, &|_| Some(route()));
        let frames: Vec<&[u8]> = found.frames.iter().map(|b| &b[..]).collect();
        // a1, b1, (a2 is bob's), a3 = b2 once.
        assert_eq!(frames, [&b"1"[..], b"1", b"3"]);
        assert!(found.exhausted.is_empty());
    }

    #[test]
    fn the_process_bound_drops_the_oldest_frames_of_any_topic_first() {
        let one = frame(1, 1, Resolved::Everyone).cost();
        let history = history(3 * one);
        append(&history, "t:a", 1, 1);
        append(&history, "t:b", 1, 2);
        append(&history, "t:a", 2, 3);
        append(&history, "t:b", 2, 4);
        let rings = history.lock();
        assert_eq!((rings.frames, rings.bytes), (3, 3 * one));
        assert_eq!(
            rings.get("t:a").unwrap().frames.len(),
            1,
            "t:a's first frame went first"
        );
        assert_eq!(rings.get("t:a").unwrap().complete_from, 2);
        drop(rings);
        // Many frames dropped by the size: the global order does not grow with them.
        for seq in 3..10_000 {
            keep(
                &history,
                None,
                "t:a",
                retention(1),
                frame(seq, seq, Resolved::Everyone),
            );
        }
        // Compacted a few entries per append: it ends a pass before it grows by a seventh.
        assert!(history.lock().order.len() <= (2 * 3 + 1024) * 8 / 7 + 1);
        assert_slots_held(&history, 3 + 2);
    }

    #[test]
    fn positions_of_empty_topics_are_bounded() {
        let history = history(1 << 30);
        let ttl = Retention {
            size: 1,
            ttl: Some(Duration::from_millis(1)),
        };
        for n in 0..=MAX_POSITIONS as u64 {
            let topic = format!("t:{n}");
            keep(
                &history,
                None,
                &topic,
                ttl,
                frame(1, n + 1, Resolved::Everyone),
            );
        }
        history.expire(Instant::now() + Duration::from_secs(1));
        assert!(history.lock().topics.is_empty());
        // A topic without a ring may now have had frames: seq 0 is no proof of anything.
        assert_eq!(
            replay(&history, &[("t:1", Wanted::After(0))], 100).1,
            ["t:1"]
        );
        assert_eq!(
            replay(&history, &[("t:new", Wanted::After(0))], 100).1,
            ["t:new"]
        );
    }

    #[test]
    fn a_full_ring_copies_the_new_frame_into_the_buffer_of_the_frame_it_drops() {
        let history = history(1 << 20);
        let retain = |seq: u64| {
            let mut retained = frame(seq, seq, Resolved::Everyone);
            retained.bytes = format!("frame {seq:03}").into_bytes();
            keep(&history, None, "t:a", retention(2), retained);
        };
        let buffers = || {
            let rings = history.lock();
            let ring = rings.get("t:a").expect("a ring");
            let frames = ring.frames.iter();
            let at = |frame| Retained::of(frame, &rings.store).frame().as_ptr();
            frames.map(at).collect::<Vec<_>>()
        };
        retain(1);
        retain(2);
        let [first, second] = buffers()[..] else {
            panic!("two frames");
        };
        // The third drops the first, and is copied where the first was: no slot taken.
        retain(3);
        assert_eq!(buffers(), [second, first]);
        let rings = history.lock();
        let ring = rings.get("t:a").expect("a ring");
        let frames = ring.frames.iter();
        let kept: Vec<&[u8]> = frames
            .map(|frame| Retained::of(frame, &rings.store).frame())
            .collect();
        assert_eq!(kept, [b"frame 002".as_slice(), b"frame 003"]);
        assert_eq!(rings.store.live(), 2 + 1, "two frames and the topic's name");
        // The count holds what the slots take.
        let held: usize = ring.frames.iter().map(Kept::cost).sum();
        assert_eq!(rings.bytes, held);
    }

    #[test]
    fn a_copy_takes_the_slot_of_the_frame_it_replaces_only_when_of_its_size() {
        let mut store = Store::default();
        let mut reused = |old: usize, len: usize| {
            let spare = store.put(&vec![0; old], &[]);
            let at = store.bytes(&spare).as_ptr();
            let mut routed = frame(1, 1, Resolved::Everyone);
            routed.bytes = vec![7; len];
            let copy = Kept::new(routed.routed(), 0, Some(spare), &mut store);
            assert_eq!(Retained::of(&copy, &store).frame(), vec![7; len]);
            let same = store.bytes(&copy.held).as_ptr() == at;
            copy.release(&mut store);
            same
        };
        assert!(reused(200, 195), "208 bytes each, the trailer included");
        assert!(!reused(100, 200), "too small");
        assert!(
            !reused(4000, 200),
            "a large frame's slot is not kept for a small one"
        );
        let mut short = frame(1, 1, Resolved::Everyone);
        short.bytes = vec![1; 20];
        let entry = Kept::new(short.routed(), 0, None, &mut store);
        assert_eq!(
            entry.held.capacity(),
            32,
            "the frame and where its payload is, in a slot of 32 bytes"
        );
        entry.release(&mut store);
        assert_eq!(store.live(), 0, "every slot given back");
    }

    #[test]
    fn a_retained_frame_tells_where_its_payload_is() {
        let bytes = br#"{"data":{"n":1},"x":"{"}"#;
        let mut store = Store::default();
        let mut retained = |payload: Payload| {
            let mut routed = frame(1, 1, Resolved::Everyone);
            routed.bytes = bytes.to_vec();
            routed.payload = payload;
            Kept::new(routed.routed(), 0, None, &mut store)
        };
        let in_frame = retained(Payload::InFrame(8..15));
        let copied = retained(Payload::Copy(Box::from(&b"[2]"[..])));
        let not_json = retained(Payload::NotJson);
        let not_json_there = retained(Payload::InFrame(17..20));
        let past_the_frame = retained(Payload::InFrame(8..99));
        let auto = retained(Payload::Auto);
        let view = |entry| Retained::of(entry, &store);
        assert_eq!(view(&in_frame).frame(), bytes);
        assert_eq!(view(&in_frame).json(), Some(serde_json::json!({"n": 1})));
        assert!(!view(&in_frame).is_auto());
        assert_eq!(view(&copied).json(), Some(serde_json::json!([2])));
        assert_eq!(copied.cost(), in_frame.cost() + 3, "the copy is counted");
        assert_eq!(view(&not_json).json(), None);
        assert_eq!(view(&not_json_there).json(), None, "not JSON there");
        assert_eq!(view(&past_the_frame).json(), None, "past the frame");
        assert!(view(&auto).is_auto());
        assert_eq!(view(&auto).json(), None);
        assert_eq!(view(&auto).frame(), bytes);
    }

    #[test]
    fn an_entry_takes_one_cache_line_and_appending_reads_one_line_of_its_slot() {
        assert_eq!(std::mem::size_of::<Kept>(), 64);
        assert_eq!(std::mem::align_of::<Kept>(), 64);
        assert_eq!(std::mem::size_of::<Slot>(), 128);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
        let hot_end = std::mem::offset_of!(Slot, ring)
            + std::mem::offset_of!(Ring, route_at)
            + std::mem::size_of::<usize>();
        assert_eq!(hot_end, 64);
    }

    #[test]
    fn appending_applies_the_size_and_leaves_the_ttl_to_the_sweep() {
        let history = history(1 << 20);
        let start = Instant::now();
        let add = |seq: u64, after: u64, ttl: u64| {
            let mut retained = frame(seq, seq, Resolved::Everyone);
            retained.received_at = start + Duration::from_secs(after);
            let retention = Retention {
                size: 3,
                ttl: Some(Duration::from_secs(ttl)),
            };
            keep(&history, None, "t:a", retention, retained);
        };
        let next_expiry = || history.lock().next_expiry;
        let after = |secs| Some(start + Duration::from_secs(secs));
        add(1, 0, 10);
        // Frame 1 is past its `ttl` when frame 2 comes: it stays until the sweep, which is due.
        add(2, 20, 10);
        assert_eq!(history.lock().frames, 2);
        assert_eq!(next_expiry(), after(10));
        history.expire(start + Duration::from_secs(20));
        assert_eq!(history.lock().frames, 1);
        assert_eq!(next_expiry(), after(30));
        // A shorter `ttl` brings the sweep forward at once.
        add(3, 21, 1);
        assert_eq!(next_expiry(), after(21));
    }

    #[test]
    fn the_sweep_waits_for_the_first_frame_that_can_expire() {
        let history = history(1 << 20);
        let start = Instant::now();
        let at = |after: u64, mut retained: Frame| {
            retained.received_at = start + Duration::from_secs(after);
            retained
        };
        let ttl = |secs| Retention {
            size: 3,
            ttl: Some(Duration::from_secs(secs)),
        };
        let next_expiry = || history.lock().next_expiry;
        append(&history, "t:none", 1, 1);
        assert_eq!(next_expiry(), None);
        keep(
            &history,
            None,
            "t:long",
            ttl(10),
            at(0, frame(1, 2, Resolved::Everyone)),
        );
        assert_eq!(next_expiry(), Some(start + Duration::from_secs(10)));
        keep(
            &history,
            None,
            "t:short",
            ttl(2),
            at(3, frame(1, 3, Resolved::Everyone)),
        );
        assert_eq!(next_expiry(), Some(start + Duration::from_secs(5)));
        history.expire(start + Duration::from_secs(4));
        assert_eq!(history.lock().frames, 3);
        history.expire(start + Duration::from_secs(6));
        assert_eq!(history.lock().frames, 2);
        assert_eq!(next_expiry(), Some(start + Duration::from_secs(10)));
        history.expire(start + Duration::from_secs(11));
        assert_eq!(history.lock().frames, 1);
        assert_eq!(next_expiry(), None);
        // A reload that gives a route a `ttl` makes its frames due at once.
        let with_ttl = config(&ROUTES.replace("size: 3", "size: 3, ttl: 1s"));
        history.configure(&with_ttl, &config(ROUTES));
        assert!(next_expiry().is_some_and(|next| next <= Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn a_compressed_replay_is_made_once_and_counted() {
        let history = history(1 << 20);
        let long = wsframe::text(&[b'a'; 2000]);
        let mut retained = frame(1, 1, Resolved::Everyone);
        retained.bytes = long.to_vec();
        keep(&history, None, "t:a", retention(3), retained);
        let mut short = frame(2, 2, Resolved::Everyone);
        short.bytes = wsframe::text(b"tiny").to_vec();
        keep(&history, None, "t:a", retention(3), short);
        let before = history.lock().bytes;
        let recipient = |deflate| Recipient {
            admits: &anyone,
            deflate,
            compression: Compression::default(),
        };
        let wanted = [("t:a", Wanted::Last(2))];
        let compressed = history.replay(&wanted, &recipient(Some(15)), 10, &|_| None);
        assert_eq!(compressed.frames.len(), 2);
        assert!(
            compressed.frames[0].len() < 100,
            "compressed: {}",
            compressed.frames[0].len()
        );
        assert_eq!(
            compressed.frames[1],
            wsframe::text(b"tiny"),
            "under min_bytes: plain"
        );
        let grown = history.lock().bytes - before;
        assert_eq!(grown, compressed.frames[0].len());
        let again = history.replay(&wanted, &recipient(Some(15)), 10, &|_| None);
        assert_eq!(again.frames[0], compressed.frames[0]);
        assert_eq!(history.lock().bytes - before, grown, "made once");
        // A window the frame does not fit, or no permessage-deflate: the plain frame.
        for deflate in [Some(8), None] {
            let plain = history.replay(&wanted, &recipient(deflate), 10, &|_| None);
            assert_eq!(plain.frames[0], long);
        }
    }

    #[test]
    fn expiry_reloads_and_restarts_release_frames() {
        let history = history(1 << 20);
        let ttl = Retention {
            size: 3,
            ttl: Some(Duration::from_millis(10)),
        };
        keep(&history, None, "t:a", ttl, frame(1, 1, Resolved::Everyone));
        history.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(history.lock().frames, 0);
        assert_eq!(history.lock().bytes, 0);
        assert_slots_held(&history, 1);
        // Its position stays: a client that saw frame 1 has missed nothing.
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(1))], 100),
            (vec![], vec![])
        );
        assert_eq!(
            replay(&history, &[("t:a", Wanted::After(0))], 100).1,
            ["t:a"]
        );

        for seq in 2..=4 {
            append(&history, "t:a", seq, seq);
        }
        let shrunk = config(&ROUTES.replace("size: 3", "size: 1"));
        let before = config(ROUTES);
        history.configure(&shrunk, &before);
        assert_eq!(replay(&history, &[("t:a", Wanted::Last(5))], 100).0, ["4"]);
        assert_slots_held(&history, 1 + 1);
        let without = config("routes:\n  - name: r\n    channel: c\n");
        history.configure(&without, &shrunk);
        assert!(history.lock().topics.is_empty());
        assert_eq!(history.lock().bytes, 0);
        assert_slots_held(&history, 0);
        // Retaining again after a reload: a topic without a ring may have had frames.
        history.configure(&before, &without);
        assert_eq!(
            replay(&history, &[("t:z", Wanted::After(0))], 100).1,
            ["t:z"]
        );

        append(&history, "t:a", 5, 5);
        assert_eq!(&**history.epoch(), "epoch");
        history.restart();
        assert_eq!(&**history.epoch(), "epoch.1");
        assert_eq!(history.lock().frames, 0);
    }

    #[test]
    fn a_ring_id_finds_its_ring_while_it_lives_and_nothing_after() {
        let history = history(1 << 20);
        let everyone = |seq| frame(seq, seq, Resolved::Everyone);
        let a = keep(&history, None, "t:a", retention(3), everyone(1));
        assert_eq!(keep(&history, Some(a), "t:a", retention(3), everyone(2)), a);
        // A reload without the route releases the ring; its slot goes to the next topic, and
        // the old id names neither.
        let without = config("routes:\n  - name: r\n    channel: c\n");
        history.configure(&without, &config(ROUTES));
        let b = keep(&history, None, "t:b", retention(3), everyone(3));
        assert_eq!(b.index, a.index);
        let a_again = keep(&history, Some(a), "t:a", retention(3), everyone(4));
        assert!(a_again != a && a_again != b);
        assert_eq!(replay(&history, &[("t:b", Wanted::Last(9))], 100).0, ["3"]);
        assert_eq!(replay(&history, &[("t:a", Wanted::Last(9))], 100).0, ["4"]);
        // Nor does an id from before a restart, once the first slot is taken again.
        history.restart();
        keep(&history, None, "t:z", retention(3), everyone(1));
        keep(&history, Some(a), "t:a", retention(3), everyone(2));
        assert_eq!(replay(&history, &[("t:z", Wanted::Last(9))], 100).0, ["1"]);
        assert_eq!(replay(&history, &[("t:a", Wanted::Last(9))], 100).0, ["2"]);
    }
}
