//! The server's tools as the sidecar knows them. Every `tools/list` answer that passes is
//! recorded in the [`ToolCatalog`] (definitions, pins, mirrored parameters); and at start the
//! sidecar lists its own server's tools, so that the first call is decided on the server's
//! definition of its tool, on every replica and after every restart, rather than on nothing
//! until some client happens to list.
//!
//! The listing speaks MCP as a client of an older revision would (`initialize`,
//! `notifications/initialized`, `tools/list` page by page, then `DELETE` of its session), with
//! no identity: it learns definitions, never acts. It retries while the server is not up yet
//! (the containers of a pod start together) and stops at a definite answer: the tools, or a
//! refusal (a server that wants an identity to list), after which the catalog is learned from the
//! clients' own listings as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Limited};
use mcp_guard_policy::catalog::{Definition, ToolCatalog, View};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Where the sidecar's own listing of the server's tools stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Listing {
    /// Not asked for (`--skip-tool-listing`).
    Off,
    /// Not done yet: the server is not up, or has not answered.
    Pending { last_error: Option<String> },
    /// The server listed this many tools.
    Listed { tools: usize },
    /// The server refused to list; the catalog fills from the clients' listings.
    Refused { reason: String },
}

impl Listing {
    /// Whether the pod may take traffic as far as the listing goes: it is done, one way or the
    /// other, or was not asked for.
    pub fn settled(&self) -> bool {
        !matches!(self, Listing::Pending { .. })
    }
}

/// Records one `tools/list` answer's tools (before filtering) and says what changed: a changed
/// definition is logged and counted. Returns every tool's policy view, in list order.
pub fn record<D: Definition>(catalog: &ToolCatalog, metrics: &Metrics, tools: &[D]) -> Vec<View> {
    let recorded = catalog.record(tools);
    if recorded.unpinned > 0 {
        tracing::warn!(
            unpinned = recorded.unpinned,
            "tool catalog full: tools listed for the first time are not pinned; policy sees them as changed"
        );
    }
    for c in recorded.changed {
        metrics.tool_changed();
        if c.pinned.is_empty() {
            tracing::warn!(tool = %c.tool, now = %c.now, "tool is not among the pinned tools of record; policy sees it as changed");
        } else {
            tracing::warn!(tool = %c.tool, pinned = %c.pinned, now = %c.now, "tool definition changed since it was pinned");
        }
    }
    recorded.views
}

