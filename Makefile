.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check -q
export PIP_ROOT_USER_ACTION := ignore

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: install-deps
install-deps: ## Install what a fresh machine lacks: mosquitto and tinyproxy (apt), maturin and test packages (pip)
	@{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } && test -x /usr/bin/tinyproxy || \
		{ (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto tinyproxy >/dev/null; }
	@systemctl disable --now mosquitto >/dev/null 2>&1 || service mosquitto stop >/dev/null 2>&1 || true
	@systemctl disable --now tinyproxy >/dev/null 2>&1 || service tinyproxy stop >/dev/null 2>&1 || true
	$(PIP) install "maturin>=1.9.4,<2" "pytest>=8" "pytest-asyncio>=0.24" "pytest-timeout>=2.3" "cryptography>=42" "mypy>=1.10" "paho-mqtt>=2,<3" "websockets>=14" "botocore>=1.34" "cbor2>=5" "nbclient>=0.10" "nbformat>=5.10" "ipykernel>=6.29" "awsiotsdk>=1.20"

.PHONY: build-dev
build-dev: ## Build the extension and install the package in editable mode
	@rm -f python/awsiot_rs/_native*.so
	$(PIP) install -e .

.PHONY: lint
lint: ## cargo fmt --check and clippy (core alone and with the Python binding)
	cargo fmt --check
	cargo clippy --all-targets --no-default-features -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings

.PHONY: typecheck
typecheck: ## mypy --strict on the package and stubtest of the native stubs (after build-dev)
	$(PYTHON) -m mypy python/awsiot_rs
	$(PYTHON) -m mypy --python-version 3.10 python/awsiot_rs  # no 3.11+ stdlib or typing name (mypy cannot target 3.9)
	$(PYTHON) -m mypy.stubtest awsiot_rs._native --allowlist tests/stubtest-allowlist.txt

.PHONY: test-core
test-core: ## Rust tests of the pure core (no Python), then the binding's own unit tests
	cargo test --no-default-features
	cargo test --features python --lib py::

.PHONY: test-py
test-py: ## pytest against a private mosquitto (fails if no test ran)
	$(PYTHON) -m pytest -m "not slow"

# zig links its own LLVM libunwind into the extension, while glibc's pthread_exit unwinds with
# libgcc_s: a thread ended that way inside the extension (Python <= 3.13 ends threads that wait
# for the GIL during interpreter exit) then crashes in the mixed unwinders. Linking libgcc_s.so.1
# (allowed by manylinux2014) makes the extension use the same unwinder as glibc and gcc builds.
LIBGCC_S := $(realpath $(shell gcc -print-file-name=libgcc_s.so.1 2>/dev/null))

.PHONY: wheel
wheel: ## Release wheel (abi3, CPython 3.9+, manylinux_2_17 via zig) and sdist in dist/, checked by auditwheel
	$(PIP) install "maturin>=1.9.4,<2" "ziglang>=0.13" "auditwheel>=6"
	@test -f "$(LIBGCC_S)" || { echo "make wheel: libgcc_s.so.1 not found (gcc -print-file-name)" >&2; exit 1; }
	rm -rf dist
	RUSTFLAGS="$${RUSTFLAGS:+$$RUSTFLAGS }-C link-arg=$(LIBGCC_S)" \
		$(PYTHON) -m maturin build --release --zig --compatibility manylinux2014 --out dist
	$(PYTHON) -m maturin sdist --out dist
	@report="$$($(PYTHON) -m auditwheel show dist/*.whl)" && echo "$$report" && \
		tr -s ' \n' ' ' <<< "$$report" | grep -q 'consistent with the following platform tag: "manylinux_2_17_' || \
		{ echo "make wheel: auditwheel does not find the wheel manylinux_2_17 compatible" >&2; exit 1; }
	@$(PYTHON) -m auditwheel show dist/*.whl | grep -q 'libgcc_s.so.1' || \
		{ echo "make wheel: the extension does not use libgcc_s's unwinder (see LIBGCC_S)" >&2; exit 1; }

VERSIONS ?= 3.9 3.10 3.11 3.12 3.13

.PHONY: test-versions
test-versions: wheel ## The suite (not slow) on dist/'s wheel under each CPython in VERSIONS (3.9-3.13), two at a time
	$(PYTHON) tests/matrix.py --versions $(VERSIONS)

# CI: the wheel under the oldest and newest CPython (3.11 runs the suite in test-py, editable);
# `make test-versions` runs all five (about 9 minutes).
.PHONY: test
test: install-deps build-dev lint typecheck test-core wheel test-py ## Everything CI runs, from a fresh machine
	$(PYTHON) tests/matrix.py --versions 3.9 3.13

.PHONY: demo
demo: build-dev ## The main job, offline: the embedded AWS IoT Core, a device over mTLS, its lifecycle events and shadow delta (nothing from apt)
	$(PYTHON) -m awsiot_rs demo

.PHONY: demo-mosquitto
demo-mosquitto: install-deps build-dev ## examples/quickstart.py against a private mutual-TLS mosquitto (apt)
	$(PYTHON) examples/demo.py

.PHONY: bench
bench: install-deps build-dev ## Side-by-side benchmark (see bench/README.md), from a fresh machine
	@command -v mosquitto_pub >/dev/null || \
		{ (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients >/dev/null; }
	$(PIP) install -r bench/requirements.txt
	$(PYTHON) bench/run.py
