//! Ablation filter. The plugin configuration names a mode:
//!
//! - `noop`:    every callback returns Continue (cost of a wasm filter being there).
//! - `buffer`:  holds the headers until the whole body arrived, like switchboard.
//! - `rewrite`: `buffer`, then reads the body, writes it back unchanged, and sets
//!   the routing headers switchboard sets (cluster header, :authority,
//!   content-length, authorization) so Envoy routes by header.
//! - `calls`:   `rewrite` plus the other host calls switchboard's plain weighted
//!   path makes in Envoy, grouped as below: what those calls cost without any
//!   of its logic. `{"mode": "calls", "repeat": "answer"}` makes one group's
//!   calls `REPEAT` times: the difference divided by the added calls is what one
//!   such call costs (`breakdown.py --ablate`; one call alone is below the noise).
//!
//! Groups: `reqhdr` (read the request header map), `clock` (the clock, three
//! times), `shared` (one shared-data read), `timeout` (the attempt timeout
//! header), `resphdr` (read the response header map), `answer` (four answer
//! headers and the provider's request id under its own name), `respbody` (the
//! answer body as it passes), `metric` (one duration histogram sample).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Noop,
    Buffer,
    Rewrite,
    Calls,
}

/// How many times `repeat` makes its group's calls.
pub const REPEAT: u32 = 10;

/// The groups of `calls`, in the order the request meets them.
pub const GROUPS: [&str; 8] = ["reqhdr", "clock", "shared", "timeout", "resphdr", "answer", "respbody", "metric"];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { mode: Mode::Noop, histogram: 0, repeat: 0 }));
}}

struct Root {
    mode: Mode,
    histogram: u32,
    /// Bit i set: `GROUPS[i]` is made `REPEAT` times, not once.
    repeat: u8,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let conf = self.get_plugin_configuration().unwrap_or_default();
        let conf = String::from_utf8_lossy(&conf);
        let (mode, repeat) = conf.split_once("repeat").unwrap_or((conf.as_ref(), ""));
        self.mode = if mode.contains("calls") {
            Mode::Calls
        } else if mode.contains("rewrite") {
            Mode::Rewrite
        } else if mode.contains("buffer") {
            Mode::Buffer
        } else {
            Mode::Noop
        };
        if self.mode == Mode::Calls {
            self.repeat = GROUPS
                .iter()
                .enumerate()
                .filter(|(_, g)| repeat.contains(*g))
                .fold(0, |bits, (i, _)| bits | 1 << i);
            self.histogram = proxy_wasm::hostcalls::define_metric(MetricType::Histogram, "bench.duration_ms").unwrap_or(0);
        }
        true
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { mode: self.mode, histogram: self.histogram, repeat: self.repeat, id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    mode: Mode,
    histogram: u32,
    repeat: u8,
    id: u32,
}

impl Filter {
    /// How many times `calls` makes the calls of `group` (0 in other modes).
    fn makes(&self, group: &str) -> u32 {
        match GROUPS.iter().position(|g| *g == group) {
            _ if self.mode != Mode::Calls => 0,
            Some(i) if self.repeat & 1 << i != 0 => REPEAT,
            _ => 1,
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        for _ in 0..self.makes("reqhdr") {
            let _ = self.get_http_request_headers();
        }
        for _ in 0..self.makes("clock") {
            let _ = self.get_current_time();
        }
        if self.mode == Mode::Noop || end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Noop {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if matches!(self.mode, Mode::Rewrite | Mode::Calls) {
            if let Some(body) = self.get_http_request_body(0, body_size) {
                self.set_http_request_body(0, body_size, &body);
                self.set_http_request_header("content-length", Some(&body.len().to_string()));
            }
            // `calls` splits 3:1 over both listeners like switchboard's bench pool.
            let beta = self.mode == Mode::Calls && self.id % 4 == 3;
            let (cluster, authority, key) = if beta {
                ("beta", "api.beta.example", "Bearer bench-beta-key")
            } else {
                ("alpha", "api.alpha.example", "Bearer bench-alpha-key")
            };
            self.set_http_request_header("x-switchboard-cluster", Some(cluster));
            self.set_http_request_header(":authority", Some(authority));
            self.set_http_request_header("authorization", Some(key));
        }
        for _ in 0..self.makes("shared") {
            let _ = self.get_shared_data("bench.health");
        }
        for _ in 0..self.makes("clock") {
            let _ = self.get_current_time();
        }
        for _ in 0..self.makes("timeout") {
            self.set_http_request_header("x-envoy-upstream-rq-timeout-ms", Some("30000"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        let mut upstream = Vec::new();
        for _ in 0..self.makes("resphdr") {
            upstream = self.get_http_response_headers();
        }
        for _ in 0..self.makes("answer") {
            self.set_http_response_header("x-switchboard-pool", Some("gpt4o_16k"));
            self.set_http_response_header("x-switchboard-member", Some("alpha/gpt-4o"));
            self.set_http_response_header("x-switchboard-attempts", Some("1"));
            self.set_http_response_header("x-switchboard-request-id", Some("0123456789abcdef"));
            let id = upstream.iter().find(|(k, _)| k == "x-request-id").map_or("req_mock", |(_, v)| v.as_str());
            self.set_http_response_header("x-upstream-request-id", Some(id));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // Envoy passes the answer's data on, then calls again with an empty end of stream.
        let reads = if body_size > 0 { self.makes("respbody") } else { 0 };
        for _ in 0..reads {
            let _ = self.get_http_response_body(0, body_size);
        }
        if end_of_stream {
            for _ in 0..self.makes("clock") {
                let _ = self.get_current_time();
            }
            for _ in 0..self.makes("metric") {
                let _ = proxy_wasm::hostcalls::record_metric(self.histogram, 1);
            }
        }
        Action::Continue
    }
}
