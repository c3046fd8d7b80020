# Thin recipes: each target calls one script or Python entry point.
# Variables passed through to `serve` and `demo` (from the environment or `make serve VAR=...`):
#   CHECKPOINTS, TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT,
#   CONTROLLER_PORT (the real-time controller `serve` starts next to Triton; default 8765, `off` disables it)

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test lint serve demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup_venv.sh
	VENV=$(VENV) bash tools/setup_venv.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

serve: $(STAMP)
	$(PY) -m export serve

demo: $(STAMP)
	$(PY) -m export demo

clean:
	rm -rf build checkpoints
