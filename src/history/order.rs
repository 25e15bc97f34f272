//! The history's global order: every retained frame, oldest first across topics, for
//! `history_max_bytes` to evict the oldest. A ring drops its own oldest frames (by `size`,
//! `ttl`) without finding their entries here, so entries of frames already gone pile up
//! among the others and are forgotten by compaction.
//!
//! Compaction is incremental. Forgetting them all at once held the history's lock, and with
//! it the dispatcher, for 63 ms at 1,000,000 retained frames (2,000,000 entries); here each
//! append looks at a few entries, and a pass ends after about a seventh as many appends as
//! there were entries. The pass keeps its place with two cursors over the entries themselves:
//! those before `kept` are compacted, those from `read` on are still to be looked at, and
//! those in between are left-overs (copies of kept entries, or entries of frames gone),
//! which evicting may pop and skip like any entry of a frame already gone.

use std::collections::VecDeque;

/// Entries looked at per append during a pass: more than the one an append adds, so that a
/// pass ends; few, so that an append stays short.
const STEP: usize = 8;

/// How far a call to [`Order::compact`] takes a pass.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reach {
    /// [`STEP`] entries: after an append.
    Step,
    /// To the end: where the work is of the size of the history anyway (a reload's new
    /// bounds, the sweep), and no append may come to move a pass on.
    Whole,
}

/// Entries of frames gone tolerated beyond twice the frames retained (and a floor for small
/// histories) before a pass starts.
const SLACK: usize = 1024;

#[derive(Debug)]
pub(super) struct Order<T> {
    entries: VecDeque<T>,
    pass: Option<Pass>,
}

/// A compaction under way.
#[derive(Debug, Clone, Copy)]
struct Pass {
    kept: usize,
    read: usize,
}

impl<T> Default for Order<T> {
    fn default() -> Order<T> {
        Order {
            entries: VecDeque::new(),
            pass: None,
        }
    }
}

impl<T: Copy> Order<T> {
    pub(super) fn push(&mut self, entry: T) {
        self.entries.push_back(entry);
    }

    /// The oldest entry, which may be of a frame already gone.
    pub(super) fn pop_front(&mut self) -> Option<T> {
        let entry = self.entries.pop_front()?;
        if let Some(pass) = &mut self.pass {
            // The front was compacted already, or a left-over, or not looked at yet.
            pass.kept = pass.kept.saturating_sub(1);
            pass.read = pass.read.saturating_sub(1);
        }
        Some(entry)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Starts a pass once entries outnumber twice the `frames` retained, and moves the pass
    /// on as far as `reach`, keeping the entries `retained` says still are.
    pub(super) fn compact(
        &mut self,
        frames: usize,
        reach: Reach,
        mut retained: impl FnMut(T) -> bool,
    ) {
        let step = match reach {
            Reach::Step => STEP,
            Reach::Whole => usize::MAX,
        };
        if self.pass.is_none() && self.entries.len() > 2 * frames + SLACK {
            self.pass = Some(Pass { kept: 0, read: 0 });
        }
        let Some(pass) = &mut self.pass else {
            return;
        };
        let end = self.entries.len().min(pass.read.saturating_add(step));
        while pass.read < end {
            let entry = self.entries[pass.read];
            if retained(entry) {
                self.entries[pass.kept] = entry;
                pass.kept += 1;
            }
            pass.read += 1;
        }
        if pass.read == self.entries.len() {
            self.entries.truncate(pass.kept);
            self.pass = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    /// Entries are numbers; the odd ones are of frames gone, and so is an even one once
    /// evicted.
    #[derive(Default)]
    struct Frames {
        evicted: RefCell<HashSet<u64>>,
    }

    impl Frames {
        fn retained(&self, entry: u64) -> bool {
            entry.is_multiple_of(2) && !self.evicted.borrow().contains(&entry)
        }

        /// What evicting does: pops until an entry of a frame still retained, and drops it.
        fn evict(&self, order: &mut Order<u64>) -> Option<u64> {
            while let Some(entry) = order.pop_front() {
                if self.retained(entry) {
                    self.evicted.borrow_mut().insert(entry);
                    return Some(entry);
                }
            }
            None
        }

        fn evict_all(&self, order: &mut Order<u64>) -> Vec<u64> {
            std::iter::from_fn(|| self.evict(order)).collect()
        }
    }

    /// An order of `0..n`, and the entries it holds of frames retained.
    fn numbered(n: u64) -> (Order<u64>, Vec<u64>) {
        let mut order = Order::default();
        for entry in 0..n {
            order.push(entry);
        }
        (
            order,
            (0..n).filter(|entry| entry.is_multiple_of(2)).collect(),
        )
    }

    #[test]
    fn an_append_looks_at_a_few_entries_and_a_pass_ends() {
        let frames = Frames::default();
        let (mut order, mut expected) = numbered(10 * SLACK as u64);
        order.compact(1, Reach::Step, |entry| frames.retained(entry));
        assert_eq!(order.len(), 10 * SLACK, "one step forgets nothing yet");
        let mut next = 10 * SLACK as u64;
        let mut appends = 0;
        while order.pass.is_some() {
            order.push(next);
            expected.push(next);
            next += 2;
            order.compact(1, Reach::Step, |entry| frames.retained(entry));
            appends += 1;
            assert!(appends < 10 * SLACK, "the pass never ended");
        }
        assert!(
            appends <= 10 * SLACK / (STEP - 1) + 1,
            "{appends} appends for a pass"
        );
        assert_eq!(
            order.len(),
            expected.len(),
            "every entry of a frame gone forgotten"
        );
        assert_eq!(frames.evict_all(&mut order), expected);
    }

    #[test]
    fn evicting_during_a_pass_still_finds_the_oldest_first() {
        for evicted_every in [1, 2, 3, 5] {
            let frames = Frames::default();
            let (mut order, mut expected) = numbered(4 * SLACK as u64);
            let mut next = 4 * SLACK as u64;
            let mut evicted = Vec::new();
            let mut passes = 0;
            for round in 0..4 * SLACK {
                order.push(next);
                expected.push(next);
                next += 2;
                let before = order.pass.is_some();
                order.compact(1, Reach::Step, |entry| frames.retained(entry));
                passes += usize::from(before && order.pass.is_none());
                if round % evicted_every == 0 {
                    evicted.extend(frames.evict(&mut order));
                }
            }
            assert!(passes > 0, "evicting every {evicted_every}: no pass ended");
            evicted.extend(frames.evict_all(&mut order));
            assert_eq!(evicted, expected, "evicting every {evicted_every} appends");
        }
    }

    #[test]
    fn compacting_all_leaves_only_entries_of_frames_retained() {
        let frames = Frames::default();
        let (mut order, expected) = numbered(3 * SLACK as u64);
        order.compact(1, Reach::Whole, |entry| frames.retained(entry));
        assert!(order.pass.is_none());
        assert_eq!(order.len(), expected.len());
        assert_eq!(frames.evict_all(&mut order), expected);
    }

    #[test]
    fn within_the_slack_nothing_is_compacted() {
        let frames = Frames::default();
        let (mut order, _) = numbered(SLACK as u64);
        order.compact(0, Reach::Whole, |entry| frames.retained(entry));
        assert_eq!(order.len(), SLACK);
    }
}
