/work/main/target-before/wasm32-wasip1/wasm/deps/cfg_if-05ecc2f0aab9294a.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libcfg_if-05ecc2f0aab9294a.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libcfg_if-05ecc2f0aab9294a.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg-if-1.0.5/src/lib.rs:
