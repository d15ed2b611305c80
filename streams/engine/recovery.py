"""Recovery: bringing an agent's tables up to the end of their changelogs before it processes a partition.

When partitions are assigned to an agent, :meth:`Recovery.start` (called from the rebalance listener)
opens their stores, **pauses** the partitions on the agent's consumer and returns; a background task
then replays each table's changelog from the offset the local store has applied to the changelog's
end, and only then hands the partitions to the agent (:meth:`AgentRunner.activate`: the agent's
``on_assigned`` hook, ``ready``). Restoring outside the listener matters: aiokafka does not heartbeat
while a rebalance listener runs, so a restore of millions of keys inside it outlived the session
timeout and the group threw the member out; and the agent's other partitions keep being processed.

A restore attempt that fails (the changelog cannot be read, the broker does not answer) or does not
reach the end within ``SOMA_RESTORE_TIMEOUT_SECONDS`` is logged as an error, counted
(``soma_restore_failures_total``) and retried after a backoff (1 s doubling to 30 s), resuming from
what the stores applied so far. Until it succeeds the partition stays paused, is listed by the
worker's ``/readyz`` (503) and counted in ``soma_partitions_restoring``: it is never silently left
unprocessed. A restore is abandoned only when its partitions are taken away (a new assignment, or the
agent restarting with a new consumer).

The records are read with :func:`streams.kafka.read_ranges`, the engine's one reader of "these
partitions from these offsets to their end"; each fetch is applied to RocksDB in one write batch
together with the changelog offset it reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.engine.state import Table
from streams.kafka import consumer_factory, high_watermarks, read_ranges
from streams.settings import Settings
from streams.supervise import retry_delays

if TYPE_CHECKING:
    from streams.engine.runner import AgentRunner

__all__ = [
    "PartitionRestore",
    "Recovery",
    "RestorePlan",
    "plan_restore",
    "readiness",
    "restore_tables",
]

logger = logging.getLogger(__name__)

#: Records applied per fetch (one RocksDB write batch): small enough that a fetch's decoding and write
#: hold the event loop for a few milliseconds, large enough that the per-fetch overhead stays small.
RESTORE_MAX_RECORDS = 2_000


# -- pure pieces ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """What a restore reads: ``[start, end)`` per changelog partition, and stores ahead of their changelog."""

    ranges: dict[TopicPartition, tuple[int, int]]
    ahead: dict[TopicPartition, tuple[int, int]]  # (offset applied, changelog end)


def plan_restore(applied: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> RestorePlan:
    """The ranges to replay, from each store's applied changelog offset (-1: none) and the changelog ends.

    A store whose applied offset is at or past the end while it has applied something is *ahead*: the
    broker lost the changelog's tail (or the topic was recreated). Its local state is kept.
    """
    ranges: dict[TopicPartition, tuple[int, int]] = {}
    ahead: dict[TopicPartition, tuple[int, int]] = {}
    for tp, offset in applied.items():
        end = ends[tp]
        if offset >= end:
            if offset >= 0:
                ahead[tp] = (offset, end)
        elif offset + 1 < end:
            ranges[tp] = (offset + 1, end)
    return RestorePlan(ranges, ahead)


@dataclass
class PartitionRestore:
    """A partition of an agent whose tables are being restored (or waiting to be retried)."""

    partition: int
    since: float = field(default_factory=time.monotonic)
    attempts: int = 0
    error: str | None = None

    def describe(self, agent: str) -> dict[str, Any]:
        state = "retrying" if self.error is not None else "restoring"
        return {"agent": agent, "partition": self.partition, "state": state, "attempts": self.attempts,
                "seconds": round(time.monotonic() - self.since, 1), "error": self.error}


def readiness(runners: Iterable[AgentRunner]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the worker's ``/readyz``: 200 once every agent processes every partition.

    503 while an agent has not started (or is restarting after a crash) and while a partition is being
    restored or waits to retry a failed restore; the body names them.
    """
    starting: list[str] = []
    restoring: list[dict[str, Any]] = []
    agents: dict[str, list[int]] = {}
    for runner in runners:
        agents[runner.name] = list(runner.assigned_partitions)
        if not runner.ready.is_set():
            starting.append(runner.name)
        restoring.extend(runner.recovery.describe())
    ready = not starting and not restoring
    body: dict[str, Any] = {"ready": ready, "partitions": agents}
    if starting:
        body["starting"] = starting
    if restoring:
        body["restoring"] = restoring
    return (200 if ready else 503), body


# -- one restore ---------------------------------------------------------------------------------------


