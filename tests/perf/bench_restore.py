"""Changelog restore of a 1,000,000-key table, and sweeping its expired ids, against the event loop.

A week of ``seen`` ids (``SOMA_DEDUPE_TTL_SECONDS``) at a few thousand events per second is millions of
keys; a partition that moves, or a worker that lost its disk, restores all of them before processing.
This measures, on one embedded broker, in this process:

1. **restore**: the changelog of a ``seen`` table (N keys: uuid event ids → expiry epoch ms, spread over
   4 partitions by the Kafka default partitioner) is produced straight to the broker; the table is then
   restored into an empty state directory with the engine's restore. Reported: seconds, keys/s.
2. **loop stall during the restore**: a probe task sleeps 5 ms at a time and records how late it wakes
   up; the worst and the 99th percentile lateness are how long the restore held the event loop (the
   heartbeats and fetches of every other agent of the worker share that loop).
3. **sweep**: half of the ids are expired; ``SeenIds.sweep`` is called as an agent calls it (once per
   batch) until every expired id is forgotten. Reported: the longest single call (the stall a batch
   sees), the calls and the total time it took.

Run from the repository root (``make bench-restore``)::

    .venv/bin/python -m tests.perf.bench_restore [--keys 1000000] [--rounds 1]

Exit status: 0 when the restore brought back every key and the sweep forgot exactly the expired ids,
1 on wrong results, 2 on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.engine.recovery import restore_tables
from streams.engine.state import Table
from streams.settings import Settings
from streams.web import partition_for
from tests.perf.common import PARTITIONS, BenchError, create_topics

T = TypeVar("T")

TOPIC = "bench.restore.seen.changelog"
TTL_MS = 7 * 24 * 3600 * 1000
PROBE_SECONDS = 0.005


class LoopProbe:
    """Sleeps ``PROBE_SECONDS`` at a time and records how late each wake-up is (event loop stalls).

    Beside the wall-clock lateness it records the CPU time this thread spent between two wake-ups: on a
    machine shared with other processes the wall clock also counts the time the OS gave them, while the
    CPU time is the work the loop did without letting the probe run (on a quiet machine both agree).
    """

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, cpu_before = loop.time(), time.thread_time()
            await asyncio.sleep(PROBE_SECONDS)
            self.lateness.append(max(0.0, loop.time() - before - PROBE_SECONDS))
            self.cpu.append(time.thread_time() - cpu_before)

    def start(self) -> None:
        self.lateness, self.cpu = [], []
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def summary(self) -> str:
        if not self.lateness:
            return "no samples"
        late, cpu = sorted(self.lateness), sorted(self.cpu)
        p99 = min(len(late) - 1, int(len(late) * 0.99))
        return (f"worst {late[-1] * 1000:.0f} ms wall / {cpu[-1] * 1000:.0f} ms CPU, p99 {late[p99] * 1000:.0f} / "
                f"{cpu[p99] * 1000:.0f} ms, median {statistics.median(late) * 1000:.1f} / "
                f"{statistics.median(cpu) * 1000:.1f} ms over {len(late)} wake-ups")


async def produce_changelog(bootstrap: str, keys: int, now_ms: int) -> dict[bytes, int]:
    """Write ``keys`` seen ids (every second one expired at ``now_ms``) as a changelog; return them."""
    await create_topics(bootstrap, [NewTopic(TOPIC, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    expected: dict[bytes, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1024 * 1024,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        batches: dict[int, Any] = {}
        futures = []
        for index in range(keys):
            key = str(uuid.uuid4()).encode()
            expires = now_ms - 1 if index % 2 else now_ms + TTL_MS - index
            expected[key] = expires
            partition = partition_for(key, PARTITIONS)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            value = json.dumps(expires).encode()
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, TOPIC, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return expected


async def probed(probe: LoopProbe, work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """``work()``'s result, its wall seconds and this process's CPU seconds, with the probe running."""
    probe.start()
    await asyncio.sleep(0.05)  # the probe's first samples come from a quiet loop
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = await work()
    finally:
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await probe.stop()
    return result, seconds, cpu


async def restore_table(settings: Settings, table: Table) -> int:
    """The engine's restore (what a worker runs when the partitions are assigned) of every partition."""
    for partition in range(PARTITIONS):
        table.open(partition)
    return await restore_tables(settings, [table], list(range(PARTITIONS)), timeout=settings.restore_timeout_seconds)


