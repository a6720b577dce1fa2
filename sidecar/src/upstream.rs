//! The connection to the MCP server in the same pod: HTTP/1.1 over TCP with TCP_NODELAY,
//! requests rewritten for the server (its own `Host`, no hop-by-hop headers).
//!
//! Each request drives its own connection. A connection with nothing in flight waits in a pool
//! (most recently used first); a request takes one, sends on it and polls it itself, in its own
//! task, until the answer's head arrives, and the answer's body keeps polling it until its end,
//! when the connection goes back to the pool. No task per connection, no channel between the
//! request and a connection task: the answer is read by the task that waits for it. A
//! connection the server closed while it waited is noticed when it is taken (and dropped); a
//! request that could not be written on a reused connection is sent again on another. Idle
//! connections are closed after `idle_timeout`, whether or not a request comes.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

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
    pool: Arc<Pool>,
    authority: Authority,
    host_header: HeaderValue,
    timeout: Duration,
}

/// How long a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept at most; one more is closed instead of pooled.
const MAX_IDLE: usize = 256;

/// The sending half of a connection and the connection itself, which only makes progress
/// (reads, writes) while something polls it.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    io: Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    /// The lane whose runtime polls the socket ([`crate::server::lane`]).
    lane: usize,
}

impl Conn {
    /// Polls the connection; `true` once it has ended (closed by either side, or failed).
    fn ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.io.as_mut().poll(cx).is_ready()
    }
}

/// One lane's idle connections, each with the time it came back.
type Idle = Mutex<Vec<(Conn, Instant)>>;

/// Connections with nothing in flight, one list per lane (a connection is only taken on the
/// lane whose runtime polls its socket, so that its readiness wakes no other thread), each the
/// most recently used last. Each list has its own lock, so lanes never wait on each other.
struct Pool {
    lanes: Box<[Idle]>,
    idle_timeout: Duration,
}

impl Pool {
    /// This lane's most recently used connection, unless it has been idle too long. The lane's
    /// list is in the order connections came back, so then every other one has too: all are
    /// closed, after the lock is released.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.lanes.get(crate::server::lane())?.lock();
        let (conn, since) = idle.pop()?;
        if since.elapsed() < self.idle_timeout {
            return Some(conn);
        }
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop((conn, stale));
        None
    }

    /// Keeps `conn` for its lane (a lane beyond those the pool was made for keeps none).
    fn put(&self, conn: Conn) {
        if let Some(idle) = self.lanes.get(conn.lane) {
            let mut idle = idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push((conn, Instant::now()));
            }
        }
    }

    /// Closes the connections idle too long, and those the server closed meanwhile.
    fn sweep(&self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for idle in self.lanes.iter() {
            idle.lock().retain_mut(|(conn, since)| {
                since.elapsed() < self.idle_timeout && !conn.ended(&mut cx)
            });
        }
    }
}

