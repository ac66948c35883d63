# Two entry points for a fresh machine: `make run` (local cluster on loopback) and `make test`.
# Each one creates .venv, installs the pinned versions from constraints.txt and, when etcd is
# missing, installs Debian's etcd-server (as root) or says what to install.
PYTHON ?= python3
VENV := .venv
# rustup installs cargo here; a fresh shell (CI) may not have it on PATH yet.
export PATH := $(HOME)/.cargo/bin:$(PATH)
# The native xDS core (native/, Rust): pip builds it into controlplane/_native with maturin.
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock $(shell find native/src -name '*.rs' 2>/dev/null)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint deps etcd frontdoor-tools browser lock protos clean rust native-test gocp

run: deps
	$(BIN)/lbcp up

test: deps browser lint native-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The native core's own tests: the per-stream protocol state machines (SotW and delta).
native-test: rust
	cargo test --release -q --manifest-path native/Cargo.toml

# Lint, format and types (pinned in constraints.txt); `make test` runs it first, so CI fails
# on a new finding. Config in pyproject.toml ([tool.ruff], [tool.mypy]).
LINT_PATHS := controlplane api tests bench
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	cargo fmt --check --manifest-path native/Cargo.toml

deps: $(STAMP) etcd frontdoor-tools $(BIN)/promtool

$(STAMP): pyproject.toml constraints.txt $(NATIVE_SOURCES) | rust
	@test -d native/target/release || echo "building the native xDS core (Rust, once: about 2 minutes on 2 cores)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# Rust (cargo, rustc >= 1.88) builds the native core. Debian's packages are older than the
# crates need; rustup (https://rustup.rs) installs a current toolchain.
rust:
	@command -v cargo >/dev/null 2>&1 || { \
	  echo "Rust is not installed: the native xDS core needs cargo and rustc >= 1.88 (https://rustup.rs)" >&2; exit 1; }

# go-control-plane, the benchmarks' peer (bench/gocp; Go from the Go module proxy).
gocp:
	$(MAKE) -C bench/gocp

etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "etcd not found: installing Debian's etcd-server"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server; \
	  else \
	    echo "etcd is not installed. Install it with: sudo apt-get install -y etcd-server" >&2; exit 1; \
	  fi; }

# The console's browser tests drive Debian's Chromium (headless, through Playwright for Python,
# which is told its path and never downloads a browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "chromium not found: installing Debian's chromium (the console's browser tests)"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }; }; \
	  else \
	    echo "the console's browser tests need Chromium. Install it with: sudo apt-get install -y chromium" >&2; exit 1; \
	  fi; }

# The front-door renders are checked by the tools that load them: nft --check (nftables),
# bird -p (bird2) and iptables-restore --test (iptables). Parsing only: nothing is started.
frontdoor-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	  command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	  command -v bird >/dev/null 2>&1 || missing="$$missing bird2"; \
	  command -v iptables-restore >/dev/null 2>&1 || missing="$$missing iptables"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      echo "installing Debian's$$missing (front-door render checks)"; \
	      { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }; }; \
	    else \
	      echo "the front-door tests need:$$missing. Install with: sudo apt-get install -y$$missing" >&2; exit 1; \
	    fi; \
	  fi

# promtool checks and unit-tests deploy/prometheus/alerts.yml. It comes from Debian's
# prometheus package, unpacked (no service installed). Best effort: without it the tests
# still parse and check the rules in Python and skip only the promtool run.
$(BIN)/promtool: | $(STAMP)
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; else \
	  tmp=$$(mktemp -d); \
	  ( cd $$tmp && { apt-get download prometheus >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } ) && \
	  dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/x && cp $$tmp/x/usr/bin/promtool $@ && echo "promtool installed from Debian's prometheus package" || \
	  echo "promtool not available: alert rules get the Python checks only"; \
	  rm -rf $$tmp; fi

# Regenerate controlplane/gen/ from protos/ (pinned grpcio-tools; tests check it is current).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=controlplane/gen --pyi_out=controlplane/gen \
	  $$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)

# Refresh constraints.txt from the current venv (after a deliberate, measured upgrade).
lock:
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v -e '^-e' -e '^pip==' > constraints.txt

clean:
	rm -rf $(VENV) .lbcp
