//! Server-Sent Events on the wire: splitting a byte stream into events as they complete, and
//! reading or replacing an event's `data` while keeping its other fields (`id:`, `event:`,
//! `retry:`, comments) exactly as the server sent them.
//!
//! Lines may end in `\n`, `\r\n` or a lone `\r`, as the SSE grammar allows. The splitter writes a
//! lone `\r` as `\n` while the event passes, so that the lines the sidecar reads (and filters) are
//! the very lines a client reads: a server cannot hide an answer from the filter by framing it
//! with carriage returns.

use bytes::{Bytes, BytesMut};

/// Cuts a byte stream into complete events, each with its terminating blank line.
#[derive(Debug, Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Where the current (unfinished) line starts.
    line_start: usize,
    /// How far `buf` has been scanned.
    scanned: usize,
}

impl EventSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, raw, if one has fully arrived.
    pub fn next_event(&mut self) -> Option<Bytes> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            match self.buf[i] {
                b'\n' => {}
                b'\r' => match self.buf.get(i + 1) {
                    // A `\n` may follow in the next chunk: wait for it.
                    None => return None,
                    // CRLF: the `\n` ends the line.
                    Some(b'\n') => {
                        self.scanned += 1;
                        continue;
                    }
                    // A lone CR ends the line; it is passed on as LF.
                    Some(_) => self.buf[i] = b'\n',
                },
                _ => {
                    self.scanned += 1;
                    continue;
                }
            }
            self.scanned += 1;
            let line = &self.buf[self.line_start..i];
            let empty = line.is_empty() || line == b"\r";
            self.line_start = i + 1;
            if empty {
                let event = self.buf.split_to(i + 1).freeze();
                self.line_start = 0;
                self.scanned = 0;
                return Some(event);
            }
        }
        None
    }

    /// Whatever is left when the stream ends (an unterminated event).
    pub fn take_rest(&mut self) -> Bytes {
        // A CR that waited for a LF which never came ended its line.
        if let Some(last) = self.buf.last_mut()
            && *last == b'\r'
        {
            *last = b'\n';
        }
        self.line_start = 0;
        self.scanned = 0;
        self.buf.split().freeze()
    }

    /// Bytes held back waiting for the end of an event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Splits a line into field name and value (one leading space of the value removed).
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &[]),
    }
}

/// The event's `data`, its `data:` lines joined by `\n`; `None` when it has no `data:` line.
pub fn data(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for line in lines(raw) {
        let (name, value) = field(line);
        if name == b"data" && !line.is_empty() {
            match &mut out {
                None => out = Some(value.to_vec()),
                Some(o) => {
                    o.push(b'\n');
                    o.extend_from_slice(value);
                }
            }
        }
    }
    out
}

/// The event's type (`event:` field), if it has one.
pub fn event_type(raw: &[u8]) -> Option<&[u8]> {
    lines(raw)
        .map(field)
        .find(|(name, _)| *name == b"event")
        .map(|(_, v)| v)
}

/// The same event with its data replaced by `new_data` (which must hold no line break), every
/// other line kept in place.
pub fn replace_data(raw: &[u8], new_data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len().max(new_data.len()) + 16);
    let mut written = false;
    for line in lines(raw) {
        if line.is_empty() {
            continue;
        }
        if field(line).0 == b"data" {
            if !written {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(new_data);
                out.extend_from_slice(b"\n");
                written = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n");
    }
    if !written {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(new_data);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// A new `message` event carrying `data`.
pub fn message_event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<Bytes>, Bytes) {
        let mut s = EventSplitter::default();
        let mut out = vec![];
        for c in chunks {
            s.push(c);
            while let Some(e) = s.next_event() {
                out.push(e);
            }
        }
        (out, s.take_rest())
    }

    #[test]
    fn events_across_chunk_boundaries() {
        let (ev, rest) = split_all(&[
            b"id: 1\ndata: {\"a\"",
            b":1}\n",
            b"\nevent: message\r\ndata: x\r\n\r",
            b"\n: comment\n\ndata: tail",
        ]);
        assert_eq!(ev.len(), 3);
        assert_eq!(&ev[0][..], b"id: 1\ndata: {\"a\":1}\n\n");
        assert_eq!(&ev[1][..], b"event: message\r\ndata: x\r\n\r\n");
        assert_eq!(&ev[2][..], b": comment\n\n");
        assert_eq!(&rest[..], b"data: tail");
    }

    #[test]
    fn a_lone_cr_ends_a_line_as_for_any_sse_client() {
        // Framed with CRs only, across chunk boundaries (a CR at the end of a chunk waits).
        let (ev, rest) = split_all(&[
            b"event: message\rdata: {\"a\":1}\r",
            b"\rid: 2\r\n",
            b"data: x\r",
        ]);
        assert_eq!(ev.len(), 1);
        assert_eq!(&ev[0][..], b"event: message\ndata: {\"a\":1}\n\n");
        assert_eq!(data(&ev[0]), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(event_type(&ev[0]), Some(&b"message"[..]));
        // The stream ends after a CR: that CR ended the line.
        assert_eq!(&rest[..], b"id: 2\r\ndata: x\n");
        assert_eq!(data(&rest), Some(b"x".to_vec()));
    }

    #[test]
    fn priming_event_with_empty_data() {
        let (ev, _) = split_all(&[b"id: abc\ndata:\n\nretry: 500\n\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(data(&ev[0]), Some(vec![]));
        assert_eq!(data(&ev[1]), None);
    }

    #[test]
    fn data_lines_join() {
        assert_eq!(data(b"data: a\ndata:b\n\n"), Some(b"a\nb".to_vec()));
        assert_eq!(
            event_type(b"event: endpoint\ndata: /m\n\n"),
            Some(&b"endpoint"[..])
        );
    }

    #[test]
    fn replace_keeps_other_fields() {
        let e = replace_data(
            b"id: 7\nevent: message\ndata: {\"x\":\ndata: 1}\nretry: 9\n\n",
            b"{}",
        );
        assert_eq!(&e[..], b"id: 7\nevent: message\ndata: {}\nretry: 9\n\n");
    }
}
