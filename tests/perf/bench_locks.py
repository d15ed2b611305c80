"""Lock commands per second, end to end: our batch-engine lock agent, a naive Faust agent, Quix Streams.

All contestants get the same seeded workload (N lock commands over T tenants: enables by admins,
status queries, extends, disables, conflicting enables by another admin, attempts by non-admins), each
on a fresh embedded broker with its own Redis-free or Redis-mirrored worker process:

- ours:  ``soma worker`` (the real agent of ``agents/locks.py`` on the batch engine), reading
  ``soma.training.lock.commands`` and writing ``soma.training.lock.state``; it also mirrors every
  change to Redis, which the naive agent does not, so the comparison is conservative for us.
- naive: ``tests/perf/naive_locks_app.py``, a plain Faust agent with Faust tables and one
  ``await topic.send`` per event, applying the same rules (``agents.locks.decide``).
- quix:  ``tests/perf/quix_locks_app.py``, a Quix Streams 3.28 pipeline (``.venv-bench``; see there why it
  has its own virtualenv and how it runs the same rules) with its state in Quix's RocksDB state store,
  decoding and encoding with the project's codec like ours. It does not mirror to Redis either.

The input topic is filled completely before the worker starts, so the producer is not measured. The
rate is N / (last − first output record timestamp); the record timestamps are the CreateTime the
worker's producer set. Startup (worker start to first output) is reported separately. Every answer is
checked against a reference run of the rules in this process.

Run from the repository root::

    .venv/bin/python -m tests.perf.bench_locks [--events 40000] [--tenants 2000] [--only ours,naive,quix] [--rounds 1]

(``make bench-locks`` sets up ``.venv-bench`` for Quix.) Exit status: 0 when the run completed and every
contestant that ran was correct (whether or not the 5× target was met), 1 on wrong results, 2 on errors
and timeouts, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.admin import NewTopic

from agents.locks import LockPolicy, LockRecord, decide, rejected_key
from connectors.broker import free_port
from schemas import LockCommand, LockState, decode_event, encode_event
from streams.catalog import LOCK_COMMANDS, LOCK_STATE, all_topics
from streams.settings import Settings
from tests.perf.common import (
    PARTITIONS,
    QUIX_PYTHON,
    BenchError,
    Process,
    Profiler,
    create_topics,
    measure,
    preload,
    summarize_profile,
)
from tests.perf.common import fmt_cpu as _fmt_cpu
from tests.perf.common import positive as _positive
from tests.perf.common import raise_interrupt as _raise_interrupt
from tests.perf.common import terminate as _terminate
from tests.support.stack import (
    REPO_ROOT,
    Consumed,
    WorkerProcess,
    start_broker,
    start_redis_server,
)

soma_settings = Settings.from_env()

TARGET_RATIO = 5.0
NAIVE_INPUT = "naive.lock.commands"
NAIVE_OUTPUT = "naive.lock.state"
QUIX_INPUT = "quix.lock.commands"
QUIX_OUTPUT = "quix.lock.state"
CONTESTANTS = ("ours", "naive", "quix")
LABELS = {"ours": "ours (engine)", "naive": "naive faust", "quix": "quix streams"}

ADMINS = [("alice", ["admin"]), ("bob", ["admin", "ml"]), ("dana", ["admin"])]
NON_ADMINS = [("carol", ["viewer"]), ("erin", ["ml-engineer"])]
#: Long TTLs (at most a day; the maximum is 7 days): no lock expires during a run, so every command
#: yields exactly one state event in both implementations.
ENABLE_TTLS = [None, 3600, 7200, 86_400]
EXTEND_TTLS = [None, 3600, 86_400]


# -- workload -----------------------------------------------------------------------------------------


@dataclass
class Workload:
    commands: list[LockCommand]  # in produce order
    messages: list[tuple[bytes, bytes]]  # (key, Avro value), in produce order
    tenants: list[str]

    @property
    def by_tenant(self) -> dict[str, list[LockCommand]]:
        grouped: dict[str, list[LockCommand]] = defaultdict(list)
        for command in self.commands:
            grouped[command.tenant].append(command)
        return grouped


def generate_workload(events: int, tenants: int, seed: int) -> Workload:
    """A deterministic, realistic mix of lock commands, interleaved across tenants."""
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    names = [f"bench-t{i:05d}" for i in range(tenants)]
    counts = [events // tenants + (1 if i < events % tenants else 0) for i in range(tenants)]
    sequences: list[list[dict[str, Any]]] = []
    for name, count in zip(names, counts, strict=True):
        sequences.append(_tenant_sequence(rng, name, count))

    commands: list[LockCommand] = []
    for step in range(max(counts, default=0)):
        for sequence in sequences:
            if step < len(sequence):
                fields = sequence[step]
                commands.append(LockCommand(
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    occurred_at=base + timedelta(milliseconds=len(commands)),
                    **fields,
                ))
    messages = [(command.tenant.encode(), encode_event(command)) for command in commands]
    return Workload(commands, messages, names)


def _tenant_sequence(rng: random.Random, tenant: str, count: int) -> list[dict[str, Any]]:
    """One tenant's commands; tracks the holder the way the rules do, to pick plausible next steps."""
    holder: str | None = None
    sequence: list[dict[str, Any]] = []
    for index in range(count):
        admin, admin_roles = rng.choice(ADMINS)
        outsider, outsider_roles = rng.choice(NON_ADMINS)
        if index == 0:
            step = "enable"
        elif holder is not None:
            step = rng.choices(
                ["status", "extend", "conflict", "again", "outsider-enable", "outsider-disable",
                 "disable", "admin-disable"],
                weights=[25, 15, 12, 3, 7, 5, 23, 10],
            )[0]
        else:
            step = rng.choices(
                ["enable", "status", "outsider-enable", "extend-nothing", "disable-nothing"],
                weights=[50, 25, 13, 7, 5],
            )[0]
        holder_roles = dict(ADMINS).get(holder or "", ["admin"])
        if step == "enable":
            command = _command(tenant, "enable", admin, admin_roles, rng.choice(ENABLE_TTLS),
                               f"fine-tune run {rng.randrange(1000)}")
            holder = admin
        elif step == "status":
            who, roles = rng.choice(ADMINS + NON_ADMINS)
            command = _command(tenant, "status", who, roles)
        elif step == "extend":
            command = _command(tenant, "extend", holder or admin, holder_roles, rng.choice(EXTEND_TTLS))
        elif step == "conflict":
            other = [a for a in ADMINS if a[0] != holder]
            who, roles = rng.choice(other)
            command = _command(tenant, "enable", who, roles, rng.choice(ENABLE_TTLS), "my own run")
        elif step == "again":
            command = _command(tenant, "enable", holder or admin, holder_roles, None, "again")
        elif step == "outsider-enable":
            command = _command(tenant, "enable", outsider, outsider_roles, 3600, "let me in")
        elif step == "outsider-disable":
            command = _command(tenant, "disable", outsider, outsider_roles)
        elif step == "disable":
            command = _command(tenant, "disable", holder or admin, holder_roles, reason="run finished")
            holder = None
        elif step == "admin-disable":
            command = _command(tenant, "disable", admin, admin_roles, reason="maintenance")
            holder = None
        elif step == "extend-nothing":
            command = _command(tenant, "extend", admin, admin_roles, 3600)
        else:  # disable-nothing
            command = _command(tenant, "disable", admin, admin_roles)
        sequence.append(command)
    return sequence


