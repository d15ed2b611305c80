"""The Qdrant connector on real Qdrant local mode (and on a dead port for the server path).

A Qdrant server is not available on these machines (no binary, no network): the server code path is
exercised only for its failure handling (connection refused → retries → unavailable → open circuit).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import models

from connectors.broker import free_port
from connectors.circuit import CircuitBreaker, CircuitState
from connectors.exceptions import (
    CircuitOpenError,
    CollectionMismatch,
    CollectionNotFound,
    VectorStoreError,
    VectorStoreUnavailable,
)
from connectors.vectors import VectorStore

pytestmark = pytest.mark.integration


def point(tenant: str, name: str, vector: list[float], **payload: Any) -> models.PointStruct:
    pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{name}"))
    return models.PointStruct(id=pid, vector=vector, payload={"tenant": tenant, "doc_id": name, "chunk": 0, **payload})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[VectorStore]:
    store = VectorStore(path=tmp_path / "qdrant")
    yield store
    await store.close()


async def test_collection_is_created_on_demand_with_its_dimension(store: VectorStore) -> None:
    assert await store.collection_dimension("c") is None

    await store.ensure_collection("c", 4)
    await store.ensure_collection("c", 4)  # idempotent

    assert await store.collection_dimension("c") == 4
    assert store.local_storage_tuned("c"), "local SQLite must run in WAL mode (see connectors/vectors.py)"
    with pytest.raises(CollectionMismatch, match="4-dimensional"):
        await store.ensure_collection("c", 8)


async def test_points_survive_reopening(tmp_path: Path) -> None:
    first = VectorStore(path=tmp_path / "q")
    await first.ensure_collection("c", 2)
    await first.upsert("c", [point("a", "x", [1.0, 0.0]), point("a", "y", [0.0, 1.0])])
    await first.close()

    second = VectorStore(path=tmp_path / "q")
    try:
        assert await second.count("c", "a") == 2
    finally:
        await second.close()


async def test_local_mode_refuses_a_second_opener(tmp_path: Path) -> None:
    owner = VectorStore(path=tmp_path / "q")
    intruder = VectorStore(path=tmp_path / "q")
    try:
        assert await owner.health()
        with pytest.raises(VectorStoreError, match="one worker per data directory"):
            await intruder.count("c", "a")
    finally:
        await owner.close()
        await intruder.close()


async def test_reads_and_deletes_never_leave_the_tenant(store: VectorStore) -> None:
    await store.ensure_collection("c", 2)
    victim = [point("A", f"a{i}", [1.0, 0.1 * i]) for i in range(3)]
    await store.upsert("c", [*victim, point("B", "b0", [0.0, 1.0])])
    adversarial = [
        None,
        models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value="A"))]),
        models.Filter(should=[models.FieldCondition(key="tenant", match=models.MatchAny(any=["A", "B"]))]),
        models.Filter(must_not=[models.FieldCondition(key="tenant", match=models.MatchValue(value="B"))]),
        models.Filter(must=[models.HasIdCondition(has_id=[p.id for p in victim])]),
    ]

    for condition in adversarial:
        hits = await store.search("c", "B", [1.0, 0.0], limit=10, condition=condition)
        assert {hit.payload["tenant"] for hit in hits if hit.payload} <= {"B"}, condition
        assert all(record.payload and record.payload["tenant"] == "B"
                   for record in await store.scroll("c", "B", condition))
    for condition in adversarial[1:]:
        await store.delete("c", "B", condition)  # may delete B's own point, never A's
        assert await store.count("c", "A") == 3, condition
    await store.delete_ids("c", "B", [str(p.id) for p in victim])
    assert await store.existing_ids("c", "B", [str(p.id) for p in victim]) == set()

    assert await store.count("c", "A") == 3
    assert await store.existing_ids("c", "A", [str(p.id) for p in victim]) == {str(p.id) for p in victim}


async def test_upsert_requires_a_tenant_and_the_collection_size(store: VectorStore) -> None:
    await store.ensure_collection("c", 2)
    with pytest.raises(ValueError, match="tenant"):
        await store.upsert("c", [models.PointStruct(id=str(uuid.uuid4()), vector=[1.0, 0.0], payload={"x": 1})])
    with pytest.raises(CollectionMismatch):
        await store.upsert("c", [point("a", "x", [1.0, 0.0, 0.0])])


async def test_unknown_collection_is_reported_as_such(store: VectorStore) -> None:
    await store.ensure_collection("exists", 2)
    with pytest.raises(CollectionNotFound, match="'nope' does not exist"):
        await store.require_collection("nope")
    with pytest.raises(CollectionNotFound):
        await store.search("nope", "a", [1.0, 0.0], limit=3)
    with pytest.raises(CollectionNotFound):
        await store.delete("nope", "a", None)
    assert store.breaker.state is CircuitState.CLOSED, "Qdrant answered: not a failure of Qdrant"


async def test_unreachable_server_is_retried_then_unavailable_then_fails_fast() -> None:
    breaker = CircuitBreaker("qdrant dead", failure_threshold=2, reset_timeout=60)
    store = VectorStore(url=f"http://127.0.0.1:{free_port()}", timeout=1.0, attempts=3, backoff_initial=0.05,
                        backoff_max=0.1, breaker=breaker)
    try:
        for _ in range(2):
            with pytest.raises(VectorStoreUnavailable, match="after 3 attempts"):
                await store.search("c", "a", [1.0, 0.0], limit=3)
        started = time.monotonic()
        with pytest.raises(CircuitOpenError):
            await store.count("c", "a")
        assert time.monotonic() - started < 0.05
        assert not await store.health()
    finally:
        await store.close()
    assert breaker.state is CircuitState.OPEN
