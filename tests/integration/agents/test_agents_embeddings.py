"""The embedding agent end to end: real broker, a real worker with the real all-MiniLM-L6-v2 model and real
Qdrant (local mode in the worker's data dir). Everything is checked through Kafka — the worker owns the
Qdrant directory while it runs; the last test stops it and reads the same directory with the retrieval
function the conversation agent uses.

One worker serves the module; each test uses its own tenants and collections.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.memory import memory_from_settings, point_id
from connectors.vectors import VectorStore
from schemas import EmbeddingJob, decode_event
from streams.dlq import parse_dlq_headers
from streams.settings import Settings
from tests.integration.conftest import Stack
from tests.support.embedding_client import EmbeddingClient
from tests.support.stack import start_broker

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2"
MAX_DOCUMENT_CHARS = 6000
WRONG_DIMENSION_COLLECTION = "made-by-another-model"

# The target shares no content word with the query; one distractor shares several words but not the meaning.
QUERY = "my kitten naps all afternoon"
DOCUMENTS = [
    {"id": "cats", "text": "Felines purr when content and doze for hours on warm windowsills.",
     "metadata": {"topic": "pets", "lang": "en", "year": 2021}},
    {"id": "train", "text": "The afternoon train timetable lists all departures for my commute.",
     "metadata": {"topic": "travel", "lang": "en", "year": 2022}},
    {"id": "rates", "text": "The central bank raised interest rates to slow down inflation.",
     "metadata": {"topic": "finance", "lang": "en", "year": 2023}},
    {"id": "bread", "text": "Knead the dough, let it rise overnight, then bake it until golden.",
     "metadata": {"topic": "cooking", "lang": "en", "year": 2023}},
    {"id": "stars", "text": "Astronomers measured the distance to a faraway galaxy with a telescope.",
     "metadata": {"topic": "science", "lang": "en", "year": 2024}},
    {"id": "hund", "text": "Der Hund schläft im Garten unter dem Apfelbaum.",
     "metadata": {"topic": "pets", "lang": "de", "year": 2024}},
]


def long_text(sentences: int) -> str:
    """Distinct sentences, so chunks differ: ~70 characters each."""
    return " ".join(f"Sentence number {i} tells part {i * 7 % 13} of a long story about rivers."
                    for i in range(sentences))


@pytest.fixture(scope="module")
def embed_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("embedstack")
    stack = Stack(start_broker(workdir), redis_url, workdir)
    try:
        # A collection of 8-dimensional vectors, as if made by another model, before the worker owns Qdrant.
        seed = VectorStore(path=workdir / "worker" / "data" / "qdrant")
        asyncio.run(seed.ensure_collection(WRONG_DIMENSION_COLLECTION, 8))
        seed.close_sync()
        worker = stack.worker(SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS=str(MAX_DOCUMENT_CHARS),
                              SOMA_EMBEDDINGS_BATCH_SIZE="16")
        worker.wait_ready("embeddings")
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
async def client(embed_stack: Stack) -> AsyncIterator[EmbeddingClient]:
    client = await EmbeddingClient(embed_stack.bootstrap).start()
    yield client
    await client.stop()


def tenant_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def upsert(client: EmbeddingClient, tenant: str, collection: str, documents: list[dict[str, Any]]) -> Any:
    result = await client.ask({"tenant": tenant, "job": "upsert", "collection": collection, "documents": documents},
                              timeout=120)
    assert result.status == "ok", result.error
    return result


async def search(client: EmbeddingClient, tenant: str, collection: str, query: str = QUERY, **extra: Any) -> Any:
    return await client.ask({"tenant": tenant, "job": "search", "collection": collection, "query": query, **extra})


async def test_search_finds_the_document_by_meaning_not_shared_words(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    upserted = await upsert(client, tenant, "notes", DOCUMENTS)
    assert upserted.upserted == len(DOCUMENTS)  # one chunk each
    assert upserted.causation_id == upserted.job_id and upserted.tenant == tenant

    result = await search(client, tenant, "notes", top_k=3)

    assert result.status == "ok", result.error
    assert result.hits[0].doc_id == "cats", [(h.doc_id, h.score) for h in result.hits]
    assert len(result.hits) == 3
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert result.hits[0].score > result.hits[1].score + 0.1, "the match should stand out from the distractors"
    top = result.hits[0]
    assert top.chunk == 0 and top.text == DOCUMENTS[0]["text"] and top.metadata == DOCUMENTS[0]["metadata"]
    assert result.latency_ms is not None and result.latency_ms > 0

    for job_id, least in ((upserted.job_id, 60), (result.job_id, 5)):
        usage = await client.usage_of(job_id)
        assert usage.kind == "embedding" and usage.provider == "local" and usage.model == MODEL
        assert usage.tenant == tenant and usage.input_tokens >= least
    record = next(r for r in client.results.seen if r.value and result.job_id.encode() in r.value)
    assert record.key == tenant.encode()


async def test_score_threshold_and_top_k(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    await upsert(client, tenant, "notes", DOCUMENTS)

    everything = await search(client, tenant, "notes", top_k=50)
    strict = await search(client, tenant, "notes", top_k=50, score_threshold=everything.hits[0].score - 0.01)

    assert len(everything.hits) == len(DOCUMENTS)
    assert [hit.doc_id for hit in strict.hits] == ["cats"]


async def test_reupsert_overwrites_and_a_shorter_document_loses_its_surplus_chunks(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    text = long_text(60)  # ~4,300 characters: several 800-character chunks
    first = await upsert(client, tenant, "books", [{"id": "saga", "text": text}])
    chunks = first.upserted
    assert chunks >= 5

    again = await upsert(client, tenant, "books", [{"id": "saga", "text": text}])
    assert (again.upserted, again.deleted) == (chunks, 0)
    found = await search(client, tenant, "books", query="a long story about rivers", top_k=100)
    assert len(found.hits) == chunks, "a replayed upsert must overwrite, not duplicate"
    assert sorted(hit.chunk for hit in found.hits) == list(range(chunks))

    shorter = await upsert(client, tenant, "books", [{"id": "saga", "text": long_text(12)}])
    assert shorter.upserted < chunks
    assert shorter.deleted == chunks - shorter.upserted
    found = await search(client, tenant, "books", query="a long story about rivers", top_k=100)
    assert sorted(hit.chunk for hit in found.hits) == list(range(shorter.upserted))


async def test_delete_by_ids_and_by_metadata_filter(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    await upsert(client, tenant, "notes", DOCUMENTS)

    by_ids = await client.ask({"tenant": tenant, "job": "delete", "collection": "notes", "doc_ids": ["cats", "nope"]})
    assert (by_ids.status, by_ids.deleted) == ("ok", 1)
    by_filter = await client.ask({"tenant": tenant, "job": "delete", "collection": "notes",
                                  "filter": {"topic": "finance"}})
    assert (by_filter.status, by_filter.deleted) == ("ok", 1)

    left = await search(client, tenant, "notes", top_k=50)
    assert sorted(hit.doc_id for hit in left.hits) == ["bread", "hund", "stars", "train"]


async def test_filters_narrow_the_search(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    await upsert(client, tenant, "notes", DOCUMENTS)

    simple = await search(client, tenant, "notes", top_k=50, filter={"topic": "pets"})
    any_of = await search(client, tenant, "notes", top_k=50, filter={"year": [2021, 2022]})
    by_doc = await search(client, tenant, "notes", top_k=50, filter={"doc_id": ["rates", "bread"]})
    qdrant = await search(client, tenant, "notes", top_k=50, filter={
        "must": [{"key": "metadata.year", "range": {"gte": 2023}}],
        "must_not": [{"key": "metadata.lang", "match": {"value": "de"}}],
    })

    assert sorted(hit.doc_id for hit in simple.hits) == ["cats", "hund"]
    assert sorted(hit.doc_id for hit in any_of.hits) == ["cats", "train"]
    assert sorted(hit.doc_id for hit in by_doc.hits) == ["bread", "rates"]
    assert sorted(hit.doc_id for hit in qdrant.hits) == ["bread", "rates", "stars"]


ADVERSARIAL_FILTERS: list[dict[str, Any]] = [
    {"must": [{"key": "tenant", "match": {"value": "{victim}"}}]},
    {"should": [{"key": "tenant", "match": {"value": "{victim}"}}, {"key": "doc_id", "match": {"value": "cats"}}]},
    {"must_not": [{"key": "tenant", "match": {"value": "{attacker}"}}]},
    {"should": [{"must": [{"key": "tenant", "match": {"any": ["{victim}", "{attacker}"]}}]}], "min_should": None},
    {"must": [{"is_empty": {"key": "nothing"}}], "should": [{"has_id": ["{victim_point}"]}]},
    {"tenant": "{victim}"},
    {"doc_id": ["cats", "rates", "hund"]},
]


def _fill(template: Any, values: dict[str, str]) -> Any:
    if isinstance(template, dict):
        return {key: _fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(item, values) for item in template]
    if isinstance(template, str):
        return re.sub(r"\{(\w+)\}", lambda match: values[match.group(1)], template)
    return template


async def test_tenant_b_never_sees_or_deletes_tenant_a_points(client: EmbeddingClient) -> None:
    victim, attacker = tenant_id(), tenant_id()
    await upsert(client, victim, "shared", DOCUMENTS)
    await upsert(client, attacker, "shared", [{"id": "mine", "text": "Attackers keep a note of their own."}])
    values = {"victim": victim, "attacker": attacker,
              "victim_point": point_id(victim, "shared", "cats", 0, MODEL)}

    plain = await search(client, attacker, "shared", top_k=50)
    assert [hit.doc_id for hit in plain.hits] == ["mine"]
    for template in ADVERSARIAL_FILTERS:
        result = await search(client, attacker, "shared", top_k=50, filter=_fill(template, values))
        assert result.status == "ok", (template, result.error)
        assert all(hit.doc_id == "mine" for hit in result.hits), (template, [h.doc_id for h in result.hits])

    own = await client.ask({"tenant": attacker, "job": "delete", "collection": "shared", "doc_ids": ["mine"]})
    assert own.deleted == 1  # from here on the attacker has no points: every delete must find nothing
    delete_jobs = [{"doc_ids": [document["id"] for document in DOCUMENTS]}] + [
        {"filter": _fill(template, values)} for template in ADVERSARIAL_FILTERS
    ]
    for extra in delete_jobs:
        result = await client.ask({"tenant": attacker, "job": "delete", "collection": "shared", **extra})
        assert result.status == "ok" and result.deleted == 0, (extra, result)
    # The attacker writes a document with the victim's id: its own copy, not the victim's.
    await upsert(client, attacker, "shared", [{"id": "cats", "text": "Overwritten by the attacker."}])

    intact = await search(client, victim, "shared", top_k=50)
    assert sorted(hit.doc_id for hit in intact.hits) == sorted(document["id"] for document in DOCUMENTS)
    cats = next(hit for hit in intact.hits if hit.doc_id == "cats")
    assert cats.text == DOCUMENTS[0]["text"]


async def test_jobs_of_many_tenants_are_embedded_together(client: EmbeddingClient, embed_stack: Stack) -> None:
    tenants = [tenant_id() for _ in range(12)]
    ids = await client.send(*[
        {"tenant": tenant, "job": "upsert", "collection": "batched",
         "documents": [{"id": f"d{i}", "text": f"Note {i} of {tenant} about gardening and tomatoes."}
                       for i in range(3)]}
        for tenant in tenants
    ])
    results = [await client.result(job_id, timeout=120) for job_id in ids]
    assert all(result.status == "ok" and result.upserted == 3 for result in results)

    log = embed_stack.workers[0].tail_log(lines=400)
    batches = [tuple(map(int, match)) for match in
               re.findall(r"embedded (\d+) texts of (\d+) jobs in (\d+) model batches", log)]
    assert any(jobs > 1 and calls < jobs for _, jobs, calls in batches), batches


async def test_duplicate_job_is_answered_once(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    job = {"event_id": str(uuid.uuid4()), "tenant": tenant, "job": "upsert", "collection": "notes",
           "documents": DOCUMENTS[:1]}
    await client.send(job, job)  # twice in one produce: most likely one batch
    first = await client.result(job["event_id"])
    await client.send(job)  # and again later
    marker = await client.ask({"tenant": tenant, "job": "search", "collection": "notes", "query": "cats"})

    assert first.status == "ok" and marker.status == "ok"
    assert len(client.answers(job["event_id"])) == 1


BAD_JOBS: list[tuple[str, dict[str, Any], str]] = [
    ("empty text", {"job": "upsert", "collection": "notes", "documents": [{"id": "blank", "text": "  \n "}]},
     "document 'blank' has no text"),
    ("too long", {"job": "upsert", "collection": "notes", "documents": [{"id": "big", "text": "x" * 6001}]},
     "the limit is 6,000"),
    ("duplicate ids", {"job": "upsert", "collection": "notes",
                       "documents": [{"id": "a", "text": "one"}, {"id": "a", "text": "two"}]}, "more than once"),
    ("unknown collection", {"job": "search", "collection": "never-created", "query": "anything"},
     "collection 'never-created' does not exist"),
    ("delete in unknown collection", {"job": "delete", "collection": "never-created", "doc_ids": ["x"]},
     "does not exist"),
    ("wrong dimension", {"job": "upsert", "collection": WRONG_DIMENSION_COLLECTION,
                         "documents": [{"id": "d", "text": "some text"}]}, "8-dimensional"),
    ("search wrong dimension", {"job": "search", "collection": WRONG_DIMENSION_COLLECTION, "query": "some text"},
     "8-dimensional"),
    ("bad filter", {"job": "search", "collection": "notes", "query": "q",
                    "filter": {"must": [{"key": "a", "match": {"value": 1.5}}]}}, "not a valid Qdrant filter"),
    ("float in simple filter", {"job": "search", "collection": "notes", "query": "q", "filter": {"score": 0.5}},
     "filter field 'score'"),
    ("bad collection name", {"job": "upsert", "collection": "../etc", "documents": [{"id": "d", "text": "t"}]},
     "is not allowed"),
]


async def test_bad_jobs_fail_with_the_reason_and_go_to_the_dlq(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    await upsert(client, tenant, "notes", DOCUMENTS[:2])  # "notes" exists for this tenant's searches
    sent = await client.send(*[{"tenant": tenant, **job} for _, job, _ in BAD_JOBS],
                             {"tenant": tenant, "job": "search", "collection": "notes", "query": QUERY})
    *bad_ids, good_id = sent

    for (name, _, reason), job_id in zip(BAD_JOBS, bad_ids, strict=True):
        result = await client.result(job_id)
        assert result.status == "failed", name
        assert result.error and reason in result.error, (name, result.error)
        letter = await client.dead_letter(job_id)
        headers = parse_dlq_headers(letter.headers)
        assert headers.topic == "soma.embedding.jobs" and reason in headers.error_message, (name, headers)
        assert decode_event(letter.value or b"", EmbeddingJob).event_id == job_id, "the DLQ keeps the original bytes"
    good = await client.result(good_id)
    assert good.status == "ok" and good.hits[0].doc_id == "cats", "bad jobs in a batch must not fail the others"


async def test_schema_invalid_job_is_answered_and_dead_lettered(client: EmbeddingClient) -> None:
    tenant = tenant_id()
    job_id = str(uuid.uuid4())
    await client.send_json({"event_id": job_id, "tenant": tenant, "job": "delete", "collection": "notes"},
                           key=tenant.encode())

    result = await client.result(job_id)
    letter = await client.dead_letter(job_id)

    assert result.status == "failed" and result.error and "doc_ids" in result.error
    assert parse_dlq_headers(letter.headers).error_class == "EventValidationError"


async def test_memory_retrieval_reads_what_the_agent_wrote(client: EmbeddingClient, embed_stack: Stack) -> None:
    """Last in the module: stops the worker, then retrieves from its Qdrant directory in this process."""
    tenant, other = tenant_id(), tenant_id()
    await upsert(client, tenant, "memories", DOCUMENTS)
    await upsert(client, other, "memories", [{"id": "other", "text": "A cat sleeps in the sun all day long."}])
    worker = embed_stack.workers[0]
    worker.stop()  # releases the Qdrant local-mode lock

    settings = Settings.model_validate({"SOMA_DATA_DIR": str(Path(worker.workdir) / "data")})
    memory = memory_from_settings(settings)
    try:
        hits = await memory.retrieve(tenant, "memories", QUERY, 2)
        filtered = await memory.retrieve(tenant, "memories", QUERY, 5, filter={"lang": "de"})
    finally:
        await memory.close()

    assert hits[0].doc_id == "cats" and len(hits) == 2
    assert [hit.doc_id for hit in filtered] == ["hund"]
    assert all(hit.doc_id != "other" for hit in hits)
