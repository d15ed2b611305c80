"""Usage events/s aggregated end to end: our usage agent vs a naive Faust agent vs a Quix Streams pipeline.

All three get the same seeded workload (N usage events over T tenants and a few models and kinds,
spread over H hours of event time, in time order, plus one closing event per tenant two days later)
pre-loaded into a fresh embedded broker each, and do the same aggregation: dedupe by ``event_id``,
cost as reported or from the price table, hourly and daily tumbling windows on event time per
tenant × provider × model × kind, one rollup per closed window.

- ours:  ``soma worker`` (``agents/usage/`` on the batch engine). It also reports per-tenant totals,
  forecasts and budget checks, which the others do not: the comparison is conservative for us.
- naive: ``tests/perf/naive_usage_app.py``, a plain Faust agent with Faust tables and one
  ``await topic.send`` per closed window.
- quix:  ``tests/perf/quix_usage_app.py``, a Quix Streams 3.28 pipeline (``.venv-bench``; see there why
  it has its own virtualenv). It decodes with fastavro alone (no pydantic validation) and writes JSON:
  less work per event than ours, so again conservative for us.

Rate = input messages processed between the first and the last rollup / (last − first rollup
CreateTime). Rollups come out as event time passes each hour, so the first one appears once the
messages up to the end of the first hour (+ grace) are processed; the messages after that one are the
ones counted (``Workload.measured``). Startup (worker start to first rollup) is reported separately.
Every contestant's hourly and daily rollups are checked against a reference computed here.

Run from the repository root (``make bench-usage`` sets up ``.venv-bench`` for Quix)::

    .venv/bin/python -m tests.perf.bench_usage [--events 60000] [--tenants 100] [--only ours,naive,quix]

Exit status: 0 when every contestant that ran was correct (whether or not the targets were met),
1 on wrong results, 2 on errors and timeouts, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import NewTopic

from agents.usage.pricing import PriceTable
from connectors.broker import free_port
from schemas import UsageEvent, UsageReport, decode_event, encode_event
from streams.catalog import USAGE_EVENTS, USAGE_REPORTS, all_topics
from tests.perf.common import (
    PARTITIONS,
    QUIX_PYTHON,
    BenchError,
    Process,
    Profiler,
    create_topics,
    fmt_cpu,
    measure,
    positive,
    preload,
    raise_interrupt,
    summarize_profile,
    terminate,
)
from tests.support.stack import REPO_ROOT, Consumed, WorkerProcess, start_broker, start_redis_server

TARGET_RATIO = 5.0
GRACE_MS = 300_000
BASE = datetime(2025, 3, 3, tzinfo=UTC)
MODELS: list[tuple[str, str, Literal["chat", "embedding"]]] = [  # (provider, model, kind)
    ("openai", "gpt-4o", "chat"),
    ("openai", "gpt-4o-mini", "chat"),
    ("openai", "text-embedding-3-small", "embedding"),
    ("local", "smollm2-135m-instruct", "chat"),
]
SIZES = {"hour": 3_600_000, "day": 86_400_000}

WindowKey = tuple[str, str, str, str, str, int]  # tenant, provider, model, kind, size, start


@dataclass
class Workload:
    events: list[UsageEvent]
    messages: list[tuple[bytes, bytes]]
    expected: dict[WindowKey, tuple[int, int, int, int, float]]
    hours: int
    #: Input messages after the one that closes the first hour window: what is processed between the
    #: first and the last rollup.
    measured: int


def generate_workload(events: int, tenants: int, hours: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prices = PriceTable.load()
    names = [f"bench-u{i:04d}" for i in range(tenants)]
    step = hours * 3_600_000 / events
    out: list[UsageEvent] = []
    expected: dict[WindowKey, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for i in range(events):
        tenant = rng.choice(names)
        provider, model, kind = rng.choice(MODELS)
        inp = rng.randrange(10, 4000)
        out_tokens = 0 if kind == "embedding" else rng.randrange(1, 800)
        cached = rng.randrange(0, inp) if kind == "chat" and rng.random() < 0.3 else 0
        cost = round(rng.uniform(0.0001, 0.05), 6) if rng.random() < 0.2 else None
        at = BASE + timedelta(milliseconds=int(i * step))
        event = UsageEvent(event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), tenant=tenant,
                           occurred_at=at, provider=provider, model=model, kind=kind, input_tokens=inp,
                           output_tokens=out_tokens, cached_tokens=cached, cost_usd=cost)
        out.append(event)
        real_cost = cost if cost is not None else prices.cost(model, inp, out_tokens, cached) or 0.0
        ts = int(at.timestamp() * 1000)
        for size, length in SIZES.items():
            sums = expected[(tenant, provider, model, kind, size, ts - ts % length)]
            sums[0] += inp
            sums[1] += out_tokens
            sums[2] += cached
            sums[3] += 1
            sums[4] += real_cost
    # Duplicates of 1 % of the events, re-sent a little later: every contestant must count them once.
    later: dict[int, list[UsageEvent]] = defaultdict(list)
    for index in rng.sample(range(events), max(1, events // 100)):
        later[min(events - 1, index + rng.randrange(1, 500))].append(out[index])
    out = [item for index, event in enumerate(out) for item in (event, *later.get(index, ()))]
    # One closing event per tenant, two days on: closes every window above (a model no window expects).
    closing = BASE + timedelta(hours=hours) + timedelta(days=2)
    out += [UsageEvent(tenant=name, occurred_at=closing, provider="bench", model="closing", kind="chat",
                       cost_usd=0.0) for name in names]
    messages = [(event.tenant.encode(), encode_event(event)) for event in out]
    frozen = {key: (int(v[0]), int(v[1]), int(v[2]), int(v[3]), v[4]) for key, v in expected.items()}
    first_close = BASE + timedelta(hours=1, milliseconds=GRACE_MS)
    closer = next(index for index, event in enumerate(out) if event.occurred_at >= first_close)
    return Workload(out, messages, frozen, hours, len(out) - closer)


# -- reading each contestant's rollups ---------------------------------------------------------------


def rollup_of(name: str, record: Consumed) -> tuple[WindowKey, tuple[int, int, int, int, float]] | None:
    """The window key and sums of one output record, None for anything that is not a group rollup."""
    if name == "quix":
        row = json.loads(record.value or b"{}")
        key = (row["tenant"], row["provider"], row["model"], row["kind"], row["window"], int(row["window_start"]))
        return key, (row["input_tokens"], row["output_tokens"], row["cached_tokens"], row["events"], row["cost_usd"])
    report = decode_event(record.value or b"", UsageReport)
    if report.report != "rollup" or report.provider is None or report.window_start is None:
        return None
    start = int(report.window_start.timestamp() * 1000)
    key = (report.tenant, report.provider, report.model or "", report.kind or "", report.window or "", start)
    return key, (report.input_tokens, report.output_tokens, report.cached_tokens, report.events, report.cost_usd)


class Progress:
    """Counts the distinct expected windows reported so far (incrementally: outputs are many)."""

    def __init__(self, name: str, expected: set[WindowKey]) -> None:
        self.name = name
        self.expected = expected
        self.found: set[WindowKey] = set()
        self.read = 0

    def __call__(self, records: list[Consumed]) -> int:
        for record in records[self.read:]:
            parsed = rollup_of(self.name, record)
            if parsed is not None and parsed[0] in self.expected:
                self.found.add(parsed[0])
        self.read = len(records)
        return len(self.found)


# -- contestants --------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    startup: float
    outputs: list[Consumed]
    cpu: dict[str, float | None] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _worker(name: str, bootstrap: str, workdir: Path, redis_url: str) -> tuple[Any, str, str]:
    """(process, input topic, output topic) of a contestant."""
    if name == "ours":
        worker = WorkerProcess(bootstrap, redis_url, workdir, app_id=f"bench-usage-{uuid.uuid4().hex[:8]}",
                               extra_env={"SOMA_PARTITIONS": str(PARTITIONS), "SOMA_USAGE_IDLE_CLOSE_SECONDS": "0",
                                          "SOMA_USAGE_GRACE_SECONDS": str(GRACE_MS // 1000),
                                          "SOMA_WEB_ENABLED": "false", "SOMA_LOG_LEVEL": "warning"})
        return worker, USAGE_EVENTS.name, USAGE_REPORTS.name
    if name == "naive":
        env = {"NAIVE_BOOTSTRAP": bootstrap, "NAIVE_APP_ID": f"naive-usage-{uuid.uuid4().hex[:8]}",
               "NAIVE_INPUT_TOPIC": "naive.usage.events", "NAIVE_OUTPUT_TOPIC": "naive.usage.reports",
               "NAIVE_DATA_DIR": str(workdir / "data"), "NAIVE_PARTITIONS": str(PARTITIONS),
               "NAIVE_GRACE_MS": str(GRACE_MS), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "SOMA_DATA_DIR": str(workdir / "soma-data"), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "faust", "-A", "tests.perf.naive_usage_app", "worker", "-l", "warn",
                "--without-web"]
        return Process(argv, env, workdir), "naive.usage.events", "naive.usage.reports"
    if not QUIX_PYTHON.exists():
        raise BenchError(f"no {QUIX_PYTHON}: run `make bench-usage` (it creates .venv-bench with quixstreams)")
    env = {"QUIX_BOOTSTRAP": bootstrap, "QUIX_GROUP": f"quix-usage-{uuid.uuid4().hex[:8]}",
           "QUIX_INPUT_TOPIC": "quix.usage.events", "QUIX_OUTPUT_TOPIC": "quix.usage.reports",
           "QUIX_STATE_DIR": str(workdir / "state"), "QUIX_GRACE_MS": str(GRACE_MS), "PYTHONPATH": str(REPO_ROOT),
           "PYTHONUNBUFFERED": "1"}
    return Process([str(QUIX_PYTHON), "-m", "tests.perf.quix_usage_app"], env, workdir), \
        "quix.usage.events", "quix.usage.reports"


def run_contestant(name: str, workload: Workload, args: argparse.Namespace, workdir: Path) -> Result:
    contestant_dir = workdir / name
    contestant_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        broker = start_broker(contestant_dir)
        stack.callback(broker.stop)
        bootstrap = broker.bootstrap_servers
        broker_pid = broker.pid
        redis_url = ""
        if name == "ours":  # the worker runs every agent; the lock agent wants its Redis mirror
            port = free_port()
            stack.callback(terminate, start_redis_server(port, contestant_dir))
            redis_url = f"redis://127.0.0.1:{port}/0"
        worker, in_topic, out_topic = _worker(name, bootstrap, contestant_dir, redis_url)
        topics = all_topics(PARTITIONS, 1) if name == "ours" else [
            NewTopic(in_topic, PARTITIONS, 1, topic_configs={"retention.ms": str(7 * 86_400_000)}),
            NewTopic(out_topic, PARTITIONS, 1),
        ]
        asyncio.run(create_topics(bootstrap, topics))
        print(f"  [{name}] broker {bootstrap}; producing {len(workload.messages)} events to {in_topic} ...",
              flush=True)
        asyncio.run(preload(bootstrap, in_topic, workload.messages))
        started_at = time.time()
        worker.start()
        stack.callback(worker.stop)
        assert worker.process is not None
        progress = Progress(name, set(workload.expected))
        print(f"  [{name}] worker pid {worker.process.pid} started; waiting for {len(workload.expected)} rollups "
              f"on {out_topic} ...", flush=True)
        profiler = None
        if args.profile:
            profiler = Profiler(worker.process.pid, contestant_dir / "profile.txt")
            stack.callback(profiler.stop)
        outputs, cpu = asyncio.run(measure(
            bootstrap, out_topic, len(workload.expected), worker.process, args.timeout, args.stall_timeout,
            worker.tail_log, broker_pid, profiler, progress=progress,
        ))
        if profiler is not None:
            print(summarize_profile(profiler.output), flush=True)
        stamps = [record.timestamp / 1000 for record in outputs if rollup_of(name, record) is not None]
        first, last = min(stamps), max(stamps)
        return Result(name, workload.measured, last - first, first - started_at, outputs, cpu)


def check(result: Result, workload: Workload) -> list[str]:
    problems = []
    got: dict[WindowKey, tuple[int, int, int, int, float]] = {}
    repeats = 0
    for record in result.outputs:
        parsed = rollup_of(result.name, record)
        if parsed is None or parsed[0] not in workload.expected:
            continue
        if parsed[0] in got:
            repeats += 1
        got[parsed[0]] = parsed[1]
    missing = set(workload.expected) - set(got)
    if missing:
        problems.append(f"{len(missing)} of {len(workload.expected)} windows not reported, e.g. {sorted(missing)[0]}")
    if repeats:
        problems.append(f"{repeats} windows reported more than once")
    wrong = [key for key, sums in got.items() if not _same(sums, workload.expected[key])]
    if wrong:
        key = wrong[0]
        problems.append(f"{len(wrong)} windows differ from the reference, e.g. {key}: {got[key]} instead of "
                        f"{workload.expected[key]}")
    return problems


def _same(a: tuple[int, int, int, int, float], b: tuple[int, int, int, int, float]) -> bool:
    return a[:4] == b[:4] and abs(a[4] - b[4]) <= 1e-9 * max(1.0, abs(b[4]))


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf.bench_usage",
        description="End-to-end usage events/s aggregated into hourly and daily rollups: our usage agent vs a "
                    "naive Faust agent vs a Quix Streams pipeline, each on a fresh embedded broker.",
    )
    parser.add_argument("--events", type=positive, default=60_000, help="usage events (default 60000)")
    parser.add_argument("--tenants", type=positive, default=100, help="tenants (default 100)")
    parser.add_argument("--hours", type=positive, default=12,
                        help="hours of event time the events span (default 12)")
    parser.add_argument("--only", default="ours,naive,quix", help="comma-separated contestants (default all three)")
    parser.add_argument("--seed", type=int, default=11, help="workload seed (default 11)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contestant (default 900)")
    parser.add_argument("--stall-timeout", type=float, default=120.0,
                        help="seconds without a new output before giving up (default 120)")
    parser.add_argument("--profile", action="store_true",
                        help="record each worker with py-spy while it processes (slows it down) and print the "
                             "hottest frames")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    args.names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.names) - {"ours", "naive", "quix"}
    if unknown:
        parser.error(f"unknown contestants {sorted(unknown)}")
    return args


def report(results: dict[str, Result]) -> None:
    print()
    print(f"{'implementation':<16}{'events':>9}{'seconds':>10}{'events/s':>11}{'vs naive':>10}{'vs quix':>9}"
          f"{'startup s':>11}{'worker CPU':>12}")
    naive, quix = results.get("naive"), results.get("quix")
    labels = {"ours": "ours (engine)", "naive": "naive faust", "quix": "quix streams"}
    for name in ("ours", "naive", "quix"):
        result = results.get(name)
        if result is None:
            continue
        vs_naive = f"{result.rate / naive.rate:.2f}x" if naive else "-"
        vs_quix = f"{result.rate / quix.rate:.2f}x" if quix else "-"
        print(f"{labels[name]:<16}{result.events:>9}{result.seconds:>10.2f}{result.rate:>11,.0f}{vs_naive:>10}"
              f"{vs_quix:>9}{result.startup:>11.1f}{fmt_cpu(result.cpu.get('worker')):>12}")
    print()
    print("events/s = input messages processed between the first and the last rollup (duplicates and closing "
          "events included) / (last - first rollup CreateTime); startup = worker start to the first rollup.")
    print("ours also reports per-tenant totals, forecasts and budget checks; quix skips pydantic validation and "
          "writes JSON: both make the ratios conservative for ours.")
    ours = results.get("ours")
    if ours is not None and naive is not None:
        ratio = ours.rate / naive.rate
        print(f"target >= {TARGET_RATIO:.0f}x naive Faust: {'met' if ratio >= TARGET_RATIO else 'NOT met'} "
              f"({ratio:.2f}x)")
    if ours is not None and quix is not None:
        ratio = ours.rate / quix.rate
        print(f"goal: pass Quix Streams: {'passed' if ratio > 1 else 'not yet'} ({ratio:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    failed = True
    try:
        started = time.monotonic()
        workload = generate_workload(args.events, args.tenants, args.hours, args.seed)
        print(f"workload: {len(workload.events)} usage events ({args.events} distinct, {args.tenants} tenants, "
              f"{args.hours} h of event time, seed {args.seed}) -> {len(workload.expected)} hourly and daily "
              f"rollups; generated in {time.monotonic() - started:.1f} s; work dir {workdir}", flush=True)
        results: dict[str, Result] = {}
        for name in args.names:
            print(f"running {name} ...", flush=True)
            results[name] = result = run_contestant(name, workload, args, workdir)
            print(f"  [{name}] {result.rate:,.0f} events/s ({result.seconds:.2f} s), startup {result.startup:.1f} s",
                  flush=True)
        report(results)
        problems = [f"{name}: {problem}" for name, result in results.items() for problem in check(result, workload)]
        print()
        if problems:
            print("correctness: FAILED")
            for problem in problems:
                print(f"  {problem}")
            print(f"logs and data kept in {workdir}")
            return 1
        print(f"correctness: ok — {', '.join(results)}: every one of the {len(workload.expected)} windows reported "
              "once with the reference's tokens, events and cost (duplicates counted once)")
        failed = False
        return 0
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}\nlogs kept in {workdir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; logs kept in {workdir}", file=sys.stderr)
        return 130
    finally:
        if not failed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
