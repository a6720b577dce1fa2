//! OpenTelemetry: a server span per observed MCP request and the call meters, exported over
//! OTLP (HTTP/protobuf or gRPC). Both are consumers of the observation record
//! ([`crate::observe`]): [`Spans`] builds each span, with its real start and end times, on the
//! observation worker's thread and hands it to the SDK's batch processor, whose queue never
//! blocks; [`CallMeters`] counts the calls. The request path only picks the ids
//! ([`crate::observe::trace`]) and puts a `traceparent` on the forwarded request: telemetry costs
//! it two random numbers and one header.

mod client;

use std::cell::Cell;

use clap::Args;
use mcp_guard_common::env;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};

use crate::metrics::{Bounded, MAX_TOOL_SERIES};
use crate::observe::trace::TraceContext;
use crate::observe::{Consumer, Observation};
use mcp_guard_policy::mcp::{ItemKind, Method};
use std::sync::Arc;

use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, SpanData, SpanExporter,
};

/// Spans per OTLP export unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise (the
/// specification's default is 512). The SDK's thread encodes and posts a batch in one go on the
/// cores the proxy's workers use; at 3,000 requests a second, batches of 128 or 64 added less to
/// the 99th percentile than batches of 512 in 13 of 18 rounds, by 0.2 to 0.3 ms, about the
/// run-to-run spread (bench/results/2026-12-07-governed-no-otlp.md), for a few more exports a
/// second. Under light load the batch is what the schedule delay (`OTEL_BSP_SCHEDULE_DELAY`,
/// 5 s) gathered, as before.
const EXPORT_BATCH: usize = 128;

/// The span batcher's settings: the standard `OTEL_BSP_*` variables, with [`EXPORT_BATCH`] when
/// `max_export_batch_size` (read by `var`) is not set to a number.
fn batch_config(var: impl Fn(&str) -> Option<String>) -> opentelemetry_sdk::trace::BatchConfig {
    let config = BatchConfigBuilder::default();
    let set = var(env::OTEL_BSP_MAX_EXPORT_BATCH_SIZE)
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some();
    if set {
        config.build()
    } else {
        config.with_max_export_batch_size(EXPORT_BATCH).build()
    }
}

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
    failures: crate::observe::RateLimited,
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
    tools: Arc<Bounded>,
}

/// The OTLP metric exporter, its failures logged at most once per interval.
struct QuietMetrics<E> {
    inner: E,
    failures: crate::observe::RateLimited,
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
        server: &crate::observe::ServerRef,
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
                    .with_http_client(client::ExportClient::for_signal(
                        env::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
                    ))
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
            crate::observe::trace::set_root_sampling(ratio);
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let batcher = BatchSpanProcessor::builder(Quiet {
            inner: exporter,
            failures: crate::observe::RateLimited::new(),
        })
        .with_batch_config(batch_config(|name| std::env::var(name).ok()))
        .build();
        let provider = provider
            .with_span_processor(batcher)
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

    /// The span consumer of observations.
    pub fn spans(&self) -> Spans {
        Spans {
            tracer: self.tracer.clone(),
        }
    }

