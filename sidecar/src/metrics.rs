//! Prometheus metrics of the request path, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// The MCP methods that get their own label value; anything else is `other`, so a client cannot
/// blow up the metric's cardinality.
const KNOWN_METHODS: [&str; 24] = [
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "sampling/createMessage",
    "elicitation/create",
];

/// The label value for a method name.
pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "none",
        Some(m) => KNOWN_METHODS
            .into_iter()
            .find(|k| *k == m)
            .unwrap_or("other"),
    }
}

/// The sidecar's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
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
        Metrics {
            registry,
            requests,
            durations,
        }
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
    }
}
