//! The proxy benchmark's own load client (bench/run.sh `--rate`, `--streams`), for what wrk
//! cannot measure:
//!
//! - `load`: an open-loop load at a fixed rate. Requests are due at fixed intended times (`i /
//!   rate` after the start) whatever the answers do; a pacing thread releases each one when it is
//!   due, and the first free of `--connections` keep-alive HTTP/1.1 connections sends it. A
//!   request's latency runs from its *intended* time to the end of its answer, so a stall is
//!   counted for every request it delayed, including those still waiting for a connection
//!   (coordinated omission corrected, as wrk2 does). For an SSE answer the end is the arrival of
//!   the event carrying the JSON-RPC answer, not the headers and not the end of the stream: that
//!   is an SSE event's delay. Every answer is checked (HTTP 200, the scenario's content type,
//!   the answer with the request's id and the expected content); a failed one counts as an error
//!   by kind and not as a latency. Prints one JSON line: sent, ok, errors, the latency
//!   percentiles in µs, and how late the pacing thread itself was.
//! - `streams`: opens `--sessions` MCP sessions (`initialize`, `notifications/initialized`),
//!   each with a standalone `GET` event stream that must answer `200 text/event-stream`, on a
//!   connection of its own; prints one JSON line once all are open, holds them until SIGTERM or
//!   SIGINT, then prints how many were still open (all of them, or it exits 1).
//!
//! A benchmark tool, not a test: it asserts nothing about time.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mcp_guard_tests::{PROTOCOL_2026, SseParser, call_body, initialize_body, list_body, meta_2026};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// The text the `call` scenarios send to `echo` and expect back.
const ECHO_TEXT: &str = "hello from bench_client";

#[derive(Parser, Debug)]
#[command(
    name = "bench_client",
    about = "mcp-guard's fixed-rate and open-streams load client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fixed-rate, latency-corrected load; prints one JSON line.
    Load(LoadArgs),
    /// Opens sessions with a GET event stream each and holds them until SIGTERM.
    Streams(StreamsArgs),
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The MCP endpoint, `http://host:port/path`.
    #[arg(long)]
    url: String,
    /// What each request is, and how it is answered.
    #[arg(long, value_enum, default_value_t = Scenario::Call)]
    scenario: Scenario,
    /// Requests per second, due at fixed intervals.
    #[arg(long, default_value_t = 3000)]
    rate: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the same rate before, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Keep-alive connections the requests are sent on.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// `Authorization` header value for every request.
    #[arg(long, env = "BENCH_AUTHORIZATION", hide_env_values = true)]
    authorization: Option<String>,
    /// Seconds an answer may take before it counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(clap::Args, Debug)]
struct StreamsArgs {
    /// The MCP endpoint, `http://host:port/path`, of a server with sessions.
    #[arg(long)]
    url: String,
    /// Sessions to open, each with one GET event stream.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Sessions being opened at the same time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Protocol revision the sessions are initialized with.
    #[arg(long, default_value = "2025-11-25")]
    protocol: String,
    /// `Authorization` header value for every request.
    #[arg(long, env = "BENCH_AUTHORIZATION", hide_env_values = true)]
    authorization: Option<String>,
    /// Seconds each step of opening a session may take.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// A request of the benchmark: MCP 2026-07-28 style (no session, `params._meta`, the
/// `Mcp-Method` / `Mcp-Name` headers), answered as JSON or SSE depending on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `tools/call` of `echo`, answered `application/json`.
    Call,
    /// `tools/call` of `echo` with a text of its own every time (no decision repeats),
    /// answered `application/json`.
    CallDistinct,
    /// `tools/list`, answered `application/json`.
    List,
    /// `tools/call` of `echo`, answered `text/event-stream`.
    CallSse,
    /// `tools/list`, answered `text/event-stream`.
    ListSse,
}

impl Scenario {
    fn is_call(self) -> bool {
        matches!(
            self,
            Scenario::Call | Scenario::CallDistinct | Scenario::CallSse
        )
    }

