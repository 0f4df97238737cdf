//! The proxy-wasm glue: the only module that talks to the host. It reads
//! headers and bodies, asks the pure modules what to do, and applies it.

mod abi;
mod canary_store;
mod filter;
mod fleet;
mod health_store;
mod live_store;
mod metrics;
mod observe;
mod parked;
mod probes;
mod root;
mod runtime;
mod shadow;
mod tenant_store;
mod wake;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(context_id))
    });
}}
