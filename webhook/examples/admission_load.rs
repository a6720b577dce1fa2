//! Load generator for `bench/webhook/run.sh`: bursts of N concurrent AdmissionReviews, the way a
//! controller scaling a workload sends them (N pods created at once), over N keep-alive HTTPS
//! connections, with a pause between bursts. Prints `p50_ms p99_ms max_ms reviews`.
//!
//! `cargo run --release -p mcp-guard-webhook --example admission_load -- --url URL --ca CA --body FILE`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// `https://127.0.0.1:PORT/mutate`.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_URL")]
    url: String,
    /// CA certificate (PEM) of the webhook's serving certificate.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_CA")]
    ca: PathBuf,
    /// AdmissionReview JSON to send.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_BODY")]
    body: PathBuf,
    /// Reviews in flight at once (one burst).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_CONCURRENCY", default_value_t = 50)]
    concurrency: usize,
    /// Measured bursts (after 20 warmup bursts).
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_BURSTS", default_value_t = 400)]
    bursts: usize,
    /// Pause between bursts.
    #[arg(long, env = "MCP_GUARD_WEBHOOK_LOAD_PAUSE_MS", default_value_t = 20)]
    pause_ms: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let ca = std::fs::read(&args.ca).expect("read --ca");
    let body: Vec<u8> = std::fs::read(&args.body).expect("read --body");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut latencies = Vec::with_capacity(args.bursts * args.concurrency);
    for burst in 0..(20 + args.bursts) {
        let futures = (0..args.concurrency).map(|_| {
            let client = client.clone();
            let body = body.clone();
            let url = args.url.clone();
            // Spawned, so both worker threads send, as a multi-threaded API server would.
            tokio::spawn(async move {
                let start = Instant::now();
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status(), 200);
                let text = resp.bytes().await.expect("body");
                assert!(text.windows(14).any(|w| w == b"\"allowed\":true"));
                start.elapsed()
            })
        });
        let results = futures_util::future::join_all(futures).await;
        if burst >= 20 {
            latencies.extend(results.into_iter().map(|r| r.expect("task")));
        }
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "{:.2} {:.2} {:.2} {}",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        latencies.len()
    );
}
