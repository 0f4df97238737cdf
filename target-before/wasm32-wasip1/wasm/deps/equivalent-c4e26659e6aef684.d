/work/main/target-before/wasm32-wasip1/wasm/deps/equivalent-c4e26659e6aef684.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libequivalent-c4e26659e6aef684.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libequivalent-c4e26659e6aef684.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs:
