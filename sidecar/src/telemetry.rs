//! OpenTelemetry: a server span per audited MCP request, exported over OTLP (HTTP/protobuf or
//! gRPC), with the W3C trace context taken from the request and passed on to the MCP server.
//!
//! The request path only picks the ids (the incoming `traceparent`'s trace id, a new span id) and
//! puts a `traceparent` on the forwarded request. The span itself is built, with its real start
//! and end times, by the audit writer thread when the request's record is complete, and handed to
//! the SDK's batch processor, whose queue never blocks: telemetry costs the request path two
//! random numbers and one header.

use std::cell::Cell;
use std::time::SystemTime;

use clap::Args;
use mcp_guard_common::env;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use parking_lot::Mutex;

/// OpenTelemetry flags. The standard `OTEL_*` variables apply as well (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_*`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`,
/// `OTEL_SDK_DISABLED`).
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryConfig {
    /// OTLP endpoint for spans (`http://collector:4318` for HTTP, `http://collector:4317` for
    /// gRPC). When unset, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// when none is set, OpenTelemetry is off.
    #[arg(long, env = env::OTLP_ENDPOINT)]
    pub otlp_endpoint: Option<String>,

    /// `http/protobuf` or `grpc`. When unset, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    #[arg(long, env = env::OTLP_PROTOCOL)]
    pub otlp_protocol: Option<String>,

    /// Share of new traces (requests without a sampled `traceparent` of their own) that are
    /// recorded, from 0 to 1; a caller's sampling decision is always followed. When unset, the
    /// SDK's `OTEL_TRACES_SAMPLER` applies (default: every trace).
    #[arg(long, env = env::OTLP_SAMPLING_RATIO, value_parser = parse_ratio)]
    pub otlp_sampling_ratio: Option<f64>,
}

/// A ratio from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "expected a number from 0 to 1, such as 0.25, not {s:?}"
        )),
    }
}

/// The sampling ratio of new traces, as `f64` bits (1.0 until `--otlp-sampling-ratio` says
/// otherwise): read on every request that starts a trace.
static ROOT_SAMPLING: AtomicU64 = AtomicU64::new(1.0f64.to_bits());

/// Whether a new trace with this id is recorded at `ratio`: the W3C/OpenTelemetry trace-id
/// ratio rule (the id's low 63 bits against `ratio` × 2^63), so the sidecar's `traceparent` flag
/// and the SDK's `TraceIdRatioBased` sampler always agree on the same trace.
fn ratio_samples(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

/// The W3C trace context of one request as the sidecar handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span, when the request carried a `traceparent`.
    pub parent: Option<u64>,
    /// The sidecar's server span: the parent the MCP server sees.
    pub span_id: u64,
    pub sampled: bool,
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): (trace id, span id, flags).
pub fn parse_traceparent(s: &str) -> Option<(u128, u64, u8)> {
    let s = s.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    // Version 00 has exactly four fields; later versions may add more.
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(trace, 32) || !hex(span, 16) {
        return None;
    }
    if !hex(flags, 2) || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let span = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span, flags))
}

impl TraceContext {
    /// A new server span: a child of `parent` when the request carried one, else a new trace.
    pub fn new(parent: Option<(u128, u64, u8)>) -> Self {
        let ids = RandomIdGenerator::default();
        let span_id = u64::from_be_bytes(ids.new_span_id().to_bytes());
        match parent {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent: Some(parent),
                span_id,
                sampled: flags & 1 == 1,
            },
            None => {
                let trace_id = u128::from_be_bytes(ids.new_trace_id().to_bytes());
                let ratio = f64::from_bits(ROOT_SAMPLING.load(Ordering::Relaxed));
                TraceContext {
                    trace_id,
                    parent: None,
                    span_id,
                    sampled: ratio_samples(trace_id, ratio),
                }
            }
        }
    }

    /// Only the caller's trace id, for the audit line when OpenTelemetry is off.
    pub fn observed(parent: (u128, u64, u8)) -> Self {
        TraceContext {
            trace_id: parent.0,
            parent: Some(parent.1),
            span_id: parent.1,
            sampled: parent.2 & 1 == 1,
        }
    }

    /// The `traceparent` the MCP server gets: this trace, the sidecar's span as parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

