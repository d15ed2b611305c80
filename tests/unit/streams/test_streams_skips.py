"""The skip log of readers: every skip counted, the log rate-limited."""

from __future__ import annotations

import logging

import pytest

from streams.skips import SkippedRecords, describe_error


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_counted_in_full_but_logged_in_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    counted: list[str] = []
    skips = SkippedRecords(logging.getLogger("test.skips"), "reader", burst=3, interval=60, counter=counted.append,
                           clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.skips"):
        for offset in range(1000):
            skips.skip("topic", 0, offset, ValueError("bad"))
        assert skips.total == 1000 and len(counted) == 1000
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 4  # three records, then one line saying the rest are only counted
        assert "topic[0]@0: ValueError: bad" in lines[0] and "topic[0]@2" in lines[2]
        caplog.clear()
        clock.now = 61  # the next interval: the suppressed ones are summed up, then logging resumes
        skips.skip("topic", 0, 1000, OverflowError("date value out of range"))
        lines = [r.getMessage() for r in caplog.records]
        assert "skipped 997 more" in lines[0]
        assert "topic[0]@1000: OverflowError: date value out of range" in lines[1]


def test_a_failing_counter_or_message_does_not_escape() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    def broken(topic: str) -> None:
        raise RuntimeError("metrics down")

    skips = SkippedRecords(logging.getLogger("test.skips"), "reader", counter=broken)
    skips.skip("topic", 0, 0, Unprintable())
    assert skips.total == 1
    assert describe_error(Unprintable()) == "Unprintable: (message not printable)"
    assert len(describe_error(ValueError("x" * 10_000))) == 300
