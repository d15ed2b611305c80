"""The connector base's policy: what is retried and how often, Retry-After, the breaker's verdicts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import openai
import pytest

from connectors.base import Connector, OpenAICompatible, TransientError, is_transient
from connectors.circuit import CircuitBreaker, CircuitState
from connectors.exceptions import (
    CircuitOpenError,
    DependencyUnavailable,
    EmbeddingsRequestError,
    EmbeddingsUnavailable,
    RequestRejected,
)
from connectors.retry import RetryPolicy

REQUEST = httpx.Request("POST", "http://127.0.0.1:9/v1/x")


def status_error(code: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx.Response(code, headers=headers or {}, request=REQUEST)
    return openai.APIStatusError(f"HTTP {code}", response=response, body=None)


class Flaky(TransientError):
    pass


class Fake(Connector):
    """Retries ``Flaky``; maps what ended a call to DependencyUnavailable naming the attempts."""

    def __init__(self, attempts: int = 3, *, breaker: CircuitBreaker | None = None,
                 max_retry_after: float | None = None, backoff: float = 0.001) -> None:
        super().__init__("fake at nowhere", breaker=breaker or CircuitBreaker("fake", failure_threshold=2),
                         retry_policy=RetryPolicy(attempts, backoff, backoff, max_retry_after))
        self.closed = False

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Flaky) or is_transient(exc)

    def map_error(self, exc: Exception, attempts: int) -> Exception:
        if isinstance(exc, Flaky | openai.APIStatusError):
            return DependencyUnavailable(self.unavailable_message(exc, attempts))
        return exc

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


def failing(*errors: BaseException, result: str = "ok") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An operation that raises ``errors`` one per call, then returns ``result``; and its call count."""
    calls: list[int] = []

    async def operation() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return operation, calls


# -- retries --------------------------------------------------------------------------------------


async def test_a_transient_failure_is_retried_and_the_attempts_are_counted() -> None:
    operation, calls = failing(Flaky("blip"), Flaky("blip"))

    assert await Fake(attempts=3).retried(operation) == ("ok", 3)
    assert len(calls) == 3


async def test_the_last_transient_failure_is_mapped_with_the_attempts_made() -> None:
    operation, calls = failing(*[Flaky("down")] * 5)

    with pytest.raises(DependencyUnavailable, match=r"fake at nowhere unavailable after 3 attempts: Flaky: down"):
        await Fake(attempts=3).retried(operation)
    assert len(calls) == 3


async def test_a_failure_that_is_not_transient_ends_the_call_at_once() -> None:
    operation, calls = failing(status_error(400))

    with pytest.raises(DependencyUnavailable, match="after 1 attempt: APIStatusError"):
        await Fake(attempts=5).retried(operation)
    assert len(calls) == 1


async def test_an_error_the_connector_does_not_map_passes_unchanged() -> None:
    bug = KeyError("bug")
    operation, _ = failing(bug)

    with pytest.raises(KeyError) as caught:
        await Fake().retried(operation)
    assert caught.value is bug


async def test_a_per_call_mapper_wins_over_the_connectors() -> None:
    operation, _ = failing(Flaky("x"))

    with pytest.raises(RequestRejected, match="one attempt of 1"):
        await Fake(attempts=1).retried(operation, map_error=lambda exc, n: RequestRejected(f"one attempt of {n}"))


async def test_retry_after_is_honoured_over_the_backoff_and_capped() -> None:
    # A backoff of 30 s would time the test out; the server's 20 ms, or the 50 ms cap, must be used.
    hinted, _ = failing(status_error(429, {"retry-after-ms": "20"}))
    capped, _ = failing(status_error(503, {"retry-after": "120"}))
    started = time.perf_counter()

    assert await Fake(attempts=2, backoff=30.0, max_retry_after=0.05).retried(hinted) == ("ok", 2)
    assert await Fake(attempts=2, backoff=30.0, max_retry_after=0.05).retried(capped) == ("ok", 2)
    assert time.perf_counter() - started < 5.0


def test_a_policy_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(0, 0.1, 1.0)


# -- the breaker ----------------------------------------------------------------------------------


async def test_one_call_is_one_verdict_however_many_attempts() -> None:
    connector = Fake(attempts=3)
    operation, calls = failing(*[Flaky("down")] * 3)

    with pytest.raises(DependencyUnavailable), connector.guarded():
        await connector.retried(operation)

    assert len(calls) == 3
    assert connector.breaker.failure_count == 1 and connector.breaker.state is CircuitState.CLOSED