    /// The text a call sends to `echo` and expects back.
    fn text(self, id: u64) -> String {
        match self {
            Scenario::CallDistinct => format!("{ECHO_TEXT} {id}"),
            _ => ECHO_TEXT.to_owned(),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Scenario::Call | Scenario::CallDistinct | Scenario::List => "application/json",
            Scenario::CallSse | Scenario::ListSse => "text/event-stream",
        }
    }

    fn headers(self) -> Vec<(&'static str, &'static str)> {
        let mut h = vec![("mcp-protocol-version", PROTOCOL_2026)];
        if self.is_call() {
            h.extend([("mcp-method", "tools/call"), ("mcp-name", "echo")]);
        } else {
            h.push(("mcp-method", "tools/list"));
        }
        h
    }

    fn body(self, n: u64) -> Bytes {
        let id = i64::try_from(n).unwrap_or(i64::MAX);
        let mut body = if self.is_call() {
            call_body(id, "echo", json!({ "text": self.text(n) }))
        } else {
            list_body(id)
        };
        body["params"]["_meta"] = meta_2026();
        Bytes::from(body.to_string())
    }

    /// Whether `result` is what this scenario's request must get.
    fn check(self, result: &Value, id: u64) -> Result<(), String> {
        let ok = if self.is_call() {
            result["isError"] != true && result["content"][0]["text"] == self.text(id).as_str()
        } else {
            result["tools"]
                .as_array()
                .is_some_and(|tools| tools.iter().any(|t| t["name"] == "echo"))
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "unexpected result: {}",
                snippet(&result.to_string())
            ))
        }
    }
}

/// Why an answer did not count.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Io(String),
    Status(u16, String),
    ContentType(String),
    Answer(String),
    Timeout,
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Io(_) => "io",
            Failure::Status(..) => "status",
            Failure::ContentType(_) => "content_type",
            Failure::Answer(_) => "answer",
            Failure::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "connection failed: {e}"),
            Failure::Status(s, body) => write!(f, "HTTP {s}: {body}"),
            Failure::ContentType(ct) => write!(f, "unexpected content type {ct:?}"),
            Failure::Answer(e) => write!(f, "{e}"),
            Failure::Timeout => write!(f, "no answer in time"),
        }
    }
}