thread_local! {
    /// The ids the next span built on this thread takes (see [`PresetIds`]).
    static NEXT_IDS: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// Gives a span the ids the request path already chose (and already sent to the MCP server),
/// random ones otherwise.
#[derive(Debug, Default)]
struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((t, _)) => TraceId::from_bytes(t.to_be_bytes()),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, s)) => SpanId::from_bytes(s.to_be_bytes()),
            None => self.0.new_span_id(),
        }
    }
}

/// The OTLP exporter, its failures logged at most once per interval (with how many there were)
/// instead of once per batch.
#[derive(Debug)]
struct Quiet<E> {
    inner: E,
    failures: crate::audit::RateLimited,
}

impl std::fmt::Debug for crate::audit::RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimited")
    }
}

impl<E: SpanExporter> SpanExporter for Quiet<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        if let Err(e) = self.inner.export(batch).await
            && let Some(lost) = self.failures.add(spans)
        {
            tracing::warn!(error = %e, spans_lost = lost, "OpenTelemetry export failed (logged at most once per interval)");
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// What one span says.
pub struct SpanRecord {
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub trace: TraceContext,
    /// This span's id (the request's [`TraceContext::span_id`] for its first message).
    pub span_id: u64,
    pub attributes: Vec<KeyValue>,
    /// `Some(description)` marks the span as failed.
    pub error: Option<String>,
}

/// Distinct tool names a metric series is kept for; beyond them the tool is `other`, so that
/// clients calling made-up tools cannot inflate the metrics' cardinality.
const MAX_TOOL_SERIES: usize = 256;

/// The tracer and meter providers, when OTLP export is configured.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    meters: Option<Meters>,
}

#[derive(Clone)]
struct Meters {
    provider: SdkMeterProvider,
    requests: Counter<u64>,
    duration: Histogram<f64>,
    tools: Arc<Mutex<HashSet<String>>>,
}

/// The OTLP metric exporter, its failures logged at most once per interval.
struct QuietMetrics<E> {
    inner: E,
    failures: crate::audit::RateLimited,
}

