"""Read fixed offset ranges of partitions, in large fetches, without a consumer group.

Commands that select records (replay, dlq) first fix each partition's range — usually from its start
(or the first offset at ``--since``) to the end offset *at the moment the command started* — and
then read exactly that. The fixed end matters: replaying a topic into itself must not read back what
it is writing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import consumer_factory
from streams.settings import Settings
from streams.tools.cluster import start_client
from streams.tools.exceptions import ToolError

__all__ = ["OffsetRange", "scan", "scan_consumer"]

_STALL_SECONDS = 30.0


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``start`` (included) to ``end`` (excluded) of one partition."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


async def scan_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """A started, unattached consumer tuned for bulk reads (large fetches, no CRC checks)."""
    options: dict[str, Any] = {
        "max_poll_records": 50_000,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_max_wait_ms": 50,
        # The broker checked the CRCs when the records were written; re-checking is a third of the
        # consumer's CPU time on bulk reads.
        "check_crcs": False,
        **overrides,
    }
    consumer = consumer_factory(settings, group_id=None, **options)
    await start_client(consumer, settings)
    return consumer


async def scan(consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, OffsetRange],
               max_records: int = 50_000) -> AsyncIterator[list[Any]]:
    """Yield the records of every range as lists (one partition per list, in offset order).

    Stops when each partition has reached its range's end; fails with :class:`ToolError` when the
    broker returns nothing for 30 s while records are still expected.
    """
    active = {tp: r for tp, r in ranges.items() if r.end > r.start}
    if not active:
        return
    consumer.assign(list(active))
    for tp, r in active.items():
        consumer.seek(tp, r.start)
    last_progress = time.monotonic()
    try:
        while active:
            fetched = await consumer.getmany(timeout_ms=500, max_records=max_records)
            if fetched:
                last_progress = time.monotonic()
            for tp, records in fetched.items():
                wanted = active.get(tp)
                if wanted is None or not records:
                    continue
                if records[-1].offset >= wanted.end:
                    records = [record for record in records if record.offset < wanted.end]
                if records:
                    yield records
            for tp in list(active):
                # Position, not the last record seen: a compacted partition may have no record at end - 1.
                if await consumer.position(tp) >= active[tp].end:
                    del active[tp]
                    consumer.pause(tp)
            if active and time.monotonic() - last_progress > _STALL_SECONDS:
                stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in active)
                raise ToolError(f"no records from {stuck} for {_STALL_SECONDS:.0f} s although more were expected")
    finally:
        for tp in consumer.assignment():
            consumer.pause(tp)
