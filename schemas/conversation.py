"""Conversation events: a user's turn in, the streamed lifecycle of the model's answer out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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

    collection: str = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=50)


class ConversationTurn(Envelope):
    """One user prompt in a session; its ``event_id`` becomes the ``turn_id`` of the answer events."""

    session_id: str = Field(min_length=1)
    user: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    memory: MemorySpec | None = None


class TokenUsage(NestedModel):
    """Token counts of one completion; ``counted_by`` says whether the provider reported them."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    counted_by: TokenCounter = "provider"


class Source(NestedModel):
    """A retrieved memory chunk that was put into the prompt."""

    collection: str
    doc_id: str
    chunk: int = Field(ge=0)
    score: float


class TurnEvent(Envelope):
    """One step of an answer: ``started``, ordered ``chunk`` deltas (by ``seq``), then ``completed`` or
    ``failed``."""

    schema_version: int = Field(default=2, ge=1)
    session_id: str = Field(min_length=1)
    turn_id: str = Field(min_length=1)
    type: TurnEventType
    seq: int = Field(default=0, ge=0)
    delta: str = ""
    text: str = ""
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    cost_usd: float | None = Field(default=None, ge=0.0)
    ttft_ms: float | None = Field(default=None, ge=0.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    sources: list[Source] = Field(default_factory=list)
    error: str | None = None
    #: Since schema v2: answered while the tenant's training lock was active (policy ``allow``).
    training_mode: bool = False
