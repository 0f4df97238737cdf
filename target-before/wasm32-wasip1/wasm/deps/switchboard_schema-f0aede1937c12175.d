/work/main/target-before/wasm32-wasip1/wasm/deps/switchboard_schema-f0aede1937c12175.d: schema/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libswitchboard_schema-f0aede1937c12175.rlib: schema/src/lib.rs

/work/main/target-before/wasm32-wasip1/wasm/deps/libswitchboard_schema-f0aede1937c12175.rmeta: schema/src/lib.rs

schema/src/lib.rs:
