//! Token buckets for call-rate limits: `rate` tokens a second, holding at most one second's
//! worth, so a burst of `rate` calls passes and then calls pass at `rate` a second. Time comes
//! in as an argument.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// One bucket.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new() -> Self {
        Self {
            tokens: f64::INFINITY,
            last: None,
        }
    }

    /// Takes one token at `now` if there is one. A `rate` of 0 means no limit.
    pub fn take(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let elapsed = self.last.map_or(f64::INFINITY, |last| {
            now.saturating_duration_since(last).as_secs_f64()
        });
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now` (so forgetting it changes nothing).
    fn full(&self, now: Instant, rate: u32) -> bool {
        let rate = f64::from(rate);
        self.last.is_none_or(|last| {
            self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate >= rate
        })
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self::new()
    }
}

/// A bucket per key, at most `max_keys` of them: full buckets are forgotten when room is needed.
#[derive(Debug)]
pub struct Buckets<K> {
    buckets: HashMap<K, Bucket>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// No buckets yet; at most `max_keys`.
    pub fn new(max_keys: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            max_keys,
        }
    }

    /// Takes one token from `key`'s bucket at `now`.
    pub fn take(&mut self, key: &K, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, bucket| !bucket.full(now, rate));
            if self.buckets.len() >= self.max_keys {
                // Every bucket is in use: refuse rather than grow without bound.
                return false;
            }
        }
        self.buckets.entry(key.clone()).or_default().take(now, rate)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // Virtual time needs one real origin.

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_rate_then_rate_per_second() {
        let start = Instant::now();
        let mut bucket = Bucket::new();
        let passed = (0..15).filter(|_| bucket.take(start, 10)).count();
        assert_eq!(passed, 10, "one second's worth at once");
        assert!(!bucket.take(start + Duration::from_millis(50), 10));
        assert!(
            bucket.take(start + Duration::from_millis(100), 10),
            "refilled by one"
        );
        assert!(!bucket.take(start + Duration::from_millis(100), 10));
        // Over 10 s at 20 calls a second, 10 a second pass (plus the first burst).
        let passed = (0..200)
            .filter(|i| bucket.take(start + Duration::from_millis(200 + i * 50), 10))
            .count();
        assert!((100..=101).contains(&passed), "{passed}");
        assert!(Bucket::new().take(start, 0), "0 means no limit");
    }

    #[test]
    fn buckets_are_per_key_and_bounded() {
        let start = Instant::now();
        let mut buckets = Buckets::new(2);
        assert!(buckets.take(&"a", start, 1));
        assert!(!buckets.take(&"a", start, 1));
        assert!(buckets.take(&"b", start, 1), "b has its own bucket");
        assert!(!buckets.take(&"c", start, 1), "no room: a and b are in use");
        let later = start + Duration::from_secs(1);
        assert!(
            buckets.take(&"c", later, 1),
            "a and b refilled and were forgotten"
        );
        assert!(buckets.buckets.len() <= 2);
    }
}
