/work/main/target-before/wasm32-wasip1/wasm/deps/switchboard_learned-6c255058efa527f3.d: learned/src/lib.rs learned/src/features.rs learned/src/model.rs learned/src/online.rs learned/src/../../router/models/default.sblr

/work/main/target-before/wasm32-wasip1/wasm/deps/libswitchboard_learned-6c255058efa527f3.rlib: learned/src/lib.rs learned/src/features.rs learned/src/model.rs learned/src/online.rs learned/src/../../router/models/default.sblr

/work/main/target-before/wasm32-wasip1/wasm/deps/libswitchboard_learned-6c255058efa527f3.rmeta: learned/src/lib.rs learned/src/features.rs learned/src/model.rs learned/src/online.rs learned/src/../../router/models/default.sblr

learned/src/lib.rs:
learned/src/features.rs:
learned/src/model.rs:
learned/src/online.rs:
learned/src/../../router/models/default.sblr:
