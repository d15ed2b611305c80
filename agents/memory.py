"""Semantic memory: documents chunked, embedded and stored in Qdrant per tenant, and retrieved by meaning.

This module holds the rules the embedding agent applies (:class:`Memory`) and the retrieval the
conversation agent calls::

    hits = await shared_memory(context).retrieve(tenant, collection, query, top_k)
    # -> list[schemas.Hit]: doc_id, chunk, score (cosine similarity, best first), text, metadata

Both agents run in the same worker process and share one :class:`Memory` (:func:`shared_memory`):
Qdrant local mode may be opened by one process only, and the model is loaded once.

Stored points. One Qdrant point per chunk (see :mod:`agents.chunking` for the chunking rule) with the
id ``uuid5(POINT_NAMESPACE, json([tenant, collection, doc_id, chunk, model]))`` — the same document
upserted again overwrites its points instead of adding to them — and the payload ``tenant``,
``doc_id``, ``chunk`` (0-based), ``chunks`` (how many the document has), ``text`` (the chunk),
``start``/``end`` (its character offsets in the document), ``metadata`` (the document's) and
``model``. When a document is upserted with fewer chunks than before, its surplus chunks are deleted.
Switching the model of a collection is not supported (vectors of two models are not comparable): a
model of another vector size is refused, and one of the same size needs a new collection.

Filters (``filter`` of search and delete jobs) come in two forms:

* Simple: ``{"lang": "en", "year": 2024, "tags": ["a", "b"]}`` — every key is a field of the
  documents' ``metadata`` (dots reach into nested objects), a string/integer/boolean value must be
  equal, a list means "any of these". The key ``doc_id`` names document ids instead.
* Qdrant: an object with ``must`` / ``should`` / ``must_not`` / ``min_should``, exactly Qdrant's filter
  JSON; keys name payload fields (``metadata.lang``, ``doc_id``, ``chunk``), so ranges, ``is_empty``
  and the rest are available.

Whatever the filter says, it only narrows the job's own tenant: the vector store adds
``tenant == <job tenant>`` as a separate ``must`` condition (see :mod:`connectors.vectors`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from qdrant_client import models

from agents.chunking import Chunk, chunk_text
from agents.exceptions import JobRejected
from connectors.embeddings import Embedder, make_embedder
from connectors.vectors import VectorStore
from schemas import EmbeddingJob, Hit
from streams.engine.context import AgentContext
from streams.settings import Settings

__all__ = [
    "COLLECTION_PATTERN",
    "POINT_NAMESPACE",
    "JobPlan",
    "Memory",
    "PreparedDocument",
    "memory_from_settings",
    "parse_filter",
    "point_id",
    "shared_memory",
]

logger = logging.getLogger(__name__)

POINT_NAMESPACE = uuid.UUID("5b0e7c1e-2f3a-4c7d-9a55-6f0d2b8e1c44")
COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_QDRANT_FILTER_KEYS = frozenset({"must", "should", "must_not", "min_should"})
_UPSERT_POINTS_PER_REQUEST = 512
_SURPLUS_PROBE = 32


def point_id(tenant: str, collection: str, doc_id: str, chunk: int, model: str) -> str:
    """The deterministic id of a chunk's point (JSON-encoded parts: no separator can be forged)."""
    return str(uuid.uuid5(POINT_NAMESPACE, json.dumps([tenant, collection, doc_id, chunk, model])))


def parse_filter(raw: dict[str, Any] | None) -> models.Filter | None:
    """A job's ``filter`` as a Qdrant filter (both forms in the module docstring); JobRejected if bad."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise JobRejected("filter must be a JSON object")
    qdrant_keys = _QDRANT_FILTER_KEYS.intersection(raw)
    if qdrant_keys:
        if len(qdrant_keys) != len(raw):
            extra = sorted(set(raw) - _QDRANT_FILTER_KEYS)
            raise JobRejected(f"filter mixes Qdrant clauses {sorted(qdrant_keys)} with field names {extra}; use "
                              "one form")
        try:
            return models.Filter.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"][:3])
            raise JobRejected(f"filter is not a valid Qdrant filter ({exc.error_count()} problems; first at "
                              f"{where}: {first['msg']})") from None
    conditions: list[Any] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip():
            raise JobRejected("filter field names must be non-empty strings")
        payload_key = "doc_id" if key == "doc_id" else f"metadata.{key}"
        conditions.append(_match(payload_key, key, value))
    return models.Filter(must=conditions)


def _match(payload_key: str, key: str, value: Any) -> models.FieldCondition:
    def scalar(item: Any) -> bool:
        return isinstance(item, str | int | bool)  # bool is an int, and both are fine

    if isinstance(value, list):
        if not value or not all(scalar(item) for item in value) or len({type(item) for item in value}) > 1:
            raise JobRejected(f"filter field {key!r}: a list must hold strings or integers of one type")
        return models.FieldCondition(key=payload_key, match=models.MatchAny(any=value))
    if scalar(value):
        return models.FieldCondition(key=payload_key, match=models.MatchValue(value=value))
    raise JobRejected(f"filter field {key!r}: match a string, an integer, a boolean or a list of them "
                      "(for ranges use the Qdrant form with 'must')")


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A document of an upsert job, validated and chunked."""

    doc_id: str
    chunks: list[Chunk]
    metadata: dict[str, Any]


