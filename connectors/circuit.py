"""A circuit breaker for calls to outside systems (the LLM, embeddings, Qdrant).

Retries absorb a blip; they make an outage worse: every caller keeps waiting out its backoff against a
dependency that is down, and piles load on it when it comes back. After ``failure_threshold`` calls
in a row have failed, the breaker *opens* and every call fails at once with :class:`CircuitOpenError`,
which names the dependency and says when the next probe is due. Once ``reset_timeout`` has passed,
the breaker is *half open*: exactly one call goes through as a probe while the others keep failing
fast. If the probe succeeds the breaker closes; if it fails the breaker opens for another
``reset_timeout``.

One breaker guards one dependency and is shared by all the calls to it. Its state only changes
between awaits, so it is safe for any number of tasks on one event loop without a lock; it is not
meant to be shared across threads.

A *call* is one logical operation including its retries: a client that retries three times before
giving up records one failure, not three, so ``failure_threshold`` counts failed operations.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from connectors.exceptions import CircuitOpenError

__all__ = ["CircuitBreaker", "CircuitState", "StateListener"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class CircuitState(enum.StrEnum):
    """The three states; the values are what metrics and logs show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[str, CircuitState, CircuitState], None]
"""``listener(breaker_name, old_state, new_state)``, called synchronously on every transition."""


def _every_exception_is_a_failure(exc: BaseException) -> bool:
    return True


class CircuitBreaker:
    """Counts consecutive failures of one dependency and fails fast while it is considered down.

    Use it as ``async with breaker: ...`` around one operation, or ``await breaker.call(fn, *args)``.
    Code that cannot wrap its operation in one block (a streamed response that is consumed by the
    caller) uses :meth:`before_call` and then exactly one of :meth:`record_success`,
    :meth:`record_failure` or :meth:`release`.

    ``is_failure(exc)`` decides which exceptions count against the dependency. An exception that
    does not (say, a request the server rejected as malformed) shows the dependency answered, so it
    counts as a success. Cancellation (``BaseException`` that is not an ``Exception``) counts as
    neither: it only frees the probe slot.
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        is_failure: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must not be negative")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._is_failure = is_failure or _every_exception_is_a_failure
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._last_error: str | None = None
        self._listeners: list[StateListener] = []

    # -- inspection -------------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state. An open breaker whose timeout has passed still reads ``open`` until a
        call actually starts the probe (then ``half_open``)."""
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive failed calls since the last success."""
        return self._failures

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker admits a probe; 0 when closed or already due."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    def on_state_change(self, listener: StateListener) -> StateListener:
        """Register ``listener(name, old, new)`` for every transition (e.g. a Prometheus gauge).

        Returns the listener, so it can be used as a decorator. A listener that raises is logged and
        otherwise ignored: metrics must never break the calls they observe.
        """
        self._listeners.append(listener)
        return listener

    # -- the protocol -----------------------------------------------------------------------------

    def before_call(self) -> None:
        """Admit a call or raise :class:`CircuitOpenError` at once.

        Closed: always admitted. Open: admitted only once ``reset_timeout`` has passed, as the one
        probe (the breaker turns half open). Half open: refused while the probe is in flight.
        """
        if self._state is CircuitState.CLOSED:
            return
        if self._state is CircuitState.OPEN:
            if self._clock() - self._opened_at >= self.reset_timeout:
                self._transition(CircuitState.HALF_OPEN)
                self._probe_in_flight = True
                logger.info("circuit %s half open: letting one probe call through", self.name)
                return
            raise self._open_error(
                f"next probe in {self.retry_in:.1f} s"
            )
        # Half open.
        if not self._probe_in_flight:
            self._probe_in_flight = True
            return
        raise self._open_error("a probe call is in flight; failing fast until it succeeds")

    def record_success(self) -> None:
        """The admitted call succeeded: reset the failure count; a successful probe closes."""
        self._failures = 0
        self._last_error = None
        self._probe_in_flight = False
        if self._state is not CircuitState.CLOSED:
            logger.info("circuit %s closed: the probe call succeeded", self.name)
            self._transition(CircuitState.CLOSED)

    def record_failure(self, exc: BaseException | None = None) -> None:
        """The admitted call failed: count it; open at the threshold; a failed probe re-opens."""
        self._failures += 1
        self._probe_in_flight = False
        if exc is not None:
            self._last_error = f"{type(exc).__name__}: {exc}"
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            logger.warning(
                "circuit %s open after %d consecutive failures (last: %s); failing fast for %.1f s",
                self.name, self._failures, self._last_error, self.reset_timeout,
            )
            self._transition(CircuitState.OPEN)
        elif self._state is CircuitState.OPEN:
            # A call admitted before the breaker opened failed late: restart the wait.
            self._opened_at = self._clock()

    def release(self) -> None:
        """The admitted call ended without telling anything about the dependency (cancelled)."""
        self._probe_in_flight = False

    def record(self, exc: BaseException | None) -> None:
        """Record the outcome of an admitted call from the exception it ended with (or ``None``)."""
        if exc is None:
            self.record_success()
        elif not isinstance(exc, Exception):
            self.release()
        elif isinstance(exc, CircuitOpenError) and exc.dependency == self.name:
            self.release()
        elif self._is_failure(exc):
            self.record_failure(exc)
        else:
            self.record_success()

    def reset(self) -> None:
        """Close the breaker and forget the failures (operator action, tests)."""
        self._failures = 0
        self._last_error = None
        self._probe_in_flight = False
        if self._state is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED)

    # -- conveniences -----------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` guarded by the breaker."""
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> CircuitBreaker:
        self.before_call()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(exc)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self._state.value} failures={self._failures}>"

    # -- internals --------------------------------------------------------------------------------

    def _open_error(self, detail: str) -> CircuitOpenError:
        last = f" (last error: {self._last_error})" if self._last_error else ""
        return CircuitOpenError(
            f"{self.name} is unavailable: circuit open after {self._failures} consecutive "
            f"failures{last}; failing fast, {detail}",
            dependency=self.name,
            retry_in=self.retry_in,
        )

    def _transition(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        for listener in list(self._listeners):
            try:
                listener(self.name, old, new)
            except Exception:
                logger.exception("circuit %s: state listener %r failed", self.name, listener)