/// Sweeps `pool` every half `idle_timeout` for as long as it exists.
async fn sweep_while_used(pool: Weak<Pool>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// The body of the server's answer. Reading it drives the connection it arrives on, and its
/// end gives the connection back to the pool; dropped before its end, it closes the connection.
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && conn.ended(cx)
        {
            this.conn = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        // A reader may stop at the last frame (hyper's server does, once `is_end_stream` holds)
        // rather than poll for the end: either way the answer is whole.
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
    /// The server at `host:port`, its idle connections kept for each of `lanes` lanes
    /// ([`crate::server::Lanes`]) and for the runtime outside them.
    pub fn new(
        host: &str,
        port: u16,
        timeout: Duration,
        idle_timeout: Duration,
        lanes: usize,
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
        let pool = Arc::new(Pool {
            lanes: (0..=lanes).map(|_| Mutex::new(Vec::new())).collect(),
            idle_timeout,
        });
        // Without the sweep an idle connection would only be closed when a request finds it
        // expired: for ever on a quiet server.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_while_used(Arc::downgrade(&pool), idle_timeout));
        }
        Ok(Upstream {
            pool,
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
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::HOST, self.host_header.clone());
        // Origin form (`/mcp?x`): the connection is to the server itself.
        let path = path_and_query
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Address(e.to_string()))?;
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(reason)) => Err(UpstreamError::Unavailable {
                authority: self.authority.to_string(),
                reason,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                authority: self.authority.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// Sends `req` on a pooled connection, or on a new one, and reads the answer's head. A
    /// request a reused connection could not take (the server closed it meanwhile) goes out on
    /// the next one; a request that was written is never sent twice.
    async fn exchange(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, String> {
        loop {
            let (mut conn, reused) = match self.pool.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            if !ready(&mut conn).await {
                if reused {
                    continue;
                }
                return Err("the connection closed before the request was sent".into());
            }
            let Conn {
                mut sender,
                io,
                lane,
            } = conn;
            let mut io = Some(io);
            let mut sent = std::pin::pin!(sender.try_send_request(req));
            let answer = poll_fn(|cx| {
                // A connection that ended is dropped at once: its request, if still waiting,
                // then fails instead of waiting for the timeout.
                if let Some(open) = &mut io
                    && open.as_mut().poll(cx).is_ready()
                {
                    io = None;
                }
                sent.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = UpstreamBody {
                        body,
                        conn: io.map(|io| Conn { sender, io, lane }),
                        pool: Arc::clone(&self.pool),
                    };
                    if body.is_end_stream() {
                        // Nothing will poll an empty body: the connection is free now.
                        body.release();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(describe(&e.into_error())),
                },
            }
        }
    }

    /// A new connection to the server.
    async fn connect(&self) -> Result<Conn, String> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.authority.as_str()))
                .await
                .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, io) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
        Ok(Conn {
            sender,
            io: Box::pin(io),
            lane: crate::server::lane(),
        })
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

/// Waits until `conn` can take a request (the connection polled meanwhile, so that it finishes
/// with the previous answer); `false` when it has ended instead.
async fn ready(conn: &mut Conn) -> bool {
    poll_fn(|cx| {
        if conn.ended(cx) {
            return Poll::Ready(false);
        }
        conn.sender.poll_ready(cx).map(|r| r.is_ok())
    })
    .await
}

/// The innermost cause of an error ("connection refused" rather than "client error").
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
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request on a connection with `answer` (a whole
    /// HTTP/1.1 response) and then does what `after` says; counts the connections it accepted
    /// and those that ended.
    struct Server {
        port: u16,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    #[derive(Clone, Copy)]
    enum After {
        KeepOpen,
        Close,
        /// Close on the request, answering nothing.
        HangUp,
    }

    async fn server(answer: &'static [u8], after: After) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (Arc::clone(&accepted), Arc::clone(&ended));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let e = Arc::clone(&e);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    'conn: loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Requests here have no body: one ends with its head.
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if let After::HangUp = after {
                                break 'conn;
                            }
                            if s.write_all(answer).await.is_err() {
                                break 'conn;
                            }
                            if let After::Close = after {
                                let _ = s.shutdown().await;
                                break 'conn;
                            }
                        }
                    }
                    drop(s);
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            port,
            accepted,
            ended,
        }
    }

    impl Server {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn ended(&self) -> usize {
            self.ended.load(Ordering::SeqCst)
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";

    fn upstream(port: u16, idle: Duration) -> Upstream {
        Upstream::new("127.0.0.1", port, Duration::from_secs(5), idle, 2).unwrap()
    }

    /// A GET with no headers of its own.
    async fn send(up: &Upstream) -> Result<Response<UpstreamBody>, UpstreamError> {
        up.send(http::Method::GET, None, HeaderMap::new(), Bytes::new())
            .await
    }

    /// A GET, read to its end.
    async fn get(up: &Upstream) -> Result<(u16, Bytes), UpstreamError> {
        let resp = send(up).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await.unwrap().to_bytes()))
    }

    #[tokio::test]
    async fn answers_read_to_their_end_leave_the_connection_for_the_next_request() {
        let s = server(OK, After::KeepOpen).await;
        let up = upstream(s.port, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(get(&up).await.unwrap(), (200, Bytes::from_static(b"ok")));
        }
        // And an answer with no body at all, which nothing polls.
        let s2 = server(ACCEPTED, After::KeepOpen).await;
        let up2 = upstream(s2.port, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(get(&up2).await.unwrap().0, 202);
        }
        assert_eq!(s.accepted(), 1, "one connection for five requests");
        assert_eq!(s2.accepted(), 1, "one connection for three empty answers");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_used_again() {
        let s = server(OK, After::Close).await;
        let up = upstream(s.port, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(get(&up).await.unwrap(), (200, Bytes::from_static(b"ok")));
            // The server's close reaches this side before the next request is sent, as it would
            // on a server that closes idle connections: the next request still gets its answer.
            while s.ended() < s.accepted() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(s.accepted(), 3);
    }

    #[tokio::test]
    async fn an_answer_read_to_its_last_frame_leaves_the_connection_too() {
        // As hyper's server reads a body: frames until `is_end_stream`, never polling for the end.
        let s = server(OK, After::KeepOpen).await;
        let up = upstream(s.port, Duration::from_secs(60));
        for _ in 0..3 {
            let mut body = send(&up).await.unwrap().into_body();
            while !body.is_end_stream() {
                body.frame().await.unwrap().unwrap();
            }
        }
        assert_eq!(s.accepted(), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_closes_its_connection() {
        let s = server(OK, After::KeepOpen).await;
        let up = upstream(s.port, Duration::from_secs(60));
        drop(send(&up).await.unwrap());
        assert_eq!(get(&up).await.unwrap().0, 200);
        assert_eq!(s.accepted(), 2, "the half-read connection was not reused");
    }

    #[tokio::test]
    async fn a_lane_takes_only_the_connections_its_own_runtime_polls() {
        use crate::server::testing::Client;
        use crate::server::{Lanes, lane};
        let s = server(OK, After::KeepOpen).await;
        let up = upstream(s.port, Duration::from_secs(60));
        // Two lanes whose every request goes to the server; the answer names the lane.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let forward = move |_peer| {
            let up = up.clone();
            move |_req| {
                let up = up.clone();
                async move {
                    let (status, _) = get(&up).await.unwrap();
                    let said = format!("{} {status}", lane());
                    Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from(
                        said,
                    )))
                }
            }
        };
        let lanes = Lanes::start(
            "test",
            2,
            forward,
            Duration::from_secs(10),
            &stopped,
            Duration::from_secs(10),
        )
        .unwrap();
        tokio::spawn(lanes.serve(listener, stopped));

        let mut first = Client::connect(addr).await;
        for _ in 0..3 {
            assert_eq!(first.ask().await, "1 200");
        }
        assert_eq!(s.accepted(), 1, "lane 1 reuses its connection");
        let mut second = Client::connect(addr).await;
        assert_eq!(second.ask().await, "2 200");
        assert_eq!(
            s.accepted(),
            2,
            "lane 2 opens its own rather than take lane 1's idle one"
        );
        assert_eq!(first.ask().await, "1 200");
        assert_eq!(second.ask().await, "2 200");
        assert_eq!(s.accepted(), 2, "each lane reuses its own");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_without_a_request() {
        let s = server(OK, After::KeepOpen).await;
        let up = upstream(s.port, Duration::from_millis(200));
        assert_eq!(get(&up).await.unwrap().0, 200);
        // Polled until the server sees the connection end; a pool that never closed it would
        // keep this loop (and the test's own timeout) running.
        tokio::time::timeout(Duration::from_secs(30), async {
            while s.ended() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the idle connection was closed");
        assert_eq!(
            get(&up).await.unwrap().0,
            200,
            "and a new one opens for the next request"
        );
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_on_a_request_fails_it_at_once() {
        let s = server(OK, After::HangUp).await;
        // The timeout (5 s) is not what ends the request: the connection's end is.
        match get(&upstream(s.port, Duration::from_secs(60))).await {
            Err(UpstreamError::Unavailable { reason, .. }) => {
                assert!(reason.contains("closed"), "{reason}");
            }
            other => panic!("expected the server unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dead_server_is_named_with_the_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = upstream(port, Duration::from_secs(60));
        let e = get(&up).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port} is unavailable")) && e.contains("refused"),
            "{e}"
        );
    }

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
