//! The learned router's per-request work, natively: scoring a prompt (features +
//! model), the corrected decision, and learning from one feedback score.
//!
//!     cargo bench --bench learned_router
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::hint::black_box;

    use criterion::{Criterion, Throughput};
    use switchboard::learned::{bucket_of, Model, Online};

    /// A 2,048-byte prompt: an MMLU-style question padded with prose.
    pub fn prompt_2k() -> String {
        let head = "Which of the following statements about the gateway's routing is correct?\n";
        let filler = "The gateway routes each request to a pool member by weight and fails over on errors. ";
        let tail = "\nA. It never retries\nB. It fails over\nC. It drops requests\nD. It caches answers\nAnswer:";
        let pad = 2048 - head.len() - tail.len();
        let body: String = filler.repeat(pad / filler.len() + 1).chars().take(pad).collect();
        let p = format!("{head}{body}{tail}");
        assert_eq!(p.len(), 2048);
        p
    }

    pub fn learned(c: &mut Criterion) {
        let model = Model::embedded_default().unwrap();
        let text = prompt_2k();
        let mut learning = Online::new();
        let d = model.decide(&text, 0.2, &learning);
        learning.learn(&d.inputs, d.logit, 0.0);
        let threshold = model.threshold_for_share(0.3);
        let mut g = c.benchmark_group("learned");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("score_2k", |b| b.iter(|| model.score(black_box(&text))));
        g.bench_function("decide_2k", |b| b.iter(|| model.decide(black_box(&text), threshold, &learning)));
        // What one feedback costs besides its shared-data calls: decode the state, learn, encode.
        let state = learning.encode();
        g.bench_function("feedback_learn", |b| {
            b.iter(|| {
                let mut o = Online::decode(black_box(&state)).unwrap();
                o.learn(&d.inputs, d.logit, 0.0);
                o.encode()
            })
        });
        g.bench_function("bucket_2k", |b| b.iter(|| bucket_of(black_box(&text))));
        g.finish();
        c.bench_function("learned/load_embedded_model", |b| b.iter(Model::embedded_default));
    }
}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_group!(benches, native::learned);
#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(benches);

#[cfg(target_arch = "wasm32")]
fn main() {}
