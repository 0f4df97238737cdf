//! The learned router's per-request work, natively: scoring a prompt (features +
//! model) and the corrected decision.
//!
//!     cargo bench --bench learned_router
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::hint::black_box;

    use criterion::{Criterion, Throughput};
    use switchboard::learned::{bucket_of, Correction, Model};

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
        let corr = Correction::new();
        let threshold = model.threshold_for_share(0.3);
        let mut g = c.benchmark_group("learned");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("score_2k", |b| b.iter(|| model.score(black_box(&text))));
        g.bench_function("decide_2k", |b| b.iter(|| model.decide(black_box(&text), threshold, &corr)));
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