@dataclass(slots=True)
class JobPlan:
    """What a job needs: its texts to embed (chunks, or the query) and its parsed inputs."""

    job: EmbeddingJob
    texts: list[str] = field(default_factory=list)
    documents: list[PreparedDocument] = field(default_factory=list)
    condition: models.Filter | None = None


class Memory:
    """The embedder and the vector store, and the rules that connect them."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        *,
        chunk_chars: int = 800,
        chunk_overlap: int = 100,
        max_document_chars: int = 100_000,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.chunk_chars = chunk_chars
        self.chunk_overlap = chunk_overlap
        self.max_document_chars = max_document_chars

    # -- planning (pure) ----------------------------------------------------------------------------

    def plan(self, job: EmbeddingJob) -> JobPlan:
        """Validate a job and prepare its texts; :class:`JobRejected` names what is wrong."""
        if not COLLECTION_PATTERN.fullmatch(job.collection):
            raise JobRejected(f"collection name {job.collection!r} is not allowed: 1-128 letters, digits, '_', "
                              "'-' or '.', starting with a letter or digit")
        plan = JobPlan(job)
        if job.job == "upsert":
            seen: set[str] = set()
            for document in job.documents:
                if document.id in seen:
                    raise JobRejected(f"document id {document.id!r} appears more than once in the job")
                seen.add(document.id)
                if len(document.text) > self.max_document_chars:
                    raise JobRejected(
                        f"document {document.id!r} has {len(document.text):,} characters; the limit is "
                        f"{self.max_document_chars:,} (SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS)"
                    )
                chunks = chunk_text(document.text, self.chunk_chars, self.chunk_overlap)
                if not chunks:
                    raise JobRejected(f"document {document.id!r} has no text to embed")
                plan.documents.append(PreparedDocument(document.id, chunks, document.metadata))
                plan.texts.extend(chunk.text for chunk in chunks)
        elif job.job == "search":
            assert job.query is not None  # the schema requires it
            if len(job.query) > self.max_document_chars:
                raise JobRejected(f"query has {len(job.query):,} characters; the limit is "
                                  f"{self.max_document_chars:,}")
            plan.texts.append(job.query.strip())
            plan.condition = parse_filter(job.filter)
        else:
            if job.filter is not None and not job.filter and not job.doc_ids:
                raise JobRejected("an empty filter would delete every document; name doc_ids or a non-empty filter")
            plan.condition = parse_filter(job.filter)
        return plan

    # -- effects ------------------------------------------------------------------------------------

    async def write(
        self, collection: str, items: Sequence[tuple[str, PreparedDocument, Sequence[Sequence[float]]]]
    ) -> tuple[int, list[int]]:
        """Upsert documents ``(tenant, document, chunk vectors)`` of one collection in one go.

        Returns the points written and, per item, the surplus chunks deleted (a document that shrank).
        A document given twice keeps its last version. The collection is created on first use.
        """
        if not items:
            return 0, []
        dimension = len(items[0][2][0])
        await self.store.ensure_collection(collection, dimension, self.embedder.distance)
        model = self.embedder.model
        points: dict[str, models.PointStruct] = {}
        final: dict[tuple[str, str], int] = {}  # (tenant, doc) -> index of the item with its last version
        for index, (tenant, document, vectors) in enumerate(items):
            if len(vectors) != len(document.chunks):
                raise ValueError(f"{len(vectors)} vectors for {len(document.chunks)} chunks of {document.doc_id!r}")
            for chunk, vector in zip(document.chunks, vectors, strict=True):
                pid = point_id(tenant, collection, document.doc_id, chunk.index, model)
                points.pop(pid, None)  # re-insert: the last version goes last
                points[pid] = models.PointStruct(id=pid, vector=list(vector), payload={
                    "tenant": tenant,
                    "doc_id": document.doc_id,
                    "chunk": chunk.index,
                    "chunks": len(document.chunks),
                    "text": chunk.text,
                    "start": chunk.start,
                    "end": chunk.end,
                    "metadata": document.metadata,
                    "model": model,
                })
            final[(tenant, document.doc_id)] = index
        ordered = list(points.values())
        for start in range(0, len(ordered), _UPSERT_POINTS_PER_REQUEST):
            await self.store.upsert(collection, ordered[start:start + _UPSERT_POINTS_PER_REQUEST])
        deleted = [0] * len(items)
        surplus = await self._remove_surplus(
            collection, {key: len(items[index][1].chunks) for key, index in final.items()}
        )
        for key, count in surplus.items():
            deleted[final[key]] += count
        return len(ordered), deleted

    async def _remove_surplus(self, collection: str, sizes: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """Delete chunks ``n, n+1, ...`` of documents that now have ``n`` chunks.

        A document's points are always chunks ``0..k-1`` (each version is written whole, and surplus
        removed after it), so its surplus is contiguous from ``n``: it is found by id lookups, without
        a scan — first chunk ``n`` of every document, then windows of ids for the ones that shrank.
        """
        model = self.embedder.model
        removed: dict[tuple[str, str], int] = defaultdict(int)
        probe = {key: size for key, size in sizes.items()}
        window = 1
        while probe:
            by_tenant: dict[str, dict[str, tuple[tuple[str, str], int]]] = defaultdict(dict)
            for (tenant, doc_id), start in probe.items():
                for chunk in range(start, start + window):
                    by_tenant[tenant][point_id(tenant, collection, doc_id, chunk, model)] = ((tenant, doc_id), chunk)
            next_probe: dict[tuple[str, str], int] = {}
            for tenant, ids in by_tenant.items():
                found = await self.store.existing_ids(collection, tenant, list(ids))
                if not found:
                    continue
                await self.store.delete_ids(collection, tenant, sorted(found))
                hits: dict[tuple[str, str], int] = defaultdict(int)
                for pid in found:
                    key, _ = ids[pid]
                    hits[key] += 1
                for key, count in hits.items():
                    removed[key] += count
                    if count == window:  # the whole window existed: there may be more
                        next_probe[key] = probe[key] + window
            probe = next_probe
            window = _SURPLUS_PROBE
        return dict(removed)

    async def delete(self, tenant: str, collection: str, doc_ids: Sequence[str],
                     condition: models.Filter | None) -> int:
        """Delete the tenant's chunks of ``doc_ids`` and/or matching ``condition``; returns how many."""
        await self.store.require_collection(collection)
        by_ids = (models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))
                  if doc_ids else None)
        conditions: list[Any] = [item for item in (by_ids, condition) if item is not None]
        if not conditions:
            raise JobRejected("a delete needs doc_ids or a filter")
        return await self.store.delete(collection, tenant, models.Filter(must=conditions))

    async def search(self, tenant: str, collection: str, vector: Sequence[float], top_k: int,
                     condition: models.Filter | None = None, score_threshold: float | None = None) -> list[Hit]:
        """The tenant's ``top_k`` chunks nearest to ``vector``, best first."""
        await self.store.require_collection(collection, len(vector))
        points = await self.store.search(collection, tenant, vector, limit=top_k, condition=condition,
                                         score_threshold=score_threshold)
        hits = []
        for point in points:
            payload = point.payload or {}
            hits.append(Hit(doc_id=str(payload.get("doc_id", "")), chunk=int(payload.get("chunk", 0)),
                            score=float(point.score), text=str(payload.get("text", "")),
                            metadata=dict(payload.get("metadata") or {})))
        return hits

    async def retrieve(self, tenant: str, collection: str, query: str, top_k: int, *,
                       filter: dict[str, Any] | None = None, score_threshold: float | None = None) -> list[Hit]:
        """Embed ``query`` and return the tenant's ``top_k`` nearest chunks in ``collection``, best first.

        Raises :class:`~connectors.exceptions.CollectionNotFound` when nothing was ever added to the
        collection, :class:`~agents.exceptions.JobRejected` for an empty query or a bad filter, and
        :class:`~connectors.exceptions.DependencyUnavailable` (``EmbeddingsUnavailable``,
        ``VectorStoreUnavailable``, ``CircuitOpenError``) when a dependency is down after its retries.
        """
        if not query or not query.strip():
            raise JobRejected("the query is empty")
        if top_k < 1:
            raise JobRejected("top_k must be at least 1")
        condition = parse_filter(filter)
        embeddings = await self.embedder.embed([query.strip()])
        return await self.search(tenant, collection, embeddings.vectors[0], top_k, condition, score_threshold)

    async def close(self) -> None:
        await self.embedder.close()
        await self.store.close()


def memory_from_settings(settings: Settings) -> Memory:
    """A :class:`Memory` as the settings describe it (backend, model, Qdrant server or local path)."""
    embedder = make_embedder(
        settings.embeddings_backend,
        settings.embeddings_model,
        base_url=settings.embeddings_endpoint,
        api_key=settings.embeddings_key,
        batch_size=settings.embeddings_batch_size,
        timeout=settings.embeddings_timeout_seconds,
    )
    if settings.qdrant_url:
        store = VectorStore(url=settings.qdrant_url, api_key=settings.qdrant_api_key,
                            timeout=settings.qdrant_timeout_seconds)
    else:
        store = VectorStore(path=settings.qdrant_path, timeout=settings.qdrant_timeout_seconds)
    return Memory(
        embedder, store,
        chunk_chars=settings.embeddings_chunk_chars,
        chunk_overlap=settings.embeddings_chunk_overlap,
        max_document_chars=settings.embeddings_max_document_chars,
    )


def shared_memory(context: AgentContext) -> Memory:
    """The worker process's :class:`Memory`, shared by every agent (Qdrant local mode allows one client per
    directory); the engine closes it when it stops, releasing local mode's lock."""
    return context.resources.get("memory", lambda: memory_from_settings(context.settings))
