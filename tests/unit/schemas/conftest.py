"""Factories for fully populated events of every type (all optional fields set where sensible)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    LockCommand,
    LockState,
    TurnEvent,
    UsageEvent,
    UsageReport,
)
from schemas.registry import set_schema_table

EventFactory = Callable[..., Envelope]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _envelope() -> dict[str, Any]:
    return {
        "tenant": "acme-corp.eu_1",
        "occurred_at": T0,
        "correlation_id": "corr-1",
        "causation_id": "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77",
    }


SAMPLES: dict[type[Envelope], dict[str, Any]] = {
    LockCommand: {
        "action": "enable",
        "user": "alice",
        "roles": ["admin", "trainer"],
        "reason": "nightly fine-tune",
        "ttl_seconds": 3600,
    },
    LockState: {
        "status": "active",
        "holder": "alice",
        "reason": "nightly fine-tune",
        "fencing_token": 7,
        "acquired_at": T0,
        "expires_at": datetime(2024, 5, 1, 13, 0, 0, tzinfo=UTC),
        "command_event_id": "5f0a7d3e-2b7c-4a53-8f4e-2c1d0e9b8a76",
        "detail": "granted",
        "action": "enable",
    },
    ConversationTurn: {
        "session_id": "s-1",
        "user": "bob",
        "prompt": "Summarise the meeting, please. ✓",
        "model": "smollm2",
        "max_tokens": 256,
        "temperature": 0.7,
        "memory": {"collection": "notes", "top_k": 3},
    },
    TurnEvent: {
        "session_id": "s-1",
        "turn_id": "5f0a7d3e-2b7c-4a53-8f4e-2c1d0e9b8a76",
        "type": "completed",
        "seq": 12,
        "delta": "",
        "text": "The meeting was short.",
        "finish_reason": "stop",
        "usage": {
            "input_tokens": 120,
            "output_tokens": 30,
            "cached_tokens": 4,
            "counted_by": "tokenizer",
        },
        "cost_usd": 0.00042,
        "ttft_ms": 180.5,
        "latency_ms": 2400.0,
        "sources": [{"collection": "notes", "doc_id": "d1", "chunk": 2, "score": 0.83}],
        "error": None,
    },
    EmbeddingJob: {
        "job": "upsert",
        "collection": "notes",
        "documents": [
            {
                "id": "d1",
                "text": "hello world",
                "metadata": {
                    "lang": "en",
                    "tags": ["a", "b"],
                    "nested": {"x": 1.5, "n": None},
                },
            },
            {"id": "d2", "text": "second"},
        ],
        "doc_ids": [],
        "top_k": 5,
        "filter": {"must": [{"key": "lang", "match": {"value": "en"}}]},
        "score_threshold": 0.2,
    },
    EmbeddingResult: {
        "job_id": "5f0a7d3e-2b7c-4a53-8f4e-2c1d0e9b8a76",
        "status": "ok",
        "upserted": 2,
        "deleted": 0,
        "hits": [
            {
                "doc_id": "d1",
                "chunk": 0,
                "score": 0.91,
                "text": "hello world",
                "metadata": {
                    "lang": "en",
                    "page": 3,
                    "deep": {"list": [1, {"y": True}]},
                },
            }
        ],
        "latency_ms": 12.5,
    },
    UsageEvent: {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "kind": "chat",
        "input_tokens": 120,
        "output_tokens": 30,
        "cached_tokens": 0,
        "cost_usd": 0.0001,
        "latency_ms": 2400.0,
        "source_event_id": "5f0a7d3e-2b7c-4a53-8f4e-2c1d0e9b8a76",
    },
    UsageReport: {
        "report": "forecast",
        "window": "7d",
        "window_start": T0,
        "window_end": datetime(2024, 5, 8, 12, 0, 0, tzinfo=UTC),
        "provider": "openai",
        "model": "gpt-4o-mini",
        "kind": "chat",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cached_tokens": 50,
        "events": 12,
        "cost_usd": 1.25,
        "forecast_tokens": 1500.0,
        "forecast_cost_usd": 1.9,
        "lower_cost_usd": 1.5,
        "upper_cost_usd": 2.3,
        "confidence": 0.9,
        "history_points": 24,
        "method": "linear",
        "budget_usd": 10.0,
        "spent_usd": 1.25,
        "threshold": 0.8,
        "period": "month",
    },
}


@pytest.fixture
def event_factory() -> EventFactory:
    """``event_factory(Model, **overrides)``: a fully populated, valid event of that type."""

    def make(model: type[Envelope], **overrides: Any) -> Envelope:
        return model(**{**_envelope(), **SAMPLES[model], **overrides})

    return make


@pytest.fixture
def lock_command_factory() -> Callable[..., LockCommand]:
    def make(**overrides: Any) -> LockCommand:
        return LockCommand(**{**_envelope(), **SAMPLES[LockCommand], **overrides})

    return make


@pytest.fixture
def lock_state_factory() -> Callable[..., LockState]:
    def make(**overrides: Any) -> LockState:
        return LockState(**{**_envelope(), **SAMPLES[LockState], **overrides})

    return make


@pytest.fixture
def restore_schema_table() -> Iterator[None]:
    """Tests that install their own schema table get the shipped one back afterwards."""
    yield
    set_schema_table(None)
