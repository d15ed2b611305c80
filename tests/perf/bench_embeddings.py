"""Embedding throughput end to end (jobs → Kafka → worker → Qdrant → results) against the model's own speed.

The embedding agent is worth its machinery only if it keeps the model busy: batching texts across jobs
should let the pipeline run close to the speed of the model itself. This benchmark measures both in the
same run, on the same texts, with the same batch size:

- **model**: all-MiniLM-L6-v2 through sentence-transformers in this process, ``encode`` on batches of
  ``SOMA_EMBEDDINGS_BATCH_SIZE`` texts — the bare model, no Kafka, no Qdrant, no token counting.
  Measured once before and once after the pipeline run (the machine is shared; the mean is used and
  both are printed).
- **pipeline**: ``soma worker`` (the real agent, local model, Qdrant local mode) on a fresh embedded
  broker. N upsert jobs (D one-chunk documents each, over T tenants) are produced in one go while the
  worker idles with its model loaded; the rate is texts / (last result's CreateTime − the moment the
  produce started), so it includes the produce, the consume, chunking, embedding, the Qdrant upserts
  and surplus checks, the result and usage events, and the offset commits.

The machine is shared, so the bare model's speed moves between measurements (by a factor of two within
minutes here). The worker also logs the time of each of its embedding calls; texts / that time is the
model's speed *inside the pipeline, under the same load*, and pipeline / that rate is the share of the
wall time the model was busy — the pipeline's overhead without the noise. All three are printed.

Every job must be answered ``ok`` with the right ``upserted`` count, or the run fails.

Run from the repository root::

    .venv/bin/python -m tests.perf.bench_embeddings [--jobs 400] [--docs 4] [--tenants 20]

Exit status: 0 when the run completed and every job was answered correctly (whether or not the 0.9
target was met), 1 on wrong results, 2 on errors and timeouts, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from connectors.broker import free_port
from connectors.embeddings import LocalEmbedder
from schemas import EmbeddingJob, EmbeddingResult, decode_event, encode_event
from streams.catalog import EMBEDDING_JOBS, EMBEDDING_RESULTS
from tests.support.stack import (
    MissingDependency,
    TopicReader,
    WorkerProcess,
    find_or_start_redis,
    produce_raw,
    start_broker,
    start_redis_server,
)

TARGET_RATIO = 0.9
BATCH_SIZE = 64
EMBED_LOG = re.compile(r"embedded (\d+) texts of \d+ jobs in \d+ model batches of up to \d+ in (\d+) ms")

SUBJECTS = ["the river", "a small bakery", "the night shift", "an old lighthouse", "the city council",
            "a mountain village", "the school choir", "a research team", "the harbour", "a family farm"]
VERBS = ["announced", "discussed", "postponed", "celebrated", "questioned", "described", "planned", "reviewed"]
OBJECTS = ["a new schedule for the spring", "the results of last year's survey", "repairs to the main bridge",
           "a festival with music and food", "the budget for public transport", "changes to the opening hours",
           "a plan to plant more trees", "the history of the old market square"]


class BenchError(Exception):
    """The benchmark could not complete (a process died, a timeout, a wrong answer count)."""


def make_texts(count: int, seed: int) -> list[str]:
    """Distinct, sentence-like texts of 150-300 characters (one chunk each with the default settings)."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        sentences = [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                     for _ in range(rng.randint(2, 4))]
        texts.append(f"Note {i}: " + " ".join(sentences))
    return texts


def make_jobs(texts: list[str], docs_per_job: int, tenants: int, seed: int) -> list[EmbeddingJob]:
    rng = random.Random(seed)
    jobs = []
    for start in range(0, len(texts), docs_per_job):
        tenant = f"bench-{start // docs_per_job % tenants:03d}"
        documents = [{"id": f"doc-{start + i}", "text": text, "metadata": {"n": start + i}}
                     for i, text in enumerate(texts[start:start + docs_per_job])]
        jobs.append(EmbeddingJob(event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), tenant=tenant,
                                 job="upsert", collection="bench", documents=documents))
    return jobs


