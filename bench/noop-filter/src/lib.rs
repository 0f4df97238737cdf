//! Ablation filter. The plugin configuration is one word:
//!
//! - `noop`:    every callback returns Continue (cost of a wasm filter being there).
//! - `buffer`:  holds the headers until the whole body arrived, like switchboard.
//! - `rewrite`: `buffer`, then reads the body, writes it back unchanged, and sets
//!   the routing headers switchboard sets (cluster header, :authority,
//!   content-length, authorization) so Envoy routes by header.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Noop,
    Buffer,
    Rewrite,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { mode: Mode::Noop }));
}}

struct Root {
    mode: Mode,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let conf = self.get_plugin_configuration().unwrap_or_default();
        let conf = String::from_utf8_lossy(&conf);
        self.mode = if conf.contains("rewrite") {
            Mode::Rewrite
        } else if conf.contains("buffer") {
            Mode::Buffer
        } else {
            Mode::Noop
        };
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { mode: self.mode }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    mode: Mode,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
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
        if self.mode == Mode::Rewrite {
            if let Some(body) = self.get_http_request_body(0, body_size) {
                self.set_http_request_body(0, body_size, &body);
                self.set_http_request_header("content-length", Some(&body.len().to_string()));
            }
            self.set_http_request_header("x-switchboard-cluster", Some("alpha"));
            self.set_http_request_header(":authority", Some("api.alpha.example"));
            self.set_http_request_header("authorization", Some("Bearer bench-alpha-key"));
        }
        Action::Continue
    }
}
