# The verbs a newcomer needs. Every target creates the environment first if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench bench-serve lint docs lock sample-data clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@# byte-compile now: with PYTHONDONTWRITEBYTECODE set, every run would compile from source
	$(BIN)/python -m compileall -q batch_infer
	touch $(STAMP)

## Score the bundled sample with the sample model into ./output/ and print the run summary.
run: $(STAMP)
	$(BIN)/batch-infer run --config configs/ci_smoke.yaml --mode overwrite

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Speed and memory figures as ratios against bounds measured in the same run.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

## `batch-infer serve` under load (wrk, Debian) against the seed-style FastAPI app and MLServer.
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py

lint: $(STAMP)
	$(BIN)/ruff check batch_infer tests scripts deploy/airflow benchmarks docs/hooks.py
	$(BIN)/ruff format --check batch_infer tests scripts deploy/airflow benchmarks docs/hooks.py

## Build the docs site into site/ (MkDocs Material); --strict: a broken link or a missing page fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

## Re-pin dependencies after editing pyproject.toml (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock
	@# the xgboost extra is left out: dev has xgboost-cpu, the same module without CUDA
	@# the container's pins: the runtime and its serve/compiled extras, no test tools, same versions
	uv pip compile pyproject.toml --extra serve --extra compiled --constraint requirements.lock --python-version 3.11 -o deploy/requirements.lock
	uv pip compile deploy/airflow/requirements-airflow.in --python-version 3.11 -o deploy/airflow/requirements-airflow.lock

## Regenerate sample_data/ (deterministic).
sample-data: $(STAMP)
	$(BIN)/python scripts/make_sample_data.py

clean:
	rm -rf $(VENV) output site .pytest_cache
