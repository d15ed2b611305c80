"""The base of the clients of outside systems: one retry policy, one circuit breaker, health and close.

Modelled on Quix Streams' sink base: :class:`Connector` owns what every client of a dependency needs,
and a subclass says only what is particular to its dependency. A subclass implements:

* :meth:`Connector.is_transient`: whether another attempt may cure a failure; any other failure ends
  the call at once.
* :meth:`Connector.map_error`: the connector's own exception (from :mod:`connectors.exceptions`) for
  the failure that ended a call, so callers never have to know a library's exceptions.
* :meth:`Connector.health`: whether the dependency answers now. It never raises, and it neither goes
  through nor changes the breaker: it reports the dependency, not the breaker.
* :meth:`Connector.close`: free the client's connections.

It may override :meth:`Connector.answered` (by default: a :class:`~connectors.exceptions.RequestRejected`),
the errors that prove the dependency answered. A request the dependency refused is no failure of
the dependency, so the breaker counts it as a success.

Every call then has the same shape: :meth:`Connector.guarded` admits it through the breaker and
records its outcome, and :meth:`Connector.retried` runs it under the connector's
:class:`~connectors.retry.RetryPolicy`, logging each retry. One call is one breaker verdict however
many attempts it took; a cancelled or abandoned call frees the breaker without a verdict. The
breaker's ``state`` is what the metrics export (``streams.metrics.track_breaker``).

:class:`OpenAICompatible` is the base of the clients of OpenAI-compatible servers (chat, embeddings):
one way to build the ``openai.AsyncOpenAI`` client, with the SDK's own retries off so that the
policy here is the only one (visible in logs, testable), one answer to which HTTP failures are
transient, and one mapping of the SDK's errors to the connector's ``…Unavailable`` and
``…RequestError``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import ClassVar, Self, TypedDict, TypeVar

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from tenacity import RetryCallState

from connectors.circuit import CircuitBreaker
from connectors.exceptions import DependencyUnavailable, RequestRejected
from connectors.retry import RetryPolicy

__all__ = ["Connector", "ErrorMapper", "OpenAICompatible", "ServerOptions", "TransientError", "is_transient"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ErrorMapper = Callable[[Exception, int], Exception]
"""``mapper(exc, attempts)``: the exception to raise for the failure that ended a call (``exc`` itself
to let it pass unchanged)."""

TRANSIENT_STATUS_CODES = frozenset({408, 409, 429})
"""Besides every 5xx: the statuses a later attempt can cure (timeout, conflict, rate limit)."""


class TransientError(Exception):
    """A failure a connector detects itself (no library raises it) that another attempt may cure."""


class Connector(abc.ABC):
    """One outside system behind a retry policy and a circuit breaker (see the module docstring).

    ``label`` names the dependency in errors (``"LLM at http://..."``), ``call`` one call to it in the
    retry log (``"LLM call to http://..."``; default: the label).
    """

    def __init__(self, label: str, *, breaker: CircuitBreaker, retry_policy: RetryPolicy,
                 call: str | None = None) -> None:
        self.label = label
        self.call = call or label
        self.breaker = breaker
        self.retry_policy = retry_policy

    # -- what a subclass says -----------------------------------------------------------------------

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether another attempt may succeed where this one failed with ``exc``."""

    def map_error(self, exc: Exception, attempts: int) -> Exception:
        """The exception to raise for ``exc``, which ended a call after ``attempts`` attempts."""
        return exc

    def answered(self, exc: Exception) -> bool:
        """Whether ``exc`` shows the dependency answered (it refused the request): not its failure."""
        return isinstance(exc, RequestRejected)

    def describe(self, exc: BaseException | None) -> str:
        """``exc`` as the retry log shows it."""
        return f"{type(exc).__name__}: {exc}"

    @abc.abstractmethod
    async def health(self) -> bool:
        """True when the dependency answers now; never raises, never consults the breaker."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Free the client's connections."""

    # -- what the base does with it -----------------------------------------------------------------

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Admit one call through the breaker (or raise ``CircuitOpenError``) and record its outcome.

        Synchronous, like the breaker: nothing is awaited between an outcome and its record, so a
        cancellation cannot lose a verdict. A generator that yields a stream's pieces holds it across
        its yields; closing that generator early (``GeneratorExit``) gives no verdict.
        """
        self.breaker.before_call()
        try:
            yield
        except Exception as exc:
            if self.answered(exc):
                self.breaker.record_success()
            else:
                self.breaker.record_failure(exc)
            raise
        except BaseException:
            self.breaker.release()  # cancelled, or the caller stopped reading: no verdict
            raise
        self.breaker.record_success()

    async def retried(
        self, operation: Callable[[], Awaitable[T]], *, map_error: ErrorMapper | None = None
    ) -> tuple[T, int]:
        """``await operation()`` under the retry policy: its result and the number of attempts made.

        The failure that ends the retries (one that is not transient, or the last attempt's) is
        raised as ``map_error(exc, attempts)`` (default :meth:`map_error`), chained to ``exc``.
        """
        attempts = 0
        try:
            async for attempt in self.retry_policy.retrying(self.is_transient, before_sleep=self._log_retry):
                with attempt:
                    attempts += 1
                    return await operation(), attempts
        except Exception as exc:
            mapped = (map_error or self.map_error)(exc, attempts)
            if mapped is exc:
                raise
            raise mapped from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_retry(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        # The subclass's module logger: the line names the connector that retries.
        logging.getLogger(type(self).__module__).warning(
            "%s failed (attempt %d of %d): %s; retrying in %.2f s",
            self.call, state.attempt_number, self.retry_policy.attempts, self.describe(error), wait,
        )

    def unavailable_message(self, exc: BaseException, attempts: int, *, during: str = "") -> str:
        """``<label> unavailable[ for <during>] after N attempts: <reason>``: one wording for all."""
        purpose = f" for {during}" if during else ""
        plural = "s" if attempts != 1 else ""
        return f"{self.label} unavailable{purpose} after {attempts} attempt{plural}: {self.describe(exc)}"

    # -- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt at an OpenAI-compatible server may succeed: connection errors,
    timeouts, 408/409/429, 5xx, and what a connector found wrong itself (:class:`TransientError`)."""
    if isinstance(exc, openai.APIConnectionError | TransientError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in TRANSIENT_STATUS_CODES or exc.status_code >= 500
    return False


class ServerOptions(TypedDict, total=False):
    """The connection and retry options of every :class:`OpenAICompatible` connector, so that each
    subclass takes them as ``**options`` with the base's defaults instead of restating them."""

    connect_timeout: float
    max_retries: int
    backoff_initial: float
    backoff_max: float
    max_retry_after: float
    breaker: CircuitBreaker | None


class OpenAICompatible(Connector):
    """A client of an OpenAI-compatible server (OpenAI, llama.cpp, vLLM, ...) through the openai SDK.

    A subclass names its dependency (``label_prefix``, ``breaker_prefix``: the label and breaker name
    are those plus the URL) and its errors (``unavailable_error``, ``request_error``), and says
    whether its responses come as streams of many small chunks (``aiohttp_transport``): aiohttp's
    transport spends less CPU per chunk than httpx's.

    ``timeout`` bounds the wait for a response, ``connect_timeout`` opening the connection.
    ``max_retries`` retries follow the first attempt (``max_retries=3``: at most 4 attempts).
    ``api_key`` may be empty for servers without authentication.
    """

    label_prefix: ClassVar[str]
    #: How the retry log names one call, before the URL (``"LLM call to"``).
    call_prefix: ClassVar[str]
    breaker_prefix: ClassVar[str]
    unavailable_error: ClassVar[type[DependencyUnavailable]]
    request_error: ClassVar[type[RequestRejected]]
    aiohttp_transport: ClassVar[bool] = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 30.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.base_url = base_url.rstrip("/")
        super().__init__(
            f"{self.label_prefix} {self.base_url}",
            breaker=breaker or CircuitBreaker(f"{self.breaker_prefix} {self.base_url}"),
            retry_policy=RetryPolicy(max_retries + 1, backoff_initial, backoff_max, max_retry_after),
            call=f"{self.call_prefix} {self.base_url}",
        )
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        request_timeout = openai.Timeout(timeout, connect=connect_timeout)
        self._client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "no-key",
            timeout=request_timeout,
            max_retries=0,  # the retry policy of the base, not the SDK's hidden one
            http_client=DefaultAioHttpClient(timeout=request_timeout) if self.aiohttp_transport else None,
        )

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def map_error(self, exc: Exception, attempts: int) -> Exception:
        """A rejected request is ``request_error``; no answer, or a broken one, ``unavailable_error``."""
        if isinstance(exc, openai.APIStatusError) and not is_transient(exc):
            return self.request_error(
                f"{self.label} rejected the request with HTTP {exc.status_code}: {exc.message}",
                status_code=exc.status_code,
            )
        if isinstance(exc, openai.OpenAIError | TransientError):
            return self.unavailable_error(self.unavailable_message(exc, attempts))
        return exc

    async def close(self) -> None:
        await self._client.close()
