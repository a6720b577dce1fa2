//! Accepting connections: TCP_NODELAY, a deadline for request headers, HTTP/1.1 and h2c, and a
//! graceful drain when shutdown is asked for.
//!
//! The proxy serves its connections on *lanes*: one thread per core, each with a runtime of its
//! own. A connection is handed to a lane when it is accepted (in turn, so lanes share them
//! evenly) and every request on it is served on that lane's thread from start to end, with the
//! lane's own upstream connections ([`lane`]): no request wakes another thread on its way
//! through, as a request served by a pool of work-stealing threads does (one thread reads the
//! socket, another runs the task, a third finds the upstream connection ready).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The lane this thread serves: `1..=n` on a lane's thread, `0` anywhere else (the main
/// runtime: the admin server, background work).
pub fn lane() -> usize {
    LANE.with(Cell::get)
}

/// How a server's connections are served after they are accepted.
struct Serving {
    name: &'static str,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    // Every connection's task, so that those still open when the drain time is up are ended
    // (and what they hold, such as the audit record of a cut answer, finished) before the
    // server returns and the process flushes its audit trail and exits.
    conns: tokio::task::JoinSet<()>,
}

impl Serving {
    fn new(name: &'static str, header_timeout: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        Serving {
            name,
            builder,
            graceful: GracefulShutdown::new(),
            conns: tokio::task::JoinSet::new(),
        }
    }

    fn serve<S, Fut>(&mut self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let svc = hyper::service::service_fn(service);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = self.graceful.watch(conn.into_owned());
        let name = self.name;
        self.conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = name, %peer, error = %e, "connection ended with an error");
            }
        });
    }

    /// Waits for a connection to end (pending while none is open).
    async fn reap(&mut self) {
        if self.conns.join_next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Serves the connections `source` gives, each with the service `service` makes for its
    /// peer, until `source` has no more or `shutdown` turns true; then closes `source` and
    /// drains for at most `drain`.
    async fn run<F, S, Fut>(
        mut self,
        mut source: Source,
        service: &F,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) where
        F: Fn(SocketAddr) -> S,
        S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        loop {
            tokio::select! {
                conn = source.next(self.name) => match conn {
                    Some((stream, peer)) => self.serve(stream, peer, service(peer)),
                    None => break,
                },
                _ = self.reap() => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        // The listener (or the lane's hand-off) closes before the drain, so that new clients
        // are refused rather than left waiting.
        drop(source);
        self.drain(drain).await;
    }

    /// Lets open connections finish for at most `drain`, then ends the rest.
    async fn drain(mut self, drain: Duration) {
        tracing::info!(server = self.name, "draining open connections");
        tokio::select! {
            _ = self.graceful.shutdown() => tracing::info!(server = self.name, "drained"),
            _ = tokio::time::sleep(drain) => tracing::warn!(server = self.name, ?drain, "drain time is up; closing the remaining connections"),
        }
        self.conns.abort_all();
        while self.conns.join_next().await.is_some() {}
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accepts the next connection; a failure (out of file descriptors and the like) is logged and
/// waited out a moment rather than spun on.
async fn accept(name: &'static str, listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(server = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Where a server's connections come from.
enum Source {
    /// Accepted here.
    Listener(TcpListener),
    /// Handed to a lane by the acceptor; closed when the acceptor is gone.
    Handoffs(mpsc::UnboundedReceiver<Handoff>),
}

impl Source {
    /// The next connection, registered with this runtime; `None` when there will be no more.
    async fn next(&mut self, name: &'static str) -> Option<(TcpStream, SocketAddr)> {
        match self {
            Source::Listener(listener) => Some(accept(name, listener).await),
            Source::Handoffs(handoffs) => loop {
                let (stream, peer) = handoffs.recv().await?;
                match TcpStream::from_std(stream) {
                    Ok(stream) => return Some((stream, peer)),
                    Err(e) => {
                        tracing::warn!(server = name, %peer, error = %e, "a lane cannot take a connection")
                    }
                }
            },
        }
    }
}

/// Serves `listener` on this runtime until `shutdown` turns true, then lets open connections
/// finish for at most `drain`. `service` makes the service of one connection from its peer
/// address.
pub async fn serve<F, S, Fut>(
    name: &'static str,
    listener: TcpListener,
    service: F,
    header_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    Serving::new(name, header_timeout)
        .run(Source::Listener(listener), &service, shutdown, drain)
        .await;
}

/// A connection on its way to a lane: taken off the acceptor's runtime, registered again on the
/// lane's.
type Handoff = (std::net::TcpStream, SocketAddr);

/// Threads of their own that serve the connections handed to them, each on its own runtime.
pub struct Lanes {
    name: &'static str,
    handoffs: Vec<mpsc::UnboundedSender<Handoff>>,
    ended: Vec<oneshot::Receiver<()>>,
}

impl Lanes {
    /// Starts `n` lanes (at least one) that serve with `service` as [`serve`] does: until
    /// `shutdown` turns true or the lanes are dropped, then each lets its connections finish
    /// for at most `drain`.
    pub fn start<F, S, Fut>(
        name: &'static str,
        n: usize,
        service: F,
        header_timeout: Duration,
        shutdown: &watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<Lanes>
    where
        F: Fn(SocketAddr) -> S + Send + Sync + 'static,
        S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let service = Arc::new(service);
        let mut lanes = Lanes {
            name,
            handoffs: Vec::new(),
            ended: Vec::new(),
        };
        for index in 1..=n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
            let (done, ended) = oneshot::channel::<()>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let service = Arc::clone(&service);
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("mcp-guard-lane-{index}"))
                .spawn(move || {
                    LANE.set(index);
                    runtime.block_on(run_lane(name, rx, service, header_timeout, shutdown, drain));
                    let _ = done.send(());
                })?;
            lanes.handoffs.push(tx);
            lanes.ended.push(ended);
        }
        Ok(lanes)
    }

    /// Accepts `listener`'s connections and hands them to the lanes in turn until `shutdown`
    /// turns true; returns once every lane has drained.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let Lanes {
            name,
            handoffs,
            ended,
        } = self;
        let mut next = 0;
        loop {
            tokio::select! {
                (stream, peer) = accept(name, &listener) => {
                    // Off this runtime's poller, so that only the lane's is woken by the
                    // connection from now on.
                    match stream.into_std() {
                        Ok(stream) => {
                            if handoffs[next].send((stream, peer)).is_err() {
                                tracing::warn!(server = name, lane = next + 1, "a lane has stopped; the connection is closed");
                            }
                        }
                        Err(e) => tracing::warn!(server = name, %peer, error = %e, "cannot hand a connection to a lane"),
                    }
                    next = (next + 1) % handoffs.len();
                }
                _ = stopped(&mut shutdown) => break,
            }
        }
        drop(listener);
        drop(handoffs);
        for done in ended {
            let _ = done.await;
        }
    }
}

