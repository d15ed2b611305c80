"""Embedding events: jobs that upsert, delete or search documents in a collection, and their results.

``metadata`` and ``filter`` are free-form JSON objects; on the Avro wire they travel as JSON strings
(logical type ``json``) and the codec turns them back into dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.envelope import Envelope, NestedModel

__all__ = [
    "Document",
    "EmbeddingJob",
    "EmbeddingJobKind",
    "EmbeddingResult",
    "EmbeddingStatus",
    "Hit",
]

EmbeddingJobKind = Literal["upsert", "delete", "search"]
EmbeddingStatus = Literal["ok", "failed"]


class Document(NestedModel):
    """A document to embed; long texts are chunked by the embedding agent."""

    id: str = Field(min_length=1)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingJob(Envelope):
    """A request against one collection of the tenant.

    Each job kind needs its own input, checked here so that a malformed job is rejected (and
    dead-lettered with a clear reason) before any outside system is called.
    """

    job: EmbeddingJobKind
    collection: str = Field(min_length=1)
    documents: list[Document] = Field(default_factory=list)
    doc_ids: list[str] = Field(default_factory=list)
    query: str | None = None
    top_k: int = Field(default=5, ge=1)
    filter: dict[str, Any] | None = None
    score_threshold: float | None = None

    @model_validator(mode="after")
    def _inputs_match_job(self) -> EmbeddingJob:
        if self.job == "upsert" and not self.documents:
            raise ValueError("an upsert job needs at least one document in 'documents'")
        if self.job == "delete" and not self.doc_ids and not self.filter:
            raise ValueError("a delete job needs ids in 'doc_ids' or a non-empty metadata 'filter'")
        if self.job == "search" and not (self.query and self.query.strip()):
            raise ValueError("a search job needs a non-empty 'query'")
        return self


class Hit(NestedModel):
    """One search match: a chunk of a stored document."""

    doc_id: str
    chunk: int = Field(ge=0)
    score: float
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class EmbeddingResult(Envelope):
    """The outcome of an :class:`EmbeddingJob`; ``job_id`` is the job's ``event_id``."""

    job_id: str = Field(min_length=1)
    status: EmbeddingStatus
    upserted: int = Field(default=0, ge=0)
    deleted: int = Field(default=0, ge=0)
    hits: list[Hit] = Field(default_factory=list)
    error: str | None = None
    latency_ms: float | None = Field(default=None, ge=0.0)
