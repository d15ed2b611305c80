"""Errors raised by the event contracts.

Callers (agents, the DLQ plumbing, operator tools) need to tell "these bytes are not an event at all"
apart from "this is an event, but its content breaks the contract", because the first usually means a
misconfigured producer and the second a bad request that deserves a ``failed`` reply. Every error
carries ``reason``: a single human-readable line suitable for a DLQ header or a log message (cut to
``MAX_REASON_CHARS``: a reason may quote hostile input).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_REASON_CHARS",
    "DecodeError",
    "EncodeError",
    "EventValidationError",
    "SchemaError",
]

MAX_REASON_CHARS = 2000


class SchemaError(Exception):
    """Base class of every error raised by :mod:`schemas`."""

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        super().__init__(reason)
        self.reason = reason


class DecodeError(SchemaError):
    """The bytes are neither a readable Confluent-framed Avro event nor a UTF-8 JSON object."""


class EncodeError(SchemaError):
    """An event could not be written as Avro (no schema for its type, or a value outside the schema)."""


class EventValidationError(SchemaError):
    """The payload decoded, but its content does not satisfy the event's model.

    ``model`` names the expected event type; ``errors`` holds pydantic's structured error list (empty
    when the failure is not field-level, e.g. an event of another type).
    """

    def __init__(
        self,
        reason: str,
        *,
        model: str = "",
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.model = model
        self.errors: list[dict[str, Any]] = errors if errors is not None else []
