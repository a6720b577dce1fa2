//! Fleet-wide buckets in Redis, shared by every replica of a server: one Lua script per check
//! (EVALSHA; GCRA on Redis's own clock, so the replicas' clocks do not matter) checks every
//! fleet limit of a request and takes a token from each only when all have one. Keys share a
//! hash tag per server, so the script runs on Redis Cluster too.
//!
//! The connection is one multiplexed, self-reconnecting `ConnectionManager`; every check is
//! bounded by `--rate-limit-redis-timeout`. A failed check marks the store down: until a
//! background PING (every second) finds it answering again, checks do not wait on it and the
//! caller falls back to the local buckets. Failures are counted, and logged when the store goes
//! down, at most once per [`LOG_INTERVAL`] while it stays down, and when it comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

/// At most one log line per this interval while the store stays unreachable.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the store's health is checked (and a lost connection retried).
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Checks every bucket given (KEYS, with ARGV holding each one's interval and period in µs);
/// takes a token from each only when every one has one. Returns `{0, 0}`, or the 1-based index
/// of the first empty bucket and the µs until its token comes back.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0') or 0
  if tat < now then tat = now end
  local next = tat + interval
  if next - now > period then
    return {i, next - period - now}
  end
  tats[i] = next
end
for i, key in ipairs(KEYS) do
  local ttl = math.floor((tats[i] - now) / 1000) + 1
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
"#;

/// One bucket of a fleet check.
pub struct FleetBucket {
    pub key: String,
    /// A token comes back every `interval_us`; a full bucket holds `period_us / interval_us`.
    pub interval_us: u64,
    pub period_us: u64,
}

/// Why a fleet check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the rate-limit store is down (last error: {0})")]
    Down(String),
    #[error("the rate-limit store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the rate-limit store failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the rate-limit store answered {0:?}, not the script's [index, wait]")]
    Answer(Vec<i64>),
}

/// The fleet store, as the request path sees it.
pub struct Fleet {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    timeout: Duration,
    script: redis::Script,
    metrics: Arc<Metrics>,
    /// Failures since the last log line, and when that line was written.
    failures: AtomicU64,
    last_log: parking_lot::Mutex<Option<Instant>>,
    last_error: parking_lot::Mutex<String>,
    /// Where the store is, for logs (never with a password).
    pub address: String,
}

impl Fleet {
    /// A store at `info`, not yet connected: [`Fleet::run`] connects and watches it.
    pub fn new(
        info: redis::ConnectionInfo,
        address: String,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        Ok(Fleet {
            client: redis::Client::open(info)?,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            timeout,
            script: redis::Script::new(SCRIPT),
            metrics,
            failures: AtomicU64::new(0),
            last_log: parking_lot::Mutex::new(None),
            last_error: parking_lot::Mutex::new("not connected yet".into()),
            address,
        })
    }

    /// Whether checks go to the store now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Connects, then checks the store's health every second for as long as the sidecar runs.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let healthy = match self.connection().await {
                Ok(mut c) => {
                    let cmd = redis::cmd("PING");
                    let ping = cmd.query_async::<String>(&mut c);
                    match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), ping)
                        .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("PING took longer than {:?}", self.timeout)),
                    }
                }
                Err(e) => Err(e),
            };
            match healthy {
                Ok(()) => self.mark_up(),
                Err(e) => self.mark_down(&e),
            }
        }
    }

    /// The shared connection, made on first use.
    async fn connection(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let c = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        self.conn.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.rate_limit_store_up(true);
            let failed = self.failures.swap(0, Ordering::Relaxed);
            tracing::info!(redis = %self.address, failed_checks = failed, "rate-limit store reachable: fleet-wide limits apply");
        }
    }

    /// Notes a failure: the first one after the store was up is logged at once, later ones at
    /// most once per [`LOG_INTERVAL`] with their count.
    fn mark_down(&self, error: &str) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        *self.last_error.lock() = error.to_owned();
        if was_up {
            self.metrics.rate_limit_store_up(false);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock();
        if was_up || last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %self.address, error, failures = n, "rate-limit store unreachable: fleet-wide limits fall back to this replica's buckets (or refuse, where the limit says so)");
        }
    }

    /// Takes a token from every bucket when each has one. `Ok(None)`: taken; `Ok(Some((i,
    /// wait)))`: bucket `i` is empty and nothing was taken.
    pub async fn check(
        &self,
        buckets: &[FleetBucket],
    ) -> Result<Option<(usize, Duration)>, FleetError> {
        if !self.is_up() {
            return Err(FleetError::Down(self.last_error.lock().clone()));
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(FleetError::Down("not connected yet".into()));
        };
        let mut conn = (*conn).clone();
        let mut call = self.script.prepare_invoke();
        for b in buckets {
            call.key(&b.key).arg(b.interval_us).arg(b.period_us);
        }
        let answer = match tokio::time::timeout(
            self.timeout,
            call.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                return Err(FleetError::Redis(e));
            }
            Err(_) => {
                let e = FleetError::Timeout(self.timeout);
                self.mark_down(&e.to_string());
                return Err(e);
            }
        };
        match answer.as_slice() {
            [0, _] => Ok(None),
            [i, wait] if *i >= 1 && (*i as usize) <= buckets.len() => Ok(Some((
                (*i - 1) as usize,
                Duration::from_micros(u64::try_from(*wait).unwrap_or(0)),
            ))),
            _ => Err(FleetError::Answer(answer)),
        }
    }
}