def _command(tenant: str, action: str, user: str, roles: list[str], ttl: int | None = None,
             reason: str = "") -> dict[str, Any]:
    return {"tenant": tenant, "action": action, "user": user, "roles": list(roles), "ttl_seconds": ttl,
            "reason": reason}


# -- the reference: the same rules, run here ----------------------------------------------------------

FinalState = tuple[str, str | None, int]  # status, holder, fencing_token


@dataclass
class Expected:
    final: dict[str, FinalState]  # the last event keyed by the tenant
    statuses: Counter[str]


def reference(workload: Workload) -> Expected:
    policy = LockPolicy.from_settings(soma_settings)
    now = int(time.time() * 1000)
    final: dict[str, FinalState] = {}
    statuses: Counter[str] = Counter()
    for tenant, commands in workload.by_tenant.items():
        current = LockRecord()
        for command in commands:
            outcome = decide(current, command, now, policy)
            if outcome.record is not None:
                current = outcome.record
            statuses[outcome.status] += 1
            if outcome.status != "rejected":
                final[tenant] = (outcome.status, outcome.shown.holder, outcome.shown.fencing_token)
    return Expected(final, statuses)


# -- processes ----------------------------------------------------------------------------------------


class NaiveWorker(Process):
    """``faust worker`` on ``tests.perf.naive_locks_app`` in its own process."""

    def __init__(self, bootstrap: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.app_id = f"naive-locks-{uuid.uuid4().hex[:8]}"
        env = {
            "NAIVE_BOOTSTRAP": bootstrap,
            "NAIVE_APP_ID": self.app_id,
            "NAIVE_INPUT_TOPIC": NAIVE_INPUT,
            "NAIVE_OUTPUT_TOPIC": NAIVE_OUTPUT,
            "NAIVE_DATA_DIR": str(workdir / "data"),
            "NAIVE_PARTITIONS": str(PARTITIONS),
            # faust_app (imported for the rules) reads these; keep it away from anything real.
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SOMA_DATA_DIR": str(workdir / "soma-data"),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "faust", "-A", "tests.perf.naive_locks_app", "worker", "-l", "warn",
                "--without-web"]
        super().__init__(argv, env, workdir, log_name="naive-worker.log")


def quix_worker(bootstrap: str, workdir: Path) -> Process:
    """``tests/perf/quix_locks_app.py`` in the Quix virtualenv, with the lock policy the reference uses."""
    if not QUIX_PYTHON.exists():
        raise BenchError(f"no {QUIX_PYTHON}: run `make bench-locks` (it creates .venv-bench with quixstreams)")
    env = {
        "QUIX_BOOTSTRAP": bootstrap,
        "QUIX_GROUP": f"quix-locks-{uuid.uuid4().hex[:8]}",
        "QUIX_INPUT_TOPIC": QUIX_INPUT,
        "QUIX_OUTPUT_TOPIC": QUIX_OUTPUT,
        "QUIX_STATE_DIR": str(workdir / "state"),
        "QUIX_ADMIN_ROLES": ",".join(soma_settings.admin_roles),
        "QUIX_ADMIN_USERS": ",".join(soma_settings.admin_users),
        "QUIX_LOCK_DEFAULT_TTL_SECONDS": str(soma_settings.lock_default_ttl_seconds),
        "QUIX_LOCK_MAX_TTL_SECONDS": str(soma_settings.lock_max_ttl_seconds),
        "QUIX_DEDUPE_TTL_SECONDS": str(soma_settings.dedupe_ttl_seconds),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    return Process([str(QUIX_PYTHON), "-m", "tests.perf.quix_locks_app"], env, workdir)


# -- one contestant -----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    startup: float
    outputs: list[Consumed]
    cpu: dict[str, float | None] = field(default_factory=dict)
    profile: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def per_cpu_second(self) -> float | None:
        """Events per second of worker CPU: steadier than the rate when other work shares the machine."""
        share = self.cpu.get("worker")
        return self.rate / share if share else None

    @property
    def middle_rate(self) -> float:
        """Events/s between the 5th and the 95th percentile output timestamps (no start or end effects)."""
        stamps = sorted(record.timestamp for record in self.outputs)
        low, high = len(stamps) * 5 // 100, len(stamps) * 95 // 100 - 1
        window = (stamps[high] - stamps[low]) / 1000 if high > low else 0.0
        return (high - low) / window if window > 0 else float("inf")


def run_contestant(name: str, workload: Workload, args: argparse.Namespace, workdir: Path) -> Result:
    events = len(workload.commands)
    contestant_dir = workdir / name
    contestant_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        broker = start_broker(contestant_dir)
        stack.callback(broker.stop)
        bootstrap = broker.bootstrap_servers
        broker_pid = broker.pid

        if name == "ours":
            in_topic, out_topic = LOCK_COMMANDS.name, LOCK_STATE.name
            topics = all_topics(PARTITIONS, 1)
        else:
            in_topic, out_topic = (NAIVE_INPUT, NAIVE_OUTPUT) if name == "naive" else (QUIX_INPUT, QUIX_OUTPUT)
            topics = [NewTopic(in_topic, PARTITIONS, 1), NewTopic(out_topic, PARTITIONS, 1)]
        asyncio.run(create_topics(bootstrap, topics))
        print(f"  [{name}] broker {bootstrap}; producing {events} commands to {in_topic} ...", flush=True)
        asyncio.run(preload(bootstrap, in_topic, workload.messages))

        worker: WorkerProcess | NaiveWorker | Process
        if name == "ours":
            redis_url = args.redis_url
            if redis_url is None:
                redis_process = start_redis_server(free_port(), contestant_dir)
                stack.callback(_terminate, redis_process)
                redis_url = f"redis://127.0.0.1:{_redis_port(redis_process)}/0"
            worker = WorkerProcess(
                bootstrap, redis_url, contestant_dir, app_id=f"bench-locks-{uuid.uuid4().hex[:8]}",
                extra_env={"SOMA_PARTITIONS": str(PARTITIONS)},
            )
        elif name == "naive":
            worker = NaiveWorker(bootstrap, contestant_dir)
        else:
            worker = quix_worker(bootstrap, contestant_dir)
        started_at = time.time()
        worker.start()
        stack.callback(worker.stop)
        assert worker.process is not None
        print(f"  [{name}] worker pid {worker.process.pid} started; waiting for {events} outputs on "
              f"{out_topic} ...", flush=True)
        profiler = None
        if args.profile:
            profiler = Profiler(worker.process.pid, contestant_dir / "profile.txt")
            stack.callback(profiler.stop)
        outputs, cpu = asyncio.run(measure(
            bootstrap, out_topic, events, worker.process, args.timeout, args.stall_timeout,
            worker.tail_log, broker_pid, profiler,
        ))
    first = min(record.timestamp for record in outputs)
    last = max(record.timestamp for record in outputs)
    result = Result(name, events, (last - first) / 1000, first / 1000 - started_at, outputs, cpu)
    if profiler is not None:
        result.profile = summarize_profile(profiler.output)
    return result


def _redis_port(process: subprocess.Popen[bytes]) -> int:
    args = process.args
    assert isinstance(args, list)
    return int(args[args.index("--port") + 1])


# -- correctness --------------------------------------------------------------------------------------


def check(result: Result, workload: Workload, expected: Expected) -> tuple[list[str], dict[str, FinalState]]:
    """Problems found in one contestant's answers, and its final state per tenant."""
    problems: list[str] = []
    events = len(workload.commands)
    if len(result.outputs) != events:
        problems.append(f"{len(result.outputs)} state events for {events} commands")
    ordered = sorted(result.outputs, key=lambda record: (record.partition, record.offset))
    answered: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    final: dict[str, FinalState] = {}
    undecodable = 0
    for record in ordered:
        try:
            state = decode_event(record.value or b"", LockState)
        except Exception:
            undecodable += 1
            continue
        statuses[state.status] += 1
        if state.causation_id:
            answered[state.causation_id] += 1
        key = (record.key or b"").decode()
        expected_key = rejected_key(state.tenant) if state.status == "rejected" else state.tenant
        if key != expected_key:
            problems.append(f"event for {state.tenant} ({state.status}) keyed {key!r}, not {expected_key!r}")
        if key == state.tenant:
            final[state.tenant] = (state.status, state.holder, state.fencing_token)
    if undecodable:
        problems.append(f"{undecodable} output records are not LockState events")
    ids = {command.event_id for command in workload.commands}
    missing = ids - set(answered)
    twice = [event_id for event_id, count in answered.items() if count > 1]
    if missing:
        problems.append(f"{len(missing)} commands got no answer")
    if twice:
        problems.append(f"{len(twice)} commands were answered more than once")
    if statuses != expected.statuses:
        problems.append(f"status counts {dict(statuses)} differ from the rules' {dict(expected.statuses)}")
    wrong = [tenant for tenant in workload.tenants if final.get(tenant) != expected.final.get(tenant)]
    if wrong:
        tenant = wrong[0]
        problems.append(f"final state of {len(wrong)} tenants differs from the rules, e.g. {tenant}: "
                        f"{final.get(tenant)} instead of {expected.final.get(tenant)}")
    return problems[:10], final


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf.bench_locks",
        description="End-to-end lock commands/s of the batch-engine lock agent (`soma worker`) against a "
                    "naive Faust agent and a Quix Streams pipeline doing the same work, each on a fresh "
                    "embedded broker.",
    )
    parser.add_argument("--events", type=_positive, default=40_000, help="lock commands (default 40000)")
    parser.add_argument("--tenants", type=_positive, default=2_000, help="tenants (default 2000)")
    parser.add_argument("--only", default=",".join(CONTESTANTS),
                        help="comma-separated contestants (default all three: ours,naive,quix)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--rounds", type=_positive, default=1,
                        help="run every contestant this many times, alternating the order, and report each "
                             "one's fastest run (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a contestant may take from worker start to its last output (default 600)")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds without a new output before giving up (default 60)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"),
                        help="Redis for our agent's mirror (default: a private redis-server on a free port)")
    parser.add_argument("--profile", action="store_true",
                        help="record each worker with py-spy while it processes (slows it down) and print "
                             "the hottest frames")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args(argv)
    if args.tenants > args.events:
        parser.error("--tenants may not exceed --events")
    args.names = [name for name in CONTESTANTS if name in {part.strip() for part in args.only.split(",")}]
    unknown = {part.strip() for part in args.only.split(",") if part.strip()} - set(CONTESTANTS)
    if unknown or not args.names:
        parser.error(f"--only takes some of {','.join(CONTESTANTS)}, not {args.only!r}")
    return args