impl<E: PushMetricExporter> PushMetricExporter for QuietMetrics<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        if let Err(e) = self.inner.export(metrics).await
            && let Some(n) = self.failures.add(1)
        {
            tracing::warn!(error = %e, failed_exports = n, "OpenTelemetry metric export failed (logged at most once per interval)");
        }
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Telemetry {
    /// Sets up OTLP export, or `None` when no endpoint is configured. Must run inside the Tokio
    /// runtime (the gRPC client needs it).
    pub fn start(
        config: &TelemetryConfig,
        server: &crate::audit::ServerRef,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Telemetry>, String> {
        if env(env::OTEL_SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let from_env = env(env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
            .or_else(|| env(env::OTEL_EXPORTER_OTLP_ENDPOINT));
        let flag = config
            .otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty());
        let Some(endpoint) = flag.clone().or(from_env) else {
            return Ok(None);
        };
        let protocol = config
            .otlp_protocol
            .clone()
            .or_else(|| env(env::OTEL_EXPORTER_OTLP_TRACES_PROTOCOL))
            .or_else(|| env(env::OTEL_EXPORTER_OTLP_PROTOCOL))
            .unwrap_or_else(|| "http/protobuf".into());
        let exporter = match protocol.trim() {
            "grpc" => {
                let b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                match &flag {
                    Some(e) => b.with_endpoint(e.trim()).build(),
                    None => b.build(),
                }
            }
            "http/protobuf" => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                match &flag {
                    Some(e) => {
                        let e = e.trim().trim_end_matches('/');
                        let url = if e.ends_with("/v1/traces") {
                            e.to_owned()
                        } else {
                            format!("{e}/v1/traces")
                        };
                        b.with_endpoint(url).build()
                    }
                    None => b.build(),
                }
            }
            other => {
                return Err(format!(
                    "unsupported OTLP protocol {other:?}: use http/protobuf or grpc"
                ));
            }
        }
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;

        let mut resource = opentelemetry_sdk::Resource::builder();
        let named = env(env::OTEL_SERVICE_NAME).is_some()
            || env(env::OTEL_RESOURCE_ATTRIBUTES).is_some_and(|a| a.contains("service.name="));
        if !named {
            resource = resource.with_service_name("mcp-guard-sidecar");
        }
        let mut attrs = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
        if !server.namespace.is_empty() {
            attrs.push(KeyValue::new(
                "k8s.namespace.name",
                server.namespace.clone(),
            ));
        }
        if !server.pod.is_empty() {
            attrs.push(KeyValue::new("k8s.pod.name", server.pod.clone()));
        }
        if !server.name.is_empty() {
            attrs.push(KeyValue::new("mcp.server.name", server.name.clone()));
        }
        let resource = resource.with_attributes(attrs).build();
        let meters = if env(env::OTEL_METRICS_EXPORTER).is_some_and(|v| v.trim() == "none") {
            None
        } else {
            Some(meters(
                &protocol,
                flag.as_deref(),
                resource.clone(),
                metrics,
            )?)
        };
        let mut provider = SdkTracerProvider::builder();
        if let Some(ratio) = config.otlp_sampling_ratio {
            ROOT_SAMPLING.store(ratio.to_bits(), Ordering::Relaxed);
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = provider
            .with_batch_exporter(Quiet {
                inner: exporter,
                failures: crate::audit::RateLimited::new(),
            })
            .with_id_generator(PresetIds::default())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mcp-guard");
        tracing::info!(endpoint = %endpoint, protocol = %protocol, metrics = meters.is_some(), "OpenTelemetry export enabled");
        Ok(Some(Telemetry {
            provider,
            tracer,
            meters,
        }))
    }

    /// Counts one audited request and its duration (on the audit writer thread).
    pub fn record(
        &self,
        method: &str,
        tool: Option<&str>,
        decision: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let Some(m) = &self.meters else {
            return;
        };
        let mut attrs = Vec::with_capacity(4);
        attrs.push(KeyValue::new(
            "mcp.method.name",
            crate::metrics::method_label(Some(method)),
        ));
        if let Some(t) = tool {
            let known = {
                let mut tools = m.tools.lock();
                tools.contains(t) || (tools.len() < MAX_TOOL_SERIES && tools.insert(t.to_owned()))
            };
            let t = if known {
                t.to_owned()
            } else {
                "other".to_owned()
            };
            attrs.push(KeyValue::new("gen_ai.tool.name", t));
        }
        attrs.push(KeyValue::new("mcp_guard.decision", decision));
        attrs.push(KeyValue::new("mcp_guard.outcome", outcome));
        m.requests.add(1, &attrs);
        m.duration.record(seconds, &attrs);
    }

    /// Builds and ends one span (on the audit writer thread).
    pub fn span(&self, s: SpanRecord) {
        let parent = match s.trace.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(s.trace.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.to_be_bytes()),
                if s.trace.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        NEXT_IDS.with(|c| c.set(Some((s.trace.trace_id, s.span_id))));
        let mut span = self
            .tracer
            .span_builder(s.name)
            .with_kind(SpanKind::Server)
            .with_start_time(s.start)
            .with_attributes(s.attributes)
            .start_with_context(&self.tracer, &parent);
        NEXT_IDS.with(|c| c.set(None));
        use opentelemetry::trace::Span as _;
        if let Some(e) = s.error {
            span.set_status(Status::error(e));
        }
        span.end_with_timestamp(s.end);
    }

    /// Exports what is queued and stops (blocking: call off the runtime's workers).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry shutdown");
        }
        if let Some(m) = &self.meters
            && let Err(e) = m.provider.shutdown()
        {
            tracing::warn!(error = %e, "OpenTelemetry metrics shutdown");
        }
    }
}

