//! Token buckets: the per-connection command budget and the per-address connection budget.
//! Pure: the caller passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Rate;

/// `rate.burst` tokens at most, refilled at `rate.per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: f64::from(rate.burst),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        self.refilled = now;
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.rate.burst)
    }
}

/// One bucket per key (a client address), created on first use.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    buckets: Mutex<Buckets<K>>,
}

#[derive(Debug)]
struct Buckets<K> {
    by_key: HashMap<K, TokenBucket>,
    /// The size at which full buckets are next pruned.
    prune_at: usize,
}

impl<K> Default for KeyedBuckets<K> {
    fn default() -> KeyedBuckets<K> {
        KeyedBuckets {
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }
}

/// Past this many keys, full buckets (keys idle long enough to have refilled, which behave
/// exactly like new ones) are forgotten, so a scan from many addresses cannot grow memory
/// without bound. The next pruning waits until the table has doubled from what the last one
/// kept: with many active keys a pruning scans them all, and doing so on every new key would
/// make each connection's cost grow with the table.
const PRUNE_AT: usize = 10_000;

impl<K: Eq + Hash> KeyedBuckets<K> {
    /// Takes one token from `key`'s bucket if there is one. `rate` is the one in force (a
    /// reload may change it; existing buckets follow).
    pub fn try_take(&self, key: K, rate: Rate, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let buckets = &mut *buckets;
        if buckets.by_key.len() >= buckets.prune_at {
            buckets.by_key.retain(|_, bucket| !bucket.is_full(now));
            buckets.prune_at = (buckets.by_key.len() * 2).max(PRUNE_AT);
        }
        let bucket = buckets
            .by_key
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, now));
        bucket.rate = rate;
        bucket.try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FIVE_PER_SECOND: Rate = Rate {
        per_second: 5.0,
        burst: 5,
    };

    #[test]
    fn a_bucket_admits_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(FIVE_PER_SECOND, start);
        assert!((0..5).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_millis(200)));
        assert!(!bucket.try_take(start + Duration::from_millis(200)));
    }

    #[test]
    fn keys_have_their_own_buckets_and_idle_ones_are_pruned() {
        let start = Instant::now();
        let buckets = KeyedBuckets::default();
        let take = |key: String, at| buckets.try_take(key, FIVE_PER_SECOND, at);
        assert!((0..5).all(|_| take("a".into(), start)));
        assert!(!take("a".into(), start));
        assert!(take("b".into(), start));
        for key in 0..PRUNE_AT {
            take(key.to_string(), start);
        }
        // Ten seconds later every one of those buckets is full again: the next pruning, once
        // the table has doubled, forgets them.
        let later = start + Duration::from_secs(10);
        assert!(take("a".into(), later));
        for key in 0..=PRUNE_AT {
            take(format!("later {key}"), later);
        }
        let state = buckets.buckets.lock().unwrap();
        assert!(!state.by_key.contains_key("0"));
        assert!(state.by_key.len() <= PRUNE_AT + 2, "{}", state.by_key.len());
    }

    #[test]
    fn a_table_of_active_keys_is_not_scanned_on_every_new_key() {
        let start = Instant::now();
        let buckets = KeyedBuckets::default();
        // Every key takes a token, so none is full and a pruning keeps them all.
        for key in 0..PRUNE_AT {
            buckets.try_take(key, FIVE_PER_SECOND, start);
        }
        buckets.try_take(PRUNE_AT, FIVE_PER_SECOND, start);
        let state = buckets.buckets.lock().unwrap();
        assert_eq!(state.by_key.len(), PRUNE_AT + 1);
        assert_eq!(state.prune_at, 2 * PRUNE_AT);
    }
}
