"""Streamed chat completions from any OpenAI-compatible server (OpenAI, llama.cpp, vLLM, ...).

:class:`ChatClient` is a :class:`~connectors.base.OpenAICompatible` connector, so its failure policy
is the platform's:

* Retries are the base's, not the SDK's (it runs with ``max_retries=0``): connection errors,
  timeouts, 408/409/429 and 5xx are retried with exponential backoff and jitter, and the server's
  ``Retry-After`` is honoured (capped), so the policy is visible in logs and testable.
* Retries happen only **before the first token** is handed to the caller. Once text has flowed, a
  broken stream raises :class:`LLMStreamError`: retrying would repeat text the caller already
  forwarded, and ending quietly would pass a truncated answer off as a complete one. A stream that
  ends without a ``finish_reason`` counts as broken, too.
* Streamed chunks are read as plain JSON objects (``AsyncOpenAI.post`` with ``cast_to=object``), not
  as ``ChatCompletionChunk`` models through ``chat.completions.create``, and the HTTP transport is
  aiohttp (the SDK's ``DefaultAioHttpClient``): building a pydantic model per chunk, transforming
  the request and httpx's connection machinery cost the worker CPU on every chunk. A worker answers
  dozens of turns at once on one event loop, so that CPU is other turns' time to first token. The
  SDK still builds the request, authenticates, maps HTTP errors to its exceptions and decodes the
  server-sent events.
* A :class:`~connectors.circuit.CircuitBreaker` counts failed calls (one call = all its retries) and,
  once open, makes :meth:`ChatClient.stream_chat` fail at once with ``CircuitOpenError`` until a
  probe call succeeds. A request the server rejects (400, 401, 404, ...) raises
  :class:`LLMRequestError` and does not count against the server: it answered.

Token usage. The client asks for ``stream_options={"include_usage": True}``; when the provider sends
usage it is used as is (``counted_by="provider"``). If a server rejects the option (400 naming
``stream_options``) the request is repeated once without it and the client stops sending it. When a
stream carries no usage — llama-cpp-python's server accepts the option and silently ignores it — the
client counts the tokens itself (``counted_by="tokenizer"``), see :meth:`ChatClient.count_usage`:

* prompt tokens: the messages rendered with the chat template (``prompt_renderer``, ChatML by
  default) and tokenized as one text. For llama.cpp serving a ChatML model (SmolLM2, Qwen, ...) with
  the right renderer this is exactly what the server evaluated (checked against the ``usage`` of a
  non-streamed request in the integration tests). For other templates it is off by a few tokens per
  message (the role markers differ).
* completion tokens: the answer text re-tokenized. This equals the generated count except where the
  model produced a non-canonical tokenization, and it leaves out the end-of-turn token.

Counting uses the server's tokenizer when it has one (llama-cpp-python's ``POST /extras/tokenize/count``,
found by trying it once), else a local tokenizer if one was given (:class:`GGUFTokenizer`, a vocab-only
llama.cpp load of a GGUF: exact for that model, an approximation for any other). With neither, usage
is ``None`` and a warning is logged; the client never invents counts. ``tiktoken`` is deliberately not
used: it is not a dependency, and providers that use its encodings send usage anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict, Unpack

import openai
from openai import AsyncStream

from connectors.base import OpenAICompatible, ServerOptions, TransientError, is_transient
from connectors.exceptions import (
    LLMRequestError,
    LLMStreamError,
    LLMUnavailable,
    TokenCountUnavailable,
)
from connectors.retry import retry_after_seconds, wait_retry_after
from schemas.conversation import TokenUsage

__all__ = [
    "ChatClient",
    "ChatDelta",
    "ChatEvent",
    "ChatMessage",
    "ChatResult",
    "GGUFTokenizer",
    "LocalTokenizer",
    "PromptRenderer",
    "is_transient",
    "render_chatml",
    "retry_after_seconds",
    "wait_retry_after",
]

logger = logging.getLogger(__name__)


class ChatMessage(TypedDict):
    """One message of the conversation as the chat API takes it."""

    role: Literal["system", "user", "assistant"]
    content: str


PromptRenderer = Callable[[Sequence[ChatMessage]], str]
"""Renders messages into the prompt text the server's chat template would produce (for counting)."""


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A piece of answer text, in order; ``seq`` counts the deltas of one stream from 0."""

    text: str
    seq: int


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The end of a completed stream: always the last item :meth:`ChatClient.stream_chat` yields.

    ``text`` is exactly the concatenation of the deltas. ``ttft_ms`` is the time from the call to the
    first content delta, retries included (``None`` when the answer was empty); ``latency_ms`` the
    time to the end of the stream. ``usage`` is ``None`` only when the provider sent none and no
    tokenizer could count it.
    """

    text: str
    finish_reason: str
    usage: TokenUsage | None
    model: str
    ttft_ms: float | None
    latency_ms: float
    attempts: int


ChatEvent = ChatDelta | ChatResult


class LocalTokenizer(Protocol):
    """A tokenizer in this process, used when the server offers none."""

    def count(self, text: str) -> int: ...


def render_chatml(messages: Sequence[ChatMessage], default_system: str | None = None) -> str:
    """The ChatML prompt for ``messages`` plus the assistant header the model continues from.

    ``default_system`` mirrors templates that insert a system message when the conversation has none
    (SmolLM2's does); the text is only used to count tokens, never sent.
    """
    parts: list[str] = []
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts.extend(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" for message in messages)
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class GGUFTokenizer:
    """The tokenizer of a GGUF model, loaded vocab-only through llama.cpp (no weights: quick to load).

    Exact for the model the file belongs to; for any other model an approximation (the counts of a
    different BPE vocabulary). Needs ``llama-cpp-python``; loads on first use. Safe to call from
    several threads (the client counts in worker threads, off the event loop).
    """

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._llama: Any = None
        self._loading = threading.Lock()

    def count(self, text: str) -> int:
        if self._llama is None:
            with self._loading:
                if self._llama is None:
                    self._llama = self._load()
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise TokenCountUnavailable(
                "GGUFTokenizer needs llama-cpp-python (`pip install 'llama-cpp-python[server]'`)"
            ) from exc
        return Llama(model_path=self.model_path, vocab_only=True, verbose=False)


# -- what is retried before the first token ------------------------------------------------------


class _StreamStalled(TransientError):
    """No chunk arrived within the timeout (keep-alive pings reset an HTTP read timeout, not this)."""


class _StreamEndedEarly(TransientError):
    """The stream ended before any text and without a finish_reason (e.g. the server interrupted it)."""


class _StreamGarbled(TransientError):
    """Reading the stream failed: the connection was cut, or an event was not JSON (a broken server or proxy)."""


#: Chunks read before the first text without any text or finish_reason: a server past this sends noise.
_MAX_CHUNKS_BEFORE_TEXT = 1000
#: Token counts a provider reports above this are not believed (the contracts bound them, too).
_MAX_REPORTED_TOKENS = 100_000_000
_MAX_MODEL_NAME_CHARS = 256


def _rejects_stream_options(exc: BaseException) -> bool:
    if not isinstance(exc, openai.BadRequestError):
        return False
    return "stream_options" in f"{exc.message} {exc.body}".lower()


# -- streamed chunks ------------------------------------------------------------------------------


def first_choice(chunk: object) -> tuple[str | None, str | None]:
    """The text delta and finish reason of choice 0 of a streamed chunk (``None`` for what is absent)."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return None, None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            finish_reason = choice.get("finish_reason")
            return (_clean_text(content) if isinstance(content, str) and content else None,
                    _clean_text(finish_reason)[:64] if isinstance(finish_reason, str) and finish_reason else None)
    return None, None


def _clean_text(text: str) -> str:
    """``text`` without lone surrogates (JSON can carry ``\\ud800``; UTF-8, hence our events, cannot)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def served_model_name(value: object) -> str | None:
    """The ``model`` a chunk names, when it is a plausible model name (else the requested one is kept)."""
    if isinstance(value, str) and 0 < len(value) <= _MAX_MODEL_NAME_CHARS and value.isprintable() \
            and value.strip() == value:
        return value
    return None


def provider_usage(reported: dict[str, Any]) -> TokenUsage | None:
    """The ``usage`` object of a stream's last chunk as TokenUsage, or ``None`` when it lacks the counts."""
    prompt, completion = reported.get("prompt_tokens"), reported.get("completion_tokens")
    if not (_token_count(prompt) and _token_count(completion)):
        return None
    assert isinstance(prompt, int) and isinstance(completion, int)
    details = reported.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if not (isinstance(cached, int) and _token_count(cached) and cached <= prompt):
        cached = 0
    try:
        return TokenUsage(input_tokens=prompt, output_tokens=completion, cached_tokens=cached,
                          counted_by="provider")
    except ValueError:  # outside the contract's bounds: count instead of trusting it
        return None


def _token_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_REPORTED_TOKENS  # not bool, not absurd


# -- the client -----------------------------------------------------------------------------------


class ChatClient(OpenAICompatible):
    """Streamed chat completions with timeouts, retries, a circuit breaker and token accounting.

    ``timeout`` bounds every wait for data: the HTTP read of a response and the gap between two
    chunks of a stream (llama.cpp's server sends keep-alive pings that would reset a pure read
    timeout). ``connect_timeout`` bounds opening the connection. There is no limit on the total
    length of a stream: a long answer is not a failure.
    """

    label_prefix = "LLM at"
    call_prefix = "LLM call to"
    breaker_prefix = "llm"
    unavailable_error = LLMUnavailable
    request_error = LLMRequestError
    aiohttp_transport = True  # a stream is many small chunks

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        timeout: float = 60.0,
        prompt_renderer: PromptRenderer = render_chatml,
        local_tokenizer: LocalTokenizer | None = None,
        server_tokenizer: bool | None = None,
        health_timeout: float = 5.0,
        **options: Unpack[ServerOptions],
    ) -> None:
        """``options`` are the connection and retry options (:class:`~connectors.base.ServerOptions`):
        ``max_retries`` retries follow the first attempt (``max_retries=3``: at most 4 attempts).

        ``server_tokenizer``: ``None`` tries the llama-cpp-python tokenize endpoint once and
        remembers whether it exists; ``True``/``False`` skip the guess. ``api_key`` may be any
        non-empty string for servers without authentication.
        """
        super().__init__(base_url, api_key, timeout=timeout, **options)
        self.model = model
        self.health_timeout = health_timeout
        self.prompt_renderer = prompt_renderer
        self.local_tokenizer = local_tokenizer
        self._server_tokenizer = server_tokenizer
        self._send_stream_options = True
        self._usage_missing_logged = False

    @property
    def tokenizer_url(self) -> str:
        """llama-cpp-python's token-count endpoint: at the server root, not under ``/v1``."""
        root = self.base_url.removesuffix("/v1")
        return f"{root}/extras/tokenize/count"

    # -- streaming --------------------------------------------------------------------------------

    async def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """Yield :class:`ChatDelta` items as text arrives, then one :class:`ChatResult`.

        Raises ``CircuitOpenError`` at once while the breaker is open; :class:`LLMUnavailable` when
        every attempt failed before the first token; :class:`LLMRequestError` when the server
        rejected the request; :class:`LLMStreamError` when the stream broke after text had flowed.
        ``max_tokens`` is sent as ``max_tokens`` (what llama.cpp and most compatible servers know).
        Without it llama.cpp generates until the context is full.

        A caller that may stop reading early should wrap the call in ``contextlib.aclosing`` so the
        HTTP stream is closed (and the breaker released) at once rather than when the generator is
        garbage-collected. The token counting for the result happens after ``latency_ms`` is taken.
        """
        if not messages:
            raise ValueError("stream_chat needs at least one message")
        started = time.perf_counter()
        request: dict[str, Any] = {"model": model or self.model, "messages": list(messages), "stream": True}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if temperature is not None:
            request["temperature"] = temperature

        stream: AsyncStream[object] | None = None
        text_parts: list[str] = []
        with self.guarded():
            try:
                (stream, first_chunks), attempts = await self.retried(lambda: self._open_once(request))
                finish_reason: str | None = None
                usage: dict[str, Any] | None = None
                served_model = request["model"]
                ttft_ms: float | None = None
                pending = list(first_chunks)
                while True:
                    try:
                        chunk = pending.pop(0) if pending else await self._next_chunk(stream)
                    except Exception as exc:
                        if finish_reason is not None:
                            # The answer was complete; only the trailing usage chunk / [DONE] got lost.
                            logger.warning("LLM stream from %s broke after its finish_reason: %s", self.base_url, exc)
                            break
                        raise self._broken(exc, text_parts) from exc
                    if chunk is None:
                        break
                    if not isinstance(chunk, dict):
                        continue  # not a chunk object; a stream of nothing else ends without a finish_reason
                    served_model = served_model_name(chunk.get("model")) or served_model
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    piece, finished = first_choice(chunk)
                    if piece:
                        if ttft_ms is None:
                            ttft_ms = (time.perf_counter() - started) * 1000.0
                        text_parts.append(piece)
                        yield ChatDelta(text=piece, seq=len(text_parts) - 1)
                    if finished:
                        finish_reason = finished
                if finish_reason is None:
                    raise LLMStreamError(
                        f"LLM stream from {self.base_url} ended without a finish_reason after "
                        f"{len(text_parts)} deltas: the answer is incomplete",
                        partial_text="".join(text_parts),
                    )
                latency_ms = (time.perf_counter() - started) * 1000.0
            finally:
                if stream is not None:
                    try:
                        await stream.close()
                    except Exception as exc:  # the connection may already be gone; the outcome stands
                        logger.debug("closing the LLM stream from %s failed: %s", self.base_url, exc)

        text = "".join(text_parts)
        yield ChatResult(
            text=text,
            finish_reason=finish_reason,
            usage=await self._usage(usage, messages, text),
            model=served_model,
            ttft_ms=ttft_ms,
            latency_ms=latency_ms,
            attempts=attempts,
        )

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatResult:
        """Run :meth:`stream_chat` to its end and return the result (tools, tests, probes)."""
        async for event in self.stream_chat(messages, model=model, max_tokens=max_tokens, temperature=temperature):
            if isinstance(event, ChatResult):
                return event
        raise AssertionError("stream_chat ended without a result")  # pragma: no cover

    def _broken(self, exc: BaseException, text_parts: list[str]) -> LLMStreamError:
        return LLMStreamError(
            f"LLM stream from {self.base_url} broke after {len(text_parts)} deltas "
            f"({sum(map(len, text_parts))} chars); the answer is incomplete: {type(exc).__name__}: {exc}",
            partial_text="".join(text_parts),
        )

    async def _next_chunk(self, stream: AsyncStream[object]) -> object | None:
        try:
            async with asyncio.timeout(self.timeout):
                return await stream.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError as exc:
            raise _StreamStalled(f"no data from the LLM stream for {self.timeout:.0f} s") from exc
        except openai.OpenAIError:
            raise  # an error event in the stream, or the SDK's own mapping: already says what happened
        except Exception as exc:
            # The transport's errors (a cut connection) and the SSE decoder's (an event that is not JSON)
            # are not the SDK's: name them here so they are retried before the first token, and reported.
            raise _StreamGarbled(f"reading the stream failed: {type(exc).__name__}: {exc}") from exc

    async def _open_once(self, request: dict[str, Any]) -> tuple[AsyncStream[object], list[object]]:
        """Open the stream and read up to the first text: one attempt.

        Returns the stream and the chunks read so far (the last one carries the first text, or the
        stream is finished).
        """
        if self._send_stream_options:
            try:
                return await self._open_and_read_to_first_text(
                    {**request, "stream_options": {"include_usage": True}}
                )
            except openai.BadRequestError as exc:
                if not _rejects_stream_options(exc):
                    raise
                logger.info("LLM at %s rejects stream_options; not sending it again", self.base_url)
                self._send_stream_options = False
        return await self._open_and_read_to_first_text(request)

    async def _open_and_read_to_first_text(self, request: dict[str, Any]) -> tuple[AsyncStream[object], list[object]]:
        # The SDK's low-level post: chunks stay JSON objects (see the module docstring for why).
        stream = await self._client.post(
            "/chat/completions", body=request, cast_to=object, stream=True, stream_cls=AsyncStream[object]
        )
        first: list[object] = []
        try:
            while True:
                chunk = await self._next_chunk(stream)
                if chunk is None:
                    if not any(first_choice(c)[1] for c in first):
                        raise _StreamEndedEarly(
                            "the stream ended before any text and without a finish_reason (llama.cpp's server "
                            "does this when the prompt does not fit its context window)"
                        )
                    return stream, first
                first.append(chunk)
                if first_choice(chunk)[0]:
                    return stream, first
                if len(first) > _MAX_CHUNKS_BEFORE_TEXT:
                    raise _StreamEndedEarly(f"the stream sent {len(first)} events without text or a finish_reason")
        except BaseException:
            await stream.close()
            raise

    # -- token accounting -------------------------------------------------------------------------

    async def _usage(
        self, reported: dict[str, Any] | None, messages: Sequence[ChatMessage], text: str
    ) -> TokenUsage | None:
        if reported is not None:
            usage = provider_usage(reported)
            if usage is not None:
                return usage
            logger.warning("LLM at %s sent usage without token counts (%r); counting instead", self.base_url, reported)
        if not self._usage_missing_logged:
            self._usage_missing_logged = True
            logger.info("LLM at %s sends no usage in streams; counting tokens with a tokenizer", self.base_url)
        try:
            return await self.count_usage(messages, text)
        except TokenCountUnavailable as exc:
            logger.warning("token usage of a completion from %s is unknown: %s", self.base_url, exc)
            return None

    async def count_usage(self, messages: Sequence[ChatMessage], completion: str) -> TokenUsage:
        """Count prompt and completion tokens with a tokenizer (see the module docstring)."""
        prompt_tokens, completion_tokens = await asyncio.gather(
            self.count_tokens(self.prompt_renderer(messages)),
            self.count_tokens(completion) if completion else _zero(),
        )
        return TokenUsage(input_tokens=prompt_tokens, output_tokens=completion_tokens, counted_by="tokenizer")

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: the server's tokenizer if it has one, else the local tokenizer.

        Special tokens written in the text (``<|im_start|>``) count as one token each, as in a prompt.
        Raises :class:`TokenCountUnavailable` when neither tokenizer is available.
        """
        if self._server_tokenizer is not False:
            try:
                data = await self._client.post(
                    self.tokenizer_url, cast_to=object, body={"input": text, "model": self.model}
                )
            except openai.APIStatusError as exc:
                if exc.status_code not in (404, 405):
                    if self.local_tokenizer is None:
                        raise TokenCountUnavailable(f"tokenize endpoint {self.tokenizer_url} failed: {exc}") from exc
                else:
                    logger.info("LLM at %s has no tokenize endpoint (HTTP %d)", self.base_url, exc.status_code)
                    self._server_tokenizer = False
            except openai.OpenAIError as exc:
                if self.local_tokenizer is None:
                    raise TokenCountUnavailable(f"tokenize endpoint {self.tokenizer_url} failed: {exc}") from exc
            else:
                count = data.get("count") if isinstance(data, dict) else None
                if isinstance(count, int) and count >= 0:
                    self._server_tokenizer = True
                    return count
                logger.info("LLM at %s answered the tokenize request with something else", self.base_url)
                self._server_tokenizer = False
        if self.local_tokenizer is None:
            raise TokenCountUnavailable(
                f"no tokenizer for {self.base_url}: the server has no tokenize endpoint and no local "
                "tokenizer was configured"
            )
        return await asyncio.to_thread(self.local_tokenizer.count, text)

    # -- health and lifecycle ---------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server answers ``GET /models`` within ``health_timeout``; never raises.

        It neither goes through nor changes the circuit breaker, so it reports the server, not the
        breaker. On llama-cpp-python this endpoint waits for the model lock: a server busy with a
        long generation can look unhealthy for the duration.
        """
        try:
            await self._client.models.list(timeout=self.health_timeout)
        except openai.OpenAIError as exc:
            logger.debug("LLM health check of %s failed: %s", self.base_url, exc)
            return False
        return True


async def _zero() -> int:
    return 0
