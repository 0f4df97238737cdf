//! Incremental server-sent-events parser (the WHATWG event-stream format):
//! `\n`, `\r\n` or `\r` line ends, `data:` lines joined with `\n`, events
//! dispatched on a blank line. Input may be split anywhere, even inside a
//! UTF-8 sequence: lines are only cut at ASCII line ends, and only the
//! incomplete line and event are held.

/// Largest event accepted; beyond it the stream is treated as broken.
pub(super) const MAX_EVENT: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    /// The `event:` field, empty when absent.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub(super) struct Parser {
    /// Bytes of the current, incomplete line.
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended on `\r`: a leading `\n` belongs to it.
    skip_lf: bool,
}

/// The stream exceeded `MAX_EVENT` without completing an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow;

impl Parser {
    /// Feeds `chunk`; complete events go to `on_event`. With `eos`, a final
    /// unterminated line and event are dispatched too.
    pub fn feed(&mut self, chunk: &[u8], eos: bool, on_event: &mut dyn FnMut(Event)) -> Result<(), Overflow> {
        let mut rest = chunk;
        if self.skip_lf {
            self.skip_lf = false;
            if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = rest.split_at(pos);
            self.line.extend_from_slice(head);
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, on_event);
            rest = match tail {
                [b'\r', b'\n', more @ ..] => more,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, more @ ..] => more,
                [] => &[],
            };
        }
        self.line.extend_from_slice(rest);
        if eos {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, on_event);
            }
            self.dispatch(on_event);
            self.skip_lf = false;
        }
        if self.line.len() + self.data.len() > MAX_EVENT {
            self.line = Vec::new();
            self.data = Vec::new();
            self.has_data = false;
            return Err(Overflow);
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (f, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (f, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event)) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        let data = String::from_utf8(data).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        on_event(Event { event, data });
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse_split(input: &[u8], cut: usize) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        p.feed(&input[..cut], false, &mut |e| out.push(e)).unwrap();
        p.feed(&input[cut..], false, &mut |e| out.push(e)).unwrap();
        p.feed(b"", true, &mut |e| out.push(e)).unwrap();
        out
    }

    #[test]
    fn parses_events_with_any_line_ending_at_any_split() {
        let input = "event: a\ndata: {\"x\":\"h\u{e9}\u{1f600}\"}\n\n: comment\r\ndata:1\r\ndata: 2\r\n\r\nevent: ping\rdata: p\r\rdata: last".as_bytes();
        let want = vec![
            Event { event: "a".into(), data: "{\"x\":\"h\u{e9}\u{1f600}\"}".into() },
            Event { event: String::new(), data: "1\n2".into() },
            Event { event: "ping".into(), data: "p".into() },
            Event { event: String::new(), data: "last".into() },
        ];
        for cut in 0..=input.len() {
            assert_eq!(parse_split(input, cut), want, "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let input = b"data: one\r\n\r\ndata: two\n\n";
        let mut p = Parser::default();
        let mut out = Vec::new();
        for b in input {
            p.feed(std::slice::from_ref(b), false, &mut |e| out.push(e.data)).unwrap();
        }
        assert_eq!(out, vec!["one", "two"]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert!(parse_split(b"event: x\n\n\n\nid: 3\n\n", 3).is_empty());
    }
}
