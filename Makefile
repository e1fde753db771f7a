# Everything installs itself into .venv from requirements.lock on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < requirements.lock | cut -d' ' -f1)
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/common

.PHONY: install test lint demo up bench clean

$(STAMP): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml
	$(BIN)/python -m local.deploy_check

# Each end-to-end suite runs in its own process: its local stack points the layer's cached AWS
# clients at its own emulator. The suites run in two lanes at once (a suite's local stack is one
# Python process, so it uses about one core); each lane's output is printed when it ends.
.PHONY: test-lane-1 test-lane-2
test: lint
	$(MAKE) --no-print-directory -j2 --output-sync=target test-lane-1 test-lane-2

test-lane-1: install
	$(BIN)/python -m pytest -q tests/unit tests/integration
	$(BIN)/python -m pytest -q tests/e2e_callbacks
	$(BIN)/python -m pytest -q tests/e2e_limits
	$(BIN)/python -m pytest -q tests/local

test-lane-2: install
	$(BIN)/python -m pytest -q tests/e2e
	$(BIN)/python -m pytest -q tests/e2e_batches

demo: install
	$(BIN)/python -m local.demo

up: install
	$(BIN)/python -m local.stack

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