/// A lane: serves the connections handed to it until shutdown, or until its acceptor is gone.
async fn run_lane<F, S, Fut>(
    name: &'static str,
    handoffs: mpsc::UnboundedReceiver<Handoff>,
    service: Arc<F>,
    header_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    Serving::new(name, header_timeout)
        .run(Source::Handoffs(handoffs), &*service, shutdown, drain)
        .await;
}

/// A plain HTTP/1.1 client for the tests of what is served on lanes.
#[cfg(test)]
pub(crate) mod testing {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::{self, SendRequest};

    use super::*;

    /// One connection, driven on the test's runtime.
    pub(crate) struct Client {
        sender: SendRequest<Full<Bytes>>,
        driven: tokio::task::JoinHandle<()>,
    }

    impl Client {
        pub(crate) async fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
            let driven = tokio::spawn(async move {
                let _ = conn.await;
            });
            Client { sender, driven }
        }

        /// A GET; the answer's body as text.
        pub(crate) async fn ask(&mut self) -> String {
            self.sender.ready().await.unwrap();
            let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
            let body = self.sender.send_request(req).await.unwrap().into_body();
            String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }

        /// Returns once the server has closed the connection.
        pub(crate) async fn closed(self) {
            self.driven.await.unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Client;
    use super::*;

    #[tokio::test]
    async fn connections_take_turns_on_the_lanes_and_stay_on_theirs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        // Each answer says where it was served: the lane and the thread.
        let where_served = |_peer| {
            |_req| async {
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                Ok::<_, Infallible>(Response::new(Body::from(format!("{} {thread}", lane()))))
            }
        };
        let lanes = Lanes::start(
            "test",
            2,
            where_served,
            Duration::from_secs(10),
            &stopped,
            Duration::from_secs(10),
        )
        .unwrap();
        let served = tokio::spawn(lanes.serve(listener, stopped));

        let mut conns = Vec::new();
        let mut first = Vec::new();
        for _ in 0..4 {
            let mut c = Client::connect(addr).await;
            first.push(c.ask().await);
            conns.push(c);
        }
        assert_eq!(
            first,
            [
                "1 mcp-guard-lane-1",
                "2 mcp-guard-lane-2",
                "1 mcp-guard-lane-1",
                "2 mcp-guard-lane-2"
            ],
            "connections are handed to the lanes in turn, each served on its lane's thread"
        );
        for (c, was) in conns.iter_mut().zip(&first) {
            for _ in 0..3 {
                assert_eq!(&c.ask().await, was, "a connection stays on its lane");
            }
        }
        // Nothing runs on this runtime's thread: the lanes serve without it.
        assert_eq!(lane(), 0);

        stop.send_replace(true);
        served.await.unwrap();
        // Every lane closed its connections when it drained (or this would wait for ever).
        for c in conns {
            c.closed().await;
        }
    }

    #[tokio::test]
    async fn lanes_end_when_their_acceptor_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let lanes = Lanes::start(
            "test",
            1,
            |_peer| |_req| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) },
            Duration::from_secs(10),
            &stopped,
            Duration::from_secs(10),
        )
        .unwrap();
        let served = tokio::spawn(lanes.serve(listener, stopped));
        let mut c = Client::connect(addr).await;
        assert_eq!(c.ask().await, "ok");
        // As when the sidecar's future is dropped: the lane drains its connection (or this
        // would wait for ever) and ends.
        served.abort();
        c.closed().await;
    }
}
