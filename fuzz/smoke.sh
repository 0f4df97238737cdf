#!/usr/bin/env bash
# Fuzz smoke test (part of `make test`): every target for a bounded time,
# starting from the committed seeds; fails on any crash, leak, timeout or OOM.
#
#   fuzz/smoke.sh                    # ~20 s per target
#   FUZZ_SECONDS=300 fuzz/smoke.sh   # longer
#   fuzz/smoke.sh config_parse       # some targets only
set -euo pipefail

cd "$(dirname "$0")"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
# The flags `cargo fuzz build` (cargo-fuzz 0.13) passes, so a fresh machine needs
# no cargo-fuzz install; RUSTC_BOOTSTRAP: only a stable toolchain is assumed.
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(awk '/^\[\[bin\]\]/ {bin=1} bin && /^name = / {gsub(/"/, "", $3); print $3; bin=0}' Cargo.toml)
fi

cargo build --release --target x86_64-unknown-linux-gnu --bins
BIN=target/x86_64-unknown-linux-gnu/release
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
    log="artifacts/$t/smoke.log"
    dict=()
    [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
    # corpus/<t> (gitignored) grows across runs; seeds/<t> is read only.
    if "$BIN/$t" "corpus/$t" "seeds/$t" -artifact_prefix="artifacts/$t/" "${dict[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|cov: .* ft: ' "$log" | tail -2 | sed "s/^/fuzz: $t: /"
    else
        echo "fuzz: $t FAILED (log: fuzz/$log):"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 | sed 's/^/    /'
        echo "    reproduce: fuzz/target/x86_64-unknown-linux-gnu/release/$t fuzz/artifacts/$t/<crash-file>"
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (reproducers in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets clean"
