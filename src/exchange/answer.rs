//! The answer chain: the readers an answer passes through on its way to the
//! client, in order, the same for an answer relayed by Envoy's router and one
//! that came whole from a dispatched call:
//!
//! 1. the provider's adapter (its format to OpenAI's; on the attempt),
//! 2. the stream's end watch (`api::stream_end`: how it ended, what it carried),
//! 3. the usage chunk the gateway asked for and the client did not (taken out),
//! 4. the continuation watch of a resuming pool (`routing::resume`, a break held back),
//! 5. the tail kept for the answer's usage (`api::usage::Tail`),
//! 6. the front door's converter (OpenAI's shape to the client's API).

use crate::api::stream_end::{StreamEnd, Wire};
use crate::api::usage::{Tail, Tokens, UsageChunkFilter};
use crate::api::Endpoint;
use crate::doors::DoorAnswer;
use crate::providers::{NativeApi, ResponseAdapter};
use crate::routing::resume::StreamWatch;

use super::{translates_stream, AnswerShape, Attempt};

/// The readers of one request's answer (see the module documentation).
pub struct AnswerChain {
    /// What the client asked the answer to look like, on which endpoint.
    pub shape: AnswerShape,
    pub endpoint: Endpoint,
    /// The API of the client's door, when members may serve it natively.
    pub api: Option<NativeApi>,
    /// The client's door converter (none for chat completions).
    pub door: Option<DoorAnswer>,
    /// A stream as relayed (the provider's, or an adapter's translation): how it ends, what it carried.
    pub stream_end: Option<StreamEnd>,
    /// An OpenAI-wire stream whose client did not ask for usage: its usage chunk is taken out.
    pub usage_chunks: Option<UsageChunkFilter>,
    /// The end of the answer, kept to read its token usage when limits,
    /// budgets or latency per token need it.
    pub tail: Option<Tail>,
    /// Usage a translating adapter saw (streams report it even when the client did not ask).
    pub adapter_usage: Option<Tokens>,
    /// A continuing pool's stream: watched for a break, which is held back (`routing::resume`).
    pub resume: Option<StreamWatch>,
}

/// A whole answer, read: what the client gets, and the verdict on its member
/// (noted by the caller once the verdict stands: a failed one is not the answer).
#[derive(Debug, PartialEq, Eq)]
pub struct Whole {
    /// The status the attempt is recorded with and the client gets: 502 for
    /// an answer unreadable or cut short; a door may raise an error's to its own.
    pub verdict: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// A relayed chunk, read.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The body as it goes on (`None`: the chunk unchanged).
    Out(Option<Vec<u8>>),
    /// The stream ended broken and is continued: what of this chunk goes out before the continuation.
    Broken(Vec<u8>),
}

impl Default for AnswerChain {
    fn default() -> Self {
        AnswerChain {
            shape: AnswerShape::default(),
            endpoint: Endpoint::ChatCompletions,
            api: None,
            door: None,
            stream_end: None,
            usage_chunks: None,
            tail: None,
            adapter_usage: None,
            resume: None,
        }
    }
}

/// How an answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passage {
    /// As it is: OpenAI's shape, or a door's answer from a member serving it natively.
    AsIs,
    /// Translated event by event (the provider's adapter, then the client's
    /// door). `primed`: an adapter's stream is held until its first event, so
    /// that one that cannot be read still fails over.
    Stream { primed: bool },
    /// Translated as a whole body: held until read, so that an unreadable
    /// answer still fails over.
    Whole,
}

impl AnswerChain {
    /// The answer's headers came with `status` from `attempt`: the readers it needs.
    pub fn start(&mut self, attempt: &Attempt, status: u16) {
        self.stream_end = self.stream_wire(attempt, status).map(|wire| StreamEnd::new(wire, self.shape.choices));
        if attempt.adapter.is_none() && self.door_for(attempt).is_none() && self.takes_usage_chunk(attempt, status) {
            self.usage_chunks = Some(UsageChunkFilter::default());
        }
    }

    /// The format of a successful stream as relayed: OpenAI's (passed
    /// through, or an adapter's translation), or the door's own when served natively.
    pub fn stream_wire(&self, attempt: &Attempt, status: u16) -> Option<Wire> {
        if !self.shape.stream || !(200..300).contains(&status) {
            return None;
        }
        match self.api.filter(|_| attempt.native) {
            None => Some(Wire::OpenAi),
            Some(NativeApi::Messages) => Some(Wire::Messages),
            Some(NativeApi::Responses) => Some(Wire::Responses),
        }
    }

