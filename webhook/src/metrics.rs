//! The webhook's Prometheus metrics, served at `/metrics`:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `mcp_guard_webhook_injected_total` | `traffic` | pods injected |
//! | `mcp_guard_webhook_skipped_total` | `reason` | pods left alone, by reason |
//! | `mcp_guard_webhook_denied_total` | | pods refused for an invalid annotation |
//! | `mcp_guard_webhook_errors_total` | `kind` | reviews that could not be processed |
//! | `mcp_guard_webhook_admission_duration_seconds` | | time from request to answer |
//! | `mcp_guard_webhook_tls_reloads_total` | `result` | serving certificate reloads |
//! | `mcp_guard_webhook_policy_refused_total` | | policy ConfigMaps refused by `/validate` |

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::annotations::Traffic;
use crate::selection::SkipReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabel {
    traffic: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// All metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    injected: Family<TrafficLabel, Counter>,
    skipped: Family<ReasonLabel, Counter>,
    denied: Counter,
    errors: Family<KindLabel, Counter>,
    duration: Histogram,
    tls_reloads: Family<ResultLabel, Counter>,
    policy_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_guard_webhook");
        let injected = Family::<TrafficLabel, Counter>::default();
        let skipped = Family::<ReasonLabel, Counter>::default();
        let denied = Counter::default();
        let errors = Family::<KindLabel, Counter>::default();
        // 25 µs .. ~1.6 s: admission is usually well under a millisecond.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.000_025, 2.0, 17,
        ));
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        registry.register("injected", "Pods injected", injected.clone());
        registry.register("skipped", "Pods left alone, by reason", skipped.clone());
        registry.register(
            "denied",
            "Pods refused for an invalid annotation",
            denied.clone(),
        );
        registry.register(
            "errors",
            "Admission reviews that could not be processed",
            errors.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission review",
            duration.clone(),
        );
        registry.register(
            "tls_reloads",
            "Serving certificate reloads",
            tls_reloads.clone(),
        );
        let policy_refused = Counter::default();
        registry.register(
            "policy_refused",
            "Policy ConfigMaps refused by /validate because they do not compile",
            policy_refused.clone(),
        );
        // Make every series visible from the start.
        for r in SkipReason::ALL {
            let _ = skipped.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        for t in [Traffic::Takeover, Traffic::Redirect, Traffic::Explicit] {
            let _ = injected.get_or_create(&TrafficLabel {
                traffic: t.as_str(),
            });
        }
        Self {
            registry: Arc::new(registry),
            injected,
            skipped,
            denied,
            errors,
            duration,
            tls_reloads,
            policy_refused,
        }
    }

    pub fn policy_refused(&self) {
        self.policy_refused.inc();
    }

    pub fn injected(&self, traffic: Traffic) {
        self.injected
            .get_or_create(&TrafficLabel {
                traffic: traffic.as_str(),
            })
            .inc();
    }

    pub fn skipped(&self, reason: SkipReason) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn denied(&self) {
        self.denied.inc();
    }

    /// `kind`: `bad_request` (not an AdmissionReview), `no_object`, ...
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn observe_duration(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// `result`: `ok` or `error`.
    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
