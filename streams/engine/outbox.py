"""Batched produce: messages are collected while a batch is processed and sent per topic-partition.

Awaiting a produce per event is what makes a naive agent slow (each await yields to the loop and
builds a future). Here an agent only appends to lists; ``flush`` builds one aiokafka record batch per
topic-partition, sends them all, and waits once for the broker's acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from streams.exceptions import OutputTooLarge

__all__ = ["Outbox", "Outgoing"]

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None


class Outbox:
    """Collects outgoing messages and sends them in record batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._partition_counts: dict[str, list[int]] = {}
        self._messages: list[Outgoing] = []
        #: A message the producer would refuse (the broker's limit is the same on Kafka's defaults) is
        #: refused here, while the record that made it is still known.
        self._max_message_bytes: int = getattr(producer, "_max_request_size", 1_048_576)

    def __len__(self) -> int:
        return len(self._messages)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        size = len(value or b"") + len(key or b"")
        if size > self._max_message_bytes:
            raise OutputTooLarge(f"a message for {topic} of {size} bytes is larger than the producer's "
                                 f"max_request_size ({self._max_message_bytes})")
        self._messages.append(Outgoing(topic, key, value, partition, headers or [], timestamp_ms))

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send everything collected; return the last offset written per (topic, partition)."""
        messages, self._messages = self._messages, []
        if not messages:
            return {}
        grouped: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for message in messages:
            partition = message.partition
            if partition is None:
                partition = await self._partition_for(message.topic, message.key)
            grouped[(message.topic, partition)].append(message)

        pending: list[tuple[tuple[str, int], int, asyncio.Future[object]]] = []
        for (topic, partition), items in grouped.items():
            batch = self._producer.create_batch()
            count = 0
            for item in items:
                appended = batch.append(
                    key=item.key, value=item.value, timestamp=item.timestamp_ms, headers=item.headers
                )
                if appended is None:
                    pending.append(((topic, partition), count, await self._send(batch, topic, partition)))
                    batch = self._producer.create_batch()
                    count = 0
                    if batch.append(key=item.key, value=item.value, timestamp=item.timestamp_ms,
                                    headers=item.headers) is None:
                        raise OutputTooLarge(f"a message for {topic} of {len(item.value or b'')} bytes is larger "
                                             "than the producer's batch size")
                count += 1
            if count:
                pending.append(((topic, partition), count, await self._send(batch, topic, partition)))

        results = await asyncio.gather(*(future for _, _, future in pending))
        last_offsets: dict[tuple[str, int], int] = {}
        for (target, count, _), metadata in zip(pending, results, strict=True):
            base = getattr(metadata, "offset", -1)
            last_offsets[target] = max(last_offsets.get(target, -1), base + count - 1)
        return last_offsets

    async def _send(self, batch: object, topic: str, partition: int) -> asyncio.Future[object]:
        batch.close()  # type: ignore[attr-defined]
        return await self._producer.send_batch(batch, topic, partition=partition)

    async def _partition_for(self, topic: str, key: bytes | None) -> int:
        partitions = self._partition_counts.get(topic)
        if partitions is None:
            found = await self._producer.partitions_for(topic)
            partitions = self._partition_counts[topic] = sorted(found)
        if key is None:
            return partitions[0]
        return int(self._partitioner(key, partitions, partitions))

    def mark(self) -> int:
        """A savepoint: what :meth:`rollback` returns to (messages collected so far)."""
        return len(self._messages)

    def rollback(self, mark: int) -> None:
        """Forget the messages collected since ``mark`` (a failed record's outputs)."""
        del self._messages[mark:]

    def discard(self) -> None:
        self._messages = []