async def restore_tables(
    settings: Settings, tables: Sequence[Table], partitions: Sequence[int], *, timeout: float | None = None,
    consumer: AIOKafkaConsumer | None = None, agent: str = "",
) -> int:
    """Bring every table's stores for ``partitions`` up to the end of its changelog; the records applied.

    The caller opens the stores (``Table.open``); a store closed meanwhile is skipped. One consumer
    (no group) reads every table's changelog partitions together. Raises what the client raises, or
    :class:`streams.kafka.RangeReadError` when the end is not reached within ``timeout`` seconds of
    the call (checked after each fetch, so every attempt applies at least one); what was applied until
    then stays applied (with its changelog offset), so a retry resumes there.
    """
    started = time.monotonic()
    by_topic = {table.changelog_topic: table for table in tables}
    tps = [TopicPartition(table.changelog_topic, p) for table in tables for p in partitions]
    if not tps:
        return 0
    own = consumer is None
    if consumer is None:
        # Large fetches and no CRC check, as for the tools' bulk reads: the broker checked the CRCs
        # when the records were written, and re-checking is a third of a bulk reader's CPU.
        consumer = consumer_factory(settings, group_id=None, auto_offset_reset="earliest",
                                    client_id=f"{settings.app_id}-restore", check_crcs=False,
                                    fetch_max_wait_ms=50, max_partition_fetch_bytes=16 * 1024 * 1024)
        await consumer.start()
    try:
        # Not end_offsets: the embedded broker undercounts it, and a restore that stops short loses the
        # last changelog batch (seen as commands applied twice after a SIGKILL).
        ends = await high_watermarks(consumer, tps)
        # Only stores still open: a partition taken away while the ends were asked is not reopened.
        applied = {tp: by_topic[tp.topic].open(tp.partition).changelog_offset for tp in tps
                   if tp.partition in by_topic[tp.topic].partitions}
        plan = plan_restore(applied, ends)
        for tp, (offset, end) in plan.ahead.items():
            logger.warning(
                "agent %s: table %s[%d] is ahead of its changelog (applied %d, end %d): the broker lost "
                "data; keeping the local state", agent, by_topic[tp.topic].name, tp.partition, offset, end,
            )
            by_topic[tp.topic].open(tp.partition).write({}, end - 1)
        restored = 0
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        async with aclosing(read_ranges(consumer, plan.ranges, max_records=RESTORE_MAX_RECORDS,
                                        timeout=left)) as chunks:
            async for tp, records in chunks:
                changes: dict[bytes, bytes | None] = {}
                for record in records:
                    if record.key is not None:
                        changes[record.key] = record.value
                by_topic[tp.topic].commit(tp.partition, changes, records[-1].offset)
                restored += len(records)
        return restored
    finally:
        if own:
            await consumer.stop()


# -- the background restore of one agent -----------------------------------------------------------------


class Recovery:
    """Restores one agent's tables for the partitions it is assigned, in the background, with retries."""

    def __init__(self, runner: AgentRunner) -> None:
        self.runner = runner
        self.restoring: dict[int, PartitionRestore] = {}
        self._task: asyncio.Task[None] | None = None
        self._generation = 0

    def describe(self) -> list[dict[str, Any]]:
        return [state.describe(self.runner.name) for _, state in sorted(self.restoring.items())]

    def start(self, partitions: list[int]) -> None:
        """Open the partitions' stores and pause them; restore them and hand them to the agent after.

        Called by the rebalance listener (with the agent's lock held), so the pause is in place before
        the consumer fetches a record of these partitions.
        """
        runner = self.runner
        self.abandon()
        self._generation += 1
        consumer = runner.consumer
        if consumer is None:
            return
        for table in runner.tables.values():
            for partition in partitions:
                table.open(partition)
        if runner.tables and partitions:
            consumer.pause(*(TopicPartition(runner.spec.topic.name, p) for p in partitions))
            self.restoring = {p: PartitionRestore(p) for p in partitions}
        runner.sensor.restoring(len(self.restoring))
        self._task = asyncio.create_task(self._restore(self._generation, consumer, partitions),
                                         name=f"restore-{runner.name}")

    def abandon(self) -> None:
        """Stop the restore in flight (its partitions were taken away); what it applied stays applied."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        self.restoring = {}
        self.runner.sensor.restoring(0)

    def _current(self, generation: int, consumer: AIOKafkaConsumer) -> bool:
        return generation == self._generation and self.runner.consumer is consumer

    async def _restore(self, generation: int, consumer: AIOKafkaConsumer, partitions: list[int]) -> None:
        runner = self.runner
        tables = list(runner.tables.values())
        settings = runner.settings
        started = time.monotonic()
        delays = retry_delays()
        restored = 0
        while self.restoring and self._current(generation, consumer):
            for state in self.restoring.values():
                state.attempts += 1
            try:
                restored += await restore_tables(settings, tables, partitions, agent=runner.name,
                                                 timeout=settings.restore_timeout_seconds)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                reason = f"{type(exc).__name__}: {exc}"
                for state in self.restoring.values():
                    state.error = reason
                runner.sensor.restore_failed()
                attempts = max((state.attempts for state in self.restoring.values()), default=0)
                logger.error("agent %s: restoring partitions %s failed (attempt %d), retrying in %.0f s: %s",
                             runner.name, partitions, attempts, delay, reason)
                await asyncio.sleep(delay)
        if not self._current(generation, consumer):
            return
        if self.restoring:
            seconds = time.monotonic() - started
            runner.sensor.restore_finished(seconds, restored)
            if restored:
                logger.info("agent %s: restored %d changelog records of partitions %s in %.1f s", runner.name,
                            restored, partitions, seconds)
        await runner.activate(partitions, lambda: self._hand_over(generation, consumer, partitions))

    def _hand_over(self, generation: int, consumer: AIOKafkaConsumer, partitions: list[int]) -> bool:
        """Resume the restored partitions (under the agent's lock); False when they were taken away."""
        if not self._current(generation, consumer):
            return False
        assigned = consumer.assignment()
        consumer.resume(*(tp for p in partitions if (tp := TopicPartition(self.runner.spec.topic.name, p)) in assigned))
        self.restoring = {}
        self.runner.sensor.restoring(0)
        return True
