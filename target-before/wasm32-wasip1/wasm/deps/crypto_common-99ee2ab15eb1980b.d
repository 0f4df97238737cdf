/work/main/target-before/wasm32-wasip1/wasm/deps/crypto_common-99ee2ab15eb1980b.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libcrypto_common-99ee2ab15eb1980b.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libcrypto_common-99ee2ab15eb1980b.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crypto-common-0.1.7/src/lib.rs:
