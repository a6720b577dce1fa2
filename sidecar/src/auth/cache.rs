//! A bounded cache of verified tokens, keyed by the SHA-256 of the whole token, each entry
//! expiring with its token: a busy agent pays for its signature check once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

/// The cache key: a digest of the whole token (the token itself is never kept).
pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How often an insert sweeps out expired entries (seconds).
pub const SWEEP_EVERY_SECS: u64 = 30;

/// Values kept until their own expiry (unix seconds), at most `capacity` of them.
pub struct ExpiringCache<K, V> {
    map: RwLock<HashMap<K, (u64, V)>>,
    capacity: usize,
    /// When an insert next sweeps out expired entries: a caller that takes a new token every
    /// few minutes must not leave the old ones in memory until the cache is full.
    next_sweep: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> ExpiringCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        ExpiringCache {
            map: RwLock::new(HashMap::new()),
            capacity,
            next_sweep: AtomicU64::new(0),
        }
    }

    /// The value, when present and not expired at `now`.
    pub fn get(&self, key: &K, now: u64) -> Option<V> {
        let map = self.map.read();
        match map.get(key) {
            Some((exp, v)) if *exp > now => Some(v.clone()),
            _ => None,
        }
    }

    /// Inserts; when full, expired entries go first, then arbitrary ones (a cache miss only
    /// costs a signature check).
    pub fn insert(&self, key: K, value: V, expires: u64, now: u64) {
        if self.capacity == 0 || expires <= now {
            return;
        }
        let mut map = self.map.write();
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            map.retain(|_, (exp, _)| *exp > now);
            self.next_sweep
                .store(now.saturating_add(SWEEP_EVERY_SECS), Ordering::Relaxed);
        }
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= self.capacity {
                let drop_n = (self.capacity / 8).max(1);
                let victims: Vec<K> = map.keys().take(drop_n).cloned().collect();
                for k in victims {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (expires, value));
    }

    pub fn clear(&self) {
        self.map.write().clear();
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let c = ExpiringCache::new(4);
        for i in 0..10u8 {
            c.insert([i; 32], i, 100, 50);
        }
        assert!(c.len() <= 4);
        c.insert([99; 32], 1, 60, 50);
        assert_eq!(c.get(&[99; 32], 59), Some(1));
        assert_eq!(c.get(&[99; 32], 60), None);
        c.insert([98; 32], 1, 40, 50);
        assert_eq!(c.get(&[98; 32], 10), None);
        assert_ne!(hash("a"), hash("b"));
    }

    #[test]
    fn expired_entries_go_before_the_cache_is_full() {
        let c = ExpiringCache::new(1000);
        for i in 0..10u8 {
            c.insert([i; 32], i, 100, 50);
        }
        assert_eq!(c.len(), 10);
        // Past their expiry and past the next sweep, one insert drops them all.
        c.insert([99; 32], 1, 1000, 100 + SWEEP_EVERY_SECS);
        assert_eq!(c.len(), 1);
    }
}
