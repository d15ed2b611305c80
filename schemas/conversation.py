"""Conversation events: a user's turn in, the streamed lifecycle of the model's answer out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.bounds import (
    ANSWER_MAX_CHARS,
    DOC_ID_MAX_CHARS,
    MAX_TOKENS_MAX,
    NAME_MAX_CHARS,
    SCHEMA_VERSION_MAX,
    SOURCES_MAX,
    TEXT_MAX_CHARS,
    Count,
    DiagnosticText,
    DurationMs,
    Name,
    UsdPerCall,
)
from schemas.envelope import Envelope, NestedModel

__all__ = [
    "ConversationTurn",
    "MemorySpec",
    "Source",
    "TokenCounter",
    "TokenUsage",
    "TurnEvent",
    "TurnEventType",
]

TurnEventType = Literal["started", "chunk", "completed", "failed"]
TokenCounter = Literal["provider", "tokenizer"]


class MemorySpec(NestedModel):
    """Which embedding collection to retrieve memories from for this turn, and how many."""

    collection: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    top_k: int = Field(default=5, ge=1, le=50)


class ConversationTurn(Envelope):
    """One user prompt in a session; its ``event_id`` becomes the ``turn_id`` of the answer events."""

    session_id: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    user: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    prompt: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    model: Name | None = None
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    memory: MemorySpec | None = None


class TokenUsage(NestedModel):
    """Token counts of one completion; ``counted_by`` says whether the provider reported them."""

    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_tokens: Count = 0
    counted_by: TokenCounter = "provider"


class Source(NestedModel):
    """A retrieved memory chunk that was put into the prompt."""

    collection: Name
    doc_id: str = Field(max_length=DOC_ID_MAX_CHARS)
    chunk: Count
    score: float


class TurnEvent(Envelope):
    """One step of an answer: ``started``, ordered ``chunk`` deltas (by ``seq``), then ``completed`` or
    ``failed``."""

    schema_version: int = Field(default=2, ge=1, le=SCHEMA_VERSION_MAX)
    session_id: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    turn_id: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    type: TurnEventType
    seq: Count = 0
    delta: str = Field(default="", max_length=ANSWER_MAX_CHARS)
    text: str = Field(default="", max_length=ANSWER_MAX_CHARS)
    finish_reason: Name | None = None
    usage: TokenUsage | None = None
    cost_usd: UsdPerCall | None = None
    ttft_ms: DurationMs | None = None
    latency_ms: DurationMs | None = None
    sources: list[Source] = Field(default_factory=list, max_length=SOURCES_MAX)
    error: DiagnosticText | None = None
    #: Since schema v2: answered while the tenant's training lock was active (policy ``allow``).
    training_mode: bool = False
