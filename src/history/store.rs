//! Where the history's long-lived memory comes from: retained frames' bytes and topics' names
//! in slots of a few fixed sizes, carved from chunks of [`CHUNK`] bytes, and rings' room made
//! a batch at a time ([`Rooms`]), instead of allocations of the process's heap one by one.
//!
//! Retained frames live for seconds to hours among allocations that live for microseconds
//! (rendered frames, the Redis parser's buffers). Allocated one by one, the long-lived ones
//! scattered over glibc's heap, whose short allocations then searched and merged fragmented
//! free chunks, and the heap grew a page at a time (a worker thread's arena grows by what it
//! lacks, one `mprotect` each). On the many-topics load with history on, this cut the
//! bridge's user time by a third of what history adds (BENCHMARKS.md, "the history's own
//! slabs"); frames' bytes alone in slabs did not show, the rings' room had to go too.
//!
//! Sizes go up by 16 bytes to 256, then by eighths of a power of two, so a slot wastes at
//! most an eighth of itself, as glibc's chunks did for frames of a few hundred bytes. A chunk
//! goes back to the heap when its last slot is freed; one per size is kept for the next
//! frames, so that a size used by one frame at a time does not allocate a chunk each time.
//! Frames longer than the largest slot have a buffer of their own.

use std::collections::VecDeque;
use std::ops::Range;

/// The bytes of one chunk.
const CHUNK: usize = 64 * 1024;

/// Sizes up to this are multiples of 16; past it, eight per power of two.
const SMALL: usize = 256;

/// The longest slot: four to a chunk.
const LARGEST: usize = 16 * 1024;

/// The number of sizes: 16 up to [`SMALL`], then 8 for each power of two up to [`LARGEST`].
const CLASSES: usize = SMALL / 16 + 8 * (LARGEST.ilog2() - SMALL.ilog2()) as usize;

/// No slot: the end of a chunk's free list.
const NONE: u32 = u32::MAX;

/// Where one retained frame's bytes are, as [`Store::put`] gave them.
#[derive(Debug)]
pub(super) enum Held {
    Slot {
        class: u8,
        chunk: u32,
        index: u32,
        len: u32,
    },
    Own(Box<[u8]>),
}

impl Held {
    /// What it takes, as `history_max_bytes` counts it.
    pub(super) fn capacity(&self) -> usize {
        match self {
            Held::Slot { class, .. } => slot_size(*class),
            Held::Own(bytes) => bytes.len(),
        }
    }
}

/// The size class whose slots hold `len` bytes with the least room to spare.
fn class_of(len: usize) -> Option<u8> {
    let class = if len <= SMALL {
        len.max(1).div_ceil(16) - 1
    } else if len <= LARGEST {
        let power = (len - 1).ilog2();
        let step = 1 << (power - 3);
        SMALL / 16 + (power - SMALL.ilog2()) as usize * 8 + (len.div_ceil(step) - 9)
    } else {
        return None;
    };
    u8::try_from(class).ok()
}

/// The bytes of a slot of `class`.
fn slot_size(class: u8) -> usize {
    let class = usize::from(class);
    match class.checked_sub(SMALL / 16) {
        None => (class + 1) * 16,
        Some(above) => (9 + above % 8) << (SMALL.ilog2() as usize + above / 8 - 3),
    }
}

/// Where slot `index` of `class` is in its chunk.
fn slot_range(class: u8, index: u32) -> Range<usize> {
    let size = slot_size(class);
    let start = index as usize * size;
    start..start + size
}

#[derive(Default)]
struct Chunk {
    /// Empty once released.
    bytes: Box<[u8]>,
    /// The first free slot that was used before; each holds the next in its first bytes.
    free: u32,
    /// Slots from here on were never used.
    fresh: u32,
    live: u32,
    /// Listed in its class's `with_room` (once), which it may have no room in any more.
    listed: bool,
}

#[derive(Default)]
struct Class {
    chunks: Vec<Chunk>,
    /// Chunks that may have room, the last one tried first.
    with_room: Vec<u32>,
    /// Chunks released, for the next ones made.
    released: Vec<u32>,
    /// The bytes of the last chunk released, for the next one made.
    spare: Option<Box<[u8]>>,
}

/// The slots of every size, and the rings' room.
pub(super) struct Store {
    classes: Vec<Class>,
    pub(super) rooms: Rooms<super::Kept>,
}

