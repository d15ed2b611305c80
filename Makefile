# SomaAgent Streams — the two commands are `make dev` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# llama-cpp-python builds llama.cpp from source once (~5 min; pip caches the wheel). Portable x86-64 flags
# instead of -march=native: these machines advertise AMX/AVX-512 instructions that their hypervisor traps
# (a native build dies with SIGILL in libggml-cpu on the first completion).
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif

.PHONY: dev test bench bench-locks bench-conversation bench-usage bench-bridge bench-embeddings bench-replay bench-restore bench-failover browser-deps lint unit integration install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $(STAMP)

install: $(STAMP)

## Run the local stack: embedded broker + worker (Ctrl-C stops both).
dev: $(STAMP)
	$(BIN)/soma dev

## Headless Chromium for the bridge's browser tests (Debian package; installed when missing).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ echo "installing chromium (apt-get)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

## Lint, type-check and run every test (unit + integration against real broker, Redis, worker).
test: $(STAMP) browser-deps lint
	$(BIN)/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas connectors streams agents

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests/unit

integration: $(STAMP) browser-deps
	$(BIN)/python -m pytest -p no:cacheprovider tests/integration

## Benchmarks (not part of `make test`), each comparing side by side in one run.
bench: bench-locks bench-conversation bench-usage bench-bridge bench-embeddings bench-replay bench-restore bench-failover

bench-locks: $(STAMP)
	$(BIN)/python -m tests.perf.bench_locks

bench-conversation: $(STAMP)
	$(BIN)/python -m tests.perf.bench_conversation

## Usage benchmark: our usage agent vs a naive Faust agent vs a Quix Streams pipeline, one run.
## Quix Streams pins pydantic<2.14 (the project needs >=2.14), so it gets its own virtualenv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: tests/perf/requirements-quix.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -r tests/perf/requirements-quix.txt
	touch $@

## bench-locks has a Quix Streams contestant too.
bench-locks: $(BENCH_VENV)/.installed

bench-usage: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/python -m tests.perf.bench_usage

bench-bridge: $(STAMP)
	$(BIN)/python -m tests.perf.bench_bridge

## Embedding pipeline texts/s against the bare model's batched throughput, in one run (target ratio >= 0.9).
bench-embeddings: $(STAMP)
	$(BIN)/python -m tests.perf.bench_embeddings

## soma replay vs a minimal librdkafka (confluent-kafka) consume -> produce pipe; installs the bench extra.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,local,bench]'
	touch $(BENCH_STAMP)

bench-replay: $(BENCH_STAMP)
	$(BIN)/python -m tests.perf.bench_replay

## Restore of a 1,000,000-key table from its changelog (time, keys/s, event-loop stall) and the seen-id sweep.
bench-restore: $(STAMP)
	$(BIN)/python -m tests.perf.bench_restore

## Crash to processing: a worker SIGKILLed and restarted at once, the former 10 s session vs soma dev's 2 s.
bench-failover: $(STAMP)
	$(BIN)/python -m tests.perf.bench_failover

clean:
	rm -rf $(VENV) $(BENCH_VENV) data .pytest_cache .ruff_cache .mypy_cache
