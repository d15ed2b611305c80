"""Crash to processing: a worker SIGKILLed while lock commands flow, started again at once, timed from outside.

Each variant gets its own embedded broker and one ``soma worker`` (its own app id and data dir) reading
``soma.training.lock.commands``, while this process sends ``status`` commands for tenants spread over
every partition at a steady rate and reads ``soma.training.lock.state``. A round SIGKILLs the worker,
starts it again at once with the same app id and data dir, and measures from the moment of the kill:

- **first answer**: the first state event the restarted worker wrote (its CreateTime; the killed worker
  cannot write after the kill);
- **all partitions**: the moment every input partition has had a command answered again;
- where the time went, from the restarted worker's log: the process up to its first log line (Python
  imports), the start of the app's services up to ``stream engine started``, and the lock agent's
  group join and changelog restore up to ``agent locks: ready``.

Variants, side by side in one run, their rounds interleaved so that both see the same machine load:

- ``old``: the settings before this benchmark existed, ``SOMA_SESSION_TIMEOUT_MS=10000`` (dynamic group
  membership): the restarted worker's groups first wait out the dead worker's session;
- ``new``: what ``soma dev`` runs on the embedded broker (``SOMA_SESSION_TIMEOUT_MS=2000``).

At the end every command sent must have been answered (a lost command is an error; a command answered
twice is counted and reported).

Run from the repository root::

    .venv/bin/python -m tests.perf.bench_failover [--rounds 5] [--only old|new] [--rate 100]

Exit status: 0 when every round completed and nothing was lost, 1 on lost commands, 2 on errors,
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from connectors.broker import EmbeddedBroker
from connectors.local_stack import EMBEDDED_SESSION_TIMEOUT_MS
from schemas import LockCommand, LockState, decode_event, encode_event, new_event_id
from streams.catalog import LOCK_COMMANDS, LOCK_STATE, all_topics
from tests.perf.common import PARTITIONS, BenchError, create_topics, positive, raise_interrupt
from tests.support.stack import TopicReader, WorkerProcess, find_or_start_redis, start_broker

logger = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, str]] = {
    "old": {"SOMA_SESSION_TIMEOUT_MS": "10000"},
    "new": {"SOMA_SESSION_TIMEOUT_MS": str(EMBEDDED_SESSION_TIMEOUT_MS)},
}

#: Log lines that end the phases of a restart, in order.
PHASES = (
    ("imports", "[^Worker]: Starting..."),
    ("engine", "stream engine started agents"),
    ("agent", "agent locks: ready on partitions"),
)


@dataclass
class Round:
    first_answer: float
    all_partitions: float
    phases: dict[str, float]


@dataclass
class Variant:
    """One variant's broker, worker, command flow and answers."""

    name: str
    env: dict[str, str]
    broker: EmbeddedBroker
    worker: WorkerProcess
    flow: Flow | None = None
    answers: Answers | None = None
    rounds: list[Round] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    doubled: int = 0


