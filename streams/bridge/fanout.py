"""One reader per bridge process, many clients: the fan-out of result topics, and exact resume.

**Reading.** A single :class:`FanOut` per process reads every partition of the result topics with an
``AIOKafkaConsumer`` that has no group (the bridge is stateless: any number of bridges read the same
topics independently). Each record is decoded once and handed to the subscribers indexed under
``(topic, tenant, key)`` and ``(topic, tenant, None)`` — two dictionary lookups per record, whatever the
number of clients. The tenant comes from the decoded event, never from the key.

**Buffers.** Each subscriber has a bounded queue. A client whose queue is full is cut off: its queue is
dropped at once (memory stays flat) and it gets a final ``cut`` event saying why; its last event id is
still valid, so it can reconnect and resume.

**Cursors.** A stream's position is a *vector*: for every partition of the topic, the offset of the next
record the client has not been given. The SSE ``id:`` is that vector, ``<topic>@<p>:<next>,<p>:<next>…``
(a stream filtered by tenant may span several partitions; one offset alone could not resume it). A
connect sends an ``id:``-only frame first, so even a client that has received no event yet resumes from
where it connected.

**Handover.** :meth:`FanOut.subscribe` runs without awaiting anything, so within one step of the event
loop it (1) snapshots ``live`` = the reader's next position per partition, (2) registers the subscriber —
every record the reader hands out from now on has offset ≥ ``live[p]`` and goes to its queue — and (3)
works out the backlog ``[cursor[p], live[p])``: from the in-memory replay ring when the ring covers it,
else as a range to read from Kafka with a per-client catch-up consumer (:func:`read_backlog`). The
writer sends the backlog first, then the queue, and drops any record below the client's cursor — so no
record is missed (the backlog ends exactly where live delivery begins) and none is sent twice (the
cursor only moves forward). A client whose cursor is ahead of this bridge's reader (a bridge that
restarted, or a lagging peer behind the load balancer) is covered by the same rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import decode_event, to_json
from streams.bridge.exceptions import BadCursor, CatchUpFailed
from streams.catalog import TopicSpec, all_topics, ensure_topics
from streams.kafka import RangeReadError, admin_factory, consumer_factory, read_ranges
from streams.settings import Settings
from streams.skips import SkippedRecords
from streams.supervise import Restart, supervise

__all__ = ["CUT", "Cursor", "Delivery", "FanOut", "Subscriber", "decode_record", "read_backlog"]

logger = logging.getLogger(__name__)

#: Skips of readers without metrics (tests, tools); a FanOut has its own, counted in its metrics.
_default_skips = SkippedRecords(logger, "bridge")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded record, shared by every client it goes to."""

    partition: int
    offset: int
    tenant: str
    key: str | None
    data: bytes
    #: The time the reader handed it out (monotonic), for the delivery-latency metric.
    read_at: float = 0.0


class _Cut:
    """Queue sentinel: the client fell behind and is cut off."""


CUT: Final = _Cut()


@dataclass
class Cursor:
    """A stream position: the next offset to deliver, per partition of one topic."""

    topic: str
    next: dict[int, int]

    def encode(self) -> str:
        return self.topic + "@" + ",".join(f"{p}:{o}" for p, o in sorted(self.next.items()))

    @classmethod
    def decode(cls, text: str, topic: str) -> Cursor:
        name, sep, body = text.strip().rpartition("@")
        if not sep or name != topic:
            raise BadCursor(f"event id {text!r} is not a position of {topic}")
        positions: dict[int, int] = {}
        try:
            for part in body.split(","):
                partition, offset = part.split(":")
                positions[int(partition)] = int(offset)
        except ValueError:
            raise BadCursor(f"event id {text!r} is not '<topic>@<partition>:<offset>,…'") from None
        if any(p < 0 or o < 0 for p, o in positions.items()):
            raise BadCursor(f"event id {text!r} has a negative partition or offset")
        return cls(topic, positions)


