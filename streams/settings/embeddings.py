"""Settings of embedding jobs, semantic memory and Qdrant."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from streams.settings.base import Section

__all__ = ["EmbeddingSettings"]


class EmbeddingSettings(Section):
    section_title: ClassVar[str] = "Embedding jobs, semantic memory and Qdrant"

    embeddings_backend: Literal["local", "openai"] = Field(
        "local", alias="SOMA_EMBEDDINGS_BACKEND",
        description="Embedding backend: local (sentence-transformers in the worker) or openai (an "
        "OpenAI-compatible /v1/embeddings endpoint).",
    )
    embeddings_model: str = Field(
        "all-MiniLM-L6-v2", alias="SOMA_EMBEDDINGS_MODEL", min_length=1,
        description="Embedding model: for local, all-MiniLM-L6-v2 (the packaged model) or a local "
        "sentence-transformers directory; for openai, the model name the endpoint serves.",
    )
    embeddings_base_url: str | None = Field(
        None, alias="SOMA_EMBEDDINGS_BASE_URL",
        description="Base URL of the OpenAI-compatible embeddings endpoint (e.g. https://api.openai.com/v1). "
        "Unset: OPENAI_BASE_URL.",
    )
    embeddings_api_key: str | None = Field(
        None, alias="SOMA_EMBEDDINGS_API_KEY",
        description="API key of the embeddings endpoint. Unset: OPENAI_API_KEY.",
    )
    embeddings_batch_size: int = Field(
        64, alias="SOMA_EMBEDDINGS_BATCH_SIZE", ge=1, le=2048,
        description="Texts per model call (local) or per request (openai); texts of many jobs are "
        "gathered into batches of this size.",
    )
    embeddings_max_jobs_per_batch: int = Field(
        32, alias="SOMA_EMBEDDINGS_MAX_JOBS_PER_BATCH", ge=1, le=10_000,
        description="Most embedding jobs the agent takes from the broker per batch (bounds the time "
        "one batch holds its results back).",
    )
    embeddings_timeout_seconds: float = Field(
        30.0, alias="SOMA_EMBEDDINGS_TIMEOUT_SECONDS", gt=0, le=600,
        description="Timeout of one request to the embeddings endpoint (openai backend).",
    )
    embeddings_chunk_chars: int = Field(
        800, alias="SOMA_EMBEDDINGS_CHUNK_CHARS", ge=50, le=100_000,
        description="Longest chunk of a document, in characters (chunks end at whitespace when they can).",
    )
    embeddings_chunk_overlap: int = Field(
        100, alias="SOMA_EMBEDDINGS_CHUNK_OVERLAP", ge=0, validate_default=True,
        description="Characters a chunk repeats from the end of the previous one; less than half "
        "of SOMA_EMBEDDINGS_CHUNK_CHARS.",
    )
    embeddings_max_document_chars: int = Field(
        100_000, alias="SOMA_EMBEDDINGS_MAX_DOCUMENT_CHARS", ge=1,
        description="Longest document text an upsert accepts; a longer one fails the job.",
    )
    qdrant_url: str | None = Field(
        None, alias="QDRANT_URL",
        description="Qdrant server (http://host:6333). Unset: Qdrant local mode in SOMA_DATA_DIR/qdrant "
        "(one worker process only).",
    )
    qdrant_api_key: str | None = Field(None, alias="QDRANT_API_KEY", description="API key of the Qdrant server.")
    qdrant_timeout_seconds: float = Field(
        10.0, alias="SOMA_QDRANT_TIMEOUT_SECONDS", gt=0, le=600,
        description="Timeout of one Qdrant call; a failing call is tried 3 times in all, with backoff.",
    )

    @field_validator("embeddings_chunk_overlap")
    @classmethod
    def _overlap_below_half_a_chunk(cls, value: int, info: Any) -> int:
        size = info.data.get("embeddings_chunk_chars")
        if size is not None and value * 2 >= size:
            raise ValueError(f"must be less than half of SOMA_EMBEDDINGS_CHUNK_CHARS ({size})")
        return value