    /// The OTLP call meters as a consumer of observations; `None` when OTLP metrics are off
    /// (`OTEL_METRICS_EXPORTER=none`).
    pub fn call_meters(&self) -> Option<CallMeters> {
        self.meters.clone().map(CallMeters)
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

/// Spans as a consumer of observations: one server span per observed message.
pub struct Spans {
    tracer: SdkTracer,
}

impl Consumer for Spans {
    fn observe(&mut self, o: &Observation<'_>) {
        let Some(trace) = o.trace else {
            return;
        };
        let span_id = if o.first {
            trace.span_id
        } else {
            TraceContext::new(None).span_id
        };
        let parent = match trace.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(trace.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.to_be_bytes()),
                if trace.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let (name, attributes, error) = span_of(o);
        NEXT_IDS.with(|c| c.set(Some((trace.trace_id, span_id))));
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(o.time)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        NEXT_IDS.with(|c| c.set(None));
        use opentelemetry::trace::Span as _;
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end_with_timestamp(o.time + o.total);
    }
}

/// The name, attributes and error status of the server span of one observed message.
fn span_of(o: &Observation<'_>) -> (String, Vec<KeyValue>, Option<String>) {
    use opentelemetry::{Array, StringValue, Value as OtelValue};
    let name = match o.target {
        Some(t) => format!("{} {t}", o.method),
        None => o.method.to_owned(),
    };
    let mut attributes = Vec::with_capacity(16);
    attributes.push(KeyValue::new("mcp.method.name", o.method.to_owned()));
    if let (Some(t), Some(kind)) = (o.target, o.target_kind) {
        let key = match kind {
            ItemKind::Tool => "gen_ai.tool.name",
            ItemKind::Prompt => "gen_ai.prompt.name",
            ItemKind::Resource | ItemKind::ResourceTemplate => "mcp.resource.uri",
            ItemKind::Task => "mcp.task.id",
        };
        attributes.push(KeyValue::new(key, t.to_owned()));
    }
    if o.mcp == Method::ToolsCall {
        attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    }
    if let Some(s) = o.session {
        attributes.push(KeyValue::new("mcp.session.id", s.to_owned()));
    }
    if let Some(v) = o.client.and_then(|c| c.protocol_version.as_deref()) {
        attributes.push(KeyValue::new("mcp.protocol.version", v.to_owned()));
    }
    if let Some(i) = o.identity {
        attributes.push(KeyValue::new("enduser.id", i.sub.clone()));
    }
    if let Some(id) = o.request_id {
        attributes.push(KeyValue::new("jsonrpc.request.id", id.get().to_owned()));
    }
    let d = &o.decision;
    attributes.push(KeyValue::new("mcp_guard.decision", d.label()));
    attributes.push(KeyValue::new("mcp_guard.decision.mode", d.mode));
    if !d.reasons.is_empty() {
        let reasons: Vec<StringValue> = d.reasons.iter().map(|r| r.clone().into()).collect();
        attributes.push(KeyValue::new(
            "mcp_guard.decision.reasons",
            OtelValue::Array(Array::String(reasons)),
        ));
    }
    if let Some(p) = &d.policy {
        attributes.push(KeyValue::new("mcp_guard.policy.hash", p.to_string()));
    }
    attributes.push(KeyValue::new("mcp_guard.outcome", o.outcome));
    attributes.push(KeyValue::new("mcp_guard.audit_id", o.audit_id.clone()));
    if let Some(s) = o.status {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(c) = o.error_code {
        attributes.push(KeyValue::new("rpc.jsonrpc.error_code", c));
    }
    let error = (o.outcome != "ok").then(|| {
        let kind = match o.error_code {
            Some(c) => c.to_string(),
            None => o.outcome.to_owned(),
        };
        attributes.push(KeyValue::new("error.type", kind));
        o.outcome.to_owned()
    });
    (name, attributes, error)
}

/// The OTLP call meters as a consumer of observations: `mcp_guard.requests` and
/// `mcp.server.operation.duration`, by method, tool, decision and outcome.
pub struct CallMeters(Meters);

impl Consumer for CallMeters {
    fn observe(&mut self, o: &Observation<'_>) {
        let m = &self.0;
        let mut attrs = Vec::with_capacity(4);
        attrs.push(KeyValue::new(
            "mcp.method.name",
            crate::metrics::method_label(Some(o.method)),
        ));
        if let Some(t) = o.tool() {
            attrs.push(KeyValue::new("gen_ai.tool.name", m.tools.label(t)));
        }
        attrs.push(KeyValue::new("mcp_guard.decision", o.decision.label()));
        attrs.push(KeyValue::new("mcp_guard.outcome", o.outcome));
        let seconds = o.total.as_secs_f64();
        m.requests.add(1, &attrs);
        m.duration.record(seconds, &attrs);
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
                .with_http_client(client::ExportClient::for_signal(
                    env::OTEL_EXPORTER_OTLP_METRICS_TIMEOUT,
                ))
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
        failures: crate::observe::RateLimited::new(),
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
        tools: Arc::new(Bounded::new(MAX_TOOL_SERIES)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::ratio_samples;

    #[test]
    fn spans_are_exported_128_at_a_time_unless_the_variable_says_otherwise() {
        let unset = format!("{:?}", batch_config(|_| None));
        assert!(unset.contains("max_export_batch_size: 128"), "{unset}");
        // Not a number: as unset (the SDK passes it over too).
        let garbage = format!("{:?}", batch_config(|_| Some("lots".into())));
        assert!(garbage.contains("max_export_batch_size: 128"), "{garbage}");
        // Set: the SDK's own reading of the variable stands (this process has none, so the
        // specification's 512).
        let set = format!("{:?}", batch_config(|_| Some("300".into())));
        assert!(set.contains("max_export_batch_size: 512"), "{set}");
    }

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
}
