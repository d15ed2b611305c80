"""The embedding agent with other backends and with its dependencies down: a real broker and worker each.

* The ``openai`` backend end to end: the worker calls llama.cpp's server in embedding mode over HTTP.
* Dependencies down: the embeddings endpoint and Qdrant are ports nothing listens on; every job is
  retried by the connectors, then answered ``failed`` and dead-lettered — nothing is lost, and once the
  circuit is open jobs fail at once with a clear error.
* Dependencies answering garbage: a proxy in front of the real embedding server answers 500s, pages
  that are not JSON, vectors of the wrong size or with NaN; those jobs fail with the reason, the
  others are served.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
from aiohttp import web

from connectors.broker import free_port
from connectors.embedding_server import EmbeddingModelServer
from connectors.model_server import SMOLLM2_MODEL_ALIAS
from schemas import EmbeddingJob, decode_event
from streams.dlq import parse_dlq_headers
from tests.integration.conftest import Stack
from tests.support.embedding_client import EmbeddingClient
from tests.support.faulty_http import FaultyServer, Reply, status

pytestmark = pytest.mark.integration


@pytest.fixture
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingModelServer]:
    log = tmp_path_factory.mktemp("embedding-server") / "server.log"
    with EmbeddingModelServer(log_path=log, n_ctx=512) as server:
        yield server


async def test_openai_backend_end_to_end(stack_factory: Callable[[], Stack],
                                         embedding_server: EmbeddingModelServer) -> None:
    stack = stack_factory()
    worker = stack.worker(SOMA_EMBEDDINGS_BACKEND="openai", SOMA_EMBEDDINGS_BASE_URL=embedding_server.base_url,
                          SOMA_EMBEDDINGS_MODEL=SMOLLM2_MODEL_ALIAS, SOMA_EMBEDDINGS_BATCH_SIZE="2")
    worker.wait_ready("embeddings")
    client = await EmbeddingClient(stack.bootstrap).start()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    documents = [{"id": f"d{i}", "text": text} for i, text in enumerate([
        "The lighthouse keeper climbs the stairs at dusk.",
        "Quarterly revenue grew by twelve percent.",
        "Sourdough needs a lively starter and patience.",
    ])]
    try:
        upserted = await client.ask({"tenant": tenant, "job": "upsert", "collection": "smol",
                                     "documents": documents}, timeout=120)
        # SmolLM2 is a chat model, not a retrieval model: search with a stored text, which must come first.
        found = await client.ask({"tenant": tenant, "job": "search", "collection": "smol",
                                  "query": documents[1]["text"], "top_k": 3})
        usage = await client.usage_of(upserted.job_id)
    finally:
        await client.stop()

    assert upserted.status == "ok" and upserted.upserted == 3, upserted.error
    assert found.status == "ok" and found.hits[0].doc_id == "d1" and found.hits[0].score > 0.99
    assert usage.provider == "openai" and usage.model == SMOLLM2_MODEL_ALIAS and usage.input_tokens > 10
    assert "embedded 3 texts of 1 jobs in 2 model batches" in worker.tail_log(400)


async def test_dependencies_down_jobs_are_retried_then_failed_and_dead_lettered(
    stack_factory: Callable[[], Stack],
) -> None:
    stack = stack_factory()
    embeddings_url = f"http://127.0.0.1:{free_port()}/v1"
    qdrant_url = f"http://127.0.0.1:{free_port()}"
    worker = stack.worker(SOMA_EMBEDDINGS_BACKEND="openai", SOMA_EMBEDDINGS_BASE_URL=embeddings_url,
                          SOMA_EMBEDDINGS_MODEL="text-embedding-3-small", QDRANT_URL=qdrant_url,
                          SOMA_QDRANT_TIMEOUT_SECONDS="1", SOMA_EMBEDDINGS_TIMEOUT_SECONDS="1")
    worker.wait_ready("embeddings")
    client = await EmbeddingClient(stack.bootstrap).start()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    try:
        embed_ids = await client.send(
            {"tenant": tenant, "job": "upsert", "collection": "c", "documents": [{"id": "d", "text": "text"}]},
            {"tenant": tenant, "job": "search", "collection": "c", "query": "text"},
        )
        embed_results = [await client.result(job_id, timeout=60) for job_id in embed_ids]
        # Deletes need no embedding: they reach Qdrant, which is down. The breaker opens after 5 failed calls.
        delete_ids = await client.send(*[
            {"tenant": tenant, "job": "delete", "collection": "c", "doc_ids": [f"d{i}"]} for i in range(7)
        ])
        delete_results = [await client.result(job_id, timeout=90) for job_id in delete_ids]
        letters = [await client.dead_letter(job_id) for job_id in embed_ids + delete_ids]
    finally:
        await client.stop()

    for result in embed_results:
        assert result.status == "failed"
        assert result.error and embeddings_url in result.error and "unavailable after 4 attempts" in result.error
    for result in delete_results[:5]:
        assert result.status == "failed" and result.error and "unavailable" in result.error
        assert "after 3 attempts" in result.error, result.error
    assert any(result.error and "circuit open" in result.error for result in delete_results[5:]), \
        [result.error for result in delete_results]
    for job_id, letter in zip(embed_ids + delete_ids, letters, strict=True):
        headers = parse_dlq_headers(letter.headers)
        assert headers.topic == "soma.embedding.jobs" and headers.error_message
        assert decode_event(letter.value or b"", EmbeddingJob).event_id == job_id
    assert all(len(client.answers(job_id)) == 1 for job_id in embed_ids + delete_ids)
    assert not [r for r in client.usage.seen if r.value and tenant.encode() in r.value], "nothing was embedded"
    log = worker.tail_log(600)
    assert "embeddings request to" in log and "retrying" in log
    assert "Qdrant call to" in log and "retrying" in log


def _spoil_vectors(server: FaultyServer, spoil: Callable[[list[float]], list[float]]) -> Reply:
    """The real server's answer with each vector passed through ``spoil``, sent as JSON (NaN as NaN)."""
    async def reply(request: web.Request) -> web.StreamResponse:
        code, _, body = await server.forward(request)
        payload = json.loads(body)
        for item in payload.get("data", []):
            item["embedding"] = spoil(item["embedding"])
        return web.Response(status=code, text=json.dumps(payload), content_type="application/json")
    return reply


