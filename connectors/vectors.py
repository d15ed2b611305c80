"""Qdrant: collections created on demand, tenant-scoped reads and deletes, retries, a circuit breaker.

One collection holds the points of every tenant (Qdrant's recommended multitenancy layout): each point's
payload carries ``tenant``, indexed as the collection's tenant key (``is_tenant``), and the global HNSW
graph is replaced by per-tenant graphs (``m=0, payload_m=16``) since no query ever spans tenants.

**Tenant isolation is enforced here, not by callers.** Every method that reads or deletes points takes
the tenant as a required argument and sends the filter ``must: [tenant == T, <caller's filter>]``: the
caller's filter is one nested condition of the ``must`` list, so no ``should``/``must_not`` clause or
condition on ``tenant`` inside it can widen the result beyond tenant T (at most narrow it to nothing).
Upserts refuse points without a tenant in their payload.

Modes. With a URL it talks to a Qdrant server over HTTP. Without one it runs qdrant-client's *local
mode* on a directory: the same API, in this process, brute-force search, data in SQLite. Local mode
holds a file lock, so one process at a time may open a directory (the worker that owns it). Its SQLite
files are switched to WAL with ``synchronous=NORMAL``: qdrant-client commits each point on its own, and
with the default full fsync per commit an upsert of a batch of points waits for one fsync per point. A
process crash (SIGKILL) loses nothing; an OS crash or power cut may lose the last writes — local mode
is the embedded default for one machine, production uses a server.

The client is the synchronous ``QdrantClient`` run in worker threads (``asyncio.to_thread``): local
mode computes in Python and must not stall the event loop, and one code path serves both modes. Local
mode is not thread-safe, so its calls are serialised.

Failures. :class:`VectorStore` is a :class:`~connectors.base.Connector`: connection errors, timeouts,
408/429 and 5xx are retried (``attempts`` in all, exponential backoff with jitter); one logical call,
retries included, counts once for the circuit breaker. Errors
are mapped to :class:`CollectionNotFound`, :class:`CollectionMismatch` (vector size),
:class:`VectorStoreRequestError` (Qdrant refused the request) and :class:`VectorStoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from connectors.base import Connector
from connectors.circuit import CircuitBreaker
from connectors.exceptions import (
    CollectionMismatch,
    CollectionNotFound,
    VectorStoreError,
    VectorStoreRequestError,
    VectorStoreUnavailable,
)
from connectors.retry import RetryPolicy

__all__ = [
    "TENANT_KEY",
    "VectorStore",
    "is_transient",
    "tenant_scoped",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

TENANT_KEY = "tenant"
_DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}
_TRANSIENT_STATUS = frozenset({408, 429})


def tenant_scoped(tenant: str, *conditions: models.Filter | models.Condition | None) -> models.Filter:
    """``must: [tenant == T, *conditions]``: each condition can only narrow tenant T's points."""
    if not tenant:
        raise ValueError("a tenant is required")
    must: list[Any] = [models.FieldCondition(key=TENANT_KEY, match=models.MatchValue(value=tenant))]
    must.extend(condition for condition in conditions if condition is not None)
    return models.Filter(must=must)


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: no answer, a timeout, 408/429 or 5xx."""
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        return status in _TRANSIENT_STATUS or status >= 500
    # A 200 whose body is not JSON comes from something in front of Qdrant (a proxy's page): try again.
    return isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError
                      | json.JSONDecodeError | UnicodeDecodeError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, UnexpectedResponse):
        body = exc.content.decode(errors="replace")[:500] if exc.content else ""
        return f"HTTP {exc.status_code} {exc.reason_phrase}: {body}".strip()
    if isinstance(exc, ResponseHandlingException):
        return f"{type(exc.source).__name__}: {exc.source}"
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return f"the answer is not a Qdrant response (not JSON: {exc})"
    return f"{type(exc).__name__}: {exc}"


class VectorStore(Connector):
    """Qdrant at ``url``, or local mode in ``path``; opened on first use."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: Path | str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff_initial: float = 0.2,
        backoff_max: float = 2.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (a Qdrant server) and path (local mode)")
        self.url = url.rstrip("/") if url else None
        self.path = Path(path) if path is not None else None
        super().__init__(
            f"Qdrant at {self.location}",
            breaker=breaker or CircuitBreaker(f"qdrant {self.location}"),
            retry_policy=RetryPolicy(attempts, backoff_initial, backoff_max),
            call=f"Qdrant call to {self.location}",
        )
        self.api_key = api_key
        self.timeout = timeout
        self._client: QdrantClient | None = None
        self._open_lock = threading.Lock()
        # Local mode is plain Python over dicts and SQLite: one call at a time.
        self._call_lock: threading.Lock | None = threading.Lock() if self.local else None
        self._tuned: set[int] = set()
        self._dimensions: dict[str, int] = {}

    @property
    def local(self) -> bool:
        return self.url is None

    @property
    def location(self) -> str:
        return self.url if self.url is not None else f"local mode at {self.path}"

    # -- plumbing -----------------------------------------------------------------------------------

    def _open(self) -> QdrantClient:
        with self._open_lock:
            if self._client is not None:
                return self._client
            if self.url is not None:
                # No compatibility probe here: opening never touches the network, calls do (and retry).
                client = QdrantClient(url=self.url, api_key=self.api_key, timeout=math.ceil(self.timeout),
                                      check_compatibility=False)
            else:
                assert self.path is not None
                self.path.mkdir(parents=True, exist_ok=True)
                try:
                    client = QdrantClient(path=str(self.path))
                except RuntimeError as exc:
                    raise VectorStoreError(
                        f"cannot open Qdrant local mode at {self.path}: {exc} Run one worker per data "
                        "directory, or set QDRANT_URL to share a Qdrant server"
                    ) from exc
                logger.info("Qdrant local mode opened at %s", self.path)
            self._client = client
            self._tune_local_storage()
            return client

    def _tune_local_storage(self) -> None:
        """WAL + synchronous=NORMAL on each local collection's SQLite file (see the module docstring)."""
        if self._client is None or not self.local:
            return
        collections = getattr(getattr(self._client, "_client", None), "collections", None)
        if not isinstance(collections, dict):
            logger.warning("cannot tune Qdrant local storage (qdrant-client internals changed); "
                           "upserts will be slow")
            return
        for name, collection in collections.items():
            connection = getattr(getattr(collection, "storage", None), "storage", None)
            if not isinstance(connection, sqlite3.Connection) or id(connection) in self._tuned:
                continue
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._tuned.add(id(connection))
            logger.debug("Qdrant local collection %s: SQLite WAL, synchronous=NORMAL", name)

    def local_storage_tuned(self, collection: str) -> bool:
        """Whether a local collection's SQLite runs in WAL mode (tests check the tuning still works)."""
        client = self._open()
        connection = client._client.collections[collection].storage.storage  # type: ignore[attr-defined]
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        sync = connection.execute("PRAGMA synchronous").fetchone()[0]
        return bool(mode == "wal" and sync == 1)

    def _run(self, operation: Callable[[QdrantClient], T]) -> T:
        client = self._open()
        if self._call_lock is None:
            return operation(client)
        with self._call_lock:
            return operation(client)

    async def _call(self, what: str, operation: Callable[[QdrantClient], T], collection: str | None = None) -> T:
        """Run ``operation(client)`` in a thread with retries, the breaker and error mapping."""
        with self.guarded():
            result, _ = await self.retried(
                lambda: asyncio.to_thread(self._run, operation),
                map_error=lambda exc, attempts: self._map(exc, what, collection, attempts),
            )
            return result

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def answered(self, exc: Exception) -> bool:
        return isinstance(exc, VectorStoreRequestError | CollectionNotFound | CollectionMismatch)

    def describe(self, exc: BaseException | None) -> str:
        return _message(exc) if exc is not None else "?"

    def _map(self, exc: Exception, what: str, collection: str | None, attempts: int) -> Exception:
        if isinstance(exc, VectorStoreError):
            return exc  # already ours (local mode's directory is locked)
        text = _message(exc)
        lowered = text.lower()
        named = f"collection {collection!r}" if collection else "the collection"
        if is_transient(exc):
            return VectorStoreUnavailable(self.unavailable_message(exc, attempts, during=what))
        if collection is not None:
            if "not found" in lowered or "doesn't exist" in lowered or (
                isinstance(exc, UnexpectedResponse) and exc.status_code == 404
            ):
                self._dimensions.pop(collection, None)
                return CollectionNotFound(f"{named} does not exist")
            if "dimension" in lowered:
                self._dimensions.pop(collection, None)
                return CollectionMismatch(f"{named}: {text}")
        return VectorStoreRequestError(f"Qdrant refused {what}: {text}")

    # -- collections --------------------------------------------------------------------------------

    async def collection_dimension(self, collection: str) -> int | None:
        """The vector size of a collection, or ``None`` when it does not exist (cached once seen)."""
        if collection in self._dimensions:
            return self._dimensions[collection]

        def run(client: QdrantClient) -> int | None:
            if not client.collection_exists(collection):
                return None
            vectors = client.get_collection(collection).config.params.vectors
            if isinstance(vectors, dict):  # named vectors: not a collection of ours
                raise VectorStoreRequestError(
                    f"collection {collection!r} has named vectors {sorted(vectors)}; it was not created by "
                    "the embedding agent"
                )
            assert vectors is not None
            return int(vectors.size)

        size = await self._call(f"reading collection {collection!r}", run, collection)
        if size is not None:
            self._dimensions[collection] = size
        return size

    async def require_collection(self, collection: str, dimension: int | None = None) -> int:
        """The collection's vector size; :class:`CollectionNotFound` / :class:`CollectionMismatch` otherwise."""
        size = await self.collection_dimension(collection)
        if size is None:
            raise CollectionNotFound(f"collection {collection!r} does not exist")
        if dimension is not None and size != dimension:
            raise CollectionMismatch(
                f"collection {collection!r} holds {size}-dimensional vectors, the embedding model makes "
                f"{dimension}-dimensional ones; use another collection for this model"
            )
        return size

    async def ensure_collection(self, collection: str, dimension: int, distance: str = "cosine") -> None:
        """Create the collection with its payload indexes unless it exists; check its vector size."""
        size = await self.collection_dimension(collection)
        if size is None:

            def create(client: QdrantClient) -> bool:
                if client.collection_exists(collection):
                    return False  # another worker was faster
                client.create_collection(
                    collection,
                    vectors_config=models.VectorParams(size=dimension, distance=_DISTANCES[distance]),
                    hnsw_config=models.HnswConfigDiff(m=0, payload_m=16),
                )
                if self.local:
                    self._tune_local_storage()  # local mode has no payload indexes (it scans)
                    return True
                client.create_payload_index(
                    collection, TENANT_KEY,
                    field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                )
                client.create_payload_index(collection, "doc_id", field_schema=models.PayloadSchemaType.KEYWORD)
                client.create_payload_index(collection, "chunk", field_schema=models.PayloadSchemaType.INTEGER)
                return True

            if await self._call(f"creating collection {collection!r}", create, collection):
                logger.info("created collection %s (%d dimensions, %s) on %s", collection, dimension, distance,
                            self.location)
            self._dimensions.pop(collection, None)
        await self.require_collection(collection, dimension)

    # -- points -------------------------------------------------------------------------------------

    async def upsert(self, collection: str, points: Sequence[models.PointStruct]) -> None:
        """Write points (same id: replaced). Each must carry its tenant in the payload."""
        if not points:
            return
        for point in points:
            if not point.payload or not point.payload.get(TENANT_KEY):
                raise ValueError(f"point {point.id} has no {TENANT_KEY!r} in its payload")
        await self._call(f"upserting {len(points)} points into {collection!r}",
                         lambda client: client.upsert(collection, points=list(points), wait=True), collection)

    async def existing_ids(self, collection: str, tenant: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` exist as points of ``tenant`` (a lookup by id, no scan)."""
        if not ids:
            return set()
        records = await self._call(
            f"looking up {len(ids)} points in {collection!r}",
            lambda client: client.retrieve(collection, ids=list(ids), with_payload=[TENANT_KEY], with_vectors=False),
            collection,
        )
        return {str(record.id) for record in records if (record.payload or {}).get(TENANT_KEY) == tenant}

    async def delete_ids(self, collection: str, tenant: str, ids: Sequence[str]) -> None:
        """Delete points of ``tenant`` by id (ids of other tenants' points are left alone)."""
        if not ids:
            return
        selector = models.FilterSelector(filter=tenant_scoped(tenant, models.HasIdCondition(has_id=list(ids))))
        await self._call(f"deleting {len(ids)} points from {collection!r}",
                         lambda client: client.delete(collection, points_selector=selector, wait=True), collection)

    async def count(self, collection: str, tenant: str, condition: models.Filter | None = None) -> int:
        scoped = tenant_scoped(tenant, condition)
        result = await self._call(f"counting points in {collection!r}",
                                  lambda client: client.count(collection, count_filter=scoped, exact=True),
                                  collection)
        return int(result.count)

    async def delete(self, collection: str, tenant: str, condition: models.Filter | None) -> int:
        """Delete ``tenant``'s points matching ``condition``; returns how many there were."""
        scoped = tenant_scoped(tenant, condition)

        def run(client: QdrantClient) -> int:
            matched = client.count(collection, count_filter=scoped, exact=True).count
            if matched:
                client.delete(collection, points_selector=models.FilterSelector(filter=scoped), wait=True)
            return int(matched)

        return await self._call(f"deleting points from {collection!r}", run, collection)

    async def search(
        self,
        collection: str,
        tenant: str,
        vector: Sequence[float],
        *,
        limit: int,
        condition: models.Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[models.ScoredPoint]:
        """The ``limit`` nearest points of ``tenant`` (best first), with payloads."""
        scoped = tenant_scoped(tenant, condition)
        response = await self._call(
            f"searching {collection!r}",
            lambda client: client.query_points(
                collection, query=list(vector), query_filter=scoped, limit=limit, score_threshold=score_threshold,
                with_payload=True, with_vectors=False,
            ),
            collection,
        )
        return list(response.points)

    async def scroll(
        self, collection: str, tenant: str, condition: models.Filter | None = None, *, limit: int = 10_000,
    ) -> list[models.Record]:
        """Up to ``limit`` points of ``tenant`` matching ``condition``, with payloads (tools, tests)."""
        scoped = tenant_scoped(tenant, condition)
        records, _ = await self._call(
            f"reading points of {collection!r}",
            lambda client: client.scroll(collection, scroll_filter=scoped, limit=limit, with_payload=True,
                                         with_vectors=False),
            collection,
        )
        return list(records)

    # -- health and lifecycle -----------------------------------------------------------------------

    async def health(self) -> bool:
        """True when Qdrant answers a list of collections (one attempt, the breaker not consulted)."""
        try:
            await asyncio.to_thread(self._run, lambda client: client.get_collections())
        except Exception as exc:
            logger.debug("Qdrant health check of %s failed: %s", self.location, _message(exc))
            return False
        return True

    async def close(self) -> None:
        client, self._client = self._client, None
        self._tuned.clear()
        self._dimensions.clear()
        if client is not None:
            await asyncio.to_thread(client.close)

    def close_sync(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<VectorStore {self.location}>"
