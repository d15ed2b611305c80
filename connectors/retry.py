"""The retry policy of the clients of outside systems (LLM, embeddings, Qdrant): one place, one shape.

Transient failures are retried a bounded number of times with exponential backoff and jitter; where a
server says how long to wait (``Retry-After``), that wins, capped. Which failures are transient is the
caller's ``retry_on``: each dependency knows its own (see :class:`connectors.base.Connector`).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

__all__ = ["RetryPolicy", "retry_after_seconds", "wait_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one connector retries one call.

    ``attempts`` tries in all; waits grow from ``backoff_initial`` to ``backoff_max`` with jitter. With
    ``max_retry_after`` a server's ``Retry-After`` (of an OpenAI-compatible error) is honoured up to
    that many seconds. The last failure is re-raised as it is.
    """

    attempts: int
    backoff_initial: float
    backoff_max: float
    max_retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def retrying(
        self,
        retry_on: Callable[[BaseException], bool],
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> AsyncRetrying:
        """A fresh tenacity loop for one call; ``retry_on`` says which failures are transient."""
        wait: wait_base = wait_exponential_jitter(
            multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
        )
        if self.max_retry_after is not None:
            wait = wait_retry_after(wait, cap=self.max_retry_after)
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(retry_on),
            before_sleep=before_sleep,
            reraise=True,
        )


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """How long the server asked us to wait, from its response headers, or ``None`` if it did not say.

    Understands OpenAI's ``retry-after-ms`` (milliseconds) and the standard ``Retry-After`` in both
    forms: delta-seconds (``"2"``, also fractional) and an HTTP date (relative to ``now``, a Unix
    time, default the current time). Negative or unparsable values count as "not said"; a date in the
    past means "now" (0).
    """
    if not headers:
        return None
    lowered = {key.lower(): value for key, value in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _retry_after_of(exc: BaseException | None) -> float | None:
    if isinstance(exc, openai.APIStatusError):
        return retry_after_seconds(exc.response.headers)
    return None


class wait_retry_after(wait_base):  # named like tenacity's own wait strategies
    """Wait what the server's ``Retry-After`` says (at most ``cap`` seconds), else ``fallback``."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        hinted = _retry_after_of(outcome.exception() if outcome is not None else None)
        if hinted is not None:
            return min(hinted, self.cap)
        return float(self.fallback(retry_state))
