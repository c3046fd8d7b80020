# Thin recipes: each target calls one script or Python entry point.
# Variables passed through to `serve` and `demo` (from the environment or `make serve VAR=...`):
#   CHECKPOINTS, TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT, TRITON_START_TIMEOUT_S (default 600),
#   CONTROLLER_PORT (the real-time controller `serve` starts next to Triton; default 8765, `off` disables it),
#   CONTROLLER_ARGS (its options, e.g. "--max-reply-tokens 64"; on the tiny checkpoints small reply limits by default)

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test lint serve demo clean bench load

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup_venv.sh tools/fetch_silero_vad.py
	VENV=$(VENV) bash tools/setup_venv.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

serve: $(STAMP)
	$(PY) -m export serve

demo: $(STAMP)
	$(PY) -m export demo

# Benchmarks and load tests install the `bench` extra (locust, websocket-client) once, on top of setup.
#   make bench [BENCH_ARGS="--full" | BENCH_ARGS="--only pipeline,concurrency"]
#   make load USERS=8 DURATION=60s [LOAD_USERS=RealtimeCaller] against a running `make serve`
BENCH_STAMP := $(VENV)/.bench-stamp
USERS ?= 4
DURATION ?= 60s
LOAD_USERS ?=
LOAD_OUT ?= benchmarks/results/load

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[bench]"
	touch $@

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.suite $(BENCH_ARGS)

load: $(BENCH_STAMP)
	mkdir -p $(LOAD_OUT)
	$(VENV)/bin/locust -f benchmarks/locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
		--stop-timeout 30 --only-summary --csv $(LOAD_OUT)/load --json-file $(LOAD_OUT)/locust \
		--summary-json $(LOAD_OUT)/summary.json $(LOAD_USERS)

clean:
	rm -rf build checkpoints
