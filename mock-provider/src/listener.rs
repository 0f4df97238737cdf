//! A mock listener: which provider kind it imitates, its key, faults, counters
//! and recorded requests; and the per-connection control used for resets.

use crate::faults::FaultSpec;
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "openai" | "openai_compatible" | "openai-compatible" => Kind::OpenAi,
            "azure" | "azure_openai" => Kind::Azure,
            "anthropic" => Kind::Anthropic,
            "gemini" => Kind::Gemini,
            "bedrock" => Kind::Bedrock,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Azure => "azure",
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "gemini",
            Kind::Bedrock => "bedrock",
        }
    }
}

/// Requests kept by `GET /_mock/requests`.
pub const RECORD_CAP: usize = 200;
pub struct Stats {
    pub requests: AtomicU64,
    pub by_status: Vec<AtomicU64>, // index = status code (0..600)
    pub resets: AtomicU64,
    pub hangs: AtomicU64,
    pub in_flight: AtomicI64,
    /// The most requests in flight at once since the last reset.
    pub max_in_flight: AtomicI64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            requests: AtomicU64::new(0),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            resets: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
        }
    }
    pub fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        for s in &self.by_status {
            s.store(0, Ordering::Relaxed);
        }
        self.resets.store(0, Ordering::Relaxed);
        self.hangs.store(0, Ordering::Relaxed);
        self.max_in_flight.store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    pub(crate) fn count_status(&self, s: StatusCode) {
        if let Some(c) = self.by_status.get(s.as_u16() as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Global defaults from the command line.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub stream_chunks: usize,
    pub stream_delay: Duration,
    pub record: bool,
}

pub struct Listener {
    pub name: String,
    pub kind: Kind,
    pub key: Option<String>,
    pub secret: Option<String>,
    pub faults: Mutex<Option<Arc<FaultSpec>>>,
    has_faults: AtomicBool,
    pub stats: Stats,
    pub recorded: Option<Mutex<VecDeque<Recorded>>>,
    pub defaults: Defaults,
    ids: AtomicU64,
    pub name_header: HeaderValue,
    /// Hashes of the prompt prefixes cached so far (`kinds::cache`).
    pub cache: Mutex<std::collections::HashSet<u64>>,
}

impl Listener {
    pub fn new(name: String, kind: Kind, key: Option<String>, secret: Option<String>, defaults: Defaults) -> Listener {
        let name_header = HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("mock"));
        Listener {
            recorded: defaults.record.then(|| Mutex::new(VecDeque::with_capacity(RECORD_CAP))),
            name,
            kind,
            key,
            secret,
            faults: Mutex::new(None),
            has_faults: AtomicBool::new(false),
            stats: Stats::new(),
            defaults,
            ids: AtomicU64::new(1),
            name_header,
            cache: Mutex::default(),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_faults(&self, spec: Option<FaultSpec>) {
        let mut g = lock(&self.faults);
        self.has_faults.store(spec.is_some(), Ordering::Release);
        *g = spec.map(Arc::new);
    }

    pub(crate) fn current_faults(&self) -> Option<Arc<FaultSpec>> {
        if !self.has_faults.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.faults).clone()
    }

    pub fn clear_recorded(&self) {
        if let Some(r) = &self.recorded {
            lock(r).clear();
        }
    }
}

/// Lock a mutex, ignoring poisoning (the data stays usable).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-connection control: lets a request ask for the TCP connection to be
/// torn down with an RST.
#[derive(Default)]
pub struct ConnCtl {
    pub(crate) reset: AtomicBool,
    pub(crate) notify: Notify,
}

impl ConnCtl {
    pub fn trigger_reset(&self) {
        self.reset.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}
