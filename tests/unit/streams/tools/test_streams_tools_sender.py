"""The rate limiter's schedule, and key partitioning the way a Kafka producer does it."""

from __future__ import annotations

import time

from aiokafka.partitioner import DefaultPartitioner

from streams.tools.sender import BatchSender, RateLimiter


async def test_rate_limiter_holds_the_long_run_rate() -> None:
    limiter = RateLimiter(500.0)
    assert limiter.chunk == 10
    started = time.monotonic()
    for _ in range(51):  # 50 chunks of 10 after the first: 500 records at 500/s take one second
        await limiter.acquire()
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed <= 1.25


async def test_no_rate_means_no_waiting() -> None:
    limiter = RateLimiter(None)
    started = time.monotonic()
    for _ in range(1000):
        await limiter.acquire()
    assert time.monotonic() - started < 0.1


def test_keys_go_where_a_kafka_producer_puts_them_and_keyless_records_keep_their_partition() -> None:
    sender = BatchSender(producer=None)  # type: ignore[arg-type]  (partitioning needs no producer)
    sender._partitions["t"] = [0, 1, 2]
    partitioner = DefaultPartitioner()
    for key in (b"acme", b"globex", b"s-123", b""):
        assert sender.partition_for("t", key, 0) == partitioner(key, [0, 1, 2], [0, 1, 2])
    assert sender.partition_for("t", None, 2) == 2
    assert sender.partition_for("t", None, 5) == 2, "a partition the destination lacks wraps around"
