"""Runs one agent: its consumer group, its tables, its batches, and its restarts.

Each agent has its own consumer group (``<app_id>.<agent>``), so agents scale and fail independently.
Partition assignment opens the agent's tables for those partitions and replays their changelogs
before any record of them is processed (``streams/engine/recovery.py``); revocation waits for the
batch in flight to be finished.
An agent that raises is restarted from its last committed offsets; records it had not committed are
processed again, which is safe because agents deduplicate by event id. Its batches then shrink until
the record that crashed it is alone, and a record that keeps crashing it is quarantined (see ``run``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)

from schemas import SchemaError, decode_event, encode_event
from schemas.exceptions import DecodeError, EncodeError
from streams.catalog import TopicSpec
from streams.engine.context import AgentContext, Resources
from streams.engine.outbox import Outbox
from streams.engine.recovery import Recovery
from streams.engine.sensor import AgentSensor
from streams.engine.state import Table
from streams.engine.stream import Batch, BatchStream, Record, dead_letter_message, now_ms
from streams.exceptions import EventTooLarge, KeyMismatch, OutputTooLarge
from streams.kafka import consumer_factory
from streams.settings import Settings
from streams.supervise import Restart, supervise

__all__ = ["AgentRunner", "AgentSpec"]

logger = logging.getLogger(__name__)

#: Header a re-routed record carries: where it was first read (``topic[partition]@offset``).
REROUTED_FROM = "soma.rerouted.from"
#: Ids for events sent without one (plain JSON producers): derived from where the record sits, so a
#: replay of that record has the same id and is recognised as a duplicate.
_POSITION_IDS = uuid.UUID("5f0c6a8e-2b1d-4c77-9d0e-7a1b3c5d9e21")
#: Failures that are the output's own and will recur however often it is retried.
_DETERMINISTIC_FAILURES: tuple[type[BaseException], ...] = (
    EncodeError, OutputTooLarge, MessageSizeTooLargeError, RecordTooLargeError,
)
#: Failures of the broker or of a dependency: never a record's fault, so never a reason to quarantine it.
_INFRASTRUCTURE_FAILURES: tuple[type[BaseException], ...] = (
    KafkaConnectionError, KafkaTimeoutError, ConnectionError, TimeoutError, OSError,
)

InvalidHandler = Callable[[Batch[Any], Record[Any], SchemaError], None]
AgentFunction = Callable[[BatchStream[Any], Any], Awaitable[None]]


@dataclass
class AgentSpec:
    """What the ``@agent`` decorator records about an agent."""

    name: str
    topic: TopicSpec
    fn: AgentFunction
    tables: tuple[str, ...] = ()
    context: type[AgentContext] = AgentContext
    on_invalid: InvalidHandler | None = None
    tick_seconds: float | Callable[[Settings], float] | None = None
    max_records: int | Callable[[Settings], int] | None = None
    fetch_wait_ms: int | Callable[[Settings], int] | None = None
    #: Back-pressure: at most this many records handed out with ``Batch.defer`` and not finished;
    #: while the bound is reached the consumer's partitions are paused (no fetch, no prefetch).
    max_in_flight: int | Callable[[Settings], int] | None = None

    def changelog_topic(self, app_id: str, table: str) -> str:
        return f"{app_id}.{self.name}.{table}.changelog"


class AgentRunner:
    """The machinery behind one agent's :class:`BatchStream`."""

    def __init__(
        self, spec: AgentSpec, settings: Settings, producer: AIOKafkaProducer,
        live_producer: AIOKafkaProducer | None = None, resources: Resources | None = None,
        sensor: AgentSensor | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.resources = resources if resources is not None else Resources()
        #: The context of the agent's current run (None between runs).
        self.context: AgentContext | None = None
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
        #: Set when deferred work finishes: cuts the fetch wait short so that the next batch, which
        #: commits it (and frees room under ``max_in_flight``), comes at once instead of after a tick.
        self._wake = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self._next_tick = 0.0
        self._stopping = False
        #: Records of the batch handed to the agent and not yet finished: the suspects if it crashes.
        self._batch_records: list[Record[Any]] = []
        #: After a crash of a batch of several records: the last offset of that batch per partition, and
        #: the smaller batch size used until every partition has been processed past it.
        self._suspect_ends: dict[TopicPartition, int] = {}
        self._narrow_records = 0
        #: Crashes counted against single records (topic, partition, offset), and the ones sent to the DLQ
        #: as quarantined that must be skipped when they are read again.
        self._crashes: dict[tuple[str, int, int], int] = {}
        self._quarantined: set[tuple[str, int, int]] = set()
        self.quarantined = 0
        self.rerouted = 0
        #: Partitions paused because ``max_in_flight`` records are in flight (see ``_room``).
        self._room_paused: set[TopicPartition] = set()
        tick = spec.tick_seconds
        self.tick_seconds: float | None = tick(settings) if callable(tick) else tick
        #: Told about batches, dead letters, restarts and restores; the no-op base unless one is given.
        self.sensor = sensor if sensor is not None else AgentSensor(spec.name, spec.topic)
        self.recovery = Recovery(self)
        limit = spec.max_records
        self.max_records: int = (limit(settings) if callable(limit) else limit) or settings.batch_max_records
        wait = spec.fetch_wait_ms
        if callable(wait):
            wait = wait(settings)
        self.fetch_wait_ms: int = settings.batch_wait_ms if wait is None else wait
        bound = spec.max_in_flight
        self.max_in_flight: int | None = bound(settings) if callable(bound) else bound
        self._pause_logged = -30.0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the agent until cancelled, restarting it after a crash (:func:`streams.supervise.supervise`).

        A crash of a batch with records narrows the suspects: the agent is restarted on the same
        consumer, rewound to the last committed offsets, with half the batch size, until the record that
        crashes is alone in its batch; after ``SOMA_QUARANTINE_AFTER_CRASHES`` crashes at its offset (at
        once for an output that can never be produced) it goes to the DLQ and the agent moves past it.
        Failures of the broker or of a dependency restart the consumer with a backoff instead.
        """
        try:
            await supervise(f"agent {self.name}", self._start_and_run, log=logger, on_failure=self._on_crash,
                            on_restart=self._count_restart, stopping=lambda: self._stopping)
        finally:
            await self._cleanup()

    async def _start_and_run(self) -> None:
        if self.consumer is None:
            await self._start_consumer()
        await self._run_once()
        logger.info("agent %s stopped", self.name)

    def _count_restart(self) -> None:
        self.restarts += 1
        self.sensor.restarted()

    async def _on_crash(self, exc: Exception, backoff: float) -> Restart:
        delay, kept = await self._recover_from_crash(exc, backoff)
        if kept:
            return Restart(delay)
        await self._cleanup()
        return Restart(delay, ", new consumer")

    async def _run_once(self) -> None:
        """One run of the agent function, with a context of its own (see streams/engine/context.py)."""
        context = self.spec.context.create(self.settings, self.resources)
        self.context = context
        try:
            await self.spec.fn(BatchStream(self), context)
        finally:
            self.context = None
            try:
                await context.close()
            except Exception:
                logger.exception("agent %s: closing its context failed", self.name)

    async def _recover_from_crash(self, exc: Exception, backoff: float) -> tuple[float, bool]:
        """Decide what the crash says about the batch in flight; return (delay, consumer kept)."""
        suspects, self._batch_records = self._batch_records, []
        self._drop_batch_in_flight()
        infrastructure = isinstance(exc, _INFRASTRUCTURE_FAILURES) or bool(getattr(exc, "retriable", False))
        delay = backoff
        if suspects and not infrastructure:
            if len(suspects) == 1:
                record = suspects[0]
                position = (record.topic, record.partition, record.offset)
                crashes = self._crashes[position] = self._crashes.get(position, 0) + 1
                if crashes >= self.settings.quarantine_after_crashes or isinstance(exc, _DETERMINISTIC_FAILURES):
                    await self._quarantine(record, exc, crashes)
                delay = min(0.25 * crashes, backoff)
            else:
                self._narrow(suspects)
                delay = 0.05
        if infrastructure or self.consumer is None or isinstance(exc, KafkaError):
            return delay, False
        try:
            await self._rewind()
        except Exception:
            logger.exception("agent %s: could not rewind its consumer; starting a new one", self.name)
            return delay, False
        return delay, True

    def _narrow(self, suspects: list[Record[Any]]) -> None:
        for record in suspects:
            tp = TopicPartition(record.topic, record.partition)
            self._suspect_ends[tp] = max(self._suspect_ends.get(tp, -1), record.offset)
        self._narrow_records = max(1, len(suspects) // 2)
        logger.warning("agent %s: a batch of %d records crashed; retrying it %d records at a time", self.name,
                       len(suspects), self._narrow_records)

    async def _quarantine(self, record: Record[Any], error: Exception, crashes: int) -> None:
        """Send a record that keeps crashing the agent to the DLQ, and skip it from now on."""
        message = (f"quarantined after {crashes} crash{'es' if crashes > 1 else ''} of agent {self.name} at this "
                   f"offset: {type(error).__name__}: {error}")
        headers, letter = dead_letter_message(record, error, self.name, crashes, message=message)
        outbox = Outbox(self.producer)
        outbox.send(self.spec.topic.dlq, record.key, record.value, partition=record.partition, headers=headers,
                    timestamp_ms=record.timestamp if record.timestamp > 0 else None)
        try:
            await outbox.flush()
        except Exception:
            logger.exception("agent %s: could not quarantine %s[%d]@%d (will try again at its next crash)",
                             self.name, record.topic, record.partition, record.offset)
            return
        self._quarantined.add((record.topic, record.partition, record.offset))
        self._crashes.pop((record.topic, record.partition, record.offset), None)
        self.quarantined += 1
        self.dead_lettered += 1
        self.sensor.dead_lettered(letter.error_class)
        logger.error("agent %s: %s[%d]@%d quarantined to the DLQ: %s", self.name, record.topic, record.partition,
                     record.offset, message)

    async def _rewind(self) -> None:
        """Seek every owned partition back to its committed offset: what was not committed is read again."""
        consumer = self.consumer
        assert consumer is not None
        self._deferred, self._finished, self._positions = {}, [], {}
        for tp in consumer.assignment():
            committed = self._committed.get(tp)
            if committed is None:
                committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

    async def stop(self) -> None:
        """Ask the agent to stop after the batch in flight is finished and committed."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def _start_consumer(self) -> None:
        self.consumer = consumer_factory(self.settings, group_id=self.group_id,
                                         fetch_max_wait_ms=max(1, self.fetch_wait_ms),
                                         group_instance_id=self.settings.group_instance_id(self.name))
        await self.consumer.start()
        self.consumer.subscribe([self.spec.topic.name], listener=_Listener(self))
        self._next_tick = time.monotonic() + (self.tick_seconds or 0)

    def _drop_batch_in_flight(self) -> None:
        """Forget what the batch in flight produced (outputs, table writes) and release its lock."""
        if self._lock.locked() and self._in_batch:
            self._in_batch = False
            self._lock.release()
        self.outbox.discard()
        for table in self.tables.values():
            table.discard_pending()

    async def _cleanup(self) -> None:
        self.ready.clear()
        self.recovery.abandon()
        self._drop_batch_in_flight()
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
        self._room_paused = set()

    # -- batches -----------------------------------------------------------------------------------

    async def next_batch(self) -> Batch[Any]:
        consumer = self.consumer
        assert consumer is not None
        tick = self.tick_seconds
        while True:
            wait_ms = 1000
            if tick:
                wait_ms = max(0, min(wait_ms, int((self._next_tick - time.monotonic()) * 1000)))
            limit = self._room(consumer) if self.max_in_flight else self.max_records
            if self._suspect_ends:
                limit = min(limit, self._narrow_records)
            fetched = await self._fetch(consumer, wait_ms, limit)
            if self._stopping:
                raise StopAsyncIteration  # fetched records are not committed: the next owner reads them
            await self._lock.acquire()
            self._in_batch = True
            batch = self._build_batch(fetched)
            tick_due = bool(tick) and time.monotonic() >= self._next_tick
            if tick_due and tick:
                self._next_tick = time.monotonic() + tick
                batch.tick = True
            if batch.records or batch.failed or len(self.outbox) or tick_due or self._finished:
                self.sensor.batch_started(batch)
                return batch
            self._in_batch = False
            self._lock.release()

    async def _fetch(self, consumer: AIOKafkaConsumer, wait_ms: int,
                     limit: int) -> dict[TopicPartition, list[Any]]:
        """``getmany``, returning early when deferred work finishes while it waits for records."""
        if self._finished:
            return await consumer.getmany(timeout_ms=0, max_records=limit)
        if not self.deferred_count:
            return await consumer.getmany(timeout_ms=wait_ms, max_records=limit)
        self._wake.clear()
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=wait_ms, max_records=limit))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({fetch, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not fetch.done():
                fetch.cancel()  # safe: getmany takes records from its buffer only when it returns them
        try:
            return await fetch
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled ourselves, not only the fetch
            return {}

    def _room(self, consumer: AIOKafkaConsumer) -> int:
        """How many records to fetch under ``max_in_flight``; pauses the owned partitions while it is 0.

        Only partitions paused here are resumed here: the recovery pauses partitions whose tables are
        still being restored, and resuming one of those would skip its records.
        """
        assert self.max_in_flight is not None
        room = self.max_in_flight - self.deferred_count
        if room <= 0:
            if not self._room_paused and time.monotonic() >= self._pause_logged + 30:  # once per 30 s
                self._pause_logged = time.monotonic()
                logger.info("agent %s: %d records in flight (the bound); fetching paused", self.name,
                            self.deferred_count)
            paused = consumer.paused()
            owned = set(self.assigned_partitions)
            pause = [tp for tp in consumer.assignment() if tp.partition in owned and tp not in paused]
            if pause:
                consumer.pause(*pause)  # a paused partition drops its prefetched records
                self._room_paused.update(pause)
        elif self._room_paused:
            assigned = consumer.assignment()
            consumer.resume(*(tp for tp in self._room_paused if tp in assigned))
            self._room_paused.clear()
        return max(1, min(self.max_records, room))

    def _build_batch(self, fetched: dict[TopicPartition, list[Any]]) -> Batch[Any]:
        model = self.spec.topic.model
        records: list[Record[Any]] = []
        batch: Batch[Any] = Batch(self, records, now_ms())
        owned = set(self.assigned_partitions)
        read: list[Record[Any]] = []
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
                if self._quarantined and (record.topic, record.partition, record.offset) in self._quarantined:
                    continue  # already in the DLQ: it crashed the agent every time it was handled
                read.append(record)
                try:
                    if len(record.value) > self.settings.max_event_bytes:
                        raise EventTooLarge(f"event of {len(record.value)} bytes is larger than "
                                            f"SOMA_MAX_EVENT_BYTES ({self.settings.max_event_bytes})")
                    record.event = decode_event(record.value, model)
                except SchemaError as exc:
                    self._refuse(batch, record, exc)
                    continue
                except Exception as exc:  # a decoder bug must not stop the stream: the record is unreadable
                    self._refuse(batch, record, DecodeError(f"{type(exc).__name__} while decoding: {exc}"))
                    continue
                if "event_id" not in record.event.model_fields_set:
                    position = f"{tp.topic}/{tp.partition}/{message.offset}"
                    record.event.event_id = str(uuid.uuid5(_POSITION_IDS, position))
                if not self._keyed_right(batch, record):
                    continue
                records.append(record)
        self._batch_records = read
        self.processed += len(records)
        return batch

    def _refuse(self, batch: Batch[Any], record: Record[Any], error: SchemaError) -> None:
        batch.dead_letter(record, error)
        if self.spec.on_invalid is not None:
            try:
                self.spec.on_invalid(batch, record, error)
            except Exception:
                logger.exception("invalid-input handler of agent %s failed", self.name)

    def _keyed_right(self, batch: Batch[Any], record: Record[Any]) -> bool:
        """Whether the record is keyed by its topic's key field; if not, send it where that key belongs.

        Per-key guarantees (one lock holder per tenant, one rollup per tenant) hold only when every event
        of a key is on that key's partition. A record with a null or wrong key is re-produced once with
        the right key (same event id, so it is processed once there) and skipped here; one that is still
        wrongly keyed after that is dead-lettered as :class:`KeyMismatch`.
        """
        value = getattr(record.event, self.spec.topic.key, None)
        if not isinstance(value, str):
            return True
        expected = value.encode()
        if record.key == expected:
            return True
        origin = f"{record.topic}[{record.partition}]@{record.offset}"
        if any(name == REROUTED_FROM for name, _ in record.headers):
            batch.dead_letter(record, KeyMismatch(
                f"key {record.key!r} is not the {self.spec.topic.key} {value!r} even after re-routing"))
            return False
        try:
            encoded = encode_event(record.event)
        except Exception as exc:
            batch.dead_letter(record, exc)
            return False
        self.outbox.send(record.topic, expected, encoded, headers=[*record.headers, (REROUTED_FROM, origin.encode())],
                         timestamp_ms=record.timestamp if record.timestamp > 0 else None)
        self.rerouted += 1
        logger.info("agent %s: %s keyed %r re-routed to its %s %r", self.name, origin, record.key,
                    self.spec.topic.key, value)
        return False

    def dead_letter(self, record: Record[Any], error: BaseException, attempts: int) -> None:
        headers, letter = dead_letter_message(record, error, self.name, attempts)
        self.dead_lettered += 1
        self.sensor.dead_lettered(letter.error_class)
        logger.warning(
            "agent %s: %s[%d]@%d to DLQ: %s: %s", self.name, record.topic, record.partition, record.offset,
            letter.error_class, letter.error_message,
        )
        self.outbox.send(
            self.spec.topic.dlq, record.key, record.value, partition=record.partition, headers=headers,
            timestamp_ms=record.timestamp if record.timestamp > 0 else None,
        )

    async def finish_batch(self) -> None:
        """Make the current batch's effects durable, then commit its offsets.

        Outputs (results, DLQ entries, re-routed records) are acknowledged before the table changes are
        sent: a crash or a produce error in between replays the batch, which then answers again (the
        changelog does not yet say the events were seen). The other order could lose an answer.
        """
        if not self._in_batch:
            return
        try:
            finished, self._finished = self._finished, []
            pending_by_table = {name: table.take_pending() for name, table in self.tables.items()}
            await self.outbox.flush()
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
            self._batch_records = []
            self._passed_suspects()
            self.sensor.batch_finished()
        finally:
            self._in_batch = False
            self._lock.release()

    def _passed_suspects(self) -> None:
        """Back to full batches once every partition of a crashed batch has been processed past it."""
        if not self._suspect_ends:
            return
        for tp, last in list(self._suspect_ends.items()):
            if self._positions.get(tp, -1) > last or tp.partition not in self.assigned_partitions:
                del self._suspect_ends[tp]
        if not self._suspect_ends:
            self._narrow_records = 0
            logger.info("agent %s: past the records of the crashed batch; full batches again", self.name)

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
            self._wake.set()

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
            if self._quarantined:
                self._quarantined = {
                    q for q in self._quarantined
                    if q[2] >= self._committed.get(TopicPartition(q[0], q[1]), -1)
                }
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
            if partitions and self.context is not None:
                await self.context.revoked(sorted(partitions))
            if partitions:
                logger.info("agent %s: partitions %s revoked", self.name, sorted(partitions))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            partitions = sorted(tp.partition for tp in assigned if tp.topic == self.spec.topic.name)
            # Paused until their tables are restored, in the background: see streams/engine/recovery.py.
            self.recovery.start(partitions)

    async def activate(self, partitions: list[int], still_assigned: Callable[[], bool]) -> None:
        """Start processing partitions whose tables the recovery has restored (unless taken away since)."""
        async with self._lock:
            if not still_assigned():
                return
            self.assigned_partitions = sorted(set(self.assigned_partitions) | set(partitions))
            if self.context is not None:
                try:
                    await self.context.assigned(partitions)
                except Exception:
                    logger.exception("agent %s: its context's assigned hook failed for partitions %s", self.name,
                                     partitions)
            logger.info("agent %s: ready on partitions %s", self.name, self.assigned_partitions)
            self.ready.set()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: AgentRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._runner.on_assigned(assigned)
