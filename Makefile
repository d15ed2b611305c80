# SomaAgent Streams — the two commands are `make dev` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev test bench bench-locks bench-replay lint unit integration install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $(STAMP)

install: $(STAMP)

## Run the local stack: embedded broker + worker (Ctrl-C stops both).
dev: $(STAMP)
	$(BIN)/soma dev

## Lint, type-check and run every test (unit + integration against real broker, Redis, worker).
test: $(STAMP) lint
	$(BIN)/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas connectors

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests/integration

## Benchmarks (not part of `make test`): each one ours vs a baseline, side by side in one run.
bench: bench-locks bench-replay

## Lock agent vs a naive Faust agent.
bench-locks: $(STAMP)
	$(BIN)/python -m tests.perf.bench_locks

## soma replay vs a minimal librdkafka (confluent-kafka) consume -> produce pipe; installs the bench extra.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,local,bench]'
	touch $(BENCH_STAMP)

bench-replay: $(BENCH_STAMP)
	$(BIN)/python -m tests.perf.bench_replay

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache
