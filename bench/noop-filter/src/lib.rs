//! Ablation filter. The plugin configuration is one word:
//!
//! - `noop`:    every callback returns Continue (cost of a wasm filter being there).
//! - `buffer`:  holds the headers until the whole body arrived, like switchboard.
//! - `rewrite`: `buffer`, then reads the body, writes it back unchanged, and sets
//!   the routing headers switchboard sets (cluster header, :authority,
//!   content-length, authorization) so Envoy routes by header.
//! - `calls`:   `rewrite` plus the other host calls switchboard's plain weighted
//!   path makes (read both header maps, the clock three times, one shared-data
//!   read, the timeout header, four answer headers, the answer body, one
//!   duration histogram sample): what those calls cost in Envoy without any of its logic.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Noop,
    Buffer,
    Rewrite,
    Calls,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { mode: Mode::Noop, histogram: 0 }));
}}

struct Root {
    mode: Mode,
    histogram: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let conf = self.get_plugin_configuration().unwrap_or_default();
        let conf = String::from_utf8_lossy(&conf);
        self.mode = if conf.contains("calls") {
            Mode::Calls
        } else if conf.contains("rewrite") {
            Mode::Rewrite
        } else if conf.contains("buffer") {
            Mode::Buffer
        } else {
            Mode::Noop
        };
        if self.mode == Mode::Calls {
            self.histogram = proxy_wasm::hostcalls::define_metric(MetricType::Histogram, "bench.duration_ms").unwrap_or(0);
        }
        true
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { mode: self.mode, histogram: self.histogram, id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    mode: Mode,
    histogram: u32,
    id: u32,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Calls {
            let _ = self.get_http_request_headers();
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
        if self.mode == Mode::Calls {
            let _ = self.get_shared_data("bench.health");
            let _ = self.get_current_time();
            self.set_http_request_header("x-envoy-upstream-rq-timeout-ms", Some("30000"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        if self.mode == Mode::Calls {
            let _ = self.get_http_response_headers();
            let _ = self.get_current_time();
            self.set_http_response_header("x-switchboard-pool", Some("gpt4o_16k"));
            self.set_http_response_header("x-switchboard-member", Some("alpha/gpt-4o"));
            self.set_http_response_header("x-switchboard-attempts", Some("1"));
            self.set_http_response_header("x-switchboard-request-id", Some("0123456789abcdef"));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Calls && end_of_stream {
            let _ = self.get_http_response_body(0, body_size);
            let _ = proxy_wasm::hostcalls::record_metric(self.histogram, 1);
        }
        Action::Continue
    }
}
