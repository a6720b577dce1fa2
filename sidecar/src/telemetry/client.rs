//! The HTTP client of the OTLP http/protobuf exporters: a blocking [`ureq`] agent called on the
//! SDK's own export threads (the span batcher's and the metric reader's), which already wait for
//! each export. It keeps no thread or runtime of its own: the client the OTLP crate would build
//! instead (reqwest's blocking client) runs a Tokio runtime on a thread per exporter, two threads
//! and 0.7 MiB of an idle sidecar's memory for two POSTs every few seconds
//! (bench/results/2026-12-07-otlp-client.md). TLS is rustls with the Web PKI roots, as for the
//! sidecar's other outbound calls.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry_http::{HttpClient, HttpError};

use mcp_guard_common::env;

/// The longest answer an export reads; a collector answers with a few bytes (or a status
/// message). The OTLP crate's own clients stop at the same size.
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// The OTLP specification's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One exporter's HTTP client.
#[derive(Debug)]
pub struct ExportClient {
    agent: ureq::Agent,
}

impl ExportClient {
    /// A client whose every export ends within `timeout` (connecting, sending and reading the
    /// answer). A collector's error status is an answer, not an error: the exporter decides
    /// from it whether to retry. Redirects are not followed (an export is a POST whose body
    /// would be lost or replayed elsewhere).
    pub fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("mcp-guard-sidecar/", env!("CARGO_PKG_VERSION")))
            .build();
        ExportClient {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The client of one signal, with the timeout the standard variables give it:
    /// `signal_var` (such as `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`), else
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds; else 10 s.
    pub fn for_signal(signal_var: &str) -> Self {
        Self::new(timeout_from(|name| std::env::var(name).ok(), signal_var))
    }
}

/// The export timeout the variables read by `var` give (see [`ExportClient::for_signal`]); a
/// value that is not a number of milliseconds is passed over, as the OTLP crate does.
fn timeout_from(var: impl Fn(&str) -> Option<String>, signal_var: &str) -> Duration {
    [signal_var, env::OTEL_EXPORTER_OTLP_TIMEOUT]
        .into_iter()
        .find_map(|name| var(name)?.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    /// Blocks the calling thread until the answer is read: the SDK calls it on an export
    /// thread of its own, never on the proxy's runtime.
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let answer = self.agent.run(Request::from_parts(parts, body.as_ref()))?;
        let (parts, mut body) = answer.into_parts();
        let bytes = body.with_config().limit(MAX_ANSWER).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    #[test]
    fn the_timeout_comes_from_the_signal_then_the_general_variable() {
        let vars = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let traces = env::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT;
        assert_eq!(timeout_from(vars(&[]), traces), DEFAULT_TIMEOUT);
        assert_eq!(
            timeout_from(vars(&[(env::OTEL_EXPORTER_OTLP_TIMEOUT, "2500")]), traces),
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout_from(
                vars(&[
                    (env::OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
                    (env::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "700"),
                ]),
                traces
            ),
            Duration::from_millis(700)
        );
        // Not a number of milliseconds: passed over.
        assert_eq!(
            timeout_from(
                vars(&[(env::OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "5s")]),
                traces
            ),
            DEFAULT_TIMEOUT
        );
    }

    /// A listener on a free loopback port, and the traces URL of `scheme` that names it.
    fn bound(scheme: &str) -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "{scheme}://{}/v1/traces",
            listener.local_addr().expect("addr")
        );
        (listener, url)
    }

    /// A collector that reads one request and answers `status` with `body`; hands back the
    /// request's head and body.
    fn collector(
        status: &'static str,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let (listener, url) = bound("http");
        let served = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("head");
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .expect("content-length");
            let mut sent = vec![0; length];
            reader.read_exact(&mut sent).expect("body");
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("answer");
            (head, sent)
        });
        (url, served)
    }

    fn export(
        client: &ExportClient,
        url: &str,
        body: &'static [u8],
    ) -> Result<Response<Bytes>, HttpError> {
        let request = Request::post(url)
            .header("content-type", "application/x-protobuf")
            .header("authorization", "Bearer collector-secret")
            .body(Bytes::from_static(body))
            .expect("request");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(client.send_bytes(request))
    }

    #[test]
    fn an_export_is_posted_whole_and_its_answer_read() {
        let (url, served) = collector("200 OK", "");
        let client = ExportClient::new(Duration::from_secs(10));
        let answer = export(&client, &url, b"\x0a\x03abc").expect("exported");
        assert_eq!(answer.status(), 200);
        let (head, sent) = served.join().expect("collector");
        assert!(head.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        assert!(
            lower.contains("authorization: bearer collector-secret"),
            "{head}"
        );
        assert_eq!(sent, b"\x0a\x03abc");
    }

    #[test]
    fn a_collector_error_is_an_answer_the_exporter_can_retry_on() {
        let (url, served) = collector("503 Service Unavailable", "busy");
        let client = ExportClient::new(Duration::from_secs(10));
        let answer = export(&client, &url, b"x").expect("an answer, not an error");
        assert_eq!(answer.status(), 503);
        assert_eq!(answer.body().as_ref(), b"busy");
        served.join().expect("collector");
    }

    #[test]
    fn a_dead_collector_is_an_error_naming_the_connection() {
        let (listener, url) = bound("http");
        drop(listener);
        let client = ExportClient::new(Duration::from_secs(10));
        let error = export(&client, &url, b"x").expect_err("nothing listens");
        assert!(
            error.to_string().to_ascii_lowercase().contains("connect")
                || error.to_string().to_ascii_lowercase().contains("refused"),
            "{error}"
        );
    }

    #[test]
    fn an_https_endpoint_is_spoken_to_in_tls_only() {
        // A plaintext server behind an https URL: the export fails in the handshake instead of
        // sending the batch (and its headers) in the clear.
        let (listener, url) = bound("https");
        let served = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut hello = [0u8; 5];
            stream.read_exact(&mut hello).expect("hello");
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            hello
        });
        let client = ExportClient::new(Duration::from_secs(10));
        export(&client, &url, b"x").expect_err("no TLS server there");
        let hello = served.join().expect("server");
        assert_eq!(
            hello[0], 0x16,
            "the first bytes are a TLS handshake record: {hello:?}"
        );
    }
}