    /// Whether a successful OpenAI-wire answer carries a usage chunk the
    /// gateway asked for and the client did not (see `providers::openai`).
    pub fn takes_usage_chunk(&self, attempt: &Attempt, status: u16) -> bool {
        let shape = self.shape;
        let openai_stream = shape.stream && !shape.include_usage && self.endpoint != Endpoint::Embeddings;
        openai_stream && status < 300 && !attempt.native && attempt.adapter.is_none()
    }

    /// How a successful (not failed over) answer of `status` to `attempt`
    /// reaches the client.
    pub fn passage(&self, attempt: &Attempt, status: u16) -> Passage {
        let adapter = attempt.adapter.as_ref();
        let door = self.door_for(attempt);
        if adapter.is_none() && door.is_none() {
            return Passage::AsIs;
        }
        let streams = status < 400
            && adapter.is_none_or(|a| super::translates_stream(a, status))
            && door.is_none_or(DoorAnswer::is_stream);
        if streams {
            Passage::Stream { primed: adapter.is_some() }
        } else {
            Passage::Whole
        }
    }

    /// The door converter, unless the member serves the door's API natively.
    pub fn door_for(&self, attempt: &Attempt) -> Option<&DoorAnswer> {
        self.door.as_ref().filter(|_| !attempt.native)
    }

    /// Keeps the end of the (OpenAI-shaped) answer for its usage.
    pub fn note(&mut self, bytes: &[u8]) {
        if let Some(tail) = self.tail.as_mut() {
            tail.push(bytes);
        }
    }

    /// The usage a translating adapter read from the provider's own format.
    pub fn note_adapter_usage(&mut self, adapter: Option<&ResponseAdapter>) {
        if let Some(u) = adapter.and_then(ResponseAdapter::usage) {
            self.adapter_usage = Some(u);
        }
    }

    /// (prompt, completion) tokens of the answer, when it reported them.
    pub fn usage(&self) -> Option<Tokens> {
        self.adapter_usage.or_else(|| self.usage_chunks.as_ref()?.usage()).or_else(|| self.tail.as_ref()?.usage())
    }

    /// Whether a relayed body must be read at all (else it passes untouched).
    pub fn reads(&self, attempt: &Attempt) -> bool {
        attempt.adapter.is_some()
            || self.door_for(attempt).is_some()
            || self.stream_end.is_some()
            || self.tail.is_some()
    }

    /// A whole answer (a dispatched call's; HTTP callouts are buffered) with
    /// `status` and the upstream's `content_type`. A stream given whole that
    /// ended short of its end (or with an error event) has reached no one
    /// yet: its verdict is its member's 502 when `fails_over_on_502`.
    pub fn whole(
        &mut self,
        attempt: &mut Attempt,
        status: u16,
        content_type: Option<&str>,
        body: Vec<u8>,
        fails_over_on_502: bool,
    ) -> Whole {
        let (cut, tail) = match self.stream_wire(attempt, status).filter(|_| attempt.adapter.is_none()) {
            Some(wire) => {
                let mut watch = StreamEnd::new(wire, self.shape.choices);
                watch.feed(&body);
                let tail = watch.end().filter(|_| attempt.native || self.door.is_none());
                (watch.failed() && fails_over_on_502, tail)
            }
            None => (false, None),
        };
        let takes_usage_chunk = self.takes_usage_chunk(attempt, status);
        let (content_type, body, verdict) = match attempt.adapter.as_mut() {
            Some(adapter) if translates_stream(adapter, status) => {
                let body = adapter.translate_stream(&body, true);
                let verdict = if adapter.stream_failed() && fails_over_on_502 { 502 } else { status };
                (adapter.content_type(), body, verdict)
            }
            Some(adapter) => {
                let translated = adapter.translate_body(status, &body);
                let verdict = if adapter.translation_failed() { 502 } else { status };
                ("application/json", translated, verdict)
            }
            None if takes_usage_chunk => {
                let mut chunks = UsageChunkFilter::default();
                let body = chunks.feed(&body, true).unwrap_or(body);
                self.usage_chunks = Some(chunks);
                (content_type.unwrap_or("text/event-stream"), body, status)
            }
            None => (content_type.unwrap_or("application/json"), body, status),
        };
        let verdict = if cut { 502 } else { verdict };
        let body = match tail {
            Some(tail) if !cut => [body, tail].concat(),
            _ => body,
        };
        let native = attempt.native;
        let (verdict, content_type, body) = match self.door.as_mut().filter(|_| !native) {
            Some(door) if door.is_stream() && verdict < 400 => (verdict, "text/event-stream", door.feed(&body, true)),
            Some(door) => {
                let (door_status, body) = door.body(verdict, &body);
                (door_status.max(verdict), "application/json", body)
            }
            None => (verdict, content_type, body),
        };
        Whole { verdict, content_type: content_type.to_string(), body }
    }

