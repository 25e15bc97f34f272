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
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K> Default for KeyedBuckets<K> {
    fn default() -> KeyedBuckets<K> {
        KeyedBuckets {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

/// Past this many keys, full buckets (keys idle long enough to have refilled, which behave
/// exactly like new ones) are forgotten, so a scan from many addresses cannot grow memory
/// without bound.
const PRUNE_AT: usize = 10_000;

impl<K: Eq + Hash> KeyedBuckets<K> {
    /// Takes one token from `key`'s bucket if there is one. `rate` is the one in force (a
    /// reload may change it; existing buckets follow).
    pub fn try_take(&self, key: K, rate: Rate, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let bucket = buckets
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
        let later = start + Duration::from_secs(10);
        assert!(take("a".into(), later));
        assert!(buckets.buckets.lock().unwrap().len() < PRUNE_AT);
    }
}
