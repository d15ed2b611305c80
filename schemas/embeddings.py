"""Embedding events: jobs that upsert, delete or search documents in a collection, and their results.

``metadata`` and ``filter`` are free-form JSON objects; on the Avro wire they travel as JSON strings
(logical type ``json``) and the codec turns them back into dicts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.bounds import (
    DOC_ID_MAX_CHARS,
    DOC_IDS_MAX,
    DOCUMENTS_MAX,
    HITS_MAX,
    NAME_MAX_CHARS,
    TEXT_MAX_CHARS,
    TOP_K_MAX,
    Count,
    DiagnosticText,
    DocId,
    DurationMs,
    JsonObject,
)
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

    id: str = Field(min_length=1, max_length=DOC_ID_MAX_CHARS)
    text: str = Field(max_length=TEXT_MAX_CHARS)
    metadata: JsonObject = Field(default_factory=dict)


class EmbeddingJob(Envelope):
    """A request against one collection of the tenant.

    Each job kind needs its own input, checked here so that a malformed job is rejected (and
    dead-lettered with a clear reason) before any outside system is called.
    """

    job: EmbeddingJobKind
    collection: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    documents: list[Document] = Field(default_factory=list, max_length=DOCUMENTS_MAX)
    doc_ids: list[DocId] = Field(default_factory=list, max_length=DOC_IDS_MAX)
    query: str | None = Field(default=None, max_length=TEXT_MAX_CHARS)
    top_k: int = Field(default=5, ge=1, le=TOP_K_MAX)
    filter: JsonObject | None = None
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

    doc_id: DocId
    chunk: Count
    score: float
    text: str = Field(default="", max_length=TEXT_MAX_CHARS)
    metadata: JsonObject = Field(default_factory=dict)


class EmbeddingResult(Envelope):
    """The outcome of an :class:`EmbeddingJob`; ``job_id`` is the job's ``event_id``."""

    job_id: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    status: EmbeddingStatus
    upserted: Count = 0
    deleted: Count = 0
    hits: list[Hit] = Field(default_factory=list, max_length=HITS_MAX)
    error: DiagnosticText | None = None
    latency_ms: DurationMs | None = None