def report(results: dict[str, Result]) -> None:
    print()
    print(f"{'implementation':<16}{'events':>9}{'seconds':>10}{'events/s':>11}{'vs naive':>10}{'vs quix':>9}"
          f"{'startup s':>11}{'worker CPU':>12}{'broker CPU':>12}{'per CPU-s':>11}")
    naive, quix = results.get("naive"), results.get("quix")
    for name in CONTESTANTS:
        result = results.get(name)
        if result is None:
            continue
        vs_naive = f"{result.rate / naive.rate:.2f}x" if naive is not None else "-"
        vs_quix = f"{result.rate / quix.rate:.2f}x" if quix is not None else "-"
        print(f"{LABELS[name]:<16}{result.events:>9}{result.seconds:>10.2f}{result.rate:>11,.0f}{vs_naive:>10}"
              f"{vs_quix:>9}{result.startup:>11.1f}{_fmt_cpu(result.cpu.get('worker')):>12}"
              f"{_fmt_cpu(result.cpu.get('broker')):>12}{_fmt_rate(result.per_cpu_second):>11}")
    print()
    print("events/s = events / (last - first output CreateTime); startup = worker start to first output;")
    print("CPU = share of one core used during the measured window (the machine has "
          f"{os.cpu_count()} cores); per CPU-s = events/s / worker CPU, events per second of worker CPU "
          "(less sensitive than events/s to other load on a shared machine).")
    for result in results.values():
        print(f"  {result.name}: {result.middle_rate:,.0f} events/s over the middle 90% of its outputs "
              "(5th to 95th percentile timestamp: no first-batch or tail effects)")
    for result in results.values():
        if result.seconds < 2:
            print(f"  note: {result.name} finished within {result.seconds:.2f} s; use more --events for a "
                  "meaningful rate")
    print("ours also mirrors every change to Redis; the naive agent and quix do not, so the ratios are "
          "conservative for ours.")
    ours = results.get("ours")
    if ours is not None and naive is not None:
        ratio = ours.rate / naive.rate
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target >= {TARGET_RATIO:.0f}x naive Faust: {verdict} ({ratio:.2f}x)")
    if ours is not None and quix is not None:
        ratio = ours.rate / quix.rate
        print(f"against Quix Streams: {'faster' if ratio > 1 else 'NOT faster'} ({ratio:.2f}x)")


