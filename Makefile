# linewatch: common tasks. `make demo` runs the product end to end, `make test` runs the tests.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install demo test test-unit lint lint-k8s format stack-up stack-down stack-status bench clean

install:  ## install the package and dev tools (editable)
	$(PIP) install -e ".[dev]"

demo:  ## stack up, fit models, worker + retraining agent + simulator for ~1 min, summary + PNG
	$(PYTHON) -m stream_app demo

test:  ## all tests; integration tests start a real Kafka + Redis unless KAFKA_BOOTSTRAP/REDIS_URL are set
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit:  ## tests that need no servers
	$(PYTHON) -m pytest -m "not integration" $(PYTEST_ARGS)

lint:  ## ruff (lint + format) and mypy on stream_app/ and models/
	ruff check .
	ruff format --check .
	mypy

lint-k8s:  ## render deploy/k8s offline and validate it (schemas, settings, CLI, references); no cluster needed
	$(PYTHON) -m pytest tests/unit/test_k8s_manifests.py $(PYTEST_ARGS)

format:
	ruff check --fix .
	ruff format .

stack-up:
	$(PYTHON) -m stream_app stack up
stack-down:
	$(PYTHON) -m stream_app stack down
stack-status:
	$(PYTHON) -m stream_app stack status

bench:  ## every benchmark; JSON + PNG in benchmarks/results/
	$(PYTHON) benchmarks/rvae_speed.py
	$(PYTHON) benchmarks/rvae_depth.py
	$(PYTHON) benchmarks/transformaly_bench.py
	$(PYTHON) benchmarks/pipeline_bench.py

clean:
	rm -rf .state .pytest_cache .ruff_cache demo-output
