"""Offset reset plans: every mode, kept between the first retained record and the end."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from streams.tools.exceptions import ArgumentError
from streams.tools.offsets import plan_reset

A, B, C = (TopicPartition("t", p) for p in range(3))
BEGIN = {A: 10, B: 0, C: 5}
END = {A: 100, B: 0, C: 50}
COMMITTED = {A: 60, B: None, C: None}


def _after(mode: str, value: object = None, by_time: dict[TopicPartition, int] | None = None) -> list[int]:
    return [p.after for p in plan_reset(mode, value, BEGIN, END, COMMITTED, by_time)]


def test_modes() -> None:
    assert _after("to-earliest") == [10, 0, 5]
    assert _after("to-latest") == [100, 0, 50]
    assert _after("to-offset", 30) == [30, 0, 30]
    assert _after("shift-by", -25) == [35, 0, 5], "no committed offset: shift from the beginning, then clamp"
    assert _after("shift-by", 7) == [67, 0, 12]
    assert _after("to-time", by_time={A: 70, B: 0, C: 50}) == [70, 0, 50]


def test_targets_are_clamped_to_the_retained_range() -> None:
    assert _after("to-offset", 5) == [10, 0, 5]
    assert _after("to-offset", 1000) == [100, 0, 50]
    assert _after("shift-by", -1000) == [10, 0, 5]


def test_plan_reports_before_after_and_lag() -> None:
    first = plan_reset("to-earliest", None, BEGIN, END, COMMITTED)[0]
    assert (first.topic, first.partition, first.before, first.after) == ("t", 0, 60, 10)
    assert first.lag_before == 40 and first.lag_after == 90
    assert first.to_json()["lag_after"] == 90
    assert plan_reset("to-latest", None, BEGIN, END, COMMITTED)[1].lag_before is None


def test_unknown_mode() -> None:
    with pytest.raises(ArgumentError):
        plan_reset("to-nowhere", None, BEGIN, END, COMMITTED)
