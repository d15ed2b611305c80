"""Send many records fast: one record batch per topic-partition, several in flight, optional rate limit.

Awaiting each produce is what makes naive pipes slow. :class:`BatchSender` only appends to aiokafka
batch builders (``add`` is a plain call); full batches are handed to the producer by
:meth:`BatchSender.ship`, which keeps up to ``max_in_flight`` of them unacknowledged, and
:meth:`BatchSender.flush` waits for the rest. Each record may carry a token; once the broker has
acknowledged a batch, the sender knows the offset of every record in it (base offset + index),
which is what the re-drive record file stores.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from streams.tools.exceptions import ToolError

__all__ = ["BatchSender", "RateLimiter"]

Headers = Sequence[tuple[str, bytes]]
Delivered = Callable[[Any, str, int, int], None]
_KEY_CACHE_LIMIT = 100_000


@dataclass
class _Open:
    builder: Any
    count: int = 0
    tokens: list[Any] = field(default_factory=list)


class BatchSender:
    """Batches records per topic-partition and ships them without awaiting each one."""

    def __init__(self, producer: AIOKafkaProducer, *, max_in_flight: int = 64,
                 on_delivered: Delivered | None = None) -> None:
        self.producer = producer
        self.max_in_flight = max_in_flight
        self.on_delivered = on_delivered
        self.delivered: dict[tuple[str, int], int] = {}
        self._open: dict[tuple[str, int], _Open] = {}
        self._ready: list[tuple[str, int, _Open]] = []
        self._in_flight: deque[tuple[asyncio.Future[Any], str, int, int, list[Any]]] = deque()
        self._partitions: dict[str, list[int]] = {}
        self._partitioner = DefaultPartitioner()
        self._key_partition: dict[tuple[str, bytes], int] = {}

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())

    async def partitions(self, topic: str) -> list[int]:
        found = self._partitions.get(topic)
        if found is None:
            found = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return found

    def partition_for(self, topic: str, key: bytes | None, fallback: int) -> int:
        """The partition a Kafka producer would pick for ``key`` (murmur2, as the Java client); keyless
        records keep ``fallback`` (their source partition) when the topic has it."""
        partitions = self._partitions[topic]
        if key is None:
            return fallback if fallback < len(partitions) else fallback % len(partitions)
        cached = self._key_partition.get((topic, key))
        if cached is None:
            cached = int(self._partitioner(key, partitions, partitions))
            if len(self._key_partition) < _KEY_CACHE_LIMIT:
                self._key_partition[(topic, key)] = cached
        return cached

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers,
            timestamp_ms: int | None = None, token: Any = None) -> None:
        """Append one record; a batch that is full is set aside for the next :meth:`ship`.

        The hot path of a replay: a dict lookup and the C batch builder's append, nothing awaited.
        """
        slot = (topic, partition)
        current = self._open.get(slot)
        if current is None:
            current = self._open[slot] = _Open(self.producer.create_batch())
        if current.builder.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            self._ready.append((topic, partition, current))
            current = self._open[slot] = _Open(self.producer.create_batch())
            if current.builder.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                raise ToolError(f"a record of {len(value or b'')} bytes for {topic} is larger than the "
                                "producer's batch size")
        current.count += 1
        if self.on_delivered is not None:
            current.tokens.append(token)

    async def ship(self, everything: bool = False) -> None:
        """Hand full batches (all open ones with ``everything``) to the producer."""
        if everything:
            self._ready.extend((topic, partition, current) for (topic, partition), current in self._open.items()
                               if current.count)
            self._open = {}
        ready, self._ready = self._ready, []
        for topic, partition, current in ready:
            current.builder.close()
            future = await self.producer.send_batch(current.builder, topic, partition=partition)
            self._in_flight.append((future, topic, partition, current.count, current.tokens))
            while len(self._in_flight) > self.max_in_flight:
                await self._settle_oldest()

    async def flush(self) -> None:
        """Ship everything and wait until the broker has acknowledged it all."""
        await self.ship(everything=True)
        while self._in_flight:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        future, topic, partition, count, tokens = self._in_flight.popleft()
        try:
            metadata = await future
        except Exception as exc:
            raise ToolError(f"the broker did not accept records for {topic}[{partition}]: {exc}") from exc
        self.delivered[(topic, partition)] = self.delivered.get((topic, partition), 0) + count
        if self.on_delivered is not None:
            base = int(metadata.offset)
            for index, token in enumerate(tokens):
                self.on_delivered(token, topic, partition, base + index)


class RateLimiter:
    """Holds a long-run rate: record ``n`` may leave no earlier than ``start + n / rate``.

    Waiting is per chunk (a fiftieth of a second's worth of records), not per record, so the limiter
    costs nothing measurable and still keeps the rate within a few percent over any second.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.chunk = max(1, int(rate / 50)) if rate else 0
        self._start: float | None = None
        self._released = 0

    async def acquire(self) -> None:
        """Wait until the next chunk may go."""
        if not self.rate:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._released / self.rate
        if due > now:
            await asyncio.sleep(due - now)
        self._released += self.chunk