impl From<hyper::Error> for Failure {
    fn from(e: hyper::Error) -> Self {
        Failure::Io(e.to_string())
    }
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Where requests go: the authority to connect to, the path, and the headers every request
/// carries.
#[derive(Debug)]
struct Target {
    authority: String,
    path: String,
    authorization: Option<String>,
}

impl Target {
    fn parse(url: &str, authorization: Option<String>) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Target {
            authority: authority.to_owned(),
            path: path.to_owned(),
            authorization: authorization.filter(|a| !a.is_empty()),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", self.authority)))?;
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            // Ends with the connection; its errors surface on the requests.
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(
        &self,
        method: hyper::Method,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(&self.path)
            .header("host", &self.authority)
            .header("accept", "application/json, text/event-stream");
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(body))
            .unwrap_or_else(|e| panic!("a request of the benchmark is malformed: {e}"))
    }
}

fn content_type(resp: &Response<Incoming>) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads `resp` until the JSON-RPC answer with `id` has arrived, and the rest of the body: the
/// answer's `result` and when it arrived (the end of a JSON body; for SSE, the event carrying
/// it). `expected` is the content type the answer must have (None: JSON or SSE).
async fn read_answer(
    resp: Response<Incoming>,
    expected: Option<&str>,
    id: u64,
) -> Result<(Value, Instant), Failure> {
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    let mut body = resp.into_body();
    if status != 200 {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Failure::Status(status, snippet(&text)));
    }
    if expected.is_some_and(|e| !ct.starts_with(e)) {
        return Err(Failure::ContentType(ct));
    }
    let (message, at) = if ct.starts_with("text/event-stream") {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut found = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            parser.push(&data, Duration::ZERO, &mut events);
            for event in events.drain(..) {
                if found.is_none()
                    && let Some(msg) = event.json()
                    && msg["id"] == id
                {
                    found = Some((msg, Instant::now()));
                }
            }
        }
        found.ok_or_else(|| Failure::Answer(format!("no event carried the answer to id {id}")))?
    } else if ct.starts_with("application/json") {
        let bytes = body.collect().await?.to_bytes();
        let at = Instant::now();
        let msg: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Answer(format!(
                "not JSON ({e}): {}",
                snippet(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        (msg, at)
    } else {
        return Err(Failure::ContentType(ct));
    };
    if message["id"] != id {
        return Err(Failure::Answer(format!(
            "answer to id {id} carries id {}",
            message["id"]
        )));
    }
    match message.get("result") {
        Some(result) => Ok((result.clone(), at)),
        None => Err(Failure::Answer(format!(
            "no result: {}",
            snippet(&message.to_string())
        ))),
    }
}

/// When request `i` is due, after the start, at `rate` requests per second.
fn offset(i: u64, rate: u32) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How many requests `seconds` at `rate` make.
fn count(seconds: f64, rate: u32) -> u64 {
    // Float to integer saturates; a negative or NaN duration makes none.
    (seconds * f64::from(rate)).round().max(0.0) as u64
}

/// The `p`th percentile (0-100) of `sorted`, by nearest rank; 0 for no values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps a rank that is whole on paper (99.9 % of 1,000) from rounding up.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_json(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    let mean = if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<u64>() as f64 / values.len() as f64
    };
    json!({
        "p50": percentile(&values, 50.0),
        "p90": percentile(&values, 90.0),
        "p99": percentile(&values, 99.0),
        "p999": percentile(&values, 99.9),
        "max": values.last().copied().unwrap_or(0),
        "mean": (mean * 10.0).round() / 10.0,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Releases request indices `0..total` into `queue`, each when it is due. The thread sleeps with
/// the kernel's timer resolution (tokio's timers tick every millisecond, too coarse for a 333 µs
/// interval). Returns how late each release was, in µs.
fn pace(start: Instant, rate: u32, total: u64, queue: UnboundedSender<u64>) -> Vec<u64> {
    let mut lag = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for i in 0..total {
        let due = start + offset(i, rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        lag.push(micros(Instant::now().saturating_duration_since(due)));
        if queue.send(i).is_err() {
            break;
        }
    }
    lag
}

/// One connection's share of the load.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Sends one request on `conn` (reconnecting first when it is closed) and reads its answer.
async fn one_request(
    target: &Target,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    scenario: Scenario,
    id: u64,
) -> Result<Instant, Failure> {
    let idle_closed = match conn {
        Some(sender) => sender.ready().await.is_err(),
        None => true,
    };
    if idle_closed {
        // A keep-alive connection the server closed while idle is replaced, not an error.
        *conn = Some(target.connect().await?);
    }
    let Some(sender) = conn.as_mut() else {
        return Err(Failure::Connect("no connection".to_owned()));
    };
    sender.ready().await?;
    let req = target.request(hyper::Method::POST, scenario.body(id), &scenario.headers());
    let resp = sender.send_request(req).await?;
    let (result, at) = read_answer(resp, Some(scenario.content_type()), id).await?;
    scenario.check(&result, id).map_err(Failure::Answer)?;
    Ok(at)
}

/// The settings every connection of a `load` run shares.
struct Plan {
    target: Target,
    scenario: Scenario,
    start: Instant,
    rate: u32,
    measured_from: u64,
    timeout: Duration,
}

/// One connection's loop: takes the next due request, sends it, records its latency from the
/// time it was due. `conn` is the connection opened before the clock started.
async fn connection(
    plan: Arc<Plan>,
    queue: Arc<tokio::sync::Mutex<UnboundedReceiver<u64>>>,
    mut conn: Option<SendRequest<Full<Bytes>>>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let next = queue.lock().await.recv().await;
        let Some(i) = next else {
            return tally;
        };
        let intended = plan.start + offset(i, plan.rate);
        let outcome = match tokio::time::timeout(
            plan.timeout,
            one_request(&plan.target, &mut conn, plan.scenario, i),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout),
        };
        if outcome.is_err() {
            // The connection's state is unknown after a failure: start afresh.
            conn = None;
        }
        if i < plan.measured_from {
            continue;
        }
        match outcome {
            Ok(at) => tally
                .latencies_us
                .push(micros(at.saturating_duration_since(intended))),
            Err(failure) => {
                *tally.errors.entry(failure.kind()).or_default() += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("request {i}: {failure}"));
            }
        }
    }
}

async fn load(args: LoadArgs) -> Result<Value, String> {
    if args.rate == 0 || args.connections == 0 {
        return Err("--rate and --connections must be above 0".to_owned());
    }
    let target = Target::parse(&args.url, args.authorization.clone())?;
    let measured_from = count(args.warmup, args.rate);
    let total = measured_from + count(args.duration, args.rate);
    // Connections are opened before the clock starts, so the first requests do not pay for it.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(target.connect().await.map_err(|e| e.to_string())?);
    }
    let plan = Arc::new(Plan {
        target,
        scenario: args.scenario,
        start: Instant::now() + Duration::from_millis(20),
        rate: args.rate,
        measured_from,
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
    });
    let (tx, rx) = unbounded_channel();
    let queue = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        let (plan, queue) = (Arc::clone(&plan), Arc::clone(&queue));
        tasks.spawn(connection(plan, queue, Some(sender)));
    }
    let (start, rate) = (plan.start, plan.rate);
    let pacer = std::thread::spawn(move || pace(start, rate, total, tx));
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done.map_err(|e| format!("a connection task failed: {e}"))?);
    }
    let measured_end = Instant::now();
    let lag = pacer
        .join()
        .map_err(|_| "the pacing thread panicked".to_owned())?;
    let sent = total - measured_from;
    let ok = tally.latencies_us.len() as u64;
    let errors: u64 = tally.errors.values().sum();
    let measured_start = plan.start + offset(measured_from, plan.rate);
    Ok(json!({
        "scenario": args.scenario.to_possible_value().map(|v| v.get_name().to_owned()),
        "rate": args.rate,
        "connections": args.connections,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "sent": sent,
        "sent_with_warmup": total,
        "ok": ok,
        "errors": errors,
        "error_kinds": tally.errors,
        "first_error": tally.first_error,
        "elapsed_s": (measured_end.saturating_duration_since(measured_start).as_secs_f64() * 1000.0).round() / 1000.0,
        "latency_us": latency_json(tally.latencies_us),
        "pacer_lag_us": latency_json(lag.get(usize::try_from(measured_from).unwrap_or(0)..).unwrap_or_default().to_vec()),
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => load(args).await.map(|report| {
                println!("{report}");
                true
            }),
            Command::Streams(args) => streams(args).await,
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench_client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Counts of the held streams.
#[derive(Debug, Default)]
struct Held {
    ended: AtomicU64,
    bytes: AtomicU64,
}

async fn step<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {timeout:?}")),
    }
}

/// Opens one session and its GET stream on a connection of its own, and holds the stream in a
/// task that counts its bytes and notes its end.
async fn open_session(
    target: Arc<Target>,
    protocol: Arc<str>,
    timeout: Duration,
    held: Arc<Held>,
) -> Result<(), String> {
    let mut sender = step(timeout, "connect", target.connect()).await?;
    let init = Bytes::from(initialize_body(0, &protocol).to_string());
    let resp = step(timeout, "initialize", async {
        Ok::<_, Failure>(
            sender
                .send_request(target.request(hyper::Method::POST, init, &[]))
                .await?,
        )
    })
    .await?;
    let session = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (result, _) = step(timeout, "initialize", read_answer(resp, None, 0)).await?;
    if result["protocolVersion"].as_str().is_none() {
        return Err(format!("initialize: unexpected result {result}"));
    }
    let session = session.ok_or("initialize: no Mcp-Session-Id (is the server stateful?)")?;
    let headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", &*protocol),
    ];
    let initialized =
        Bytes::from(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
    step(timeout, "notifications/initialized", async {
        sender.ready().await?;
        let resp = sender
            .send_request(target.request(hyper::Method::POST, initialized, &headers))
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if (200..300).contains(&status) {
            Ok::<_, Failure>(())
        } else {
            Err(Failure::Status(
                status,
                snippet(&String::from_utf8_lossy(&body)),
            ))
        }
    })
    .await?;
    let resp = step(timeout, "GET stream", async {
        sender.ready().await?;
        Ok::<_, Failure>(
            sender
                .send_request(target.request(hyper::Method::GET, Bytes::new(), &headers))
                .await?,
        )
    })
    .await?;
    let (status, ct) = (resp.status().as_u16(), content_type(&resp));
    if status != 200 || !ct.starts_with("text/event-stream") {
        let body = step(timeout, "GET stream", async {
            Ok::<_, Failure>(resp.into_body().collect().await?.to_bytes())
        })
        .await
        .unwrap_or_default();
        return Err(format!(
            "GET stream answered HTTP {status} {ct:?}, not 200 text/event-stream: {}",
            snippet(&String::from_utf8_lossy(&body))
        ));
    }
    tokio::spawn(async move {
        // The connection lives as long as its sender: kept until the stream ends.
        let _sender = sender;
        let mut body = resp.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                held.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        held.ended.fetch_add(1, Ordering::Relaxed);
    });
    Ok(())
}

async fn streams(args: StreamsArgs) -> Result<bool, String> {
    let target = Arc::new(Target::parse(&args.url, args.authorization.clone())?);
    let protocol: Arc<str> = Arc::from(args.protocol.as_str());
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let held = Arc::new(Held::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let sessions = args.sessions;
    let mut opening = tokio::task::JoinSet::new();
    for k in 0..args.sessions {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (target, protocol, held) = (
            Arc::clone(&target),
            Arc::clone(&protocol),
            Arc::clone(&held),
        );
        opening.spawn(async move {
            let opened = open_session(target, protocol, timeout, held).await;
            drop(permit);
            opened.map_err(|e| format!("session {k} of {sessions}: {e}"))
        });
        // Fail at the first session that did not open, naming it.
        while let Some(done) = opening.try_join_next() {
            done.map_err(|e| e.to_string())??;
        }
    }
    while let Some(done) = opening.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let ended = held.ended.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "event": "open",
            "sessions": args.sessions,
            "open": args.sessions as u64 - ended,
            "opening_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let ended = held.ended.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "event": "closed",
            "sessions": args.sessions,
            "still_open": args.sessions as u64 - ended,
            "ended_early": ended,
            "bytes_received": held.bytes.load(Ordering::Relaxed),
        })
    );
    if ended > 0 {
        eprintln!(
            "bench_client: {ended} of {} GET streams ended while they were held",
            args.sessions
        );
    }
    Ok(ended == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_fixed_intervals() {
        assert_eq!(offset(0, 3000), Duration::ZERO);
        assert_eq!(offset(3000, 3000), Duration::from_secs(1));
        assert_eq!(offset(1, 3000), Duration::from_nanos(333_333));
        assert_eq!(offset(2, 4), Duration::from_millis(500));
        // No drift: the 3 millionth request is due exactly 1000 s in.
        assert_eq!(offset(3_000_000, 3000), Duration::from_secs(1000));
        assert_eq!(count(1.5, 3000), 4500);
        assert_eq!(count(0.0, 3000), 0);
        assert_eq!(count(-1.0, 3000), 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 50.0), 500);
        assert_eq!(percentile(&values, 99.0), 990);
        assert_eq!(percentile(&values, 99.9), 999);
        assert_eq!(percentile(&values, 100.0), 1000);
        assert_eq!(percentile(&values, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let report = latency_json(vec![3, 1, 2]);
        assert_eq!(report["p50"], 2);
        assert_eq!(report["max"], 3);
        assert_eq!(report["mean"], 2.0);
    }

    #[test]
    fn urls_and_answers() {
        let t = Target::parse("http://127.0.0.1:8080/mcp", Some(String::new())).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/mcp")
        );
        assert!(t.authorization.is_none());
        assert!(Target::parse("https://x/mcp", None).is_err());
        let call = json!({"content": [{"type": "text", "text": ECHO_TEXT}]});
        assert!(Scenario::Call.check(&call).is_ok());
        assert!(Scenario::List.check(&call).is_err());
        assert!(
            Scenario::ListSse
                .check(&json!({"tools": [{"name": "echo"}]}))
                .is_ok()
        );
        let body: Value = serde_json::from_slice(&Scenario::CallSse.body(7)).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(
            body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            PROTOCOL_2026
        );
    }
}