async def test_an_embeddings_endpoint_answering_errors_and_garbage_fails_only_those_jobs(
    stack_factory: Callable[[], Stack], embedding_server: EmbeddingModelServer,
) -> None:
    """llama.cpp's embedding server behind a proxy that spoils some of its replies."""
    proxy = await FaultyServer(upstream=embedding_server.base_url.removesuffix("/v1")).start()
    stack = stack_factory()
    worker = stack.worker(SOMA_EMBEDDINGS_BACKEND="openai", SOMA_EMBEDDINGS_BASE_URL=f"{proxy.url}/v1",
                          SOMA_EMBEDDINGS_MODEL=SMOLLM2_MODEL_ALIAS)
    worker.wait_ready("embeddings")
    client = await EmbeddingClient(stack.bootstrap).start()
    tenant = f"t-{uuid.uuid4().hex[:8]}"

    def upsert(doc: str) -> dict[str, object]:
        return {"tenant": tenant, "job": "upsert", "collection": "smol",
                "documents": [{"id": doc, "text": f"The lighthouse keeper {doc} climbs the stairs."}]}

    faults: list[tuple[Reply | None, str | None]] = [
        (None, None),
        (status(500, "<html><h1>500 Internal Server Error</h1></html>"), "unavailable after 4 attempts"),
        (status(200, "<html>maintenance</html>"), "not an embeddings response"),
        (status(200, '{"data": [{"index": 0, "embedding"', "application/json"), "not an embeddings response"),
        (None, None),  # a success in between: the breaker counts consecutive failures
        (_spoil_vectors(proxy, lambda vector: vector[:-1]), "dimensions"),
        (_spoil_vectors(proxy, lambda vector: [float("nan"), *vector[1:]]), "not finite"),
        (None, None),
    ]
    results, job_ids = [], []
    try:
        for index, (reply, _) in enumerate(faults):
            proxy.reply = reply
            (job_id,) = await client.send(upsert(f"d{index}"))
            job_ids.append(job_id)
            results.append(await client.result(job_id, timeout=120))
        proxy.reply = None
        found = await client.ask({"tenant": tenant, "job": "search", "collection": "smol",
                                  "query": "The lighthouse keeper d7 climbs the stairs.", "top_k": 1})
        letters = {job_id: await client.dead_letter(job_id) for job_id, (_, reason) in zip(job_ids, faults,
                                                                                             strict=True) if reason}
    finally:
        await client.stop()
        await proxy.stop()

    for result, (_, reason) in zip(results, faults, strict=True):
        if reason is None:
            assert result.status == "ok" and result.upserted == 1, result.error
        else:
            assert result.status == "failed" and reason in (result.error or ""), (reason, result.error)
    for letter in letters.values():
        headers = parse_dlq_headers(letter.headers)
        assert headers.error_class == "EmbeddingsUnavailable" and headers.error_message
    assert found.status == "ok" and found.hits[0].doc_id == "d7", "no spoiled vector was stored"
    assert "agent embeddings crashed" not in worker.tail_log(2000)
