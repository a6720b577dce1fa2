//! Prometheus metrics of the request path, served on the admin port's `/metrics`.

use mcp_guard_policy::mcp::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets (seconds) that start below 100 µs: the sidecar's own cost lives there.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// How a request ended, from the sidecar's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forwarded and answered by the server.
    Ok,
    /// Refused by the interception point.
    Denied,
    /// Refused as malformed (not JSON, not JSON-RPC, too large, header mismatch).
    Invalid,
    /// The server could not be reached or failed.
    UpstreamError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    outcome: &'static str,
}

/// The label value for a method name: the methods MCP defines ([`Method`]) get their own;
/// anything else is `other`, so a client cannot blow up the metric's cardinality.
pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "none",
        Some(m) => Method::parse(m).name().unwrap_or("other"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    tool: String,
    decision: &'static str,
    outcome: &'static str,
}

/// Tool names that get their own label value; past this many, `other`.
pub(crate) const MAX_TOOL_SERIES: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
    store: &'static str,
}

/// Limit names that get their own label value; past this many, `other`.
const MAX_LIMIT_SERIES: usize = 256;

/// Names that get a label value of their own up to a bound, and `other` past it, so that a
/// client cannot inflate a metric's cardinality with made-up names.
pub(crate) struct Bounded {
    max: usize,
    seen: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl Bounded {
    pub(crate) fn new(max: usize) -> Bounded {
        Bounded {
            max,
            seen: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The label value for `name`.
    pub(crate) fn label(&self, name: &str) -> String {
        let mut seen = self.seen.lock();
        if seen.contains(name) || (seen.len() < self.max && seen.insert(name.to_owned())) {
            name.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// The sidecar's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    policy_reloads: Family<ResultLabels, Counter>,
    policy_info: Family<HashLabels, Gauge>,
    shadow_denied: Family<MethodLabels, Counter>,
    tool_changes: Counter,
    audit_dropped: Counter,
    key_refreshes: Family<ResultLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_durations: Family<CallLabels, Histogram>,
    tools_seen: Bounded,
    rate_limited: Family<LimitLabels, Counter>,
    limits_seen: Bounded,
    rate_limit_fallbacks: Counter,
    rate_limit_store_up: Gauge,
    rate_limit_buckets: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mcp_guard");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register(
            "requests",
            "MCP messages handled, by method and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, by method and outcome",
            durations.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy bundles tried, by result (success: put in force; failure: refused, the previous one kept)",
            policy_reloads.clone(),
        );
        let policy_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "1 for the hash of the policy bundle in force (no series while none is)",
            policy_info.clone(),
        );
        let shadow_denied = Family::<MethodLabels, Counter>::default();
        registry.register(
            "shadow_denied",
            "Requests the policy would deny, forwarded because enforcement is shadow",
            shadow_denied.clone(),
        );
        let tool_changes = Counter::default();
        registry.register(
            "tool_definition_changes",
            "Tool definitions that changed from the one pinned when the tool was first listed",
            tool_changes.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit lines lost: the audit queue was full or the audit output could not be written",
            audit_dropped.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Audited MCP requests (governed and list methods), by method, tool, decision and outcome",
            calls.clone(),
        );
        let call_durations = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register(
            "call_duration_seconds",
            "Audited MCP requests from arrival to the end of the answer, by method, tool, decision and outcome",
            call_durations.clone(),
        );
        let key_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "key_refreshes",
            "Fetches of the identity provider's signing keys (JWKS), by result",
            key_refreshes.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit of the policy, by limit and where it was counted (local, fleet, or unavailable: the fleet store could not be reached and the limit refuses then)",
            rate_limited.clone(),
        );
        let rate_limit_fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallbacks",
            "Fleet-wide limit checks decided by this replica because the fleet store (Redis) could not be reached",
            rate_limit_fallbacks.clone(),
        );
        let rate_limit_store_up = Gauge::default();
        registry.register(
            "rate_limit_store_up",
            "1 while the fleet store (Redis) answers and fleet-wide limits are counted there; 0 while it does not (or none is configured)",
            rate_limit_store_up.clone(),
        );
        let rate_limit_buckets = Gauge::default();
        registry.register(
            "rate_limit_buckets",
            "Local rate-limit buckets held by this replica (idle ones are evicted)",
            rate_limit_buckets.clone(),
        );
        Metrics {
            rate_limited,
            limits_seen: Bounded::new(MAX_LIMIT_SERIES),
            rate_limit_fallbacks,
            rate_limit_store_up,
            rate_limit_buckets,
            key_refreshes,
            calls,
            call_durations,
            tools_seen: Bounded::new(MAX_TOOL_SERIES),
            registry,
            requests,
            durations,
            policy_reloads,
            policy_info,
            shadow_denied,
            tool_changes,
            audit_dropped,
        }
    }

