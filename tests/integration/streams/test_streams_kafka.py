"""Kafka helpers against the real embedded broker: the end of a partition where it really is, and reading to it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka import high_watermarks, read_ranges
from tests.support.cli import create_topics

pytestmark = pytest.mark.integration


async def test_high_watermarks_count_every_record_of_multi_record_batches(stack_factory: Any) -> None:
    stack = stack_factory()
    topic = f"hw.{uuid.uuid4().hex[:8]}"
    await create_topics(stack.bootstrap, (topic, 3))
    # Partition 0: many records in few batches; 1: a single record; 2: empty.
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    await asyncio.sleep(0)
    try:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=50)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=b"x" * 50, partition=0) for _ in range(1500)]
            futures.append(await producer.send(topic, value=b"only", partition=1))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        tps = [TopicPartition(topic, p) for p in range(3)]
        ends = await high_watermarks(consumer, tps)
        reported = await consumer.end_offsets(tps)
    finally:
        await asyncio.sleep(0.05)
        await consumer.stop()
    assert ends == {tps[0]: 1500, tps[1]: 1, tps[2]: 0}
    assert all(reported[tp] <= ends[tp] for tp in tps), f"end_offsets said {reported}"


async def test_read_ranges_stops_inside_a_record_batch_and_at_the_high_watermark(stack_factory: Any) -> None:
    stack = stack_factory()
    topic = f"ranges.{uuid.uuid4().hex[:8]}"
    await create_topics(stack.bootstrap, (topic, 2))
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=50)
    await producer.start()
    try:
        # Few large batches: the ends below fall inside a batch, where the broker hands out more.
        futures = [await producer.send(topic, value=b"%d" % i, partition=i % 2) for i in range(3000)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        ends = await high_watermarks(consumer, tps)
        got: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}
        async with asyncio.timeout(60):
            async for tp, records in read_ranges(consumer, {tps[0]: (100, 1234), tps[1]: (0, ends[tps[1]])},
                                                 max_records=500, timeout=60):
                got[tp].extend(record.offset for record in records)
    finally:
        await consumer.stop()
    assert ends == {tps[0]: 1500, tps[1]: 1500}
    assert got[tps[0]] == list(range(100, 1234))
    assert got[tps[1]] == list(range(1500))