@dataclass(eq=False)
class Subscriber:
    """One connected client: what it follows, its queue and its position."""

    topic: str
    tenant: str
    key: str | None
    queue_size: int
    cursor: Cursor = field(init=False)
    queue: asyncio.Queue[Delivery | _Cut] = field(init=False)
    cut_reason: str | None = None
    connected_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # One slot more than the buffer, kept for the CUT sentinel.
        self.queue = asyncio.Queue(self.queue_size + 1)

    @property
    def index_key(self) -> tuple[str, str, str | None]:
        return (self.topic, self.tenant, self.key)

    def accepts(self, delivery: Delivery) -> bool:
        """Whether this record is new to the client; moves the cursor past it when it is."""
        if delivery.offset < self.cursor.next.get(delivery.partition, 0):
            return False
        self.cursor.next[delivery.partition] = delivery.offset + 1
        return True


@dataclass
class Backlog:
    """What a subscriber missed before live delivery starts: records from memory, ranges from Kafka."""

    from_memory: list[Delivery]
    from_kafka: dict[int, tuple[int, int]]


def decode_record(spec: TopicSpec, partition: int, offset: int, key: bytes | None, value: bytes | None,
                  skips: SkippedRecords | None = None) -> Delivery | None:
    """A record as a Delivery, or None when it is not a valid event of the topic (a counted skip).

    Any exception of the decoder or validator counts (not only SchemaError: a date out of range raises
    OverflowError, deep nesting RecursionError, absurd sizes MemoryError): one bad record on a result
    topic must not stop the stream of every client.
    """
    try:
        event = decode_event(value or b"", spec.model)
        return Delivery(partition, offset, event.tenant,
                        key.decode("utf-8", "replace") if key is not None else None, to_json(event), time.monotonic())
    except Exception as exc:
        (skips or _default_skips).skip(spec.name, partition, offset, exc)
        return None


