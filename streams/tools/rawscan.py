"""Bulk reads without per-record Python objects: fetch requests and aiokafka's C record-batch reader.

``AIOKafkaConsumer`` turns every record into a ``ConsumerRecord`` (about a third of a replay's CPU
time, measured with cProfile) and fetches one request at a time. A whole-topic copy needs neither:
this reader sends ``Fetch`` requests itself, keeps the next one in flight while the current response
is processed, and yields the records as aiokafka's C ``DefaultRecord`` objects (``offset``,
``timestamp``, ``key``, ``value``, ``headers``) straight from the response bytes.

It uses aiokafka's protocol and record modules (``aiokafka.protocol.fetch``, ``aiokafka.record``),
which the consumer itself is built on; aiokafka is pinned to the tested minor version. Only
uncompressed or compressed v2 record batches of non-transactional producers are expected (what this
system writes); a control batch is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from streams.settings import Settings
from streams.tools.exceptions import BrokerUnavailable, ToolError
from streams.tools.scan import STALL_SECONDS, OffsetRange

__all__ = ["raw_scan"]

_MAX_BYTES = 64 * 1024 * 1024
_PARTITION_BYTES = 16 * 1024 * 1024


async def raw_scan(settings: Settings, ranges: Mapping[TopicPartition, OffsetRange]
                   ) -> AsyncIterator[tuple[TopicPartition, list[Any]]]:
    """Yield (partition, records) until every range is read; records are in offset order."""
    positions = {tp: r.start for tp, r in ranges.items() if r.end > r.start}
    starts = {tp: r.start for tp, r in ranges.items()}
    ends = {tp: r.end for tp, r in ranges.items()}
    if not positions:
        return
    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-scan")
    try:
        await client.bootstrap()
    except KafkaError as exc:
        await client.close()
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    try:
        await client._maybe_wait_metadata()
        for topic in {tp.topic for tp in positions}:
            await client._wait_on_metadata(topic)
        leaders: dict[int, list[TopicPartition]] = defaultdict(list)
        for tp in positions:
            leader = client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                raise ToolError(f"no leader for {tp.topic}[{tp.partition}]")
            leaders[leader].append(tp)
        queue: asyncio.Queue[tuple[TopicPartition, list[Any]] | BaseException | None] = asyncio.Queue(maxsize=8)
        tasks = [asyncio.create_task(_fetch_loop(client, node, tps, positions, starts, ends, queue))
                 for node, tps in leaders.items()]
        running = len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.close()


async def _fetch_loop(client: AIOKafkaClient, node: int, tps: list[TopicPartition],
                      positions: dict[TopicPartition, int], starts: dict[TopicPartition, int],
                      ends: dict[TopicPartition, int],
                      queue: asyncio.Queue[tuple[TopicPartition, list[Any]] | BaseException | None]) -> None:
    """Fetch from one broker, one request ahead of the records being consumed."""
    try:
        active = [tp for tp in tps if positions[tp] < ends[tp]]
        last_progress = time.monotonic()
        pending = asyncio.create_task(client.send(node, _request(active, positions))) if active else None
        while pending is not None:
            response = await pending
            batches: list[tuple[TopicPartition, Any]] = []
            for topic, partitions in response.topics:
                for partition, error_code, _highwater, *data in partitions:
                    tp = TopicPartition(topic, partition)
                    if error_code:
                        raise ToolError(f"fetching {topic}[{partition}]: {for_code(error_code).__name__}")
                    records = MemoryRecords(data[-1]) if data[-1] else None
                    while records is not None and records.has_next():
                        batch = records.next_batch()
                        if batch is None:
                            break
                        batches.append((tp, batch))
                        positions[tp] = max(positions[tp], batch.next_offset)
            if batches:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_SECONDS:
                raise ToolError(f"no records from broker {node} for {STALL_SECONDS:.0f} s although more were expected")
            active = [tp for tp in active if positions[tp] < ends[tp]]
            # The next request goes out before this response's records are handed on.
            pending = asyncio.create_task(client.send(node, _request(active, positions))) if active else None
            for tp, batch in batches:
                if getattr(batch, "is_control_batch", False):
                    continue
                start, end = starts[tp], ends[tp]
                records = list(batch)
                if records and (records[0].offset < start or records[-1].offset >= end):
                    records = [record for record in records if start <= record.offset < end]
                if records:
                    await queue.put((tp, records))
        await queue.put(None)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # handed to the reader, which raises it in its own task
        await queue.put(exc)


def _request(tps: list[TopicPartition], positions: dict[TopicPartition, int]) -> FetchRequest:
    by_topic: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for tp in tps:
        by_topic[tp.topic].append((tp.partition, positions[tp], _PARTITION_BYTES))
    return FetchRequest(100, 1, _MAX_BYTES, 0, list(by_topic.items()))