def model_rate(embedder: LocalEmbedder, texts: list[str]) -> float:
    """Texts/s of the bare model: ``encode`` on batches of BATCH_SIZE, as the agent calls it."""
    model = embedder.load()
    model.encode(texts[:BATCH_SIZE], batch_size=BATCH_SIZE, show_progress_bar=False)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH_SIZE):
        model.encode(texts[start:start + BATCH_SIZE], batch_size=BATCH_SIZE, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - started)


async def run_pipeline(bootstrap: str, worker: WorkerProcess, jobs: list[EmbeddingJob], timeout: float,
                       ) -> tuple[float, float, list[EmbeddingResult]]:
    """Produce every job at once and wait for every result; returns (start, end, results)."""
    reader = await TopicReader(bootstrap, EMBEDDING_RESULTS.name).start()
    messages = [(job.tenant.encode(), encode_event(job)) for job in jobs]
    wanted = {job.event_id for job in jobs}
    try:
        started = time.time()
        await produce_raw(bootstrap, EMBEDDING_JOBS.name, messages)
        deadline = time.monotonic() + timeout
        answered: dict[str, tuple[int, EmbeddingResult]] = {}
        last_report = time.monotonic()
        while len(answered) < len(wanted):
            if worker.process is not None and worker.process.poll() is not None:
                raise BenchError(f"worker exited with {worker.process.returncode}:\n{worker.tail_log()}")
            for record in await reader.poll(timeout_ms=500):
                result = decode_event(record.value or b"", EmbeddingResult)
                if result.job_id in wanted:
                    answered[result.job_id] = (record.timestamp, result)
            if time.monotonic() > deadline:
                raise BenchError(f"timeout: {len(answered)} of {len(wanted)} results after {timeout:.0f} s")
            if time.monotonic() - last_report > 5:
                print(f"    ... {len(answered)}/{len(wanted)} jobs answered", flush=True)
                last_report = time.monotonic()
    finally:
        await reader.stop()
    ended = max(timestamp for timestamp, _ in answered.values()) / 1000
    return started, ended, [result for _, result in answered.values()]


