# switchboard: `make run` starts a demo gateway, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
TOOLS   := $(CURDIR)/.tools
# The filter as deployed: cargo's module ($(WASM_RAW)) after binaryen's size pass.
WASM    := target/switchboard.wasm
WASM_RAW := target/wasm32-wasip1/wasm/switchboard.wasm
BINARYEN_VERSION := 132.0.0
WASM_OPT := $(TOOLS)/binaryen-$(BINARYEN_VERSION)/node_modules/.bin/wasm-opt
# The features rustc emits for wasm32-wasip1: wasm-opt validates the module against them.
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	--enable-mutable-globals --enable-multivalue --enable-reference-types

# The learned router's training data and model (see docs/learned-router.md).
DATA        ?= ../shared/data/routellm-mmlu
MODEL_OUT   ?= router/models/default.sblr
ROUTER_VENV := .venv-router
ROUTER_PY   := $(ROUTER_VENV)/bin/python

.PHONY: help setup toolchain wasm native build run fleet test unit redis wasm-test lint integration integration-native fuzz-smoke bench clean \
	prometheus test-observability \
	train-router eval-router router-fixture router-parity

help:
	@echo "make run    - build and start a demo gateway (Envoy + switchboard + local mock providers);"
	@echo "              HOST=native loads the dynamic module instead of the .wasm (docs/native.md)"
	@echo "make fleet  - the demo on 3 Envoys sharing tenants' limits through Redis (docs/fleet.md)"
	@echo "make test   - unit, wasm (Node/V8), lint, Envoy integration and fuzz smoke tests"
	@echo "make bench  - mock direct, plain Envoy, Envoy+switchboard, LiteLLM, Portkey; results in bench/results/"
	@echo "make train-router DATA=dir-or.csv [MODEL_OUT=file.sblr] - train the learned router"
	@echo "make eval-router DATA=dir-or.csv [REPORT=file.md]        - print its quality table"

toolchain:
	@command -v rustup >/dev/null && rustup target add wasm32-wasip1 >/dev/null 2>&1 || \
		rustup target list --installed | grep -q wasm32-wasip1

$(VENV)/.stamp: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

setup: toolchain $(VENV)/.stamp

$(WASM_OPT):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS)/binaryen-$(BINARYEN_VERSION) binaryen@$(BINARYEN_VERSION)

# The filter, then binaryen's size pass (-Oz: about 17% smaller, no slower in
# bench/wasm_host.mjs), run only when cargo produced a new module. Repeated
# until it gains nothing (--converge); --low-memory-unused lets it fold
# constant offsets into loads and stores (rustc puts the stack at the bottom
# of memory and grows it down, so its lowest 1 KB is only reached by an
# overflow that traps anyway): ~7 KB.
wasm: toolchain $(WASM_OPT)
	cargo build --profile wasm --target wasm32-wasip1 -p switchboard
	@if [ ! -e $(WASM) ] || [ $(WASM_RAW) -nt $(WASM) ]; then \
		$(WASM_OPT) -Oz --converge --low-memory-unused $(WASM_FEATURES) $(WASM_RAW) -o $(WASM).tmp && mv -f $(WASM).tmp $(WASM); \
	fi
	@raw=$$(stat -c %s $(WASM_RAW)); size=$$(stat -c %s $(WASM)); \
		echo "switchboard.wasm: $$size bytes ($$raw before wasm-opt)"; \
		if [ $$size -ge 1000000 ]; then echo "switchboard.wasm is over its 1 MB budget"; exit 1; fi

# The dynamic module: target/native/libswitchboard_native.so (panics unwind to the hook that catches them).
NATIVE := target/native/libswitchboard_native.so
native:
	cargo build --profile native -p switchboard-native
	@echo "libswitchboard_native.so: $$(stat -c %s $(NATIVE)) bytes"

build: wasm native
	cargo build --release -p mock-provider -p switchboard-state
	cargo build --release -p switchboard --features cli --bin switchboard

# `make run HOST=native`; a HOST from the shell's environment (often the machine's name) is not taken.
ifneq ($(origin HOST),command line)
HOST := wasm
endif
run: setup build
	SWITCHBOARD_HOST=$(HOST) $(PY) examples/demo/run.py

# Fleet mode: Redis, the state service and 3 Envoys over the demo's mock providers.
fleet: setup build redis
	$(PY) examples/fleet/demo.py

# Fleet mode's tests (state service, tests/integration/test_fleet.py) start their own redis-server.
redis:
	@command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)

unit: redis
	cargo test --workspace

# The pure logic's tests compiled to wasm32-wasip1 and run under Node's WASI
# (V8, Envoy's engine); a failing test aborts the run (panic=abort) and fails it.
wasm-test: toolchain
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $(CURDIR)/tools/wasi-run.mjs" \
		cargo test -p switchboard -p switchboard-learned --lib --no-default-features --target wasm32-wasip1

# tools/layers.py: no import circle, no import from a lower layer to a higher one
# (the layers are listed in docs/architecture.md).
lint:
	python3 tools/layers.py
	@if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; else echo "rustfmt not installed: formatting not checked"; fi
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p switchboard --features cli --bin switchboard -- -D warnings
	cargo clippy -p switchboard -p switchboard-learned --release --target wasm32-wasip1 -- -D warnings

# Two test processes, one file each at a time: most tests wait on the clock
# (cooldowns, timeouts, slow members), so this halves the wall time on two cores.
integration: setup build redis prometheus
	$(VENV)/bin/pytest -q -n 2 --dist loadfile tests/integration tests/unit_doors

# The same tests against the dynamic module (docs/native.md).
integration-native: setup build redis prometheus
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --host native tests/integration

# Debian's Prometheus, for the test that evaluates the dashboard and alert rules against a real Envoy.
prometheus:
	@command -v prometheus >/dev/null || (apt-get update && apt-get install -y prometheus)

# That test alone (make integration runs it too).
test-observability: setup build prometheus
	$(VENV)/bin/pytest -q tests/integration/test_prometheus.py

fuzz-smoke:
	@if [ -x fuzz/smoke.sh ]; then fuzz/smoke.sh; else echo "fuzz: no targets yet"; fi

test: setup build unit router-parity wasm-test lint integration integration-native fuzz-smoke

# Training and evaluation (numpy, scikit-learn) get their own venv; the scorer and
# the parity test need only the standard library.
$(ROUTER_VENV)/.stamp: router/requirements.txt
	python3 -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/pip install -q --upgrade pip
	$(ROUTER_VENV)/bin/pip install -q -r router/requirements.txt
	touch $@

train-router: $(ROUTER_VENV)/.stamp
	$(ROUTER_PY) router/train.py --data $(DATA) --out $(MODEL_OUT) $(TRAIN_ARGS)

eval-router: $(ROUTER_VENV)/.stamp
	$(ROUTER_PY) router/evaluate.py --data $(DATA) $(if $(REPORT),--out $(REPORT))

# After retraining the shipped model: refresh the fixture both parity tests check.
router-fixture:
	python3 router/make_fixture.py --data $(DATA) --model router/models/default.sblr \
		--out tests/fixtures/learned/parity.jsonl

router-parity: setup
	$(VENV)/bin/pytest -q tests/test_learned_parity.py

bench: setup build redis
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	cargo clean
	rm -rf $(VENV) $(TOOLS) $(ROUTER_VENV)