async def test_failed_calls_open_the_breaker_then_calls_fail_fast() -> None:
    connector = Fake(attempts=1)
    for _ in range(2):
        with pytest.raises(DependencyUnavailable), connector.guarded():
            await connector.retried(failing(Flaky("down"))[0])
    operation, calls = failing()

    with pytest.raises(CircuitOpenError, match="fake is unavailable"), connector.guarded():
        await operation()
    assert connector.breaker.state is CircuitState.OPEN and calls == []


async def test_a_rejected_request_proves_the_dependency_answered() -> None:
    connector = Fake()
    connector.breaker.record_failure(RuntimeError("earlier"))

    with pytest.raises(RequestRejected), connector.guarded():
        raise RequestRejected("bad request", status_code=400)

    assert connector.breaker.failure_count == 0


async def test_a_success_resets_the_failure_count() -> None:
    connector = Fake()
    connector.breaker.record_failure(RuntimeError("earlier"))

    with connector.guarded():
        pass

    assert connector.breaker.failure_count == 0


async def test_a_cancelled_probe_frees_the_breaker_without_a_verdict() -> None:
    breaker = CircuitBreaker("fake", failure_threshold=1, reset_timeout=0.0)
    connector = Fake(breaker=breaker)
    breaker.before_call()
    breaker.record_failure(RuntimeError("down"))

    with pytest.raises(asyncio.CancelledError), connector.guarded():  # the probe
        raise asyncio.CancelledError
    assert breaker.state is CircuitState.HALF_OPEN and breaker.failure_count == 1

    with connector.guarded():  # the probe slot is free again
        pass
    assert breaker.state is CircuitState.CLOSED


async def test_a_generator_closed_early_gives_no_verdict() -> None:
    breaker = CircuitBreaker("fake", failure_threshold=1, reset_timeout=0.0)
    connector = Fake(breaker=breaker)
    breaker.before_call()
    breaker.record_failure(RuntimeError("down"))

    async def stream() -> AsyncIterator[str]:
        with connector.guarded():  # the probe
            yield "first"
            yield "second"

    pieces = stream()
    assert await anext(pieces) == "first"
    await pieces.aclose()  # the caller stopped reading

    assert breaker.state is CircuitState.HALF_OPEN and breaker.failure_count == 1
    with connector.guarded():  # admitted: the probe slot was freed
        pass


async def test_the_connector_is_closed_by_its_context() -> None:
    async with Fake() as connector:
        assert not connector.closed
    assert connector.closed


# -- OpenAI-compatible servers --------------------------------------------------------------------


class FakeEmbedder(OpenAICompatible):
    label_prefix = "embeddings endpoint"
    call_prefix = "embeddings request to"
    breaker_prefix = "embeddings"
    unavailable_error = EmbeddingsUnavailable
    request_error = EmbeddingsRequestError

    def __init__(self, max_retries: int = 2) -> None:
        super().__init__("http://127.0.0.1:9/v1/", "", timeout=1.0, connect_timeout=1.0, max_retries=max_retries,
                         backoff_initial=0.001, backoff_max=0.001, max_retry_after=1.0, breaker=None)

    async def health(self) -> bool:
        return False


async def test_an_openai_connector_names_its_dependency_and_takes_its_retry_policy() -> None:
    async with FakeEmbedder() as connector:
        assert connector.base_url == "http://127.0.0.1:9/v1"
        assert connector.label == "embeddings endpoint http://127.0.0.1:9/v1"
        assert connector.breaker.name == "embeddings http://127.0.0.1:9/v1"
        assert connector.retry_policy == RetryPolicy(3, 0.001, 0.001, max_retry_after=1.0)  # Retry-After honoured


def test_max_retries_may_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_retries must not be negative"):
        FakeEmbedder(max_retries=-1)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (status_error(400), EmbeddingsRequestError),
        (status_error(404), EmbeddingsRequestError),
        (status_error(429), EmbeddingsUnavailable),
        (status_error(503), EmbeddingsUnavailable),
        (openai.APIConnectionError(request=REQUEST), EmbeddingsUnavailable),
        (Flaky("cut"), EmbeddingsUnavailable),
    ],
)
async def test_openai_errors_map_to_the_connectors_own(exc: Exception, expected: type[Exception]) -> None:
    async with FakeEmbedder() as connector:
        mapped = connector.map_error(exc, 3)

    assert type(mapped) is expected
    if isinstance(mapped, EmbeddingsRequestError):
        assert mapped.status_code == exc.status_code  # type: ignore[attr-defined]
        assert str(mapped).startswith("embeddings endpoint http://127.0.0.1:9/v1 rejected the request with HTTP")
    else:
        assert "unavailable after 3 attempts" in str(mapped)


async def test_a_bug_is_not_mapped_to_an_outage() -> None:
    async with FakeEmbedder() as connector:
        bug = TypeError("bug")
        assert connector.map_error(bug, 1) is bug
