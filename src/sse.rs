//! Server-sent events framing (the WHATWG event-stream format), written once
//! for every stream the gateway reads: providers' streams, the answers a door
//! converts, the stream watches of `api` and `routing`. A line ends with
//! `\r\n`, `\n` or a lone `\r`; a blank line ends an event; `data:` lines are
//! joined with `\n`; a line starting with `:` is a comment. A leaf: it
//! imports nothing of the crate.

use std::borrow::Cow;

/// Where the first event of `buf[from..]` ends, as `(len, separator)`: the
/// event is `buf[..len]`, without its last line end, and the blank line after
/// it `buf[len..len + separator]`. `from` lets a caller that holds an
/// incomplete event skip what it already searched (any index is safe: an
/// event ends where two line ends follow each other). A lone `\r` closing
/// `buf` ends the blank line at once: a `\n` arriving later then opens the
/// next event as an empty line, which no reader counts.
pub fn event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    loop {
        let rest = buf.get(at..)?;
        let line_end = at + rest.iter().position(is_line_end)?;
        let first = line_end_len(buf, line_end)?;
        if let Some(second) = line_end_len(buf, line_end + first) {
            return Some((line_end, first + second));
        }
        at = line_end + first;
    }
}

fn is_line_end(b: &u8) -> bool {
    matches!(b, b'\n' | b'\r')
}

