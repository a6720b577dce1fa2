//! The connection to the MCP server in the same pod: a pooled HTTP/1.1 client with TCP_NODELAY,
//! requests rewritten for the server (its own `Host`, no hop-by-hop headers).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why a request to the MCP server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the MCP server at {authority} is unavailable: {reason}")]
    Unavailable { authority: String, reason: String },
    #[error("the MCP server at {authority} did not answer within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("invalid upstream address {0:?}")]
    Address(String),
}

/// The MCP server behind the sidecar.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    authority: Authority,
    host_header: HeaderValue,
    timeout: Duration,
}

/// Headers that belong to one connection and never cross a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

impl Upstream {
    pub fn new(
        host: &str,
        port: u16,
        timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let authority_text = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let authority: Authority = authority_text
            .parse()
            .map_err(|_| UpstreamError::Address(authority_text.clone()))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::Address(authority_text))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Without a timer the pool only notices an expired connection when it would reuse it:
        // idle connections would stay open past `idle_timeout`, for ever on a quiet server.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream {
            client,
            authority,
            host_header,
            timeout,
        })
    }

    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// Sends a request to the server: `path_and_query` and `headers` from the client's request,
    /// rewritten for the server. Waits at most the configured time for the response headers.
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: Option<&PathAndQuery>,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
            .map_err(|e| UpstreamError::Address(e.to_string()))?;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::HOST, self.host_header.clone());
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Address(e.to_string()))?;
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::Unavailable {
                authority: self.authority.to_string(),
                reason: describe(&e),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                authority: self.authority.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// Whether the server accepts TCP connections now (readiness).
    pub async fn accepts_connections(&self) -> bool {
        let connect = tokio::net::TcpStream::connect(self.authority.as_str());
        matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        )
    }
}

/// The innermost cause of a client error ("connection refused" rather than "client error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("mcp-session-id", HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("mcp-session-id"));
    }
}
