"""Redis: one pooled asyncio client per process, short timeouts, retries with backoff.

Agents treat Redis as a mirror, never as the source of truth: a call that still fails after its
retries raises :class:`DependencyUnavailable` and the caller decides how to carry on (the lock agent
keeps serving from its table and re-syncs later).

An error *reply* is a failure like a lost connection: ``READONLY`` (a replica, or a failover under
way), ``OOM`` (maxmemory reached with ``noeviction``), ``MISCONF`` (writes refused after a failed
snapshot), ``WRONGTYPE``, ``NOSCRIPT``, ``NOPERM`` — any :class:`redis.exceptions.RedisError` —
becomes :class:`DependencyUnavailable` at once. Only what can pass within the retry window is
retried: connection errors, timeouts, ``LOADING`` (a restarting Redis reading its dump) and
``TRYAGAIN``. An error reply that needs an operator (memory, disk, a replica) would only make every
caller wait out the backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from connectors.exceptions import DependencyUnavailable

__all__ = ["TRANSIENT_REDIS_ERRORS", "RedisConnector"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Retried with backoff. BusyLoadingError (LOADING) and AuthenticationError are ConnectionErrors in redis-py.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, TryAgainError, OSError)
_MAX_REASON = 300


class RedisConnector:
    """A pooled ``redis.asyncio`` client with a tenacity retry policy around each call."""

    def __init__(
        self,
        url: str,
        timeout: float = 0.5,
        attempts: int = 3,
        max_connections: int = 32,
    ) -> None:
        self.url = url
        self.attempts = attempts
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=max_connections,
            decode_responses=False,
            health_check_interval=30,
        )

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]], attempts: int | None = None) -> T:
        """Run ``operation(client)``, retrying transient errors with exponential backoff.

        Raises :class:`DependencyUnavailable` when the transient errors outlast the retries and at once
        for any other error Redis answers (see the module docstring).
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts or self.attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(TRANSIENT_REDIS_ERRORS),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await operation(self.client)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise DependencyUnavailable(f"redis at {self.url} unavailable: {_reason(cause)}") from cause
        except RedisError as exc:  # an error reply (READONLY, OOM, MISCONF, WRONGTYPE, ...): not worth a retry
            raise DependencyUnavailable(f"redis at {self.url} answered an error: {_reason(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def ping(self) -> bool:
        """Health check: True when Redis answers PING, False otherwise (never raises)."""
        try:
            return bool(await self.call(lambda client: client.ping(), attempts=1))
        except DependencyUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def _reason(exc: BaseException | None) -> str:
    """The error, cut short: a pipeline's error quotes the command, which may carry a whole value."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"