/// Counts, not the chunks' bytes (64 KiB each).
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("chunks", &self.chunks())
            .field("slots", &self.live())
            .field("rooms", &self.rooms)
            .finish()
    }
}

impl Default for Store {
    fn default() -> Store {
        Store {
            classes: std::iter::repeat_with(Class::default)
                .take(CLASSES)
                .collect(),
            rooms: Rooms::default(),
        }
    }
}

impl Store {
    /// Copies `frame` then `trailer` into a slot, or a buffer of their own when too long.
    pub(super) fn put(&mut self, frame: &[u8], trailer: &[u8]) -> Held {
        let len = frame.len() + trailer.len();
        let (Some(class), Ok(len)) = (class_of(len), u32::try_from(len)) else {
            return Held::Own([frame, trailer].concat().into_boxed_slice());
        };
        let (chunk, index) = self.take(class);
        let held = Held::Slot {
            class,
            chunk,
            index,
            len,
        };
        self.write(&held, frame, trailer);
        held
    }

    /// Copies `frame` then `trailer` where `old` was when they take a slot of its size (no
    /// slot taken, none freed: a full ring's new frame goes where its oldest was), else
    /// [`Store::put`]s them and frees `old`.
    pub(super) fn replace(&mut self, old: Held, frame: &[u8], trailer: &[u8]) -> Held {
        let len = frame.len() + trailer.len();
        match old {
            Held::Slot {
                class,
                chunk,
                index,
                ..
            } if class_of(len) == Some(class) => {
                let held = Held::Slot {
                    class,
                    chunk,
                    index,
                    // Within a slot's size.
                    len: len as u32,
                };
                self.write(&held, frame, trailer);
                held
            }
            old => {
                self.free(old);
                self.put(frame, trailer)
            }
        }
    }

    /// The bytes `held` holds.
    pub(super) fn bytes<'s>(&'s self, held: &'s Held) -> &'s [u8] {
        match *held {
            Held::Slot {
                class,
                chunk,
                index,
                len,
            } => self
                .classes
                .get(usize::from(class))
                .and_then(|class| class.chunks.get(chunk as usize))
                .and_then(|chunk| chunk.bytes.get(slot_range(class, index)))
                .and_then(|slot| slot.get(..len as usize))
                .unwrap_or_default(),
            Held::Own(ref bytes) => bytes,
        }
    }

    /// Gives `held`'s slot back.
    pub(super) fn free(&mut self, held: Held) {
        let Held::Slot {
            class: size,
            chunk: at,
            index,
            ..
        } = held
        else {
            return;
        };
        let Some(class) = self.classes.get_mut(usize::from(size)) else {
            return;
        };
        let Some(chunk) = class.chunks.get_mut(at as usize) else {
            return;
        };
        if let Some(link) = chunk.bytes.get_mut(slot_range(size, index)) {
            link[..4].copy_from_slice(&chunk.free.to_le_bytes());
        }
        chunk.free = index;
        chunk.live -= 1;
        if chunk.live == 0 {
            let bytes = std::mem::take(&mut chunk.bytes);
            class.released.push(at);
            if class.spare.is_none() {
                class.spare = Some(bytes);
            }
        } else if !chunk.listed {
            chunk.listed = true;
            class.with_room.push(at);
        }
    }

    /// Slots taken, of every size.
    pub(super) fn live(&self) -> usize {
        let chunks = self.classes.iter().flat_map(|class| &class.chunks);
        chunks.map(|chunk| chunk.live as usize).sum()
    }

    /// Chunks not released, of every size.
    pub(super) fn chunks(&self) -> usize {
        let chunks = self.classes.iter().flat_map(|class| &class.chunks);
        chunks.filter(|chunk| !chunk.bytes.is_empty()).count()
    }

    fn write(&mut self, held: &Held, frame: &[u8], trailer: &[u8]) {
        let Held::Slot {
            class,
            chunk,
            index,
            ..
        } = *held
        else {
            return;
        };
        let slot = self
            .classes
            .get_mut(usize::from(class))
            .and_then(|class| class.chunks.get_mut(chunk as usize))
            .and_then(|chunk| chunk.bytes.get_mut(slot_range(class, index)));
        let Some(slot) = slot else {
            return;
        };
        let (head, tail) = slot.split_at_mut(frame.len().min(slot.len()));
        head.copy_from_slice(&frame[..head.len()]);
        let end = trailer.len().min(tail.len());
        tail[..end].copy_from_slice(&trailer[..end]);
    }

