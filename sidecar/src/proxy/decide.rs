//! The stack's third stage: every message of an [`Exchange`] put to the interceptor, then the
//! allowed ones counted against the rate limits their decision carries. What comes out is the
//! [`Decision`]: what the proxy forwards and answers itself, and the decision on each message,
//! which the observers (audit, spans, call metrics) record as it is.

use std::sync::Arc;

use serde_json::Value;

use super::parse::Exchange;
use crate::intercept::{self, Interceptor, Verdict};
use crate::jsonrpc::{self, Kind, Payload, code, id_key};
use crate::limits::{Limiter, Quota, Tripped};
use crate::metrics::Metrics;
use mcp_guard_policy::mcp::{Class, List};

/// The decision on one exchange.
pub(super) struct Decision {
    /// Per message: the interceptor's decision (a response's is an allow), rate limits included.
    pub(super) messages: Vec<intercept::Decision>,
    /// Messages to forward; `None` when the body goes unchanged.
    pub(super) forward: Option<Vec<Value>>,
    /// Answers to denied requests.
    pub(super) denied: Vec<Value>,
    /// Requests whose answers must be rewritten.
    pub(super) pending: Vec<(String, List)>,
    /// Task-augmented calls whose answers name the task they create: (id key, tool).
    pub(super) task_calls: Vec<(String, String)>,
    /// Per message: whether it goes on to the server.
    pub(super) keep: Vec<bool>,
    /// How many messages remain to forward.
    pub(super) remaining: usize,
    /// The refusal by a rate limit of a single message, answered 429 with `Retry-After`.
    pub(super) limited: Option<(u64, Value)>,
}

/// The decide stage.
pub(super) struct Decide {
    pub(super) interceptor: Arc<dyn Interceptor>,
    /// Counts the rate limits of allowed messages.
    pub(super) limiter: Arc<Limiter>,
    pub(super) metrics: Arc<Metrics>,
}

impl Decide {
    /// Decides on every message of `x`, then counts the allowed ones.
    pub(super) async fn decide(&self, x: &Exchange) -> Decision {
        let (mut d, quotas) = self.check(x);
        if !quotas.is_empty() {
            self.count(x, quotas, &mut d).await;
        }
        d.settle(&x.payload);
        d
    }

    /// Puts each client message to the interceptor; returns the decision and the rate limits
    /// each allowed message counts against, by index.
    fn check(&self, x: &Exchange) -> (Decision, Vec<(usize, Quota)>) {
        let ctx = x.context();
        let msgs = x.payload.messages();
        let mut d = Decision::with_capacity(msgs.len());
        let mut quotas = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mut decision = match m.kind {
                Kind::Request | Kind::Notification => {
                    intercept::Decision::of(&*self.interceptor, &ctx, m)
                }
                Kind::Response => intercept::Decision::allowed(),
            };
            if let Some(q) = Quota::of(&mut decision.note) {
                quotas.push((i, q));
            }
            let keep = match (&decision.verdict, m.kind) {
                (Verdict::Allow, Kind::Request) => {
                    if let (Class::List(list), Some(id)) = (m.mcp.class(), m.id())
                        && self.interceptor.rewrites(list)
                    {
                        d.pending.push((id_key(id), list));
                    }
                    if let (Some(tool), Some(id)) = (m.task_call(), m.id()) {
                        d.task_calls.push((id_key(id), tool.to_owned()));
                    }
                    true
                }
                (Verdict::Allow, _) => true,
                (verdict @ Verdict::Deny { .. }, kind) => {
                    tracing::info!(
                        method = m.method().unwrap_or_default(),
                        name = m.target().unwrap_or_default(),
                        "denied"
                    );
                    if kind == Kind::Request
                        && let Some(err) = verdict.error_response(m.id())
                    {
                        d.denied.push(err);
                    }
                    false
                }
            };
            d.keep.push(keep);
            d.messages.push(decision);
        }
        (d, quotas)
    }

    /// Counts the allowed messages against their rate limits (after every decision, so a
    /// denied message uses no quota); a message a limit refuses is answered here, and its
    /// decision says which limit refused it.
    async fn count(&self, x: &Exchange, quotas: Vec<(usize, Quota)>, d: &mut Decision) {
        let msgs = x.payload.messages();
        let identity = x.identity.as_deref();
        for (i, quota) in quotas {
            let Some(m) = msgs.get(i) else { continue };
            let req = crate::limits::Request {
                policy_hash: &quota.policy_hash,
                identity,
                method: m.method().unwrap_or_default(),
                item: m.item().map(|it| it.name),
            };
            let Err(tripped) = self.limiter.check(&quota.limits, &req).await else {
                continue;
            };
            let shadow = self.limiter.shadow();
            if let Some(decision) = d.messages.get_mut(i) {
                limited_decision(decision, &tripped, shadow);
            }
            if shadow {
                tracing::info!(method = req.method, limit = %tripped.limit, "would be rate limited (shadow)");
                self.metrics.shadow_denied(Some(req.method));
                continue;
            }
            tracing::info!(method = req.method, name = req.item.unwrap_or_default(), limit = %tripped.limit, store = tripped.store(), "rate limited");
            let err = limited_error(m.id(), &tripped);
            if let Some(k) = d.keep.get_mut(i) {
                *k = false;
            }
            if matches!(x.payload, Payload::Single(_)) {
                d.limited = Some((tripped.retry_after_secs(), err.clone()));
            }
            if m.kind == Kind::Request {
                d.denied.push(err);
            }
        }
    }
}

/// The decision on a message a rate limit refused (or would have, in shadow mode: then it is
/// still forwarded).
fn limited_decision(decision: &mut intercept::Decision, t: &Tripped, shadow: bool) {
    let note = &mut decision.note;
    note.reasons = vec![t.message()];
    note.source = Some("rate limit");
    note.limit = Some(t.limit.clone());
    note.shadow_denied = shadow;
    if !shadow {
        decision.verdict = Verdict::Deny {
            code: code::RATE_LIMITED,
            message: t.message(),
            data: None,
        };
    }
}

impl Decision {
    fn with_capacity(n: usize) -> Decision {
        Decision {
            messages: Vec::with_capacity(n),
            forward: None,
            denied: Vec::new(),
            pending: Vec::new(),
            task_calls: Vec::new(),
            keep: Vec::with_capacity(n),
            remaining: 0,
            limited: None,
        }
    }

    /// Works out what is forwarded from which messages are kept.
    fn settle(&mut self, payload: &Payload) {
        let msgs = payload.messages();
        self.remaining = self.keep.iter().filter(|k| **k).count();
        self.forward = (self.remaining != msgs.len()).then(|| {
            msgs.iter()
                .zip(&self.keep)
                .filter(|(_, k)| **k)
                .map(|(m, _)| Value::Object(m.raw.clone()))
                .collect()
        });
    }
}

/// The JSON-RPC error answering a request a rate limit refused: code [`code::RATE_LIMITED`],
/// with the limit and the wait in `data`.
fn limited_error(id: Option<&Value>, t: &Tripped) -> Value {
    let data = serde_json::json!({
        "limit": t.limit,
        "retry_after": t.retry_after_secs(),
        "scope": if t.fleet { "fleet" } else { "local" },
    });
    jsonrpc::error_response(id, code::RATE_LIMITED, &t.message(), Some(data))
}
