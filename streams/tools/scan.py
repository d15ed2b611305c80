"""Read fixed offset ranges of partitions, in large fetches, without a consumer group.

Commands that select records (replay, dlq) first fix each partition's range — usually from its start
(or the first offset at ``--since``) to the end offset *at the moment the command started* — and
then read exactly that. The fixed end matters: replaying a topic into itself must not read back what
it is writing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import RangeReadError, consumer_factory, read_ranges
from streams.settings import Settings
from streams.tools.cluster import start_client
from streams.tools.exceptions import ToolError

__all__ = ["STALL_SECONDS", "OffsetRange", "scan", "scan_consumer"]

#: Seconds a bulk read may go without a record while records are still expected.
STALL_SECONDS = 30.0


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

    Read with :func:`streams.kafka.read_ranges` (each partition stops at its range's end, wherever the
    records are); fails with :class:`ToolError` when the broker returns nothing for 30 s while records
    are still expected.
    """
    try:
        async with aclosing(read_ranges(consumer, {tp: (r.start, r.end) for tp, r in ranges.items()},
                                        max_records=max_records, stall_timeout=STALL_SECONDS,
                                        fetch_timeout_ms=500)) as chunks:
            async for _, records in chunks:
                yield records
    except RangeReadError as exc:
        stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in exc.remaining)
        raise ToolError(f"no records from {stuck} for {STALL_SECONDS:.0f} s although more were expected") from None
