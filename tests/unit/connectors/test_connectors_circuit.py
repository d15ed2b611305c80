"""The circuit breaker with an injected clock: no sleeping, no network."""

from __future__ import annotations

import asyncio

import pytest

from connectors.circuit import CircuitBreaker, CircuitState
from connectors.exceptions import CircuitOpenError, DependencyUnavailable


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    pass


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[tuple[str, CircuitState, CircuitState]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, transitions: list[tuple[str, CircuitState, CircuitState]]) -> CircuitBreaker:
    cb = CircuitBreaker("qdrant", failure_threshold=3, reset_timeout=10.0, clock=clock)
    cb.on_state_change(lambda name, old, new: transitions.append((name, old, new)))
    return cb


async def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            async with breaker:
                raise Boom("connection refused")


async def succeed(breaker: CircuitBreaker) -> str:
    async with breaker:
        return "ok"


async def test_starts_closed_and_lets_calls_through(breaker: CircuitBreaker) -> None:
    assert breaker.state is CircuitState.CLOSED
    assert await succeed(breaker) == "ok"
    assert breaker.failure_count == 0
    assert breaker.retry_in == 0.0


async def test_opens_after_threshold_consecutive_failures(
    breaker: CircuitBreaker, transitions: list[tuple[str, CircuitState, CircuitState]]
) -> None:
    await fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 2

    await fail(breaker)

    assert breaker.state is CircuitState.OPEN
    assert transitions == [("qdrant", CircuitState.CLOSED, CircuitState.OPEN)]


async def test_success_resets_the_count_so_failures_must_be_consecutive(breaker: CircuitBreaker) -> None:
    await fail(breaker, 2)
    await succeed(breaker)
    await fail(breaker, 2)

    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 2


async def test_open_circuit_fails_fast_naming_dependency_and_probe_time(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    await fail(breaker, 3)
    clock.advance(2.5)
    called = False

    async def operation() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(operation)

    assert not called
    error = caught.value
    assert isinstance(error, DependencyUnavailable)
    assert error.dependency == "qdrant"
    assert error.retry_in == pytest.approx(7.5)
    message = str(error)
    assert "qdrant" in message
    assert "circuit open" in message
    assert "3 consecutive failures" in message
    assert "connection refused" in message  # the last error, so the log explains why
    assert "next probe in 7.5 s" in message
    assert breaker.failure_count == 3  # a refused call is not another failure


async def test_half_open_probe_success_closes(
    breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, CircuitState, CircuitState]]
) -> None:
    await fail(breaker, 3)
    clock.advance(10.0)
    assert breaker.retry_in == 0.0

    assert await succeed(breaker) == "ok"

    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0
    assert [new for _, _, new in transitions] == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert await succeed(breaker) == "ok"


async def test_half_open_probe_failure_reopens_for_a_full_timeout(
    breaker: CircuitBreaker, clock: FakeClock, transitions: list[tuple[str, CircuitState, CircuitState]]
) -> None:
    await fail(breaker, 3)
    clock.advance(11.0)

    await fail(breaker)  # the probe

    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_in == pytest.approx(10.0)
    with pytest.raises(CircuitOpenError):
        await succeed(breaker)
    clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        await succeed(breaker)
    clock.advance(0.1)
    assert await succeed(breaker) == "ok"
    assert [new for _, _, new in transitions] == [
        CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED,
    ]


async def test_only_one_probe_at_a_time(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await fail(breaker, 3)
    clock.advance(10.0)
    probe_started = asyncio.Event()
    finish_probe = asyncio.Event()

    async def slow_probe() -> str:
        probe_started.set()
        await finish_probe.wait()
        return "probed"

    probe = asyncio.create_task(breaker.call(slow_probe))
    await probe_started.wait()
    assert breaker.state is CircuitState.HALF_OPEN

    with pytest.raises(CircuitOpenError, match="probe call is in flight"):
        await succeed(breaker)

    finish_probe.set()
    assert await probe == "probed"
    assert breaker.state is CircuitState.CLOSED


async def test_cancelled_probe_frees_the_slot_without_a_verdict(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await fail(breaker, 3)
    clock.advance(10.0)

    async def hangs() -> None:
        await asyncio.sleep(3600)

    probe = asyncio.create_task(breaker.call(hangs))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe

    assert breaker.state is CircuitState.HALF_OPEN
    assert await succeed(breaker) == "ok"  # the next call may probe
    assert breaker.state is CircuitState.CLOSED


async def test_exceptions_that_are_not_failures_count_as_answers(clock: FakeClock) -> None:
    class Rejected(Exception):
        pass

    cb = CircuitBreaker("llm", failure_threshold=1, reset_timeout=5.0, clock=clock,
                        is_failure=lambda exc: not isinstance(exc, Rejected))
    for _ in range(3):
        with pytest.raises(Rejected):
            async with cb:
                raise Rejected("HTTP 400")
    assert cb.state is CircuitState.CLOSED

    await fail(cb)
    assert cb.state is CircuitState.OPEN


async def test_explicit_protocol_for_streams(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure(Boom("reset by peer"))
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError, match="reset by peer"):
        breaker.before_call()

    clock.advance(10.0)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


async def test_a_broken_listener_does_not_break_calls(clock: FakeClock) -> None:
    cb = CircuitBreaker("embeddings", failure_threshold=1, clock=clock)

    @cb.on_state_change
    def broken(name: str, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("metrics down")

    await fail(cb)
    assert cb.state is CircuitState.OPEN


async def test_reset_closes(breaker: CircuitBreaker) -> None:
    await fail(breaker, 3)
    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0
    assert await succeed(breaker) == "ok"


def test_state_values_are_metric_friendly() -> None:
    assert [state.value for state in CircuitState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_timeout": -1.0}])
def test_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
