//! The W3C trace context of one request: the ids the request path picks (the caller's trace, a
//! new span) and the `traceparent` it passes on to the MCP server. Spans themselves are built
//! off the request path, by the telemetry consumer of the observation record.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

/// The sampling ratio of new traces, as `f64` bits (1.0 until `--otlp-sampling-ratio` says
/// otherwise): read on every request that starts a trace.
static ROOT_SAMPLING: AtomicU64 = AtomicU64::new(1.0f64.to_bits());

/// Whether a new trace with this id is recorded at `ratio`: the W3C/OpenTelemetry trace-id
/// ratio rule (the id's low 63 bits against `ratio` × 2^63), so the sidecar's `traceparent` flag
/// and the SDK's `TraceIdRatioBased` sampler always agree on the same trace.
pub(crate) fn ratio_samples(trace_id: u128, ratio: f64) -> bool {
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

/// Records new traces (requests without a `traceparent` of their own) at `ratio` from now on.
pub fn set_root_sampling(ratio: f64) {
    ROOT_SAMPLING.store(ratio.to_bits(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

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
