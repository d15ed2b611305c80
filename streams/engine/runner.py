"""Runs one agent: its consumer group, its tables, its batches, and its restarts.

Each agent has its own consumer group (``<app_id>.<agent>``), so agents scale and fail independently.
Partition assignment opens the agent's tables for those partitions and replays their changelogs
before any record of them is processed; revocation waits for the batch in flight to be finished.
An agent that raises is restarted with a backoff from its last committed offsets; records it had not
committed are processed again, which is safe because agents deduplicate by event id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from faust_app import Settings
from schemas import SchemaError, decode_event
from streams.catalog import TopicSpec
from streams.engine.outbox import Outbox
from streams.engine.state import Table
from streams.engine.stream import Batch, BatchStream, Record, dead_letter_message, now_ms
from streams.exceptions import EventTooLarge
from streams.kafka import consumer_factory, high_watermarks
from streams.metrics import AgentMetrics

__all__ = ["AgentRunner", "AgentSpec"]

logger = logging.getLogger(__name__)

InvalidHandler = Callable[[Batch[Any], Record[Any], SchemaError], None]
AssignedHook = Callable[["AgentRunner", list[int]], Awaitable[None]]
RevokedHook = Callable[["AgentRunner", list[int]], Awaitable[None]]


@dataclass
class AgentSpec:
    """What the ``@agent`` decorator records about an agent."""

    name: str
    topic: TopicSpec
    fn: Callable[[BatchStream[Any]], Awaitable[None]]
    tables: tuple[str, ...] = ()
    on_invalid: InvalidHandler | None = None
    on_assigned: AssignedHook | None = None
    tick_seconds: float | Callable[[Settings], float] | None = None
    on_revoked: RevokedHook | None = None
    max_records: int | Callable[[Settings], int] | None = None
    fetch_wait_ms: int | Callable[[Settings], int] | None = None

    def changelog_topic(self, app_id: str, table: str) -> str:
        return f"{app_id}.{self.name}.{table}.changelog"


class AgentRunner:
    """The machinery behind one agent's :class:`BatchStream`."""

    def __init__(
        self, spec: AgentSpec, settings: Settings, producer: AIOKafkaProducer,
        live_producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.producer = producer
        self.live_producer = live_producer or producer
        self.outbox = Outbox(producer)
        self.group_id = f"{settings.app_id}.{spec.name}"
        self.tables: dict[str, Table] = {
            table: Table(
                table,
                spec.changelog_topic(settings.app_id, table),
                settings.state_dir / spec.name / table,
            )
            for table in spec.tables
        }
        self.assigned_partitions: list[int] = []
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()
        self.restarts = 0
        self.processed = 0
        self.dead_lettered = 0
        self._lock = asyncio.Lock()
        self._in_batch = False
        self._positions: dict[TopicPartition, int] = {}
        #: Offsets handed to an agent that finishes them after their batch (``Batch.defer``); commits
        #: stop below the lowest of them, so a crash replays every record whose work was not finished.
        self._deferred: dict[TopicPartition, set[int]] = {}
        #: Deferred records reported done since the last batch was finished; released at the next one.
        self._finished: list[tuple[TopicPartition, int]] = []
        self._committed: dict[TopicPartition, int] = {}
        self._next_tick = 0.0
        self._stopping = False
        tick = spec.tick_seconds
        self.tick_seconds: float | None = tick(settings) if callable(tick) else tick
        self.metrics = AgentMetrics(self)
        limit = spec.max_records
        self.max_records: int = (limit(settings) if callable(limit) else limit) or settings.batch_max_records
        wait = spec.fetch_wait_ms
        if callable(wait):
            wait = wait(settings)
        self.fetch_wait_ms: int = settings.batch_wait_ms if wait is None else wait

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the agent until cancelled, restarting it after a crash."""
        backoff = 1.0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._start_consumer()
                await self.spec.fn(BatchStream(self))
                logger.info("agent %s stopped", self.name)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                self.metrics.restarted()
                logger.exception("agent %s crashed (restart %d in %.0f s)", self.name, self.restarts, backoff)
            finally:
                await self._cleanup()
            if time.monotonic() - started > 60:
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        """Ask the agent to stop after the batch in flight is finished and committed."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _start_consumer(self) -> None:
        self.consumer = consumer_factory(self.settings, group_id=self.group_id,
                                         fetch_max_wait_ms=max(1, self.fetch_wait_ms))
        await self.consumer.start()
        self.consumer.subscribe([self.spec.topic.name], listener=_Listener(self))
        self._next_tick = time.monotonic() + (self.tick_seconds or 0)

    async def _cleanup(self) -> None:
        self.ready.clear()
        if self._lock.locked() and self._in_batch:
            self._in_batch = False
            self._lock.release()
        self.outbox.discard()
        for table in self.tables.values():
            table.discard_pending()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception:
                logger.exception("agent %s: error while stopping its consumer", self.name)
        for table in self.tables.values():
            table.close_all()
        self.assigned_partitions = []
        self._positions, self._committed, self._deferred, self._finished = {}, {}, {}, []

    # -- batches -----------------------------------------------------------------------------------

    async def next_batch(self) -> Batch[Any]:
        consumer = self.consumer
        assert consumer is not None
        tick = self.tick_seconds
        while True:
            wait_ms = 1000
            if tick:
                wait_ms = max(0, min(wait_ms, int((self._next_tick - time.monotonic()) * 1000)))
            fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=self.max_records)
            if self._stopping:
                raise StopAsyncIteration  # fetched records are not committed: the next owner reads them
            await self._lock.acquire()
            self._in_batch = True
            batch = self._build_batch(fetched)
            tick_due = bool(tick) and time.monotonic() >= self._next_tick
            if tick_due and tick:
                self._next_tick = time.monotonic() + tick
                batch.tick = True
            if batch.records or batch.failed or tick_due:
                self.metrics.batch_started(batch)
                return batch
            self._in_batch = False
            self._lock.release()

    def _build_batch(self, fetched: dict[TopicPartition, list[Any]]) -> Batch[Any]:
        model = self.spec.topic.model
        records: list[Record[Any]] = []
        batch: Batch[Any] = Batch(self, records, now_ms())
        owned = set(self.assigned_partitions)
        for tp, messages in fetched.items():
            if tp.partition not in owned:
                continue  # revoked while the fetch was in flight; the new owner will process them
            for message in messages:
                record: Record[Any] = Record(
                    message.topic, message.partition, message.offset, message.timestamp,
                    message.key, message.value if message.value is not None else b"",
                    list(message.headers or ()),
                )
                self._positions[tp] = message.offset + 1
                try:
                    if len(record.value) > self.settings.max_event_bytes:
                        raise EventTooLarge(f"event of {len(record.value)} bytes is larger than "
                                            f"SOMA_MAX_EVENT_BYTES ({self.settings.max_event_bytes})")
                    record.event = decode_event(record.value, model)
                except SchemaError as exc:
                    batch.dead_letter(record, exc)
                    if self.spec.on_invalid is not None:
                        try:
                            self.spec.on_invalid(batch, record, exc)
                        except Exception:
                            logger.exception("invalid-input handler of agent %s failed", self.name)
                    continue
                records.append(record)
        self.processed += len(records)
        return batch

    def dead_letter(self, record: Record[Any], error: BaseException, attempts: int) -> None:
        headers, letter = dead_letter_message(record, error, self.name, attempts)
        self.dead_lettered += 1
        self.metrics.dead_lettered(letter.error_class)
        logger.warning(
            "agent %s: %s[%d]@%d to DLQ: %s: %s", self.name, record.topic, record.partition, record.offset,
            letter.error_class, letter.error_message,
        )
        self.outbox.send(
            self.spec.topic.dlq, record.key, record.value, partition=record.partition, headers=headers,
            timestamp_ms=record.timestamp if record.timestamp > 0 else None,
        )

    async def finish_batch(self) -> None:
        """Make the current batch's effects durable, then commit its offsets."""
        if not self._in_batch:
            return
        try:
            finished, self._finished = self._finished, []
            pending_by_table = {name: table.take_pending() for name, table in self.tables.items()}
            for name, pending in pending_by_table.items():
                topic = self.tables[name].changelog_topic
                for partition, changes in pending.items():
                    for key, value in changes.items():
                        self.outbox.send(topic, key, value, partition=partition)
            last_offsets = await self.outbox.flush()
            for name, pending in pending_by_table.items():
                table = self.tables[name]
                for partition, changes in pending.items():
                    table.commit(partition, changes, last_offsets.get((table.changelog_topic, partition)))
            for tp, offset in finished:
                held = self._deferred.get(tp)
                if held is not None:
                    held.discard(offset)
            await self._commit()
            self.metrics.batch_finished()
        finally:
            self._in_batch = False
            self._lock.release()

    async def publish(
        self, topic: str, key: str | bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> asyncio.Future[Any]:
        """Send one message now on the live producer (no linger; partitioned by key like the outbox)."""
        raw_key = key.encode() if isinstance(key, str) else key
        future: asyncio.Future[Any] = await self.live_producer.send(topic, value, key=raw_key, headers=headers or [])
        return future

    def defer(self, record: Record[Any]) -> Callable[[], None]:
        """Hold the commit of ``record``'s offset until the returned callback is called."""
        tp = TopicPartition(record.topic, record.partition)
        self._deferred.setdefault(tp, set()).add(record.offset)

        def done() -> None:
            # Released only by the next finish_batch, after it has flushed what the work wrote before
            # calling this: a flush already in flight may not carry those writes.
            self._finished.append((tp, record.offset))

        return done

    async def lag(self, partition: int) -> int | None:
        """Records of an owned input partition not handed to the agent yet, per the last fetch answer.

        High watermark (read from fetch answers, right on the embedded broker too) minus position;
        None while the partition is not owned or no fetch of it has been answered.
        """
        consumer, tp = self.consumer, TopicPartition(self.spec.topic.name, partition)
        if consumer is None or partition not in self.assigned_partitions:
            return None
        try:
            high = consumer.highwater(tp)
            return None if high is None else max(0, high - await consumer.position(tp))
        except (AssertionError, IllegalStateError):  # revoked meanwhile
            return None

    @property
    def deferred_count(self) -> int:
        """Records handed out with ``defer`` whose work has not finished yet."""
        return sum(len(offsets) for offsets in self._deferred.values())

    async def _commit(self) -> None:
        if not self._positions or self.consumer is None:
            return
        owned = set(self.assigned_partitions)
        offsets: dict[TopicPartition, int] = {}
        for tp, position in self._positions.items():
            if tp.partition not in owned:
                continue
            held = self._deferred.get(tp)
            target = min(position, min(held)) if held else position
            if target > self._committed.get(tp, -1):
                offsets[tp] = target
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us; the new owner re-reads these records and dedupes them.
            logger.warning("agent %s: offset commit failed after a rebalance: %s", self.name, exc)

    # -- rebalancing -------------------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            partitions = {tp.partition for tp in revoked if tp.topic == self.spec.topic.name}
            for table in self.tables.values():
                for partition in partitions:
                    table.close(partition)
            self.assigned_partitions = [p for p in self.assigned_partitions if p not in partitions]
            self._positions = {tp: o for tp, o in self._positions.items() if tp.partition not in partitions}
            self._committed = {tp: o for tp, o in self._committed.items() if tp.partition not in partitions}
            self._deferred = {tp: o for tp, o in self._deferred.items() if tp.partition not in partitions}
            if partitions and self.spec.on_revoked is not None:
                await self.spec.on_revoked(self, sorted(partitions))
            if partitions:
                logger.info("agent %s: partitions %s revoked", self.name, sorted(partitions))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            partitions = sorted(tp.partition for tp in assigned if tp.topic == self.spec.topic.name)
            for table in self.tables.values():
                await self._restore(table, partitions)
            self.assigned_partitions = sorted(set(self.assigned_partitions) | set(partitions))
            if self.spec.on_assigned is not None:
                await self.spec.on_assigned(self, partitions)
            logger.info("agent %s: ready on partitions %s", self.name, self.assigned_partitions)
            self.ready.set()

    async def _restore(self, table: Table, partitions: list[int]) -> None:
        """Bring the table's stores for these partitions up to the end of their changelog."""
        if not partitions:
            return
        for partition in partitions:
            table.open(partition)
        consumer = consumer_factory(self.settings, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(table.changelog_topic, p) for p in partitions]
            consumer.assign(tps)
            # Not end_offsets: the embedded broker undercounts it, and a restore that stops short
            # loses the last changelog batch (seen as commands applied twice after a SIGKILL).
            ends = await high_watermarks(consumer, tps)
            remaining: dict[TopicPartition, int] = {}
            for tp in tps:
                store = table.open(tp.partition)
                applied, end = store.changelog_offset, ends[tp]
                if applied >= end:
                    if applied >= 0:
                        logger.warning(
                            "agent %s: table %s[%d] is ahead of its changelog (applied %d, end %d): the "
                            "broker lost data; keeping the local state", self.name, table.name,
                            tp.partition, applied, end,
                        )
                        store.write({}, end - 1)
                    continue
                if applied + 1 < end:
                    consumer.seek(tp, applied + 1)
                    remaining[tp] = end
            restored = 0
            deadline = time.monotonic() + 300
            while remaining:
                if time.monotonic() > deadline:
                    raise KafkaError(f"restoring table {table.name} did not finish in 300 s")
                fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
                for tp, messages in fetched.items():
                    changes: dict[bytes, bytes | None] = {}
                    last = -1
                    for message in messages:
                        if message.offset >= remaining.get(tp, 0):
                            break
                        if message.key is not None:
                            changes[message.key] = message.value
                        last = message.offset
                    if last >= 0:
                        table.commit(tp.partition, changes, last)
                        restored += len(changes)
                for tp in list(remaining):
                    if await consumer.position(tp) >= remaining[tp]:
                        remaining.pop(tp)
            if restored:
                logger.info("agent %s: restored %d keys of table %s from its changelog", self.name, restored,
                            table.name)
        finally:
            await consumer.stop()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._runner.on_assigned(assigned)