def _fmt_rate(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C also reaches the workers (same process group) and may stop one before this process notices:
    # interrupt at once, whatever is running, so it reads as an interruption and not as a dead worker.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-locks-"))
    failed = True
    try:
        started = time.monotonic()
        workload = generate_workload(args.events, args.tenants, args.seed)
        expected = reference(workload)
        print(f"workload: {len(workload.commands)} lock commands over {len(workload.tenants)} tenants "
              f"(seed {args.seed}; expected answers {dict(expected.statuses)}), "
              f"generated in {time.monotonic() - started:.1f} s; work dir {workdir}", flush=True)
        results: dict[str, Result] = {}  # the fastest run of each contestant
        finals: dict[str, dict[str, FinalState]] = {}
        all_problems: list[str] = []
        for round_index in range(args.rounds):
            # Every other round in reverse order: on a shared machine the load drifts during a run.
            order = args.names if round_index % 2 == 0 else args.names[::-1]
            for name in order:
                label = name if args.rounds == 1 else f"{name} (round {round_index + 1})"
                print(f"running {label} ...", flush=True)
                result = run_contestant(name, workload, args, workdir / f"round-{round_index + 1}")
                print(f"  [{name}] {result.rate:,.0f} events/s ({result.seconds:.2f} s), startup "
                      f"{result.startup:.1f} s", flush=True)
                problems, final = check(result, workload, expected)
                all_problems += [f"{label}: {problem}" for problem in problems]
                finals.setdefault(name, final)
                if name not in results or result.rate > results[name].rate:
                    results[name] = result
        if args.rounds > 1:
            print(f"\nbest of {args.rounds} rounds per contestant:")
        report(results)

        checked = len(workload.tenants)
        first, *others = list(finals)
        for other in others:
            disagree = [t for t in workload.tenants if finals[first].get(t) != finals[other].get(t)]
            if disagree:
                tenant = disagree[0]
                all_problems.append(f"{first} and {other} disagree on {len(disagree)} of {checked} tenants, "
                                    f"e.g. {tenant}: {finals[first].get(tenant)} vs {finals[other].get(tenant)}")
        for result in results.values():
            if result.profile:
                print(f"\npy-spy profile of {result.name} (while processing; samples include idle threads):")
                print(result.profile)
        print()
        if all_problems:
            print("correctness: FAILED")
            for problem in all_problems:
                print(f"  {problem}")
            print(f"logs and data kept in {workdir}")
            return 1
        who = ", ".join(results)
        same = f"; {' and '.join(results)} agree" if len(results) > 1 else ""
        print(f"correctness: ok — {who}: one answer per command, status counts as the rules give, final "
              f"status/holder/fencing_token of all {checked} tenants as the rules give{same}")
        failed = False
        return 0
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}\nlogs kept in {workdir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; logs kept in {workdir}", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}\nlogs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        if not failed and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
