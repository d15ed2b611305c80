"""The range reader against a consumer double: where a range ends, what it yields, when it gives up.

The double models what a real partition can look like: offsets missing in the middle (compaction)
and a last offset that holds no record (a transaction marker, or a compacted-away tail), which moves
the consumer's position without handing out a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import aclosing
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streams.kafka import RangeReadError, read_ranges

TOPIC = "t"


def _tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


class FakeConsumer:
    """Enough of ``AIOKafkaConsumer`` for :func:`read_ranges`: assign, seek, getmany, position, pause."""

    def __init__(self, logs: dict[TopicPartition, tuple[Iterable[int], int]], silent: Iterable[TopicPartition] = ()):
        #: Per partition: the offsets that hold a record, and the log end (one past the last offset).
        self.logs = {tp: (sorted(offsets), end) for tp, (offsets, end) in logs.items()}
        self.silent = set(silent)  # partitions whose fetches never answer
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.assigned: set[TopicPartition] = set()
        self.fetches: list[int | None] = []

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = set(tps)
        self.paused = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned
        self.positions[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        self.fetches.append(max_records)
        await asyncio.sleep(timeout_ms / 1000 / 10)
        out: dict[TopicPartition, list[Any]] = {}
        for tp in tps or tuple(self.assigned):
            if tp in self.paused or tp in self.silent:
                continue
            offsets, end = self.logs[tp]
            position = self.positions[tp]
            found = [o for o in offsets if o >= position][: max_records or 500]
            if found:
                out[tp] = [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, b"k%d" % o, b"v%d" % o, None, 2, 2, [])
                           for o in found]
                self.positions[tp] = found[-1] + 1
            if not [o for o in offsets if o >= self.positions[tp]]:
                self.positions[tp] = max(self.positions[tp], end)  # a marker or a gap up to the end
        return out


async def _read(consumer: FakeConsumer, ranges: dict[TopicPartition, tuple[int, int]],
                **options: Any) -> dict[TopicPartition, list[int]]:
    got: dict[TopicPartition, list[int]] = {}
    async with asyncio.timeout(5):
        async for tp, records in read_ranges(consumer, ranges, fetch_timeout_ms=1, **options):
            assert [r.offset for r in records] == sorted(r.offset for r in records)
            got.setdefault(tp, []).extend(r.offset for r in records)
    return got


async def test_a_range_ends_at_its_end_even_when_no_record_sits_at_end_minus_one() -> None:
    consumer = FakeConsumer({
        _tp(0): ([0, 1, 2, 5, 6, 7], 9),      # gap at 3-4; offset 8 is a marker: no record at end - 1
        _tp(1): (range(0, 20), 20),           # records past the range's end must not be handed out
        _tp(2): ([], 4),                      # all compacted away
    })
    got = await _read(consumer, {_tp(0): (1, 9), _tp(1): (5, 10), _tp(2): (0, 4)})
    assert got == {_tp(0): [1, 2, 5, 6, 7], _tp(1): [5, 6, 7, 8, 9]}
    assert consumer.paused == {_tp(0), _tp(1), _tp(2)}, "every partition is paused once read"


async def test_an_empty_range_reads_nothing_and_leaves_the_assignment_alone() -> None:
    consumer = FakeConsumer({_tp(0): (range(10), 10)})
    assert await _read(consumer, {_tp(0): (4, 4)}) == {}
    assert consumer.assigned == set() and consumer.fetches == []


async def test_one_fetch_hands_out_at_most_max_records() -> None:
    consumer = FakeConsumer({_tp(0): (range(100), 100)})
    chunks: list[int] = []
    async for _, records in read_ranges(consumer, {_tp(0): (0, 100)}, max_records=30, fetch_timeout_ms=1):
        chunks.append(len(records))
    assert chunks == [30, 30, 30, 10] and set(consumer.fetches) == {30}


async def test_a_read_resumes_after_the_last_record_its_caller_used() -> None:
    consumer = FakeConsumer({_tp(0): ([*range(0, 50), *range(60, 80)], 81)})
    used: list[int] = []
    async with aclosing(read_ranges(consumer, {_tp(0): (0, 81)}, max_records=20, fetch_timeout_ms=1)) as first:
        async for _, records in first:
            used.extend(r.offset for r in records)
            break  # the caller failed after this fetch
    got = await _read(consumer, {_tp(0): (used[-1] + 1, 81)}, max_records=20)
    assert used + got[_tp(0)] == [*range(0, 50), *range(60, 80)]


async def test_a_read_that_does_not_finish_in_time_says_which_partitions_are_missing() -> None:
    consumer = FakeConsumer({_tp(0): (range(5), 5), _tp(1): (range(5), 5)}, silent=[_tp(1)])
    with pytest.raises(RangeReadError) as caught:
        await _read(consumer, {_tp(0): (0, 5), _tp(1): (0, 5)}, timeout=0.05)
    assert caught.value.remaining == {_tp(1): 5}
    assert "did not finish within" in str(caught.value)


async def test_a_stalled_read_fails_after_stall_timeout_but_a_slow_one_does_not() -> None:
    consumer = FakeConsumer({_tp(0): (range(3), 3)}, silent=[_tp(0)])
    with pytest.raises(RangeReadError) as caught:
        await _read(consumer, {_tp(0): (0, 3)}, stall_timeout=0.02)
    assert caught.value.remaining == {_tp(0): 3} and "no records for" in str(caught.value)
    # Records keep coming: no stall, however long the whole read takes.
    slow = FakeConsumer({_tp(0): (range(40), 40)})
    got = await _read(slow, {_tp(0): (0, 40)}, stall_timeout=0.5, max_records=1)
    assert got == {_tp(0): list(range(40))}


async def test_a_timeout_is_checked_after_a_fetch_so_every_call_makes_progress() -> None:
    consumer = FakeConsumer({_tp(0): (range(10), 10)})
    got: list[int] = []
    with pytest.raises(RangeReadError):
        async for _, records in read_ranges(consumer, {_tp(0): (0, 10)}, max_records=3, timeout=0,
                                            fetch_timeout_ms=1):
            got.extend(r.offset for r in records)
    assert got == [0, 1, 2]
