"""The supervisor of background tasks: restarts, their backoff, its reset, and how it ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from streams.supervise import Restart, retry_delays, supervise


class Clock:
    """A fake monotonic clock that the fake sleep moves forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(times: int, clock: Clock, runs_for: Callable[[int], float] = lambda _: 0.0) -> Callable[[], object]:
    """A task that fails ``times`` times (each run lasting ``runs_for(run)`` s), then returns."""
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        clock.now += runs_for(runs)
        if runs <= times:
            raise KeyError(f"failure {runs}")

    return run


async def test_failures_are_retried_with_a_doubling_capped_backoff_until_the_task_returns() -> None:
    clock = Clock()
    counted: list[None] = []
    await supervise("task", failing(7, clock), on_restart=lambda: counted.append(None), sleep=clock.sleep,
                    clock=clock, first_delay=1.0, max_delay=10.0)
    assert clock.slept == [1, 2, 4, 8, 10, 10, 10]
    assert len(counted) == 7


async def test_a_healthy_run_resets_the_backoff() -> None:
    clock = Clock()
    # Runs 1-3 fail at once; run 4 fails after 120 s of healthy work; run 5 fails at once.
    await supervise("task", failing(5, clock, runs_for=lambda run: 120.0 if run == 4 else 0.0), sleep=clock.sleep,
                    clock=clock, healthy_after=60.0)
    assert clock.slept == [1, 2, 4, 1, 2]


async def test_the_failure_is_logged_with_its_class_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = logging.getLogger("test.supervise")
    with caplog.at_level(logging.ERROR, logger="test.supervise"):
        await supervise("agent demo", failing(2, clock), log=log, sleep=clock.sleep, clock=clock)
    lines = [record for record in caplog.records if record.name == "test.supervise"]
    assert [r.getMessage() for r in lines] == ["agent demo crashed (KeyError; restart 1 in 1.0 s)",
                                               "agent demo crashed (KeyError; restart 2 in 2.0 s)"]
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in lines)


async def test_the_failure_handler_chooses_the_delay_and_a_quick_retry_does_not_grow_the_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    seen: list[tuple[str, float]] = []

    async def on_failure(exc: Exception, backoff: float) -> Restart:
        seen.append((str(exc), backoff))
        quick = len(seen) in (2, 3)
        return Restart(0.05 if quick else backoff, ", quick" if quick else "")

    with caplog.at_level(logging.ERROR):
        await supervise("task", failing(5, clock), on_failure=on_failure, sleep=clock.sleep, clock=clock)
    assert clock.slept == [1, 0.05, 0.05, 2, 4]
    assert [backoff for _, backoff in seen] == [1, 2, 2, 2, 4]
    assert "task crashed (KeyError; restart 2 in 0.1 s, quick)" in caplog.text


async def test_an_exception_of_the_failure_handler_ends_the_supervision() -> None:
    clock = Clock()

    async def on_failure(exc: Exception, backoff: float) -> Restart:
        raise RuntimeError("cannot recover")

    with pytest.raises(RuntimeError, match="cannot recover"):
        await supervise("task", failing(3, clock), on_failure=on_failure, sleep=clock.sleep, clock=clock)
    assert clock.slept == []


async def test_stopping_is_asked_before_every_run() -> None:
    clock = Clock()
    runs: list[None] = []

    async def run() -> None:
        runs.append(None)
        raise KeyError("again")

    await supervise("task", run, stopping=lambda: len(runs) >= 3, sleep=clock.sleep, clock=clock)
    assert len(runs) == 3 and clock.slept == [1, 2, 4]
    await supervise("task", run, stopping=lambda: True, sleep=clock.sleep, clock=clock)
    assert len(runs) == 3


async def test_cancelling_stops_a_run_or_a_wait_and_is_not_a_failure() -> None:
    started = asyncio.Event()
    restarts: list[None] = []

    async def hangs() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("task", hangs, on_restart=lambda: restarts.append(None)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts == []

    async def fails() -> None:
        restarts.append(None)
        raise KeyError("x")

    task = asyncio.create_task(supervise("task", fails, first_delay=3600))
    while not restarts:
        await asyncio.sleep(0)
    task.cancel()  # during the backoff
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(restarts) == 1


def test_retry_delays_double_up_to_the_cap() -> None:
    delays = retry_delays(0.25, 1.0)
    assert [next(delays) for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
