//! Response bodies: a complete buffer, or events sent as separate frames with
//! optional delays and an optional mid-stream reset.

use crate::listener::ConnCtl;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Grace period for the first chunk to reach the socket before a mid-stream reset.
const RESET_GRACE: Duration = Duration::from_millis(50);

/// Streaming parameters for one request.
#[derive(Clone)]
pub struct StreamOpts {
    pub chunks: usize,
    pub delay: Duration,
    pub reset_after_first: Option<Arc<ConnCtl>>,
    /// Faults `stream_cut_after`, `stream_error_after`, `reply`, `continuation_overlap_words`.
    pub cut_after: Option<usize>,
    pub error_after: Option<usize>,
    pub reply: Option<String>,
    pub overlap_words: usize,
    pub kind: crate::listener::Kind,
}

/// Response body: a complete buffer, or a sequence of events sent as separate
/// frames with optional delays and an optional mid-stream reset.
pub enum MockBody {
    Full(Option<Bytes>),
    Events(Box<EventBody>),
}

pub struct EventBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
    reset_after_first: Option<Arc<ConnCtl>>,
    resetting: bool,
}

impl MockBody {
    pub fn full(b: impl Into<Bytes>) -> MockBody {
        MockBody::Full(Some(b.into()))
    }
    pub fn events(events: Vec<Bytes>, opts: &StreamOpts) -> MockBody {
        MockBody::Events(Box::new(EventBody {
            events: events.into(),
            delay: opts.delay,
            sleep: None,
            sent: 0,
            reset_after_first: opts.reset_after_first.clone(),
            resetting: false,
        }))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Events(e) => e.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Events(e) => e.events.is_empty() && e.reset_after_first.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Events(_) => SizeHint::default(),
        }
    }
}

impl EventBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(s) = self.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                if self.resetting {
                    if let Some(ctl) = &self.reset_after_first {
                        ctl.trigger_reset();
                    }
                    // The connection task drops the connection; never finish.
                    return Poll::Pending;
                }
            }
            if self.resetting {
                return Poll::Pending;
            }
            if self.sent >= 1 && self.reset_after_first.is_some() {
                self.resetting = true;
                self.sleep = Some(Box::pin(tokio::time::sleep(self.delay.max(RESET_GRACE))));
                continue;
            }
            let Some(ev) = self.events.pop_front() else {
                return Poll::Ready(None);
            };
            self.sent += 1;
            if !self.delay.is_zero() && !self.events.is_empty() {
                self.sleep = Some(Box::pin(tokio::time::sleep(self.delay)));
            }
            return Poll::Ready(Some(Ok(Frame::data(ev))));
        }
    }
}