def check(jobs: list[EmbeddingJob], results: list[EmbeddingResult]) -> list[str]:
    by_id = {result.job_id: result for result in results}
    problems = []
    for job in jobs:
        result = by_id.get(job.event_id)
        if result is None:
            problems.append(f"job {job.event_id} has no result")
        elif result.status != "ok":
            problems.append(f"job {job.event_id} failed: {result.error}")
        elif result.upserted != len(job.documents):
            problems.append(f"job {job.event_id} upserted {result.upserted} chunks, expected {len(job.documents)}")
    return problems[:10]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf.bench_embeddings",
        description="Texts/s through the embedding agent (jobs -> results via Kafka) against the bare model.",
    )
    parser.add_argument("--jobs", type=int, default=400, help="upsert jobs (default 400)")
    parser.add_argument("--docs", type=int, default=4, help="one-chunk documents per job (default 4)")
    parser.add_argument("--tenants", type=int, default=20, help="tenants the jobs are spread over (default 20)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the pipeline may take (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    if min(args.jobs, args.docs, args.tenants) < 1:
        parser.error("--jobs, --docs and --tenants must be at least 1")
    return args


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    texts = make_texts(args.jobs * args.docs, args.seed)
    jobs = make_jobs(texts, args.docs, args.tenants, args.seed)
    print(f"workload: {len(jobs)} upsert jobs x {args.docs} documents = {len(texts)} texts "
          f"(avg {sum(map(len, texts)) // len(texts)} characters) over {args.tenants} tenants; work dir {workdir}",
          flush=True)
    redis_process: subprocess.Popen[bytes] | None = None
    broker = start_broker(workdir)
    worker: WorkerProcess | None = None
    try:
        try:
            port = free_port()
            redis_process = start_redis_server(port, workdir)
            redis_url = f"redis://127.0.0.1:{port}/0"
        except MissingDependency:
            redis_url, redis_process = find_or_start_redis(workdir)
        worker = WorkerProcess(broker.bootstrap_servers, redis_url, workdir / "worker",
                               extra_env={"SOMA_EMBEDDINGS_BATCH_SIZE": str(BATCH_SIZE)})
        worker.start()
        worker.wait_ready("embeddings", timeout=120)
        # One job through the whole path first: loads the model (on first use), creates the collection.
        warm_jobs = make_jobs(make_texts(args.docs, args.seed + 1), args.docs, 1, args.seed + 1)
        for job in warm_jobs:
            job.tenant = "bench-warmup"
        await run_pipeline(broker.bootstrap_servers, worker, warm_jobs, timeout=300)

        embedder = LocalEmbedder(batch_size=BATCH_SIZE)
        print("measuring the bare model (before) ...", flush=True)
        before = model_rate(embedder, texts)
        print(f"  model: {before:,.1f} texts/s", flush=True)

        print("running the pipeline ...", flush=True)
        started, ended, results = await run_pipeline(broker.bootstrap_servers, worker, jobs, args.timeout)
        pipeline = len(texts) / (ended - started)
        print(f"  pipeline: {pipeline:,.1f} texts/s ({ended - started:.1f} s)", flush=True)

        print("measuring the bare model (after) ...", flush=True)
        after = model_rate(embedder, texts)
        print(f"  model: {after:,.1f} texts/s", flush=True)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)

    model = (before + after) / 2
    ratio = pipeline / model
    log = worker.log_path.read_text(errors="replace") if worker.log_path else ""
    # The worker logs each embedding call; the first one is the warm-up job's.
    calls = [(int(texts_), float(ms)) for texts_, ms in EMBED_LOG.findall(log)][1:]
    inside = sum(n for n, _ in calls) / (sum(ms for _, ms in calls) / 1000) if calls else float("nan")
    print()
    print(f"{'measure':<40}{'texts/s':>12}")
    print(f"{'bare model, before the run':<40}{before:>12,.1f}")
    print(f"{'bare model, after the run':<40}{after:>12,.1f}")
    print(f"{'bare model (mean)':<40}{model:>12,.1f}")
    print(f"{'model inside the worker, during the run':<40}{inside:>12,.1f}")
    print(f"{'pipeline (jobs -> results)':<40}{pipeline:>12,.1f}")
    print(f"{'ratio pipeline / bare model':<40}{ratio:>12.2f}")
    print(f"{'ratio pipeline / model inside worker':<40}{pipeline / inside:>12.2f}")
    print(f"\n{len(jobs) / (ended - started):,.1f} jobs/s in {len(calls)} agent batches (texts of up to "
          f"SOMA_EMBEDDINGS_MAX_JOBS_PER_BATCH jobs each, in model batches of {BATCH_SIZE}).")
    print("'model inside the worker' = texts / time in the agent's embedding calls (model + token counting) as the "
          "worker logs them: measured under the same load as the pipeline, so 'pipeline / model inside worker' is "
          "the share of wall time the model was busy — the noise-free view of the pipeline's overhead.")
    print(f"machine: {os.cpu_count()} cores, shared with other work: the bare-model figures vary between runs.")
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"target >= {TARGET_RATIO}: {verdict} ({ratio:.2f})")
    problems = check(jobs, results)
    if problems:
        print("\ncorrectness: FAILED")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"\ncorrectness: ok — all {len(jobs)} jobs answered ok with {len(texts)} chunks upserted")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    code = 2
    try:
        code = asyncio.run(bench(args, workdir))
        return code
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}\nlogs kept in {workdir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; logs kept in {workdir}", file=sys.stderr)
        return 130
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
