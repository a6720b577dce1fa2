//! Entry points for the fuzz targets in `tests/fuzz` (built only with the `fuzzing` feature).
//! Each takes the fuzzer's bytes as outside input to one parser or rewriter and checks the
//! properties the rest of the sidecar relies on, so a target finds wrong answers, not only
//! panics:
//! * [`jsonrpc`]: a parsed message survives its own round trip with the same kind;
//! * [`sse_split`]: splitting a stream into events loses, adds and reorders nothing (a lone CR
//!   is passed on as the LF it means);
//! * [`sse_rewrite`] and [`json_rewrite`]: whatever the server sends, no tool the policy hides
//!   reaches the client in a list, as a spec-following SSE client reads the stream;
//! * [`mcp_name`], [`bearer`]: header decoding never panics and decodes what it claims to.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::intercept::{Interceptor, MarksPrivate, StaticToolFilter, Transport};
use crate::jsonrpc::{Message, Payload};
use crate::list_answer::{Read, same_rewrite};
use crate::observe::ListNotes;
use crate::proxy::rewrite::Rewriter;
use crate::sse::EventSplitter;
use mcp_guard_policy::mcp::List;

/// The tool every rewriting target hides.
pub const HIDDEN: &str = "secret";

/// `Payload::parse` on a request body.
pub fn jsonrpc(data: &[u8]) {
    let Ok(payload) = Payload::parse(data) else {
        return;
    };
    for m in payload.messages() {
        let _ = (m.method(), m.id(), m.params(), m.result());
        let _ = (m.target(), m.mirrored_name(), m.meta_protocol_version());
        let again = Message::from_value(m.clone().into_value());
        assert_eq!(again.map(|a| a.kind).ok(), Some(m.kind));
    }
}

/// Cuts `data` into chunks whose sizes the fuzzer picks (its first byte seeds them).
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let Some((&seed, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut size = usize::from(seed % 17) + 1;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = size.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        size = size * 7 % 23 + 1;
    }
    out
}

/// The events of a stream arriving in chunks, then what is left at its end.
fn split(data: &[u8]) -> (Vec<Bytes>, Bytes) {
    let mut splitter = EventSplitter::default();
    let mut events = Vec::new();
    for c in chunks(data) {
        splitter.push(c);
        while let Some(e) = splitter.next_event() {
            events.push(e);
        }
    }
    (events, splitter.take_rest())
}

/// `EventSplitter`: the events and the rest, in order, are exactly the stream.
pub fn sse_split(data: &[u8]) {
    let (events, rest) = split(data);
    let mut joined = Vec::with_capacity(data.len());
    for e in &events {
        // An event ends at a blank line; a blank line alone is an (empty) event too.
        let blank_line_alone = &e[..] == b"\n" || &e[..] == b"\r\n";
        assert!(
            blank_line_alone || e.ends_with(b"\n\n") || e.ends_with(b"\n\r\n"),
            "{e:?}"
        );
        joined.extend_from_slice(e);
        let _ = (crate::sse::data(e), crate::sse::event_type(e));
    }
    joined.extend_from_slice(&rest);
    // The stream itself, but for its lone CRs, which end lines and are passed on as LF.
    let stream = data.get(1..).unwrap_or_default();
    let expected: Vec<u8> = stream
        .iter()
        .enumerate()
        .map(|(i, b)| match (b, stream.get(i + 1)) {
            (b'\r', Some(b'\n')) => b'\r',
            (b'\r', _) => b'\n',
            (b, _) => *b,
        })
        .collect();
    assert_eq!(joined, expected);
}

fn hiding_rewriter(sniff: bool, pending: Vec<(String, List)>) -> Rewriter {
    let filter: Arc<dyn Interceptor> = Arc::new(MarksPrivate(StaticToolFilter::new(
        &[],
        &[HIDDEN.to_owned()],
    )));
    Rewriter::new(
        filter,
        Transport::StreamableHttp,
        None,
        Box::new(pending),
        sniff,
    )
}