    /// A free slot of `size`: its chunk and index.
    fn take(&mut self, size: u8) -> (u32, u32) {
        let per_chunk = (CHUNK / slot_size(size)) as u32;
        let class = &mut self.classes[usize::from(size)];
        loop {
            let Some(&at) = class.with_room.last() else {
                // Every chunk is full or released (and none listed): a chunk is made.
                let at = class.released.pop().unwrap_or_else(|| {
                    class.chunks.push(Chunk::default());
                    (class.chunks.len() - 1) as u32
                });
                class.chunks[at as usize] = Chunk {
                    bytes: class
                        .spare
                        .take()
                        .unwrap_or_else(|| vec![0; CHUNK].into_boxed_slice()),
                    free: NONE,
                    fresh: 0,
                    live: 0,
                    listed: true,
                };
                class.with_room.push(at);
                continue;
            };
            let chunk = &mut class.chunks[at as usize];
            let index = if chunk.bytes.is_empty() {
                None
            } else if chunk.free != NONE {
                let index = chunk.free;
                let link = chunk.bytes.get(slot_range(size, index));
                chunk.free = link
                    .and_then(|slot| slot.get(..4)?.try_into().ok())
                    .map_or(NONE, u32::from_le_bytes);
                Some(index)
            } else if chunk.fresh < per_chunk {
                chunk.fresh += 1;
                Some(chunk.fresh - 1)
            } else {
                None
            };
            let Some(index) = index else {
                class.with_room.pop();
                chunk.listed = false;
                continue;
            };
            chunk.live += 1;
            return (at, index);
        }
    }
}

/// The room of rings, by capacity: made a batch at a time, and given back when a ring grows
/// out of it, empties or goes, so that rings too stay out of the way of short allocations.
/// A ring's room is aligned to a cache line, which glibc serves by splitting a larger chunk:
/// made one by one among short allocations, they left fragments all over its bins.
pub(super) struct Rooms<T> {
    /// Capacities in use, each with rooms ready; a ring's capacity is one of few (doubling up
    /// to its `size`).
    shelves: Vec<(usize, Vec<VecDeque<T>>)>,
}

impl<T> Default for Rooms<T> {
    fn default() -> Rooms<T> {
        Rooms {
            shelves: Vec::new(),
        }
    }
}

impl<T> std::fmt::Debug for Rooms<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready: Vec<(usize, usize)> = self
            .shelves
            .iter()
            .map(|(capacity, ready)| (*capacity, ready.len()))
            .collect();
        f.debug_struct("Rooms").field("ready", &ready).finish()
    }
}

impl<T> Rooms<T> {
    /// How many rooms of `capacity` a batch makes: about a chunk's worth, 8 to 512.
    fn batch(capacity: usize) -> usize {
        (CHUNK / (capacity * std::mem::size_of::<T>()).max(1)).clamp(8, 512)
    }

    fn shelf(&mut self, capacity: usize) -> &mut Vec<VecDeque<T>> {
        let at = match self.shelves.iter().position(|(held, _)| *held == capacity) {
            Some(at) => at,
            None => {
                self.shelves.push((capacity, Vec::new()));
                self.shelves.len() - 1
            }
        };
        &mut self.shelves[at].1
    }

    /// An empty room for at least `capacity` entries.
    pub(super) fn take(&mut self, capacity: usize) -> VecDeque<T> {
        let batch = Rooms::<T>::batch(capacity);
        let shelf = self.shelf(capacity);
        if shelf.is_empty() {
            shelf.extend(std::iter::repeat_with(|| VecDeque::with_capacity(capacity)).take(batch));
        }
        shelf.pop().unwrap_or_default()
    }