/// The length of the line end at `at` (`\r\n`: 2), or `None` when none is.
/// A `\r` closing `buf` counts as a lone one.
fn line_end_len(buf: &[u8], at: usize) -> Option<usize> {
    match (buf.get(at), buf.get(at + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some(2),
        (Some(b'\r' | b'\n'), _) => Some(1),
        _ => None,
    }
}

/// Whether `buf` ends with a blank line (the end of an event).
pub fn ends_with_blank_line(buf: &[u8]) -> bool {
    match buf {
        [.., b'\n' | b'\r', b'\r', b'\n'] => true,
        [.., b'\r', b'\n'] => false,
        [.., b'\n' | b'\r', b'\n' | b'\r'] => true,
        _ => false,
    }
}

/// The lines of one event (or of any text), without their line ends.
pub fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.iter().position(is_line_end) {
            Some(at) => {
                let skip = if text.get(at..at + 2) == Some(b"\r\n") { 2 } else { 1 };
                rest = text.get(at + skip..);
                text.get(..at)
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// The fields of one event as `(name, value)`, comments left out; a value
/// loses one leading space (`data: x` and `data:x` are the same).
pub fn fields(event: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    lines(event).filter(|line| !line.is_empty() && line.first() != Some(&b':')).map(|line| {
        match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                (line.get(..i).unwrap_or_default(), value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        }
    })
}

/// An event's data: its `data:` lines joined with `\n` (borrowed when there is
/// one), `None` when it has none.
pub fn data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for value in fields(event).filter(|(name, _)| *name == b"data").map(|(_, value)| value) {
        match &mut data {
            None => data = Some(Cow::Borrowed(value)),
            Some(joined) => {
                let joined = joined.to_mut();
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
        }
    }
    data
}

/// An event's `event:` field (its last one), `None` when it has none.
pub fn name(event: &[u8]) -> Option<&[u8]> {
    fields(event).filter(|(name, _)| *name == b"event").map(|(_, value)| value).last()
}

/// Cuts a stream that arrives in pieces into whole events: holds only the
/// incomplete event, and searches each byte for a line end once.
#[derive(Debug, Default)]
pub struct Framer {
    held: Vec<u8>,
    /// Where the search of `held` goes on (what came before holds no blank line).
    searched: usize,
}

impl Framer {
    /// Feeds `chunk`; each complete event goes to `on_event` (without its
    /// blank line). With `eos`, what is left is an event too, when not empty.
    pub fn feed(&mut self, chunk: &[u8], eos: bool, on_event: &mut dyn FnMut(&[u8])) {
        let mut start = 0;
        if self.held.is_empty() {
            // Nothing held: the chunk's whole events are read where they are.
            while let Some((len, separator)) = event_end(chunk.get(start..).unwrap_or_default(), 0) {
                on_event(chunk.get(start..start + len).unwrap_or_default());
                start += len + separator;
            }
            self.held.extend_from_slice(chunk.get(start..).unwrap_or_default());
        } else {
            self.held.extend_from_slice(chunk);
            let held = std::mem::take(&mut self.held);
            let mut from = self.searched;
            while let Some((len, separator)) = event_end(held.get(start..).unwrap_or_default(), from) {
                on_event(held.get(start..start + len).unwrap_or_default());
                start += len + separator;
                from = 0;
            }
            self.held = held;
            self.held.drain(..start.min(self.held.len()));
        }
        // A line end at the very end may be the first of a blank line.
        self.searched = self.held.len().saturating_sub(2);
        if eos {
            let rest = self.take();
            if !rest.is_empty() {
                on_event(&rest);
            }
        }
    }

    /// How many bytes of an incomplete event are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes what is held (the incomplete event) and starts over.
    pub fn take(&mut self) -> Vec<u8> {
        self.searched = 0;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// The fields of each event of `input` fed in two pieces cut at `cut`, then ended.
    fn framed(input: &[u8], cut: usize) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let mut on_event = |e: &[u8]| out.push(fields(e).map(|(n, v)| (n.to_vec(), v.to_vec())).collect());
        framer.feed(&input[..cut], false, &mut on_event);
        framer.feed(&input[cut..], true, &mut on_event);
        out
    }

    #[test]
    fn a_blank_line_ends_an_event_with_any_line_end() {
        assert_eq!(event_end(b"data: a\n\ndata: b", 0), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\ndata: b", 0), Some((7, 4)));
        assert_eq!(event_end(b"data: a\r\rdata: b", 0), Some((7, 2)));
        assert_eq!(event_end(b"data: a\n\r\ndata: b", 0), Some((7, 3)));
        assert_eq!(event_end(b"event: x\rdata: a\r\n\r", 0), Some((16, 3)));
        assert_eq!(event_end(b"data: a\r\ndata: b\r\n", 0), None);
        assert_eq!(event_end(b"data: a\r", 0), None);
        assert_eq!(event_end(b"", 0), None);
        for ended in [&b"data: a\n\n"[..], b"data: a\r\n\r\n", b"data: a\r\r", b"data: a\n\r\n", b"data: a\r\n\r"] {
            assert!(ends_with_blank_line(ended), "{ended:?}");
        }
        for open in [&b"data: a\n"[..], b"data: a\r\n", b"data: a\r", b"data: a", b"\n"] {
            assert!(!ends_with_blank_line(open), "{open:?}");
        }
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let input = b"event: a\ndata: 1\n\n: note\r\ndata: 2\r\ndata: 3\r\n\r\nevent: b\rdata: 4\r\rdata: 5";
        let field = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let want = vec![
            vec![field("event", "a"), field("data", "1")],
            vec![field("data", "2"), field("data", "3")],
            vec![field("event", "b"), field("data", "4")],
            vec![field("data", "5")],
        ];
        for cut in 0..=input.len() {
            assert_eq!(framed(input, cut), want, "cut at {cut}");
        }
        // Byte by byte: the held event is searched on from where it was left.
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for b in input.iter() {
            framer.feed(std::slice::from_ref(b), false, &mut |e| out.push(e.to_vec()));
        }
        assert_eq!(framer.take(), b"data: 5");
        // The `\n` after `3\r\n\r` came after that blank line was taken as ended: an empty line of the next event.
        assert_eq!(out, vec![&b"event: a\ndata: 1"[..], b": note\r\ndata: 2\r\ndata: 3", b"\nevent: b\rdata: 4"]);
    }

    #[test]
    fn a_lone_cr_cut_before_its_lf_leaves_an_empty_line_no_reader_counts() {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        framer.feed(b"data: 1\r\n\r", false, &mut |e| out.push(e.to_vec()));
        assert_eq!(out, vec![b"data: 1".to_vec()], "the event is not held back for its last byte");
        framer.feed(b"\ndata: 2\r\n\r\n", false, &mut |e| out.push(e.to_vec()));
        assert_eq!(data(&out[1]).as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn reads_fields_data_and_name() {
        let event = b"event: message\r\n: comment\rdata: {\"a\":1}\ndata:two\nid: 3\nretry";
        assert_eq!(
            fields(event).collect::<Vec<_>>(),
            vec![
                (&b"event"[..], &b"message"[..]),
                (b"data", b"{\"a\":1}"),
                (b"data", b"two"),
                (b"id", b"3"),
                (b"retry", b""),
            ]
        );
        assert_eq!(data(event).as_deref(), Some(&b"{\"a\":1}\ntwo"[..]));
        assert!(matches!(data(b"data: one"), Some(Cow::Borrowed(b"one"))));
        assert_eq!(data(b"event: ping"), None);
        let mut with_data = 0;
        Framer::default()
            .feed(b"event: x\n\n\n\nid: 3\n\n", true, &mut |e| with_data += usize::from(data(e).is_some()));
        assert_eq!(with_data, 0, "events without data carry nothing");
        assert_eq!(name(event), Some(&b"message"[..]));
        assert_eq!(name(b"data: x"), None);
        assert_eq!(lines(b"a\r\nb\rc\n\nd").collect::<Vec<_>>(), vec![&b"a"[..], b"b", b"c", b"", b"d"]);
    }
}
