//! An incremental server-sent-events parser (the WHATWG event-stream format), provider-neutral.
//!
//! Feed it the body's byte chunks as they arrive and collect complete events. Chunk boundaries
//! may fall anywhere: inside a multi-byte UTF-8 character, between the `\r` and `\n` of a CRLF,
//! inside a field name. Bytes are buffered until a line is complete and only then decoded, so no
//! chunking changes the result. `id:` and `retry:` fields are ignored: we never reconnect, since
//! re-sending a POST after a dropped stream would run the model call twice.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had one (Anthropic always sends it, OpenAI never).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Parser state between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`; a `\n` opening the next chunk belongs to it.
    after_cr: bool,
    /// Whether the first line (which may start with a BOM) has been seen.
    seen_first_line: bool,
    event: Option<String>,
    data: String,
    /// A `data:` field has been seen for the event being built.
    has_data: bool,
    /// Any field (even one we ignore) has been seen since the last dispatch.
    in_event: bool,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Parse one chunk, appending the events it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        // An empty chunk leaves a pending CR pending.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(after_lf) = rest.strip_prefix(b"\n") {
                rest = after_lf;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            // Reuse the allocation for the next line.
            self.line = line;
            self.line.clear();
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
    }

    /// Whether the stream could end here without losing anything: no partial line and no
    /// half-built event. A body that ends when this is false was cut mid-event.
    pub fn is_clean(&self) -> bool {
        self.line.is_empty() && !self.in_event
    }

    fn process_line(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) {
        let mut raw = raw;
        if !self.seen_first_line {
            self.seen_first_line = true;
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if raw.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(raw);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        self.in_event = true;
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        self.in_event = false;
        // Per the spec an event without data is not dispatched.
        if self.has_data {
            self.has_data = false;
            out.push(SseEvent {
                event: event.filter(|name| !name.is_empty()),
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        (out, parser.is_clean())
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(Into::into),
            data: data.into(),
        }
    }

    /// Every split into two chunks, and every split into three, and one byte at a time, must
    /// give what parsing the whole fixture at once gives.
    fn assert_chunking_invariant(fixture: &[u8], expected: &[SseEvent], clean: bool) {
        assert_eq!(
            parse_chunks(&[fixture]),
            (expected.to_vec(), clean),
            "whole"
        );
        for i in 0..=fixture.len() {
            let got = parse_chunks(&[&fixture[..i], &fixture[i..]]);
            assert_eq!(got, (expected.to_vec(), clean), "split at {i}");
        }
        for i in 0..=fixture.len() {
            for j in i..=fixture.len() {
                let got = parse_chunks(&[&fixture[..i], &fixture[i..j], &fixture[j..]]);
                assert_eq!(got, (expected.to_vec(), clean), "split at {i}, {j}");
            }
        }
        let bytes: Vec<&[u8]> = fixture.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), (expected.to_vec(), clean), "bytewise");
    }

    #[test]
    fn every_chunking_gives_the_same_events() {
        let fixture = "\u{feff}: comment\r\n\
                       event: message_start\r\n\
                       data: {\"a\":\"héllo → 世界 🎉\"}\r\n\
                       \r\n\
                       event:ping\rdata:{}\r\r\
                       data: line one\n\
                       data:  two spaces\n\
                       data\n\
                       id: 7\n\
                       retry: 10\n\
                       \n\
                       event: empty\n\
                       \n\
                       data: [DONE]\n\n";
        let expected = [
            ev(Some("message_start"), "{\"a\":\"héllo → 世界 🎉\"}"),
            ev(Some("ping"), "{}"),
            ev(None, "line one\n two spaces\n"),
            ev(None, "[DONE]"),
        ];
        assert_chunking_invariant(fixture.as_bytes(), &expected, true);
    }

    #[test]
    fn a_stream_cut_mid_event_is_not_clean() {
        let complete = b"event: a\ndata: 1\n\n";
        assert_chunking_invariant(complete, &[ev(Some("a"), "1")], true);
        // Cut after a full line but before the blank line ending the event.
        let cut = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n";
        assert_chunking_invariant(cut, &[ev(Some("a"), "1")], false);
        // Cut inside a line.
        let cut = b"event: a\ndata: 1\n\ndata: {\"x\":";
        assert_chunking_invariant(cut, &[ev(Some("a"), "1")], false);
    }

    #[test]
    fn a_trailing_cr_is_a_complete_line() {
        // A CR at the very end ends the line; the stream is clean once the blank line is seen.
        assert_chunking_invariant(b"data: x\r\r", &[ev(None, "x")], true);
        assert_chunking_invariant(b"data: x\r", &[], false);
    }

    #[test]
    fn a_bom_is_only_stripped_at_the_start() {
        let fixture = "\u{feff}data: a\n\n\u{feff}data: b\n\n";
        // The second BOM is part of a field name, which is then unknown and ignored.
        assert_chunking_invariant(fixture.as_bytes(), &[ev(None, "a")], true);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_chunking_invariant(b"data: \xff\xfe\n\n", &[ev(None, "\u{fffd}\u{fffd}")], true);
    }
}
