"""The envelope every event carries, and the value types shared by all event models.

The envelope is flat (its fields sit beside the domain fields) so that a hand-written JSON event is
just one object, and so that the Avro record of every event is a single flat record.

Timestamps are normalised on the way in: they are always UTC-aware and truncated to whole
milliseconds, because the wire format (Avro ``timestamp-millis``) keeps milliseconds; truncating at the
model boundary makes an event equal to itself after a trip through either wire format. They must lie
in ``[TIMESTAMP_MIN, TIMESTAMP_MAX)`` (see :mod:`schemas.bounds`).

Every validator here raises ``ValueError`` only (pydantic turns that into a field error); any other
exception would escape validation as a crash.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from schemas.bounds import (
    SCHEMA_VERSION_MAX,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    Name,
)

__all__ = [
    "Envelope",
    "EventId",
    "NestedModel",
    "Tenant",
    "UtcDatetime",
    "caused_by",
    "derived_event_id",
    "new_event_id",
    "utc_now",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MS = (TIMESTAMP_MIN - _EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (TIMESTAMP_MAX - _EPOCH) // timedelta(milliseconds=1)
_RANGE = f"{TIMESTAMP_MIN:%Y-%m-%d}T00:00:00Z <= t < {TIMESTAMP_MAX:%Y-%m-%d}T00:00:00Z"
#: Longer than any ISO-8601 timestamp (``fromisoformat`` is not handed megabytes).
_MAX_ISO_CHARS = 64
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def new_event_id() -> str:
    """A fresh random event id; the idempotency key of an event."""
    return str(uuid.uuid4())


#: Namespace of :func:`derived_event_id` (uuid5).
DERIVED_ID_NAMESPACE = uuid.UUID("8d3b1f0e-7c52-4a9e-b6f1-2e4d8a0c9b73")


def derived_event_id(source: str, part: str) -> str:
    """The id of the event ``part`` that ``source`` (an event id, or another stable name) gives rise to.

    Deterministic: handling the same event again after a crash produces outputs with the same ids, so
    a consumer can tell a replayed answer from a second one.
    """
    return str(uuid.uuid5(DERIVED_ID_NAMESPACE, f"{source}:{part}"))


def utc_now() -> datetime:
    """Current time, UTC-aware, at the millisecond precision the wire keeps."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _coerce_timestamp(value: Any) -> Any:
    """Accept ISO-8601 strings and epoch *milliseconds* (never seconds, whatever the magnitude).

    Pydantic's own numeric handling guesses seconds vs. milliseconds from the magnitude; producers in
    other languages send epoch milliseconds, so the guess is replaced by a fixed rule.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("epoch milliseconds must be a finite number")
        if not _MIN_MS <= value < _MAX_MS:
            raise ValueError(
                f"epoch milliseconds out of range: must be {_MIN_MS} <= ms < {_MAX_MS} ({_RANGE})"
            )
        return _EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str):
        if len(value) > _MAX_ISO_CHARS:
            raise ValueError(f"not a timestamp: {len(value)} characters")
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                "expected an ISO-8601 timestamp (e.g. '2024-05-01T12:00:00Z') "
                "or a number of epoch milliseconds"
            ) from None
    return value


def _normalize_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        try:
            value = value.astimezone(UTC)
        except (OverflowError, ValueError):
            # e.g. 0001-01-01T00:00:00+01:00: its UTC instant is before year 1.
            raise ValueError(f"timestamp out of range: must be {_RANGE}") from None
    if not TIMESTAMP_MIN <= value < TIMESTAMP_MAX:
        raise ValueError(f"timestamp out of range: must be {_RANGE}")
    extra_us = value.microsecond % 1000
    if extra_us:
        value = value.replace(microsecond=value.microsecond - extra_us)
    return value


def _coerce_event_id(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _canonical_uuid(value: str) -> str:
    """Event ids are compared as strings (dedupe tables), so one UUID must have one spelling."""
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(
            "must be a UUID string, e.g. '0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77'"
        ) from None


UtcDatetime = Annotated[
    datetime, BeforeValidator(_coerce_timestamp), AfterValidator(_normalize_utc)
]
"""A timestamp: ISO-8601 string or epoch milliseconds in, UTC-aware millisecond datetime out."""

EventId = Annotated[
    str, BeforeValidator(_coerce_event_id), AfterValidator(_canonical_uuid)
]
"""A UUID in canonical lowercase hyphenated form."""

Tenant = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=TENANT_PATTERN)
]


class NestedModel(BaseModel):
    """Base of the records nested inside events; unknown keys are rejected like at the top level."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class Envelope(BaseModel):
    """Fields every event has. ``event_id`` is the idempotency key consumers deduplicate on."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    event_id: EventId = Field(default_factory=new_event_id)
    tenant: Tenant
    schema_version: int = Field(default=1, ge=1, le=SCHEMA_VERSION_MAX)
    occurred_at: UtcDatetime = Field(default_factory=utc_now)
    correlation_id: Name | None = None
    causation_id: Name | None = None

    @classmethod
    def caused_by(cls, source: Envelope) -> dict[str, Any]:
        """Envelope fields for an event answering ``source``; see :func:`caused_by`."""
        return caused_by(source)


def caused_by(source: Envelope) -> dict[str, Any]:
    """Envelope fields for an event produced in reaction to ``source``.

    The reply keeps the tenant, joins the source's conversation (its correlation id, or the source
    itself when it started one) and names the source as its direct cause::

        LockState(**caused_by(command), status="active", ...)
    """
    return {
        "tenant": source.tenant,
        "correlation_id": source.correlation_id or source.event_id,
        "causation_id": source.event_id,
    }