/// The metric pipeline: request count and duration by method, tool, decision and outcome
/// (buckets from 50 µs, as on `/metrics`), and the sidecar's own counters observed at export.
fn meters(
    protocol: &str,
    flag: Option<&str>,
    resource: opentelemetry_sdk::Resource,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Meters, String> {
    let exporter = match protocol.trim() {
        "grpc" => {
            let b = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            match flag {
                Some(e) => b.with_endpoint(e.trim()).build(),
                None => b.build(),
            }
        }
        _ => {
            let b = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            match flag {
                Some(e) => {
                    let e = e.trim().trim_end_matches('/');
                    let e = e.strip_suffix("/v1/traces").unwrap_or(e);
                    b.with_endpoint(format!("{e}/v1/metrics")).build()
                }
                None => b.build(),
            }
        }
    }
    .map_err(|e| format!("cannot set up the OTLP metric exporter: {e}"))?;
    let reader = PeriodicReader::builder(QuietMetrics {
        inner: exporter,
        failures: crate::audit::RateLimited::new(),
    })
    .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("mcp-guard");
    let requests = meter
        .u64_counter("mcp_guard.requests")
        .with_description("Audited MCP requests, by method, tool, decision and outcome")
        .build();
    let duration = meter
        .f64_histogram("mcp.server.operation.duration")
        .with_unit("s")
        .with_description("Arrival to the end of the answer, by method, tool, decision and outcome")
        .with_boundaries(crate::metrics::DURATION_BUCKETS.to_vec())
        .build();
    let m = Arc::clone(metrics);
    let _dropped = meter
        .u64_observable_counter("mcp_guard.audit.dropped")
        .with_description("Audit lines lost (queue full or output failed)")
        .with_callback(move |o| o.observe(m.audit_dropped_total(), &[]))
        .build();
    let m = Arc::clone(metrics);
    let _reloads = meter
        .u64_observable_counter("mcp_guard.policy.reloads")
        .with_description("Policy bundles tried, by result")
        .with_callback(move |o| {
            for result in ["success", "failure"] {
                o.observe(
                    m.policy_reloads_total(result),
                    &[KeyValue::new("result", result)],
                );
            }
        })
        .build();
    let m = Arc::clone(metrics);
    let _key_refreshes = meter
        .u64_observable_counter("mcp_guard.key_refreshes")
        .with_description("Fetches of the identity provider's signing keys, by result")
        .with_callback(move |o| {
            for result in ["success", "failure"] {
                o.observe(
                    m.key_refreshes_total(result),
                    &[KeyValue::new("result", result)],
                );
            }
        })
        .build();
    Ok(Meters {
        provider,
        requests,
        duration,
        tools: Arc::new(Mutex::new(HashSet::new())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_sampling_rule_is_the_sdks() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let ids = RandomIdGenerator::default();
        for ratio in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            let mut kept = 0;
            for _ in 0..2000 {
                let id = ids.new_trace_id();
                let ours = ratio_samples(u128::from_be_bytes(id.to_bytes()), ratio);
                let theirs = sdk
                    .should_sample(None, id, "s", &SpanKind::Server, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(ours, theirs, "ratio {ratio}, trace {id}");
                kept += usize::from(ours);
            }
            if ratio == 0.0 {
                assert_eq!(kept, 0);
            }
            if ratio == 1.0 {
                assert_eq!(kept, 2000);
            }
        }
        assert!(parse_ratio("0.25").is_ok() && parse_ratio("1").is_ok());
        assert!(parse_ratio("1.5").is_err() && parse_ratio("-0.1").is_err());
        assert!(parse_ratio("half").unwrap_err().contains("from 0 to 1"));
    }

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(tp).unwrap();
        assert_eq!(
            p,
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)
        );
        let c = TraceContext::new(Some(p));
        assert_eq!(c.trace_id, p.0);
        assert_eq!(c.parent, Some(p.1));
        assert_ne!(c.span_id, p.1);
        let out = c.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"), "{out}");
        assert_eq!(parse_traceparent(&out).map(|x| x.0), Some(p.0));
        let root = TraceContext::new(None);
        assert!(root.parent.is_none() && root.sampled && root.trace_id != 0);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