    /// Takes back `room`, emptied, for another ring; past two batches ready, it is freed.
    pub(super) fn give(&mut self, mut room: VecDeque<T>) {
        room.clear();
        let capacity = room.capacity();
        if capacity == 0 {
            return;
        }
        let batch = Rooms::<T>::batch(capacity);
        let shelf = self.shelf(capacity);
        if shelf.len() < 2 * batch {
            shelf.push(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_waste_at_most_an_eighth_and_cover_every_length_up_to_the_largest() {
        let mut last = 0;
        for len in 1..=LARGEST {
            let class = class_of(len).expect("a size");
            let size = slot_size(class);
            assert!(size >= len, "{len} in {size}");
            assert!(
                size - len < 16 || (size - len) * 8 <= size,
                "{len} in {size}"
            );
            assert!(usize::from(class) < CLASSES);
            assert!(size >= last, "sizes grow with the length");
            last = size;
            if class > 0 {
                assert!(slot_size(class - 1) < len, "{len} fits a smaller slot");
            }
        }
        assert_eq!(slot_size(class_of(196).unwrap()), 208);
        assert_eq!(slot_size(class_of(257).unwrap()), 288);
        assert_eq!(slot_size((CLASSES - 1) as u8), LARGEST);
        assert_eq!(class_of(LARGEST + 1), None);
    }

    #[test]
    fn slots_are_reused_and_an_emptied_chunk_goes_back() {
        let mut store = Store::default();
        let per_chunk = CHUNK / 208;
        let held: Vec<Held> = (0..per_chunk + 1)
            .map(|n| store.put(format!("{n:0>196}").as_bytes(), b"12345678"))
            .collect();
        assert_eq!(store.chunks(), 2);
        assert_eq!(store.live(), per_chunk + 1);
        for (n, held) in held.iter().enumerate() {
            let bytes = store.bytes(held);
            assert_eq!(bytes.len(), 204);
            assert_eq!(&bytes[..196], format!("{n:0>196}").as_bytes());
            assert_eq!(&bytes[196..], b"12345678");
        }
        let mut held = held.into_iter();
        let first = held.next().expect("a frame");
        store.free(first);
        // The freed slot is the next one taken, in the first chunk.
        let again = store.put(b"again", b"");
        assert!(matches!(
            again,
            Held::Slot {
                chunk: 0,
                index: 0,
                ..
            }
        ));
        assert_eq!(store.bytes(&again), b"again");
        store.free(again);
        for held in held {
            store.free(held);
        }
        assert_eq!(store.live(), 0);
        assert_eq!(store.chunks(), 0, "every chunk released");
        // A new chunk takes the kept one's place and bytes.
        let next = store.put(b"next", b"");
        assert_eq!(store.chunks(), 1);
        assert_eq!(store.bytes(&next), b"next");
    }

    #[test]
    fn a_frame_of_the_same_size_goes_where_the_old_one_was() {
        let mut store = Store::default();
        let old = store.put(&[1; 190], b"");
        let same = store.replace(old, &[2; 200], b"");
        assert!(matches!(
            same,
            Held::Slot {
                chunk: 0,
                index: 0,
                ..
            }
        ));
        assert_eq!(store.bytes(&same), [2; 200]);
        let other = store.put(&[3; 10], b"");
        let larger = store.replace(same, &[4; 300], b"");
        assert_eq!(store.bytes(&larger), [4; 300]);
        assert_eq!(larger.capacity(), 320);
        assert_eq!(store.live(), 2);
        assert_eq!(store.bytes(&other), [3; 10]);
    }

    #[test]
    fn a_frame_longer_than_the_largest_slot_has_a_buffer_of_its_own() {
        let mut store = Store::default();
        let long = store.put(&[5; LARGEST], b"tail");
        assert!(matches!(long, Held::Own(_)));
        assert_eq!(long.capacity(), LARGEST + 4);
        assert_eq!(&store.bytes(&long)[LARGEST..], b"tail");
        assert_eq!(store.live(), 0);
        store.free(long);
    }

    #[test]
    fn rooms_are_made_a_batch_at_a_time_and_taken_back_up_to_two_batches() {
        let mut rooms: Rooms<[u64; 8]> = Rooms::default();
        let batch = Rooms::<[u64; 8]>::batch(2);
        assert_eq!(batch, 512);
        let room = rooms.take(2);
        assert!(room.capacity() >= 2);
        assert_eq!(
            rooms.shelf(2).len(),
            batch - 1,
            "the rest of the batch is ready"
        );
        rooms.give(room);
        assert_eq!(rooms.shelf(2).len(), batch);
        let taken: Vec<VecDeque<[u64; 8]>> = (0..3 * batch).map(|_| rooms.take(2)).collect();
        for room in taken {
            rooms.give(room);
        }
        assert_eq!(
            rooms.shelf(2).len(),
            2 * batch,
            "no more than two batches kept"
        );
        rooms.give(VecDeque::new());
        assert_eq!(rooms.shelves.len(), 1, "a room of nothing is not kept");
    }
}
