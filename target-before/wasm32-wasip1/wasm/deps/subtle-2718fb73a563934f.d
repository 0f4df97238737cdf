/work/main/target-before/wasm32-wasip1/wasm/deps/subtle-2718fb73a563934f.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/subtle-2.6.1/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libsubtle-2718fb73a563934f.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/subtle-2.6.1/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libsubtle-2718fb73a563934f.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/subtle-2.6.1/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/subtle-2.6.1/src/lib.rs:
