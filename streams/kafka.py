"""Kafka clients built from the app's settings, so every tool and agent talks to the cluster alike.

:func:`read_ranges` is the one reader of "these partitions from these offsets to those ends": table
restores, the bridge's catch-up of a resuming client and the tools' scans all read with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, KafkaTimeoutError

from streams.settings import Settings

__all__ = [
    "RangeReadError",
    "admin_factory",
    "consumer_factory",
    "high_watermarks",
    "producer_factory",
    "read_ranges",
]


def producer_factory(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer tuned for batches: messages are sent without awaiting each, then flushed per batch."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.app_id}-producer",
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer_factory(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits (offsets are committed only after a batch's effects are durable)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.app_id}-consumer",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        "fetch_max_wait_ms": max(1, settings.batch_wait_ms),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": 10_000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def admin_factory(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-admin")


async def high_watermarks(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition],
                          timeout: float = 30.0) -> dict[TopicPartition, int]:
    """One past the last record of each partition, correct on the embedded broker too.

    Tansu answers ``ListOffsets(latest)`` with the base offset of the last record *batch* + 1, not
    the high watermark, so ``end_offsets`` undercounts whenever the last batch holds more than one
    record (measured). A fetch response carries the true high watermark: this fetches once from the
    reported end - 1 and reads it. The consumer's assignment is replaced by ``tps``; callers seek
    afterwards. On Kafka the answer is the same as ``end_offsets``.
    """
    tps = list(tps)
    if not tps:
        return {}
    reported = dict(await consumer.end_offsets(tps))
    begin = await consumer.beginning_offsets(tps)
    result = dict(reported)
    pending = [tp for tp in tps if reported[tp] > begin[tp]]  # an empty partition has nothing to misreport
    if not pending:
        return result
    consumer.assign(tps)
    for tp in pending:
        consumer.seek(tp, reported[tp] - 1)
    deadline = time.monotonic() + timeout
    while pending:
        await consumer.getmany(*pending, timeout_ms=200, max_records=1)
        waiting = []
        for tp in pending:
            high = consumer.highwater(tp)
            if high is None:
                waiting.append(tp)
            else:
                result[tp] = max(result[tp], high)
        pending = waiting
        if pending and time.monotonic() > deadline:
            raise KafkaTimeoutError(f"no fetch answer for {pending} within {timeout:.0f} s")
    return result


class RangeReadError(KafkaError):
    """A range read did not reach the end of its ranges in time (``timeout`` or ``stall_timeout``).

    ``remaining`` maps each partition not read to its end to that end, so a caller can say which.
    """

    def __init__(self, message: str, remaining: Mapping[TopicPartition, int]) -> None:
        super().__init__(message)
        self.remaining = dict(remaining)


async def read_ranges(
    consumer: AIOKafkaConsumer,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    *,
    max_records: int | None = None,
    timeout: float | None = None,
    stall_timeout: float | None = None,
    fetch_timeout_ms: int = 200,
) -> AsyncGenerator[tuple[TopicPartition, list[Any]], None]:
    """Yield the records of ``[start, end)`` of each partition, as ``(partition, records in offset order)``.

    ``consumer`` is started and has no group; its assignment is replaced by the partitions of
    ``ranges``, each finished one is paused, and the caller stops the consumer. A partition is done
    when the consumer's *position* reaches ``end``, not when a record at ``end - 1`` was seen: a
    compacted partition may have no record there. The broker's own end offsets are never asked (the
    embedded broker undercounts them, see :func:`high_watermarks`).

    ``max_records`` bounds what one fetch hands out (None: the consumer's ``max_poll_records``), and
    the loop yields to the event loop before each fetch (a fetch whose records are already buffered
    does not suspend): a bulk read of millions of records then holds the event loop for one fetch's
    worth of the caller's work at a time, not for the whole read. Records are fetched only as the
    caller asks for them, so a slow caller holds at most one fetch and the consumer's prefetch.

    ``timeout`` (seconds for the whole read) and ``stall_timeout`` (seconds without a record while
    records are expected) raise :class:`RangeReadError`; each is checked after a fetch, so every call
    makes progress before it can time out. A read that failed resumes where it stopped when it is
    called again with the ranges starting after the last record the caller used (a restore retries
    from what its stores applied).
    """
    active = {tp: (start, end) for tp, (start, end) in ranges.items() if end > start}
    if not active:
        return
    consumer.assign(list(active))
    for tp, (start, _) in active.items():
        consumer.seek(tp, start)
    started = last_progress = time.monotonic()
    try:
        while active:
            await asyncio.sleep(0)
            fetched = await consumer.getmany(*active, timeout_ms=fetch_timeout_ms, max_records=max_records)
            now = time.monotonic()
            for tp, records in fetched.items():
                wanted = active.get(tp)
                if wanted is None or not records:
                    continue
                last_progress = now
                if records[-1].offset >= wanted[1]:
                    records = [record for record in records if record.offset < wanted[1]]
                if records:
                    yield tp, records
            for tp in list(active):
                if await consumer.position(tp) >= active[tp][1]:
                    del active[tp]
                    consumer.pause(tp)
            if not active:
                break
            if timeout is not None and now - started > timeout:
                raise RangeReadError(f"reading to {_ends(active)} did not finish within {timeout:g} s",
                                     {tp: end for tp, (_, end) in active.items()})
            if stall_timeout is not None and now - last_progress > stall_timeout:
                raise RangeReadError(f"no records for {stall_timeout:g} s while reading to {_ends(active)}",
                                     {tp: end for tp, (_, end) in active.items()})
    finally:
        for tp in consumer.assignment():
            consumer.pause(tp)


def _ends(active: Mapping[TopicPartition, tuple[int, int]]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}] at {end}" for tp, (_, end) in sorted(active.items()))