class FanOut:
    """Reads the result topics once and hands each record to the clients that follow it."""

    def __init__(self, settings: Settings, specs: list[TopicSpec], metrics: Any = None) -> None:
        self.settings = settings
        self.specs = {spec.name: spec for spec in specs}
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        #: Next offset the reader will hand out, per (topic, partition).
        self.live: dict[str, dict[int, int]] = {}
        #: Recent deliveries per (topic, partition), and the lowest offset from which the ring is complete.
        self.ring: dict[tuple[str, int], deque[Delivery]] = {}
        self.ring_from: dict[tuple[str, int], int] = {}
        self.index: dict[tuple[str, str, str | None], set[Subscriber]] = {}
        self.subscribers = 0
        self.catchups = asyncio.Semaphore(settings.bridge_catchup_concurrency)
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        self.last_fetch = 0.0
        self._slice = max(1, min(256, settings.bridge_client_buffer // 2))
        counter = (lambda topic: metrics.records_skipped.labels(topic).inc()) if metrics is not None else None
        self.skips = SkippedRecords(logger, "bridge", counter=counter)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create missing topics, assign every partition and start at the end of each."""
        admin = admin_factory(self.settings)
        await admin.start()
        try:
            wanted = [t for t in all_topics(self.settings.partitions, self.settings.replication_factor)
                      if t.name in self.specs]
            await ensure_topics(admin, wanted)
        finally:
            await admin.close()
        consumer = consumer_factory(self.settings, group_id=None, auto_offset_reset="latest",
                                    client_id=f"{self.settings.app_id}-bridge", fetch_max_wait_ms=20,
                                    max_poll_records=5000)
        await consumer.start()
        self.consumer = consumer
        tps: list[TopicPartition] = []
        for name in self.specs:
            partitions = await self._partitions(name)
            tps += [TopicPartition(name, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            # Whatever the broker calls "the end" (the embedded broker's answer can lie inside the last
            # record batch) — what matters is that live positions and deliveries agree from here on.
            position = await consumer.position(tp)
            self.live.setdefault(tp.topic, {})[tp.partition] = position
            self.ring[(tp.topic, tp.partition)] = deque(maxlen=self.settings.bridge_replay_records or 1)
            self.ring_from[(tp.topic, tp.partition)] = position
        self.healthy = True
        self._task = asyncio.create_task(self._run(), name="bridge-fanout")
        logger.info("fan-out reading %d partitions of %s", len(tps), ", ".join(self.specs))

    async def _partitions(self, topic: str) -> list[int]:
        assert self.consumer is not None
        deadline = time.monotonic() + 30
        while True:
            await self.consumer.topics()
            partitions = self.consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.consumer is not None:
            await self.consumer.stop()

    async def ready(self, timeout: float = 2.0) -> bool:
        """The reader runs and the broker answers a metadata request."""
        if self.consumer is None or not self.healthy or self._task is None or self._task.done():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.consumer.topics()
        except Exception:
            return False
        return True

    # -- the reader -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        # A fetch that fails (the broker went away) is retried every second: a bridge serves live
        # events, and a growing backoff would delay them long after the broker is back.
        await supervise("fan-out reader", self._read, log=logger, on_failure=self._read_failed,
                        first_delay=1.0, max_delay=1.0)

    async def _read_failed(self, exc: Exception, backoff: float) -> Restart:
        self.healthy = False
        return Restart(backoff)

    async def _read(self) -> None:
        """Hand out records from the live positions on; a restart resumes exactly where the last run stopped."""
        consumer = self.consumer
        assert consumer is not None
        for topic, positions in self.live.items():
            for partition, position in positions.items():
                # A run that failed between two slices of a fetch leaves the consumer past records not
                # handed out yet; ``live`` is where handing out stopped.
                consumer.seek(TopicPartition(topic, partition), position)
        while True:
            fetched = await consumer.getmany(timeout_ms=500)
            self.healthy = True
            self.last_fetch = time.monotonic()
            for tp, records in fetched.items():
                spec = self.specs[tp.topic]
                # In slices, letting the writers run in between: a burst larger than a client's buffer
                # is not mistaken for a client that fell behind. Live positions move with each record,
                # so subscribe() sees a consistent state at every slice boundary.
                for start in range(0, len(records), self._slice):
                    self._dispatch(spec, tp.partition, records[start:start + self._slice])
                    await asyncio.sleep(0)

    def _dispatch(self, spec: TopicSpec, partition: int, records: list[Any]) -> None:
        """Hand out one partition's records. Runs without awaiting: subscribe() sees a consistent state."""
        topic = spec.name
        live = self.live[topic]
        ring = self.ring[(topic, partition)]
        keep = self.settings.bridge_replay_records > 0
        index = self.index
        delivered = 0
        for record in records:
            if record.offset < live.get(partition, 0):
                continue
            live[partition] = record.offset + 1
            delivery = decode_record(spec, partition, record.offset, record.key, record.value, self.skips)
            if delivery is None:
                continue
            if keep:
                if len(ring) == ring.maxlen:
                    self.ring_from[(topic, partition)] = ring[0].offset + 1
                ring.append(delivery)
            else:
                self.ring_from[(topic, partition)] = record.offset + 1
            for bucket_key in ((topic, delivery.tenant, delivery.key), (topic, delivery.tenant, None)):
                bucket = index.get(bucket_key)
                if bucket:
                    for subscriber in tuple(bucket):
                        self._offer(subscriber, delivery)
                        delivered += 1
        if self.metrics is not None:
            self.metrics.records_read.labels(topic).inc(len(records))
            self.metrics.deliveries_queued.inc(delivered)

    def _offer(self, subscriber: Subscriber, delivery: Delivery) -> None:
        try:
            subscriber.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self.cut(subscriber, f"client fell behind: {subscriber.queue_size} events waiting to be sent")

    # -- subscribers ----------------------------------------------------------------------------------

    def cut(self, subscriber: Subscriber, reason: str) -> None:
        """Cut a client off: drop its queue now, leave only the CUT sentinel for its writer."""
        if subscriber.cut_reason is not None:
            return
        subscriber.cut_reason = reason
        self.unsubscribe(subscriber)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(CUT)
        if self.metrics is not None:
            self.metrics.clients_cut.inc()
        logger.info("cut off a client of %s (tenant %s): %s", subscriber.topic, subscriber.tenant, reason)

    def subscribe(self, subscriber: Subscriber, cursor: Cursor | None, start: str = "latest") -> Backlog:
        """Register a client and say what it missed (see the module docstring). Must not await."""
        topic = subscriber.topic
        live = dict(self.live[topic])
        if cursor is None:
            cursor = Cursor(topic, dict(live) if start == "latest" else {p: 0 for p in live})
        for partition in list(cursor.next):
            if partition not in live:
                raise BadCursor(f"{topic} has no partition {partition}")
        for partition, position in live.items():
            cursor.next.setdefault(partition, position)
        subscriber.cursor = cursor
        self.index.setdefault(subscriber.index_key, set()).add(subscriber)
        self.subscribers += 1
        memory: list[Delivery] = []
        kafka: dict[int, tuple[int, int]] = {}
        for partition, position in live.items():
            begin = cursor.next[partition]
            if begin >= position:
                continue
            if begin >= self.ring_from[(topic, partition)]:
                memory.extend(d for d in self.ring[(topic, partition)]
                              if d.offset >= begin and self._matches(subscriber, d))
            else:
                kafka[partition] = (begin, position)
        return Backlog(memory, kafka)

    @staticmethod
    def _matches(subscriber: Subscriber, delivery: Delivery) -> bool:
        return delivery.tenant == subscriber.tenant and (subscriber.key is None or delivery.key == subscriber.key)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        bucket = self.index.get(subscriber.index_key)
        if bucket is None or subscriber not in bucket:
            return
        bucket.discard(subscriber)
        if not bucket:
            del self.index[subscriber.index_key]
        self.subscribers -= 1

    async def read_backlog(self, subscriber: Subscriber, ranges: dict[int, tuple[int, int]],
                           ) -> AsyncIterator[Delivery]:
        """The subscriber's records in ``[begin, end)`` of each partition, read back from Kafka."""
        async with self.catchups:
            async for delivery in read_backlog(self.settings, self.specs[subscriber.topic], ranges,
                                               lambda d: self._matches(subscriber, d), self.skips):
                yield delivery


async def read_backlog(settings: Settings, spec: TopicSpec, ranges: dict[int, tuple[int, int]],
                       wanted: Any, skips: SkippedRecords | None = None) -> AsyncIterator[Delivery]:
    """Read ``[begin, end)`` of each partition with a short-lived consumer of its own (no group).

    Read with :func:`streams.kafka.read_ranges`: done when the consumer's position reaches ``end`` on
    every partition (the broker's end offsets are not asked: the embedded broker's are unreliable);
    ``end`` is a position the live reader has reached, so the records below it exist. Records are
    fetched as the client's writer takes them, so a slow client holds one fetch, not its whole backlog.
    """
    timeout = settings.bridge_catchup_timeout_seconds
    consumer = consumer_factory(settings, group_id=None, auto_offset_reset="earliest",
                                client_id=f"{settings.app_id}-bridge-catchup", fetch_max_wait_ms=50)
    deadline = time.monotonic() + timeout
    try:
        await consumer.start()
        tps = {TopicPartition(spec.name, p): bounds for p, bounds in ranges.items()}
        async with aclosing(read_ranges(consumer, tps, timeout=max(0.0, deadline - time.monotonic()))) as chunks:
            async for tp, records in chunks:
                for record in records:
                    delivery = decode_record(spec, tp.partition, record.offset, record.key, record.value, skips)
                    if delivery is not None and wanted(delivery):
                        yield delivery
    except RangeReadError as exc:
        remaining = {tp.partition: ranges[tp.partition] for tp in exc.remaining}
        raise CatchUpFailed(f"could not read back {spec.name} {remaining} within {timeout} s") from None
    except Exception as exc:
        raise CatchUpFailed(f"could not read back {spec.name}: {exc}") from exc
    finally:
        await consumer.stop()
