"""The clients of the LLM, the embeddings endpoint and Qdrant against servers that answer nonsense.

Each dependency is replaced by :class:`tests.support.faulty_http.FaultyServer` answering what broken
servers and proxies answer. Every such reply must become the connector's own error with a reason
(``LLMUnavailable`` / ``LLMStreamError``, ``EmbeddingsUnavailable``, ``VectorStoreError``) — the error
the agents turn into a ``failed`` answer and a DLQ entry — never a stray ``AttributeError`` or
``JSONDecodeError`` from deep inside a library, and never a wrong value passed on as a right one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from connectors.circuit import CircuitBreaker
from connectors.embeddings import OpenAIEmbedder
from connectors.exceptions import (
    EmbeddingsUnavailable,
    LLMStreamError,
    LLMUnavailable,
    VectorStoreError,
)
from connectors.llm import ChatClient
from connectors.vectors import VectorStore
from tests.support.faulty_http import FaultyServer, sse, status

pytestmark = pytest.mark.integration

HTML_500 = "<html><body><h1>502 Bad Gateway</h1></body></html>"
MESSAGES = [{"role": "user", "content": "Hi"}]


def _chunk(text: str | None = None, finish: str | None = None, **extra: object) -> str:
    delta = {"content": text} if text is not None else {}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


@pytest.fixture
async def server() -> AsyncIterator[FaultyServer]:
    server = await FaultyServer().start()
    yield server
    await server.stop()


def _chat(server: FaultyServer, retries: int = 1) -> ChatClient:
    return ChatClient(f"{server.url}/v1", "k", "m", timeout=5, max_retries=retries, backoff_initial=0.01,
                      backoff_max=0.02, server_tokenizer=False, breaker=CircuitBreaker("t", failure_threshold=100))


# -- the LLM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, reason", [
    (status(500, HTML_500), "InternalServerError"),
    (sse(["<html>not json</html>"]), "reading the stream failed"),
    (sse([json.dumps({"id": "x", "object": "chat.completion.chunk"}), "[DONE]"]), "ended before any text"),
    (sse([json.dumps([1, 2]), json.dumps("text"), json.dumps({"choices": "x"}), "[DONE]"]), "ended before any text"),
    (sse([json.dumps({"choices": [{"index": 0, "delta": {"content": 7}}]})] * 3), "ended before any text"),
    (sse([_chunk("")], cut=True), "unavailable"),
])
async def test_llm_garbage_before_the_first_token_is_unavailable_after_retries(
    server: FaultyServer, reply: object, reason: str,
) -> None:
    server.reply = reply  # type: ignore[assignment]
    async with _chat(server) as client:
        with pytest.raises(LLMUnavailable) as raised:
            await client.complete(MESSAGES)  # type: ignore[arg-type]
    assert "after 2 attempts" in str(raised.value) and reason in str(raised.value), raised.value
    assert len(server.requests) == 2


@pytest.mark.parametrize("tail", [["<garbage>"], []])
async def test_llm_garbage_or_a_cut_after_text_is_a_stream_error(server: FaultyServer, tail: list[str]) -> None:
    server.reply = sse([_chunk("Hello"), _chunk(" there"), *tail], cut=not tail)
    async with _chat(server) as client:
        with pytest.raises(LLMStreamError) as raised:
            await client.complete(MESSAGES)  # type: ignore[arg-type]
    assert raised.value.partial_text == "Hello there"
    assert len(server.requests) == 1, "text had flowed: not retried"


async def test_llm_nonsense_metadata_does_not_spoil_a_complete_answer(server: FaultyServer) -> None:
    server.reply = sse([
        _chunk("Hi", model="x" * 10_000),
        _chunk(finish="stop", model="line\nbreak"),
        json.dumps({"choices": [], "usage": {"prompt_tokens": 10**30, "completion_tokens": True}}),
        "[DONE]",
    ])
    async with _chat(server) as client:
        result = await client.complete(MESSAGES)  # type: ignore[arg-type]
    assert (result.text, result.finish_reason, result.model, result.usage) == ("Hi", "stop", "m", None)


# -- the embeddings endpoint ----------------------------------------------------------------------


def _embeddings_reply(vectors: list[list[object]], usage: object = None) -> object:
    body = {"object": "list", "model": "e",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}
    if usage is not None:
        body["usage"] = usage
    # json.dumps writes NaN as the bare literal NaN, as broken servers do.
    return status(200, json.dumps(body), "application/json")


@pytest.mark.parametrize("reply, reason", [
    (status(500, HTML_500), "unavailable after 2 attempts"),
    (status(200, "<html>maintenance</html>"), "not an embeddings response"),
    (status(200, "{not json", "application/json"), "not an embeddings response"),
    (status(200, "[1, 2, 3]", "application/json"), "not an embeddings response"),
    (status(200, json.dumps({"data": "nope"}), "application/json"), "not an embeddings response"),
    (status(200, json.dumps({"data": [{"index": "0", "embedding": [1.0]}]}), "application/json"),
     "not an embeddings response"),
    (_embeddings_reply([[0.1, float("nan"), 0.3]]), "not finite"),
    (_embeddings_reply([[0.1, float("inf"), 0.3]]), "not finite"),
    (_embeddings_reply([[0.1, "0.2", 0.3]]), "one flat vector"),
    (_embeddings_reply([[[0.1, 0.2], [0.3, 0.4]]]), "one flat vector"),
    (_embeddings_reply([]), "0 vectors for 1 texts"),
])
async def test_embeddings_garbage_is_unavailable_with_a_reason(server: FaultyServer, reply: object,
                                                               reason: str) -> None:
    server.reply = reply  # type: ignore[assignment]
    embedder = OpenAIEmbedder(f"{server.url}/v1", "k", "e", max_retries=1, backoff_initial=0.01, backoff_max=0.02)
    try:
        with pytest.raises(EmbeddingsUnavailable) as raised:
            await embedder.embed(["one text"])
    finally:
        await embedder.close()
    assert reason in str(raised.value), raised.value


async def test_embeddings_of_another_dimension_than_before_are_refused(server: FaultyServer) -> None:
    embedder = OpenAIEmbedder(f"{server.url}/v1", "k", "e", max_retries=0)
    try:
        server.reply = _embeddings_reply([[0.1, 0.2, 0.3]], usage={"prompt_tokens": 10**30, "total_tokens": 1})
        first = await embedder.embed(["one"])
        server.reply = _embeddings_reply([[0.1, 0.2]])
        with pytest.raises(EmbeddingsUnavailable, match=r"\[2\] dimensions \(expected 3\)"):
            await embedder.embed(["two"])
    finally:
        await embedder.close()
    assert first.tokens is None, "an absurd usage is not believed"


# -- Qdrant ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    status(500, HTML_500),
    status(200, "<html>ok</html>"),
    status(200, "{not json", "application/json"),
    status(200, json.dumps({"result": "nope", "status": "ok", "time": 0}), "application/json"),
    status(200, json.dumps([1, 2]), "application/json"),
])
async def test_qdrant_garbage_is_a_vector_store_error_with_a_reason(server: FaultyServer, reply: object) -> None:
    server.reply = reply  # type: ignore[assignment]
    store = VectorStore(url=server.url, timeout=2, attempts=2, backoff_initial=0.01, backoff_max=0.02)
    try:
        with pytest.raises(VectorStoreError) as raised:
            await store.search("c", "t", [0.1, 0.2], limit=3)
        with pytest.raises(VectorStoreError):
            await store.collection_dimension("c")
    finally:
        await store.close()
    assert str(raised.value) and server.url in str(raised.value), raised.value
