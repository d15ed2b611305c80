"""Which Redis failures are retried and that every one of them becomes DependencyUnavailable (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    DataError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from connectors.exceptions import DependencyUnavailable
from connectors.redis import RedisConnector

ERROR_REPLIES = [
    ReadOnlyError("You can't write against a read only replica."),
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."),
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    NoScriptError("No matching script. Please use EVAL."),
    NoPermissionError("this user has no permissions to run the 'set' command"),
    ResponseError("Command # 1 (SET training:lock:acme " + "x" * 5000 + ") of pipeline caused error: OOM"),
    DataError("Invalid input of type: 'dict'."),
]
TRANSIENT = [ConnectionError("Connection refused"), TimeoutError("Timeout reading from socket"),
             BusyLoadingError("Redis is loading the dataset in memory"), TryAgainError("TRYAGAIN"), OSError("reset")]


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self, client: Any) -> None:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", ERROR_REPLIES, ids=lambda e: type(e).__name__)
async def test_an_error_reply_is_unavailability_at_once(error: Exception) -> None:
    connector = RedisConnector("redis://127.0.0.1:1/0", attempts=3)
    operation = Failing(error)
    with pytest.raises(DependencyUnavailable, match="answered an error") as raised:
        await connector.call(operation)
    assert operation.calls == 1, "an error reply that needs an operator is not retried"
    assert raised.value.__cause__ is error
    assert len(str(raised.value)) < 400, "the reason is cut short (a pipeline error quotes the value)"
    await connector.close()


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
async def test_transient_errors_are_retried_then_unavailability(error: Exception) -> None:
    connector = RedisConnector("redis://127.0.0.1:1/0", attempts=3)
    operation = Failing(error)
    with pytest.raises(DependencyUnavailable, match="unavailable"):
        await connector.call(operation)
    assert operation.calls == 3
    await connector.close()


async def test_ping_is_false_on_an_error_reply() -> None:
    connector = RedisConnector("redis://127.0.0.1:1/0")

    async def readonly(*args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError("READONLY")

    connector.client.ping = readonly  # type: ignore[method-assign]
    assert await connector.ping() is False
    await connector.close()
