//! Token-bucket rate limits keyed by client IP or account, with a bounded map.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many keys are tracked; beyond it, the idlest are forgotten.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Allows `per_minute` events per key per minute, in bursts of up to `per_minute`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter allowing `per_minute` events per key.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`. `Err` says how long until one is available.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0; // tokens per second
        // A poisoned lock only means another request panicked mid-update; the map is still
        // a valid cache of buckets.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            evict(&mut buckets, now, capacity, rate);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

/// Forgets full buckets (they behave like new ones), then, if still too many, the idlest half.
fn evict<K: Eq + Hash + Clone>(
    buckets: &mut HashMap<K, Bucket>,
    now: Instant,
    capacity: f64,
    rate: f64,
) {
    buckets.retain(|_, b| {
        b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < capacity
    });
    if buckets.len() >= MAX_KEYS {
        let mut ages: Vec<Instant> = buckets.values().map(|b| b.updated).collect();
        ages.sort_unstable();
        let cutoff = ages[ages.len() / 2];
        buckets.retain(|_, b| b.updated > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&"a", t0).is_ok());
        }
        let wait = limiter.check(&"a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(20) && wait > Duration::from_secs(19),
            "{wait:?}"
        );
        assert!(limiter.check(&"b", t0).is_ok(), "keys are independent");
        assert!(limiter.check(&"a", t0 + Duration::from_secs(20)).is_ok());
        assert!(limiter.check(&"a", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn map_stays_bounded() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS + 10) {
            let _ = limiter.check(&i, t0 + Duration::from_millis(i as u64));
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_KEYS);
    }
}