    /// The next chunk of a relayed answer. At the end of the stream, a stream
    /// passed through that ended short of its API's end gets that end (a door
    /// translating it ends it itself), after what the continuation watch held back.
    pub fn relay(&mut self, attempt: &mut Attempt, chunk: &[u8], end_of_stream: bool) -> Relayed {
        let mut out = attempt.adapter.as_mut().map(|a| a.translate_stream(chunk, end_of_stream));
        if let Some(watch) = self.stream_end.as_mut() {
            watch.feed(out.as_deref().unwrap_or(chunk));
        }
        if let (None, Some(chunks)) = (&out, self.usage_chunks.as_mut()) {
            out = chunks.feed(chunk, end_of_stream);
        }
        // A continuing pool's stream: its break is held back.
        if let Some(watched) = self.resume.as_mut().and_then(|w| w.feed(out.as_deref().unwrap_or(chunk), end_of_stream))
        {
            out = Some(watched);
        }
        self.note(out.as_deref().unwrap_or(chunk));
        let broken = end_of_stream && self.resume_due();
        let native = attempt.native;
        if let Some(door) = self.door.as_mut().filter(|_| !native) {
            out = Some(door.feed(out.as_deref().unwrap_or(chunk), end_of_stream && !broken));
        }
        if broken {
            return Relayed::Broken(out.unwrap_or_else(|| chunk.to_vec()));
        }
        if end_of_stream {
            let held = self.resume.as_mut().map(StreamWatch::take_cut).unwrap_or_default();
            // (A translated stream's adapter always ends it.)
            let door_translates = self.door.is_some() && !native;
            let tail = self.stream_end.as_mut().and_then(StreamEnd::end);
            let tail = tail.filter(|_| attempt.adapter.is_none() && !door_translates);
            if !held.is_empty() || tail.is_some() {
                let mut whole = out.unwrap_or_else(|| chunk.to_vec());
                whole.extend_from_slice(&held);
                whole.extend_from_slice(&tail.unwrap_or_default());
                out = Some(whole);
            }
            self.note_adapter_usage(attempt.adapter.as_ref());
        }
        Relayed::Out(out)
    }

    /// The first OpenAI-shaped pieces of a primed stream (already through
    /// its adapter): the end watch, the continuation watch, the tail and the
    /// door, as [`AnswerChain::relay`] reads them. `Broken`: the stream ended
    /// broken and is continued.
    pub fn primed(&mut self, attempt: &Attempt, out: Vec<u8>, end_of_stream: bool) -> Relayed {
        if let Some(watch) = self.stream_end.as_mut() {
            watch.feed(&out);
        }
        let out = self.resume.as_mut().and_then(|w| w.feed(&out, end_of_stream)).unwrap_or(out);
        self.note(&out);
        let broken = end_of_stream && self.resume_due();
        if end_of_stream && !broken {
            self.note_adapter_usage(attempt.adapter.as_ref());
        }
        let out = match self.door.as_mut() {
            Some(door) => door.feed(&out, end_of_stream && !broken),
            None => out,
        };
        if broken {
            Relayed::Broken(out)
        } else {
            Relayed::Out(Some(out))
        }
    }

    /// Whether the watched stream broke (and is to be continued).
    pub fn resume_due(&self) -> bool {
        self.resume.as_ref().is_some_and(StreamWatch::broken)
    }

    /// A translated whole body relayed by the router (its headers held):
    /// the body in the client's shape, the status it goes with, and whether
    /// the provider's answer could not be read (the member's 502).
    pub fn hold(&mut self, attempt: &mut Attempt, status: u16, body: Vec<u8>) -> (Vec<u8>, u16, bool) {
        let (out, unreadable) = match attempt.adapter.as_mut() {
            Some(adapter) => {
                let out = adapter.translate_body(status, &body);
                (out, adapter.translation_failed())
            }
            None => (body, false),
        };
        self.note(&out);
        self.note_adapter_usage(attempt.adapter.as_ref());
        let sent = if unreadable { 502 } else { status };
        let (door_status, out) = match &self.door {
            Some(door) => door.body(sent, &out),
            None => (sent, out),
        };
        (out, door_status, unreadable)
    }

    /// The last OpenAI piece of a stream the gateway ends itself (a
    /// continuation's answer, or the end a failed one gets), in the client's shape.
    pub fn end_with(&mut self, end: &[u8]) -> Vec<u8> {
        self.note(end);
        match self.door.as_mut() {
            Some(door) => door.feed(end, true),
            None => end.to_vec(),
        }
    }
}
