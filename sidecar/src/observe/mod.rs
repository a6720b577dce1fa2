//! Observability in one place. The request path produces one [`Record`] per HTTP request (the
//! decision on each of its messages, how it ended, a few instants) and hands it, when its answer
//! ends, to a bounded queue with `try_send`; it never waits. One worker thread derives each
//! observed message's [`Observation`] once (parsing again what it needs of the request and of
//! the captured answer) and gives it to every [`Consumer`] that is on: the audit trail
//! ([`crate::audit::Lines`]), the spans and the OTLP call meters ([`crate::telemetry`]), the
//! Prometheus call metrics ([`crate::metrics::Calls`]). Each is switched on its own; with none
//! on, no worker runs and the request path builds no record.
//!
//! When the queue is full the record is dropped, counted in `mcp_guard_audit_dropped_total` and
//! logged (at most once per interval).

mod observation;
mod record;
pub mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use mcp_guard_policy::mcp::{Class, Method};
#[cfg(test)]
pub(crate) use observation::each;
pub use observation::{Decided, Observation};
pub(crate) use record::Record;
#[cfg(test)]
pub(crate) use record::{Answer, End, Event};
pub use record::{Begin, ListNotes, Recording};

/// Whether requests of `method` are observed (audited, spanned, counted as calls): every method
/// but the plumbing ones (the decided methods and the lists).
pub fn observed(method: Method) -> bool {
    method.class() != Class::Plumbing
}

/// How often a lost record or a write failure is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Records the worker takes in one batch before its consumers flush.
const BATCH_RECORDS: usize = 256;

/// How long the worker lets records gather after a batch.
const WORKER_LINGER: Duration = Duration::from_millis(2);

/// The governed server, as every audit line and the telemetry resource name it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerRef {
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

/// One of the three uses of an observation: audit lines, spans, call metrics. Runs on the
/// observation worker's thread, never on the request path.
pub trait Consumer: Send {
    /// One observed message of a completed record.
    fn observe(&mut self, o: &Observation<'_>);

    /// The end of a batch: the worker is about to wait for more records.
    fn flush(&mut self) {}
}

/// Counts events and logs them at most once per [`LOG_INTERVAL`].
pub(crate) struct RateLimited {
    origin: Instant,
    /// Milliseconds since `origin` of the last log line, plus one (0: never).
    last: AtomicU64,
    pending: AtomicU64,
}

impl std::fmt::Debug for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimited")
    }
}

impl RateLimited {
    pub(crate) fn new() -> Self {
        RateLimited {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Adds `n`; returns the count to log when a line is due.
    pub(crate) fn add(&self, n: u64) -> Option<u64> {
        self.pending.fetch_add(n, Ordering::Relaxed);
        let now = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return None;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

enum Msg {
    Record(Box<Record>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Counts what is lost (records the queue refused), as `mcp_guard_audit_dropped_total`.
pub type Lost = Arc<dyn Fn(u64) + Send + Sync>;

/// What the worker needs besides its consumers.
pub struct Settings {
    /// Records that may wait for the worker; beyond that they are dropped, never waited for.
    pub queue: usize,
    /// The enforcement mode the decisions were taken in (`enforce`, `shadow`).
    pub mode: &'static str,
    /// Spans are exported: the request path picks span ids and propagates them.
    pub spans: bool,
}

/// The observation queue, shared by the request path.
pub struct Observer {
    tx: mpsc::Sender<Msg>,
    lost: Lost,
    drops: RateLimited,
    spans: bool,
}

impl Observer {
    /// Starts the worker with the consumers that are on; `None` (no worker, no records) when
    /// none is.
    pub fn start(
        settings: Settings,
        consumers: Vec<Box<dyn Consumer>>,
        lost: Lost,
    ) -> std::io::Result<Option<Arc<Observer>>> {
        if consumers.is_empty() {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let mode = settings.mode;
        std::thread::Builder::new()
            .name("mcp-guard-observe".into())
            .spawn(move || work(rx, consumers, mode))?;
        Ok(Some(Arc::new(Observer {
            tx,
            lost,
            drops: RateLimited::new(),
            spans: settings.spans,
        })))
    }

    /// Whether spans are exported (the request path then picks span ids and propagates them).
    pub fn spans(&self) -> bool {
        self.spans
    }

    fn submit(&self, record: Box<Record>) {
        let n = record.events.len() as u64;
        if let Err(e) = self.tx.try_send(Msg::Record(record)) {
            (self.lost)(n);
            if let Some(count) = self.drops.add(n) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the audit queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the audit writer stopped",
                };
                tracing::warn!(
                    dropped = count,
                    "audit records dropped: {why} (see mcp_guard_audit_dropped_total)"
                );
            }
        }
    }

    /// Waits (at most `timeout`) until every record queued so far is consumed.
    pub async fn flush(&self, timeout: Duration) {
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        if tokio::time::timeout(timeout, self.tx.send(Msg::Flush(ack_tx)))
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || ack_rx.recv_timeout(timeout)).await;
    }
}

/// The worker: takes the records in batches, gives each observation to every consumer, lets
/// them flush at the end of a batch.
fn work(mut rx: mpsc::Receiver<Msg>, mut consumers: Vec<Box<dyn Consumer>>, mode: &'static str) {
    while let Some(first) = rx.blocking_recv() {
        let mut acks = Vec::new();
        let mut records = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => {
                    observation::each(&r, mode, |o| {
                        for c in consumers.iter_mut() {
                            c.observe(o);
                        }
                    });
                    records += 1;
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            if records < BATCH_RECORDS {
                next = rx.try_recv().ok();
            }
        }
        for c in consumers.iter_mut() {
            c.flush();
        }
        for ack in acks {
            let _ = ack.try_send(());
        }
        // Let the next records gather before waiting for them: a worker parked on an empty queue
        // is woken by every record (a futex wake on the request path), one that lingers is woken
        // by none and takes them in one batch. Records wait at most this long more. A batch that
        // stopped at its cap goes on at once, so a busy sidecar's worker never falls behind.
        if records < BATCH_RECORDS {
            std::thread::sleep(WORKER_LINGER);
        }
    }
}

/// The receiving end of an observer's queue, read by a test instead of the worker.
#[cfg(test)]
pub(crate) struct TestQueue(mpsc::Receiver<Msg>);

#[cfg(test)]
impl TestQueue {
    pub(crate) fn try_record(&mut self) -> Option<Box<Record>> {
        match self.0.try_recv() {
            Ok(Msg::Record(r)) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
impl Observer {
    /// An observer whose queue (of `capacity`) a test reads.
    pub(crate) fn queue(capacity: usize, lost: Lost) -> (Arc<Observer>, TestQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        let observer = Observer {
            tx,
            lost,
            drops: RateLimited::new(),
            spans: false,
        };
        (Arc::new(observer), TestQueue(rx))
    }
}