class _SweepBatch:
    """What ``SeenIds.sweep`` reads of a batch: the time, the table and the owned partitions."""

    def __init__(self, table: Table, now_ms: int) -> None:
        self.now_ms = now_ms
        self.partitions = list(range(PARTITIONS))
        self._table = table

    def table(self, name: str) -> Table:
        assert name == SEEN_TABLE
        return self._table


def sweep_all(table: Table, now_ms: int, expected_expired: int) -> tuple[list[float], list[float], int]:
    """Call the sweep as an agent does, once per batch, until the expired ids are gone.

    Returns the wall and CPU seconds of every call, and how many ids were forgotten.
    """
    seen = SeenIds(TTL_MS)
    durations: list[float] = []
    cpu: list[float] = []
    forgotten = 0
    batch: Any = _SweepBatch(table, now_ms)
    while forgotten < expected_expired and len(durations) < 100_000:
        started, cpu_started = time.perf_counter(), time.thread_time()
        forgotten += seen.sweep(batch)
        durations.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
        # What finishing the batch does with the deletions: store them (the changelog send is not measured).
        for partition, changes in table.take_pending().items():
            table.commit(partition, changes, None)
    return durations, cpu, forgotten


async def run(bootstrap: str, keys: int, rounds: int, workdir: Path) -> int:
    now_ms = int(time.time() * 1000)
    print(f"producing {keys:,} seen ids to {TOPIC} ({PARTITIONS} partitions) …")
    started = time.perf_counter()
    expected = await produce_changelog(bootstrap, keys, now_ms)
    print(f"  produced in {time.perf_counter() - started:.1f} s")
    # The reference copy of the keys is a million objects that a worker does not have (its state is in
    # RocksDB); out of the collector's reach, its full collections do not count as the restore's stall.
    gc.collect()
    gc.freeze()
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SOMA_DATA_DIR": str(workdir / "data")})
    probe = LoopProbe()
    failures = 0
    for round_index in range(rounds):
        directory = workdir / f"state-{round_index}"
        shutil.rmtree(directory, ignore_errors=True)
        table = Table(SEEN_TABLE, TOPIC, directory)
        _, seconds, cpu = await probed(probe, lambda table=table: restore_table(settings, table))  # type: ignore[misc]
        restored = {key.encode(): value for partition in table.partitions for key, value in table.items(partition)}
        ok = restored == expected
        failures += not ok
        print(f"round {round_index + 1} restore: {len(restored):,} keys in {seconds:.2f} s = "
              f"{len(restored) / seconds:,.0f} keys/s (CPU {cpu:.2f} s = {len(restored) / cpu:,.0f} keys/CPU-s; "
              f"{'all keys back' if ok else 'WRONG: keys differ'}); "
              f"loop stall {probe.summary()}")
        durations, cpu_durations, forgotten = sweep_all(table, now_ms, keys // 2)
        left = {key.encode(): value for partition in table.partitions for key, value in table.items(partition)}
        ok = forgotten == keys // 2 and left == {k: v for k, v in expected.items() if v > now_ms}
        failures += not ok
        print(f"round {round_index + 1} sweep: {forgotten:,} expired ids forgotten in {len(durations)} call(s), "
              f"{sum(durations):.2f} s in all, longest call {max(durations) * 1000:.0f} ms wall / "
              f"{max(cpu_durations) * 1000:.0f} ms CPU "
              f"({'exactly the expired ids' if ok else 'WRONG: kept or dropped the wrong ids'})")
        table.close_all()
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tests.support.stack import start_broker

    workdir = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    broker = start_broker(workdir)
    try:
        return asyncio.run(run(broker.bootstrap_servers, args.keys, args.rounds, workdir))
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
