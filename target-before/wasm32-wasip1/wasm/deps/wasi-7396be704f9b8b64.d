/work/main/target-before/wasm32-wasip1/wasm/deps/wasi-7396be704f9b8b64.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib_generated.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libwasi-7396be704f9b8b64.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib_generated.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libwasi-7396be704f9b8b64.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib_generated.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wasi-0.11.1+wasi-snapshot-preview1/src/lib_generated.rs:
