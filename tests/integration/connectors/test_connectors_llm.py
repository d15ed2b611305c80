"""The LLM client against the real embedded model server (llama.cpp on SmolLM2-135M-Instruct).

One server serves the module; the tests that kill a server or need a dead port start their own.
Nothing here is mocked: a dead port is a port nothing listens on, a crash is a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import openai
import pytest

from connectors.broker import free_port
from connectors.circuit import CircuitBreaker, CircuitState
from connectors.exceptions import (
    CircuitOpenError,
    DependencyUnavailable,
    LLMStreamError,
    LLMUnavailable,
)
from connectors.llm import ChatClient, ChatDelta, ChatMessage, ChatResult
from connectors.model_server import SMOLLM2_MODEL_ALIAS, EmbeddedModelServer

pytestmark = pytest.mark.integration

# No system message: SmolLM2-135M answers this one right with its template's default system prompt (with
# "You are a helpful assistant." it drifts into French prose).
QUESTION: list[ChatMessage] = [
    {"role": "user", "content": "What is the capital of France?"},
]
STORY: list[ChatMessage] = [
    {"role": "system", "content": "You are a storyteller."},
    {"role": "user", "content": "Write a long story about a dragon who learns to bake bread."},
]


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., ChatClient]]:
    clients: list[ChatClient] = []

    def make(server_or_url: EmbeddedModelServer | str, **kwargs: object) -> ChatClient:
        if isinstance(server_or_url, EmbeddedModelServer):
            kwargs.setdefault("prompt_renderer", server_or_url.prompt_renderer)
            url = server_or_url.base_url
        else:
            url = server_or_url
        client = ChatClient(url, "no-key", SMOLLM2_MODEL_ALIAS, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def collect(
    client: ChatClient, messages: list[ChatMessage], max_tokens: int | None = None, temperature: float | None = None
) -> tuple[list[ChatDelta], ChatResult]:
    """All the deltas and the result of one streamed completion, checking the result comes last."""
    deltas: list[ChatDelta] = []
    result: ChatResult | None = None
    async for event in client.stream_chat(messages, max_tokens=max_tokens, temperature=temperature):
        assert result is None, "nothing may follow the result"
        if isinstance(event, ChatResult):
            result = event
        else:
            deltas.append(event)
    assert result is not None
    return deltas, result


@pytest.mark.timeout(120)
async def test_streamed_deltas_make_up_the_result(
    model_server: EmbeddedModelServer, client_factory: Callable[..., ChatClient]
) -> None:
    client = client_factory(model_server)

    deltas, result = await collect(client, QUESTION, max_tokens=48, temperature=0.0)

    assert len(deltas) > 1  # streamed, not one blob
    assert [delta.seq for delta in deltas] == list(range(len(deltas)))
    assert "".join(delta.text for delta in deltas) == result.text
    assert result.text.strip()
    assert "Paris" in result.text  # a real model answering, at temperature 0
    assert result.finish_reason in {"stop", "length"}
    assert result.attempts == 1
    assert result.ttft_ms is not None and result.ttft_ms > 0
    assert result.latency_ms >= result.ttft_ms


@pytest.mark.timeout(120)
async def test_usage_is_counted_by_the_server_tokenizer(
    model_server: EmbeddedModelServer, client_factory: Callable[..., ChatClient]
) -> None:
    client = client_factory(model_server)

    _, result = await collect(client, STORY, max_tokens=24, temperature=0.0)

    usage = result.usage
    assert usage is not None
    assert usage.counted_by == "tokenizer"  # llama.cpp's stream carried no usage
    assert usage.cached_tokens == 0
    # The same prompt, not streamed: llama.cpp reports the usage of non-streamed answers itself.
    raw = openai.AsyncOpenAI(base_url=model_server.base_url, api_key="no-key", max_retries=0)
    try:
        reference = await raw.chat.completions.create(
            model=SMOLLM2_MODEL_ALIAS, messages=list(STORY), max_tokens=24, temperature=0.0  # type: ignore[arg-type]
        )
    finally:
        await raw.close()
    assert reference.usage is not None
    assert usage.input_tokens == reference.usage.prompt_tokens  # the chat template rendered exactly
    assert reference.choices[0].message.content == result.text  # temperature 0: the same answer
    assert abs(usage.output_tokens - reference.usage.completion_tokens) <= 2  # re-tokenized text
    assert 10 <= usage.output_tokens <= 26


@pytest.mark.timeout(60)
async def test_count_tokens_and_health(
    model_server: EmbeddedModelServer, client_factory: Callable[..., ChatClient]
) -> None:
    client = client_factory(model_server)

    assert await client.health() is True
    assert await client.count_tokens("Hello world") == 2
    assert await client.count_tokens("<|im_start|>user\nHi<|im_end|>\n") == 6  # special tokens count once
    assert await client_factory(f"http://127.0.0.1:{free_port()}/v1").health() is False


@pytest.mark.timeout(120)
async def test_stopping_early_frees_the_server(
    model_server: EmbeddedModelServer, client_factory: Callable[..., ChatClient]
) -> None:
    client = client_factory(model_server)
    started = time.perf_counter()
    await collect(client, QUESTION, max_tokens=16, temperature=0.0)
    unloaded = time.perf_counter() - started  # how long the short answer takes on this machine right now

    async with contextlib.aclosing(client.stream_chat(STORY, max_tokens=400, temperature=0.8)) as events:
        async for event in events:
            if isinstance(event, ChatDelta) and event.seq == 2:
                break

    assert client.breaker.state is CircuitState.CLOSED
    assert client.breaker.failure_count == 0  # the caller left; the server did nothing wrong
    started = time.perf_counter()
    _, result = await collect(client, QUESTION, max_tokens=16, temperature=0.0)
    # llama.cpp noticed the disconnect and stopped generating: the next answer does not queue
    # behind the ~400 abandoned tokens (about 6 s at this model's speed on an idle machine, far more
    # than the short answer's own time; relative, so a busy machine doesn't fail it).
    assert time.perf_counter() - started < 1.5 * unloaded + 2.0
    assert result.text.strip()


@pytest.mark.timeout(60)
async def test_dead_port_fails_after_retries_then_the_circuit_fails_fast(
    client_factory: Callable[..., ChatClient],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    breaker = CircuitBreaker(f"llm {url}", failure_threshold=2, reset_timeout=30.0)
    client = client_factory(url, max_retries=2, backoff_initial=0.05, backoff_max=0.2, breaker=breaker)

    for _ in range(2):
        with pytest.raises(LLMUnavailable) as caught:
            await collect(client, QUESTION, max_tokens=8)
        assert isinstance(caught.value, DependencyUnavailable)
        assert url in str(caught.value)
        assert "after 3 attempts" in str(caught.value)
        assert isinstance(caught.value.__cause__, openai.APIConnectionError)
    assert breaker.state is CircuitState.OPEN

    started = time.perf_counter()
    with pytest.raises(CircuitOpenError) as caught_open:
        await collect(client, QUESTION, max_tokens=8)
    elapsed = time.perf_counter() - started

    assert elapsed < 0.05  # no connection attempt, no backoff
    message = str(caught_open.value)
    assert url in message
    assert "circuit open after 2 consecutive failures" in message
    assert "next probe in" in message
    assert caught_open.value.retry_in > 29


@pytest.mark.timeout(120)
async def test_server_killed_mid_stream_raises_stream_error(
    model_server_factory: Callable[..., EmbeddedModelServer], client_factory: Callable[..., ChatClient]
) -> None:
    server = model_server_factory()
    client = client_factory(server, max_retries=3, backoff_initial=0.05)
    received: list[str] = []

    with pytest.raises(LLMStreamError) as caught:
        async for event in client.stream_chat(STORY, max_tokens=400, temperature=0.8):
            assert isinstance(event, ChatDelta), "a killed server must not produce a result"
            received.append(event.text)
            if len(received) == 3:
                server.kill()

    error = caught.value
    assert "incomplete" in str(error)
    assert error.partial_text == "".join(received)  # nothing invented, nothing lost
    assert len(received) >= 3
    assert client.breaker.failure_count == 1  # a broken stream counts against the server
    # No retry after tokens flowed: the dead server is not asked again, the next call is.
    with pytest.raises(LLMUnavailable):
        await collect(client, QUESTION, max_tokens=8)


@pytest.mark.timeout(180)
async def test_probe_closes_the_circuit_once_the_server_is_back(
    model_server_factory: Callable[..., EmbeddedModelServer], client_factory: Callable[..., ChatClient]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    breaker = CircuitBreaker(f"llm {url}", failure_threshold=1, reset_timeout=3.0)
    transitions: list[CircuitState] = []
    breaker.on_state_change(lambda name, old, new: transitions.append(new))
    client = client_factory(url, max_retries=0, breaker=breaker)

    with pytest.raises(LLMUnavailable):
        await collect(client, QUESTION, max_tokens=8)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await collect(client, QUESTION, max_tokens=8)

    server = model_server_factory(port=port)  # back on the same port (loading takes a few seconds)
    assert server.base_url == url
    await asyncio.sleep(breaker.retry_in + 0.05)

    _, result = await collect(client, QUESTION, max_tokens=16, temperature=0.0)

    assert result.text.strip()
    assert breaker.state is CircuitState.CLOSED
    assert transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


@pytest.mark.timeout(120)
async def test_streaming_rate(model_server: EmbeddedModelServer, client_factory: Callable[..., ChatClient]) -> None:
    """Not a benchmark: a floor far below the ~70 tokens/s measured, to catch a broken build (say,
    a debug llama.cpp) without being flaky on a busy machine."""
    client = client_factory(model_server)

    deltas, result = await collect(client, STORY, max_tokens=120, temperature=0.8)

    assert result.usage is not None and result.ttft_ms is not None
    streaming_s = (result.latency_ms - result.ttft_ms) / 1000.0
    rate = (len(deltas) - 1) / streaming_s if streaming_s > 0 else float("inf")
    print(f"\nstreamed {len(deltas)} deltas ({result.usage.output_tokens} tokens), ttft {result.ttft_ms:.0f} ms, "
          f"{rate:.1f} deltas/s")
    assert rate > 5