/// Lists the server's tools in the background until it answers; the receiver follows the state.
pub fn spawn_listing(
    upstream: Upstream,
    path: &str,
    max_bytes: usize,
    catalog: Arc<ToolCatalog>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Listing> {
    let (tx, rx) = watch::channel(Listing::Pending { last_error: None });
    let path = match PathAndQuery::try_from(path) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("the MCP path {path:?} is not a valid path: {e}");
            tx.send_replace(Listing::Refused { reason });
            return rx;
        }
    };
    let client = Lister {
        upstream,
        path,
        max_bytes,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match client.list().await {
                Ok(tools) => {
                    record(&catalog, &metrics, &tools);
                    tracing::info!(
                        tools = tools.len(),
                        "listed the MCP server's tools at start"
                    );
                    tx.send_replace(Listing::Listed { tools: tools.len() });
                    return;
                }
                Err(Attempt::Refused(reason)) => {
                    tracing::warn!(%reason, "the MCP server did not list its tools to the sidecar; tools are learned from the clients' listings");
                    tx.send_replace(Listing::Refused { reason });
                    return;
                }
                Err(Attempt::Retry(e)) => {
                    // Expected while the server starts; said once, when it lasts.
                    if backoff >= Duration::from_secs(5) && !warned {
                        tracing::warn!(error = %e, "still waiting for the MCP server to list its tools");
                        warned = true;
                    }
                    tx.send_replace(Listing::Pending {
                        last_error: Some(e),
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    rx
}

/// Why a listing attempt ended without the tools.
#[derive(Debug)]
enum Attempt {
    /// The server is not (yet) reachable or failed: try again.
    Retry(String),
    /// The server answered, and the answer is no.
    Refused(String),
}

/// The `User-Agent` of the listing's requests, so a server's logs say who asked.
pub const USER_AGENT: &str = concat!(
    "mcp-guard-sidecar/",
    env!("CARGO_PKG_VERSION"),
    " (tool listing)"
);

/// Pages a listing may take; a server that pages further is cycling.
const MAX_PAGES: usize = 1_000;

struct Lister {
    upstream: Upstream,
    path: PathAndQuery,
    max_bytes: usize,
}

impl Lister {
    async fn list(&self) -> Result<Vec<Value>, Attempt> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "mcp-guard-sidecar", "version": env!("CARGO_PKG_VERSION")},
        }});
        let (session, result) = self.request(&init, &HeaderMap::new()).await?;
        let mut headers = HeaderMap::new();
        if let Some(s) = session {
            headers.insert("mcp-session-id", s);
        }
        if let Some(v) = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert("mcp-protocol-version", v);
        }
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.send(&initialized, &headers).await?;
        let listed = self.pages(&headers).await;
        if headers.contains_key("mcp-session-id") {
            // Ends the session; a server that keeps it anyway loses nothing.
            let mut headers = headers;
            headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            let _ = self
                .upstream
                .send(
                    http::Method::DELETE,
                    Some(&self.path),
                    headers,
                    Bytes::new(),
                )
                .await;
        }
        listed
    }

    /// Every page of `tools/list`.
    async fn pages(&self, headers: &HeaderMap) -> Result<Vec<Value>, Attempt> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for id in 1..=MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let req = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
            let (_, result) = self.request(&req, headers).await?;
            match result.get("tools") {
                Some(Value::Array(page)) => tools.extend(page.iter().cloned()),
                _ => return Err(Attempt::Refused("tools/list answered without tools".into())),
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                return Ok(tools);
            }
        }
        Err(Attempt::Refused(format!(
            "tools/list did not end within {MAX_PAGES} pages"
        )))
    }

    /// Posts a request; its result and the session the server gave, if any.
    async fn request(
        &self,
        msg: &Value,
        headers: &HeaderMap,
    ) -> Result<(Option<HeaderValue>, Value), Attempt> {
        let (session, sse, body) = self.send(msg, headers).await?;
        let id = msg.get("id");
        let answer = if sse {
            sse_answer(&body, id)
        } else {
            serde_json::from_slice::<Value>(&body).ok()
        };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("?");
        let Some(answer) = answer else {
            return Err(Attempt::Refused(format!(
                "{method}: the answer is not a JSON-RPC response"
            )));
        };
        if let Some(e) = answer.get("error") {
            return Err(Attempt::Refused(format!(
                "{method}: the server answered {e}"
            )));
        }
        match answer.get("result") {
            Some(r) => Ok((session, r.clone())),
            None => Err(Attempt::Refused(format!(
                "{method}: the answer has no result"
            ))),
        }
    }

    /// Posts a message; the session header, whether the answer is an event stream, and its body.
    async fn send(
        &self,
        msg: &Value,
        headers: &HeaderMap,
    ) -> Result<(Option<HeaderValue>, bool, Bytes), Attempt> {
        let mut h = headers.clone();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let body = Bytes::from(msg.to_string());
        let resp = self
            .upstream
            .send(http::Method::POST, Some(&self.path), h, body)
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(Attempt::Retry(format!("the server answered {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Refused(format!("the server answered {status}")));
        }
        let session = resp.headers().get("mcp-session-id").cloned();
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let body = Limited::new(resp.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| Attempt::Retry(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((session, sse, body))
    }
}

/// The response to request `id` among the events of an SSE answer.
fn sse_answer(body: &[u8], id: Option<&Value>) -> Option<Value> {
    let mut events = crate::sse::EventSplitter::default();
    events.push(body);
    events.push(b"\n\n");
    while let Some(event) = events.next_event() {
        let Some(data) = crate::sse::data(&event) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if v.get("id") == id && (v.get("result").is_some() || v.get("error").is_some()) {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_among_other_events() {
        let body = b": priming\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[]}}\n";
        let got = sse_answer(body, Some(&json!(1))).unwrap();
        assert_eq!(got["result"], json!({"tools": []}));
        assert!(sse_answer(body, Some(&json!(2))).is_none());
    }

    #[test]
    fn only_a_pending_listing_holds_readiness() {
        assert!(!Listing::Pending { last_error: None }.settled());
        assert!(Listing::Listed { tools: 0 }.settled());
        assert!(
            Listing::Refused {
                reason: "401".into()
            }
            .settled()
        );
        assert!(Listing::Off.settled());
    }
}