    /// Counts one observed request (on the observation worker's thread, off the request path).
    /// Tool names get their own label value up to a bound, then `other`.
    pub fn record_call(
        &self,
        method: &str,
        tool: Option<&str>,
        decision: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let tool = match tool {
            None => String::new(),
            Some(t) => self.tools_seen.label(t),
        };
        let labels = CallLabels {
            method: method_label(Some(method)),
            tool,
            decision,
            outcome,
        };
        self.calls.get_or_create(&labels).inc();
        self.call_durations.get_or_create(&labels).observe(seconds);
    }

    /// A request was refused by rate limit `limit`, counted in `store`. Limit names get their
    /// own label value up to a bound, then `other`.
    pub fn rate_limited(&self, limit: &str, store: &'static str) {
        let limit = self.limits_seen.label(limit);
        self.rate_limited
            .get_or_create(&LimitLabels { limit, store })
            .inc();
    }

    /// A fleet-wide check was decided locally: the fleet store could not be reached.
    pub fn rate_limit_fallback(&self) {
        self.rate_limit_fallbacks.inc();
    }

    /// Fleet-wide checks decided locally so far.
    pub fn rate_limit_fallbacks_total(&self) -> u64 {
        self.rate_limit_fallbacks.get()
    }

    /// The fleet store answers (or stopped answering).
    pub fn rate_limit_store_up(&self, up: bool) {
        self.rate_limit_store_up.set(i64::from(up));
    }

    /// Local buckets held.
    pub fn rate_limit_buckets(&self, n: usize) {
        self.rate_limit_buckets
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A new bundle went into force.
    pub fn policy_loaded(&self, hash: &str, previous: Option<&str>) {
        self.policy_reloads
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
        if let Some(p) = previous {
            self.policy_info.remove(&HashLabels { hash: p.to_owned() });
        }
        self.policy_info
            .get_or_create(&HashLabels {
                hash: hash.to_owned(),
            })
            .set(1);
    }

    /// A bundle was refused.
    pub fn policy_failed(&self) {
        self.policy_reloads
            .get_or_create(&ResultLabels { result: "failure" })
            .inc();
    }

    /// A request the policy would deny went through in shadow mode.
    pub fn shadow_denied(&self, method: Option<&str>) {
        self.shadow_denied
            .get_or_create(&MethodLabels {
                method: method_label(method),
            })
            .inc();
    }

    /// A tool's definition changed from its pinned one.
    pub fn tool_changed(&self) {
        self.tool_changes.inc();
    }

    /// A fetch of the identity provider's keys ended (`success` or `failure`).
    pub fn key_refreshed(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.key_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Key fetches so far with this `result` (`success` or `failure`).
    pub fn key_refreshes_total(&self, result: &'static str) -> u64 {
        self.key_refreshes
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// Audit lines lost so far.
    pub fn audit_dropped_total(&self) -> u64 {
        self.audit_dropped.get()
    }

    /// Policy bundles tried so far with this `result` (`success` or `failure`).
    pub fn policy_reloads_total(&self, result: &'static str) -> u64 {
        self.policy_reloads
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// Audit lines were lost.
    pub fn audit_dropped(&self, lines: u64) {
        self.audit_dropped.inc_by(lines);
    }

    /// Counts one handled message.
    pub fn record(&self, method: Option<&str>, outcome: Outcome, seconds: f64) {
        let labels = RequestLabels {
            method: method_label(method),
            outcome: outcome.as_str(),
        };
        self.requests.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The call metrics (`mcp_guard_calls_total`, `mcp_guard_call_duration_seconds`) as a consumer
/// of observations; off with `--call-metrics-disabled`.
pub struct Calls(pub std::sync::Arc<Metrics>);

impl crate::observe::Consumer for Calls {
    fn observe(&mut self, o: &crate::observe::Observation<'_>) {
        self.0.record_call(
            o.method,
            o.tool(),
            o.decision.label(),
            o.outcome,
            o.total.as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_bounded_labels() {
        let m = Metrics::new();
        m.record(Some("tools/call"), Outcome::Denied, 0.00003);
        m.record(Some("made/up/by/client"), Outcome::Ok, 0.002);
        let text = m.encode();
        assert!(
            text.contains("mcp_guard_requests_total{method=\"tools/call\",outcome=\"denied\"} 1"),
            "{text}"
        );
        assert!(text.contains("method=\"other\""), "{text}");
        assert!(
            text.contains("le=\"5e-5\"") || text.contains("le=\"0.00005\""),
            "{text}"
        );
        m.record_call("tools/call", Some("echo"), "deny", "denied", 0.0001);
        let text = m.encode();
        let series = r#"mcp_guard_calls_total{method="tools/call",tool="echo",decision="deny",outcome="denied"} 1"#;
        assert!(text.contains(series), "{text}");
    }
}
