//! This replica's buckets: one GCRA cell (the theoretical arrival time of the next request, an
//! atomic) per bucket key, in a lock-free map (papaya). A check is one map lookup and one
//! compare-and-swap, exact for concurrent requests of one process. Buckets that have refilled
//! completely hold nothing a new bucket would not, so they are evicted by [`LocalBuckets::sweep`]
//! (and when the map is full); the map never holds more than its bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One bucket: when its next request's token will have come back, in nanoseconds since the
/// buckets' epoch. A bucket whose time has passed is full.
struct Cell {
    tat: AtomicU64,
}

/// Why a local check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The bucket is empty; a token comes back after this long.
    Empty(Duration),
    /// The map holds its bound of buckets, none of them idle: a new key cannot be counted.
    Full,
}

/// The rate of one bucket, in nanoseconds: a token comes back every `interval`; a full bucket
/// holds `period / interval` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: u64,
    pub period: u64,
}

pub struct LocalBuckets {
    cells: papaya::HashMap<u128, Cell>,
    epoch: Instant,
    max: usize,
}

impl LocalBuckets {
    /// Buckets for at most `max` keys at once.
    pub fn new(max: usize) -> Self {
        LocalBuckets {
            cells: papaya::HashMap::new(),
            epoch: Instant::now(),
            max: max.max(1),
        }
    }

    fn now(&self) -> u64 {
        // A new bucket's time is 0, before any `now`: it starts full.
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// How many buckets are held.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Evicts the buckets that have refilled completely; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let cells = self.cells.pin();
        cells.retain(|_, c| c.tat.load(Ordering::Relaxed) > now);
        cells.len()
    }

    /// Updates bucket `key` with `step(tat, now)`, which returns the new time or a refusal.
    fn update(
        &self,
        key: u128,
        mut step: impl FnMut(u64, u64) -> Result<u64, Refused>,
    ) -> Result<(), Refused> {
        let cells = self.cells.pin();
        let cell = match cells.get(&key) {
            Some(c) => c,
            None => {
                if cells.len() >= self.max {
                    let now = self.now();
                    cells.retain(|_, c| c.tat.load(Ordering::Relaxed) > now);
                    if cells.len() >= self.max {
                        return Err(Refused::Full);
                    }
                }
                cells.get_or_insert(
                    key,
                    Cell {
                        tat: AtomicU64::new(0),
                    },
                )
            }
        };
        let mut tat = cell.tat.load(Ordering::Acquire);
        loop {
            let next = step(tat, self.now())?;
            match cell
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Takes one token from bucket `key`, or says when one comes back.
    pub fn take(&self, key: u128, rate: Rate) -> Result<(), Refused> {
        self.update(key, |tat, now| {
            let next = tat.max(now).saturating_add(rate.interval);
            if next - now > rate.period {
                Err(Refused::Empty(Duration::from_nanos(
                    next - rate.period - now,
                )))
            } else {
                Ok(next)
            }
        })
    }

    /// Takes one token whether or not the bucket has one: a request the fleet store allowed is
    /// recorded here too, so that this replica goes on from its own count if the store fails.
    pub fn record(&self, key: u128, rate: Rate) {
        let _ = self.update(key, |tat, now| {
            Ok(tat.max(now).saturating_add(rate.interval))
        });
    }

    /// Gives back a token taken by [`Self::take`] (a later limit of the same request refused).
    pub fn give_back(&self, key: u128, rate: Rate) {
        if let Some(cell) = self.cells.pin().get(&key) {
            let _ = cell
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_sub(rate.interval))
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Rate = Rate {
        interval: 720_000_000_000,
        period: 3_600_000_000_000,
    };

    #[test]
    fn a_bucket_holds_exactly_its_size_and_keys_do_not_share() {
        let b = LocalBuckets::new(10);
        for _ in 0..5 {
            b.take(1, HOUR).unwrap();
        }
        match b.take(1, HOUR) {
            Err(Refused::Empty(d)) => assert!(d > Duration::from_secs(700), "{d:?}"),
            other => panic!("{other:?}"),
        }
        for _ in 0..5 {
            b.take(2, HOUR).unwrap();
        }
        assert!(b.take(2, HOUR).is_err());
        b.give_back(2, HOUR);
        b.take(2, HOUR).unwrap();
        assert!(b.take(2, HOUR).is_err());
    }

    #[test]
    fn concurrent_takes_are_exact() {
        let b = std::sync::Arc::new(LocalBuckets::new(10));
        let rate = Rate {
            interval: 36_000_000_000,
            period: 3_600_000_000_000,
        };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || (0..100).filter(|_| b.take(7, rate).is_ok()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn the_map_is_bounded_and_idle_buckets_go() {
        let b = LocalBuckets::new(2);
        let tiny = Rate {
            interval: 1,
            period: 1,
        };
        b.take(1, HOUR).unwrap();
        b.take(2, HOUR).unwrap();
        assert_eq!(b.take(3, HOUR), Err(Refused::Full));
        let b = LocalBuckets::new(2);
        b.take(1, tiny).unwrap();
        b.take(2, HOUR).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        // Bucket 1 has refilled: it makes room for a new key.
        b.take(3, HOUR).unwrap();
        assert_eq!(b.sweep(), 2);
    }
}