class Flow:
    """Sends status commands round-robin over tenants and records which partition each went to."""

    def __init__(self, bootstrap: str, tenants: list[str], rate: float) -> None:
        self.bootstrap = bootstrap
        self.tenants = tenants
        self.rate = rate
        self.partition_of: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await self._producer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._producer is not None
        index = 0
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            tenant = self.tenants[index % len(self.tenants)]
            index += 1
            command = LockCommand.model_validate(
                {"event_id": new_event_id(), "tenant": tenant, "action": "status", "user": "bench"})
            future = await self._producer.send(LOCK_COMMANDS.name, encode_event(command), key=tenant.encode())
            future.add_done_callback(lambda done, event_id=command.event_id: self._sent(event_id, done))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _sent(self, event_id: str, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.partition_of[event_id] = done.result().partition

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class Answers:
    """Reads the state topic: when (CreateTime) each command was answered, and how often."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self.answered_at: dict[str, list[float]] = {}

    async def poll(self) -> None:
        for record in await self.reader.poll(timeout_ms=100):
            cause = decode_event(record.value or b"", LockState).causation_id
            if cause:
                self.answered_at.setdefault(cause, []).append(record.timestamp / 1000)


async def start_variant(name: str, args: argparse.Namespace, workdir: Path, redis_url: str,
                        stack: AsyncExitStack) -> Variant:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = start_broker(workdir)
    stack.callback(broker.stop)
    worker = WorkerProcess(broker.bootstrap_servers, redis_url, workdir / "worker", app_id=f"bf{uuid.uuid4().hex[:8]}",
                           extra_env={"SOMA_PARTITIONS": str(PARTITIONS), **VARIANTS[name]})
    stack.callback(worker.stop)
    await create_topics(broker.bootstrap_servers, all_topics(PARTITIONS, 1))
    worker.start()
    worker.wait_ready("locks")
    reader = await TopicReader(broker.bootstrap_servers, LOCK_STATE.name).start()
    stack.push_async_callback(reader.stop)
    variant = Variant(name, VARIANTS[name], broker, worker, answers=Answers(reader))
    variant.flow = Flow(broker.bootstrap_servers, [f"tenant-{i}" for i in range(args.tenants)], args.rate)
    await variant.flow.start()
    stack.push_async_callback(variant.flow.stop)
    return variant


async def kill_and_restart(variant: Variant, timeout: float) -> Round:
    assert variant.flow is not None and variant.answers is not None
    await _wait_flowing(variant)
    killed_at = time.time()
    variant.worker.kill()
    variant.worker.start()
    round_ = await _wait_recovered(variant, killed_at, timeout)
    variant.rounds.append(round_)
    return round_


async def finish_variant(variant: Variant, timeout: float) -> None:
    """Stop sending, wait for every command's answer, count the lost and the doubled."""
    assert variant.flow is not None and variant.answers is not None
    await variant.flow.stop()
    sent = dict(variant.flow.partition_of)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(sent) <= set(variant.answers.answered_at):
        await variant.answers.poll()
    variant.sent = len(sent)
    variant.lost = len(set(sent) - set(variant.answers.answered_at))
    variant.doubled = sum(1 for event_id in sent if len(variant.answers.answered_at.get(event_id, ())) > 1)


async def _wait_flowing(variant: Variant, timeout: float = 120.0) -> None:
    """Until commands were answered on every partition within the last second."""
    assert variant.flow is not None and variant.answers is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await variant.answers.poll()
        now = time.time()
        recent = {variant.flow.partition_of[event_id] for event_id, times in variant.answers.answered_at.items()
                  if event_id in variant.flow.partition_of and times[-1] > now - 1.0}
        if len(recent) == PARTITIONS:
            return
        _check_alive(variant.worker)
    raise BenchError(f"answers did not flow on every partition within {timeout:.0f} s:\n{variant.worker.tail_log()}")


async def _wait_recovered(variant: Variant, killed_at: float, timeout: float) -> Round:
    assert variant.flow is not None and variant.answers is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await variant.answers.poll()
        first_by_partition: dict[int, float] = {}
        for event_id, times in variant.answers.answered_at.items():
            partition = variant.flow.partition_of.get(event_id)
            after = [moment for moment in times if moment > killed_at]
            if partition is None or not after:
                continue
            first_by_partition[partition] = min(first_by_partition.get(partition, after[0]), after[0])
        if len(first_by_partition) == PARTITIONS:
            return Round(min(first_by_partition.values()) - killed_at, max(first_by_partition.values()) - killed_at,
                         _phases(variant.worker, killed_at))
        _check_alive(variant.worker)
    raise BenchError(f"no answers on every partition {timeout:.0f} s after the kill:\n{variant.worker.tail_log()}")


def _phases(worker: WorkerProcess, killed_at: float) -> dict[str, float]:
    """Seconds each phase of the restart took, from the restarted worker's log timestamps."""
    assert worker.log_path is not None
    lines = worker.log_path.read_text(errors="replace").splitlines()
    phases: dict[str, float] = {}
    previous = killed_at
    for name, needle in PHASES:
        line = next((line for line in lines if needle in line and line.startswith("[")), None)
        if line is None:
            break
        # "[2026-01-01 10:00:00,123] [pid] ..." in local time, like time.time() read through localtime.
        moment = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        phases[name] = moment - previous
        previous = moment
    return phases


def _check_alive(worker: WorkerProcess) -> None:
    if worker.process is not None and worker.process.poll() is not None:
        raise BenchError(f"worker exited with {worker.process.returncode}:\n{worker.tail_log()}")


def report(variants: list[Variant]) -> str:
    lines = ["", "crash to processing (SIGKILL, immediate restart), seconds from the kill:",
             f"  {'variant':8} {'rounds':>6} {'first p50':>10} {'first max':>10} {'all p50':>8} {'all max':>8}"
             f" {'sent':>6} {'lost':>5} {'twice':>5}"]
    for variant in variants:
        firsts = [r.first_answer for r in variant.rounds]
        alls = [r.all_partitions for r in variant.rounds]
        lines.append(
            f"  {variant.name:8} {len(variant.rounds):>6} {statistics.median(firsts):>10.1f} {max(firsts):>10.1f} "
            f"{statistics.median(alls):>8.1f} {max(alls):>8.1f} {variant.sent:>6} {variant.lost:>5} "
            f"{variant.doubled:>5}")
    lines += ["", "where the time went (p50 of the rounds, seconds): process start and imports, the app's services "
              "up to the stream engine, the lock agent's group join and restore; the first batch follows"]
    for variant in variants:
        parts = []
        for name, _ in PHASES:
            values = [r.phases[name] for r in variant.rounds if name in r.phases]
            parts.append(f"{name} {statistics.median(values):.1f}" if values else f"{name} ?")
        lines.append(f"  {variant.name:8} " + ", ".join(parts))
    return "\n".join(lines)


async def run(args: argparse.Namespace, names: list[str], workdir: Path, redis_url: str) -> list[Variant]:
    async with AsyncExitStack() as stack:
        variants = [await start_variant(name, args, workdir / name, redis_url, stack) for name in names]
        for number in range(1, args.rounds + 1):
            for variant in variants:
                round_ = await kill_and_restart(variant, args.timeout)
                phases = ", ".join(f"{name} {value:.1f}" for name, value in round_.phases.items())
                print(f"  {variant.name} round {number}: first answer {round_.first_answer:.1f} s, all partitions "
                      f"{round_.all_partitions:.1f} s ({phases}; load {os.getloadavg()[0]:.1f})", flush=True)
        for variant in variants:
            await finish_variant(variant, args.timeout)
    return variants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf.bench_failover",
        description="Crash-to-processing time of `soma worker` after a SIGKILL and an immediate restart, with the "
                    "former 10 s session (old) and the embedded broker's 2 s session (new).")
    parser.add_argument("--rounds", type=positive, default=5, help="kills per variant (default 5)")
    parser.add_argument("--rate", type=positive, default=100, help="status commands per second (default 100)")
    parser.add_argument("--tenants", type=positive, default=64, help="tenants the commands cycle over")
    parser.add_argument("--timeout", type=positive, default=120, help="seconds to wait for a recovery")
    parser.add_argument("--only", choices=sorted(VARIANTS), help="run one variant")
    parser.add_argument("--keep", type=Path, help="keep worker and broker logs in this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, raise_interrupt)
    logging.basicConfig(level=logging.WARNING)
    names = [args.only] if args.only else list(VARIANTS)
    for name in names:
        print(f"{name}: {VARIANTS[name]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        workdir = args.keep or Path(tmp)
        redis_url, redis_process = find_or_start_redis(workdir)
        try:
            variants = asyncio.run(run(args, names, workdir, redis_url))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            if redis_process is not None:
                redis_process.terminate()
                redis_process.wait(timeout=10)
    print(report(variants))
    lost = sum(variant.lost for variant in variants)
    if lost:
        print(f"LOST: {lost} commands were never answered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
