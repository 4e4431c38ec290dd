# outrider — `make run` starts the stack, `make test` runs the suite. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= examples/gateway.yaml

.PHONY: install run test check bench bench-services system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages the tests and benchmarks use (redis-server; wrk and h2load for load).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(BIN)/outrider run $(CONFIG)

test: install system-deps
	$(BIN)/python -m pytest

check: install
	$(BIN)/ruff check .
	$(BIN)/mypy outrider ext_authz ratelimit_service ext_proc xds_server

# The whole gateway against Envoy alone and the trivial gRPC floors (~5 min); writes bench/RESULTS.md.
bench: install system-deps
	$(BIN)/python bench/gateway_bench.py --out bench/RESULTS.md

# Each service on its own (the per-service figures of their issues).
bench-services: install system-deps
	$(BIN)/python bench/authz_bench.py
	$(BIN)/python bench/ext_proc_bench.py
	$(BIN)/python bench/ratelimit_bench.py
	$(BIN)/python bench/xds_bench.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