/// The `data` of each event as a client following the SSE specification reads it: lines end
/// at CR, LF or CRLF; a blank line ends an event; `data` lines are joined with LF. Unlike the
/// specification, an event left open at the end of the stream counts too (a lenient client
/// might take it), which only makes the check stricter.
pub fn client_view(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut rest = stream;
    loop {
        let cut = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        let (line, next) = match cut {
            Some(p) if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') => {
                (&rest[..p], Some(&rest[p + 2..]))
            }
            Some(p) => (&rest[..p], Some(&rest[p + 1..])),
            None => (rest, None),
        };
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(d);
            }
        } else {
            let (name, value) = match line.iter().position(|b| *b == b':') {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &[][..]),
            };
            if name == b"data" {
                match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                }
            }
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.extend(data);
    out
}

/// Panics when a list-shaped result in this JSON-RPC message (or batch) lists [`HIDDEN`].
pub fn assert_hidden_absent(v: &Value) {
    match v {
        Value::Array(items) => items.iter().for_each(assert_hidden_absent),
        Value::Object(o) => {
            let Some(result) = o.get("result") else {
                return;
            };
            if let Some(items) = result.get("tools").and_then(Value::as_array) {
                for t in items {
                    assert_ne!(
                        t.get("name").and_then(Value::as_str),
                        Some(HIDDEN),
                        "a hidden tool reached the client: {v}"
                    );
                }
            }
        }
        _ => {}
    }
}

/// A GET stream (answers whose requests the sidecar did not see, recognised by shape): events
/// split as they arrive, each rewritten, then read as a client reads them.
pub fn sse_rewrite(data: &[u8]) {
    let mut rewriter = hiding_rewriter(true, Vec::new());
    let (events, rest) = split(data);
    let mut sent = Vec::new();
    // As `SseRewriteBody` does: each complete event, then what is left at the end.
    for e in events.into_iter().chain((!rest.is_empty()).then_some(rest)) {
        sent.extend_from_slice(&rewriter.rewrite_event(e));
    }
    for d in client_view(&sent) {
        if let Ok(v) = serde_json::from_slice::<Value>(&d) {
            assert_hidden_absent(&v);
        }
    }
}

/// A JSON answer to a `tools/list` the client sent with id 1. Also: the answer read without
/// parsing its items is rewritten as the same answer parsed whole is (the same message to a
/// JSON reader, the same audit notes).
pub fn json_rewrite(data: &[u8]) {
    let pending = || vec![("1".to_owned(), List::Tools)];
    let notes = ListNotes::default();
    let mut rewriter = hiding_rewriter(false, pending()).with_audit(Some(Arc::clone(&notes)));
    let out = rewriter.rewrite_json(data);
    let sent = out.as_deref().unwrap_or(data);
    if let Ok(v) = serde_json::from_slice::<Value>(sent) {
        assert_hidden_absent(&v);
    }
    let parsed_notes = ListNotes::default();
    let mut parsed = hiding_rewriter(false, pending()).with_audit(Some(Arc::clone(&parsed_notes)));
    let expected = parsed.rewrite_parsed(data);
    assert!(
        same_rewrite(out.as_deref(), expected.as_deref()),
        "read and parsed answers differ: {out:?} and {expected:?}"
    );
    assert_eq!(*notes.lock(), *parsed_notes.lock(), "audit notes differ");
    // Written again, a read answer is still one each reader reads alike: no member twice.
    if let (Some(_), Some(out)) = (Read::of(data), &out) {
        assert!(
            Read::of(out).is_some(),
            "the rewritten answer gives a member twice"
        );
    }
}

/// The `Mcp-Name` header value decoding of MCP 2026-07-28.
pub fn mcp_name(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(decoded) = crate::proxy::headers::decode_header_value(raw)
        && !raw.starts_with("=?base64?")
    {
        assert_eq!(decoded, raw);
    }
}

/// The Authorization header, then the token's JOSE header, then claims into an identity.
pub fn bearer(data: &[u8]) {
    let mut headers = HeaderMap::new();
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    headers.insert(http::header::AUTHORIZATION, value);
    if let Ok(Some(token)) = crate::auth::bearer(&headers) {
        assert!(!token.is_empty() && !token.contains(' '));
        let _ = jsonwebtoken::decode_header(token);
    }
    if let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(data) {
        let _ = crate::auth::identity_from_claims(claims);
    }
}
