"""The embedding backends against real models: sentence-transformers on the packaged all-MiniLM-L6-v2, and the
OpenAI-compatible client against llama.cpp's server in embedding mode (SmolLM2, see connectors/embedding_server).

Nothing is mocked: a dead port is a port nothing listens on; a 4xx is what the real server answers for a path
it does not serve.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.broker import free_port
from connectors.circuit import CircuitBreaker, CircuitState
from connectors.embedding_server import EmbeddingModelServer
from connectors.embeddings import LocalEmbedder, OpenAIEmbedder
from connectors.exceptions import CircuitOpenError, EmbeddingsRequestError, EmbeddingsUnavailable
from connectors.model_server import SMOLLM2_MODEL_ALIAS

pytestmark = pytest.mark.integration

TEXTS = [
    "A kitten naps in the afternoon sun.",
    "Felines purr and doze on warm windowsills.",
    "The central bank raised interest rates.",
    "Inflation slowed after the rate increase.",
    "Knead the dough and bake the bread.",
]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
async def local_embedder() -> AsyncIterator[LocalEmbedder]:
    embedder = LocalEmbedder(batch_size=2)
    await embedder.ensure_loaded()
    yield embedder
    await embedder.close()


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingModelServer]:
    log = tmp_path_factory.mktemp("embedding-server") / "server.log"
    with EmbeddingModelServer(log_path=log, n_ctx=512) as server:
        yield server


async def test_local_model_makes_unit_vectors_that_group_by_meaning(local_embedder: LocalEmbedder) -> None:
    result = await local_embedder.embed(TEXTS)

    assert await local_embedder.dimension() == 384
    assert len(result.vectors) == len(TEXTS) and all(len(vector) == 384 for vector in result.vectors)
    assert all(abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-4 for vector in result.vectors)
    cats, felines, bank, inflation, bread = result.vectors
    assert cosine(cats, felines) > cosine(cats, bank) + 0.2
    assert cosine(bank, inflation) > cosine(bank, bread) + 0.2
    assert result.model == "all-MiniLM-L6-v2"


async def test_local_model_batches_do_not_change_vectors_and_tokens_are_exact(local_embedder: LocalEmbedder) -> None:
    batched = await local_embedder.embed(TEXTS)  # batch_size=2: three model calls
    one_by_one = [await local_embedder.embed([text]) for text in TEXTS]

    for vector, single in zip(batched.vectors, one_by_one, strict=True):
        assert cosine(vector, single.vectors[0]) > 0.9999
    tokenizer = local_embedder.load().tokenizer
    assert batched.tokens == [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    assert batched.tokens == [single.tokens[0] for single in one_by_one if single.tokens]


async def test_openai_client_against_llama_cpp_embeddings(embedding_server: EmbeddingModelServer) -> None:
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS * 2)]  # 10 texts, distinct
    small = OpenAIEmbedder(embedding_server.base_url, None, SMOLLM2_MODEL_ALIAS, batch_size=3)
    whole = OpenAIEmbedder(embedding_server.base_url, None, SMOLLM2_MODEL_ALIAS, batch_size=100)
    try:
        batched = await small.embed(texts)  # four requests
        at_once = await whole.embed(texts)
        single = await whole.embed([texts[7]])
    finally:
        await small.close()
        await whole.close()

    assert len(batched.vectors) == 10 and {len(vector) for vector in batched.vectors} == {576}
    assert await small.dimension() == 576
    for a, b in zip(batched.vectors, at_once.vectors, strict=True):
        assert cosine(a, b) > 0.999, "order and content must not depend on how texts are batched"
    assert cosine(batched.vectors[7], single.vectors[0]) > 0.999
    assert batched.tokens is not None and at_once.tokens is not None
    assert sum(batched.tokens) == sum(at_once.tokens) > 0, "the provider's counts add up whatever the batching"
    assert small.breaker.state is CircuitState.CLOSED


async def test_openai_client_rejected_request_does_not_count_against_the_server(
    embedding_server: EmbeddingModelServer,
) -> None:
    base = embedding_server.base_url.removesuffix("/v1") + "/no-such-api/v1"
    embedder = OpenAIEmbedder(base, None, SMOLLM2_MODEL_ALIAS, breaker=CircuitBreaker("t", failure_threshold=1))
    try:
        with pytest.raises(EmbeddingsRequestError) as raised:
            await embedder.embed(["hello"])
    finally:
        await embedder.close()

    assert raised.value.status_code == 404
    assert embedder.breaker.state is CircuitState.CLOSED


async def test_openai_client_retries_a_dead_port_then_opens_its_circuit() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    breaker = CircuitBreaker("embeddings dead", failure_threshold=2, reset_timeout=60)
    embedder = OpenAIEmbedder(url, None, "any", max_retries=2, backoff_initial=0.05, backoff_max=0.1,
                              connect_timeout=1.0, breaker=breaker)
    try:
        for _ in range(2):
            with pytest.raises(EmbeddingsUnavailable, match="after 3 attempts"):
                await embedder.embed(["hello"])
        started = time.monotonic()
        with pytest.raises(CircuitOpenError, match="circuit open"):
            await embedder.embed(["hello"])
        assert time.monotonic() - started < 0.05, "an open circuit fails at once"
        assert not await embedder.health()
    finally:
        await embedder.close()

    assert breaker.state is CircuitState.OPEN
