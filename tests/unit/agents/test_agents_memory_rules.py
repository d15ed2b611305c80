"""The pure rules of agents/memory.py: point ids, the filter language, job validation (no model, no Qdrant calls)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import models

from agents.exceptions import JobRejected
from agents.memory import Memory, parse_filter, point_id
from connectors.embeddings import LocalEmbedder
from connectors.vectors import VectorStore
from schemas import EmbeddingJob


@pytest.fixture
def memory_factory(tmp_path: Path) -> Callable[..., Memory]:
    """A Memory with real (unloaded, unopened) backends: planning touches neither."""

    def make(**limits: int) -> Memory:
        return Memory(LocalEmbedder(), VectorStore(path=tmp_path / "q"), **limits)

    return make


def job(**fields: Any) -> EmbeddingJob:
    return EmbeddingJob.model_validate({"tenant": "acme", "collection": "docs", **fields})


def test_point_ids_are_deterministic_and_differ_in_every_part() -> None:
    base = ("acme", "docs", "doc-1", 0, "all-MiniLM-L6-v2")
    assert point_id(*base) == point_id(*base)
    variants = [
        ("other", "docs", "doc-1", 0, "all-MiniLM-L6-v2"),
        ("acme", "notes", "doc-1", 0, "all-MiniLM-L6-v2"),
        ("acme", "docs", "doc-2", 0, "all-MiniLM-L6-v2"),
        ("acme", "docs", "doc-1", 1, "all-MiniLM-L6-v2"),
        ("acme", "docs", "doc-1", 0, "other-model"),
    ]
    assert len({point_id(*base), *(point_id(*variant) for variant in variants)}) == 6


def test_point_id_parts_cannot_be_shifted_by_separators() -> None:
    assert point_id("a", "b/c", "d", 0, "m") != point_id("a/b", "c", "d", 0, "m")
    assert point_id("a", "b", 'd", "x', 0, "m") != point_id("a", "b", "d", 0, "m")


def test_simple_filter_targets_metadata_fields() -> None:
    condition = parse_filter({"lang": "en", "tags": ["a", "b"], "doc_id": "x", "tenant": "other"})
    assert condition is not None and isinstance(condition.must, list)
    keys = [item.key for item in condition.must if isinstance(item, models.FieldCondition)]
    assert keys == ["metadata.lang", "metadata.tags", "doc_id", "metadata.tenant"]
    assert isinstance(condition.must[1].match, models.MatchAny)  # type: ignore[union-attr]


def test_qdrant_filter_is_taken_as_is() -> None:
    raw = {"must": [{"key": "metadata.year", "range": {"gte": 2020}}],
           "should": [{"key": "doc_id", "match": {"value": "a"}}]}
    assert parse_filter(raw) == models.Filter.model_validate(raw)
    assert parse_filter(None) is None and parse_filter({}) is None


@pytest.mark.parametrize(("raw", "reason"), [
    ({"must": [], "lang": "en"}, "mixes Qdrant clauses"),
    ({"must": [{"key": "a", "match": {"value": 1.5}}]}, "not a valid Qdrant filter"),
    ({"score": 0.5}, "filter field 'score'"),
    ({"tags": []}, "a list must hold"),
    ({"tags": ["a", 1]}, "a list must hold"),
    ({"meta": {"nested": 1}}, "filter field 'meta'"),
])
def test_bad_filters_are_rejected_with_a_reason(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobRejected, match=reason):
        parse_filter(raw)


def test_upsert_plan_chunks_documents_in_order(memory_factory: Callable[..., Memory]) -> None:
    memory = memory_factory(chunk_chars=100, chunk_overlap=10)
    plan = memory.plan(job(job="upsert", documents=[
        {"id": "a", "text": "short"}, {"id": "b", "text": " ".join(["word"] * 60)}, {"id": "c", "text": "end"},
    ]))

    assert [document.doc_id for document in plan.documents] == ["a", "b", "c"]
    assert len(plan.documents[1].chunks) > 1
    assert plan.texts == [chunk.text for document in plan.documents for chunk in document.chunks]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"job": "upsert", "documents": [{"id": "a", "text": " \n"}]}, "has no text"),
    ({"job": "upsert", "documents": [{"id": "a", "text": "x" * 51}]}, "limit is 50"),
    ({"job": "upsert", "documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "more than once"),
    ({"job": "upsert", "collection": "a/b", "documents": [{"id": "a", "text": "x"}]}, "is not allowed"),
    ({"job": "search", "query": "q" * 51}, "limit is 50"),
    ({"job": "search", "query": "q", "filter": {"x": 1.5}}, "filter field 'x'"),
])
def test_plan_rejects_bad_jobs(memory_factory: Callable[..., Memory], fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobRejected, match=reason):
        memory_factory(max_document_chars=50).plan(job(**fields))


def test_delete_needs_ids_or_a_filter() -> None:
    with pytest.raises(ValueError, match="doc_ids"):
        job(job="delete")
    assert job(job="delete", filter={"lang": "en"}).filter == {"lang": "en"}
