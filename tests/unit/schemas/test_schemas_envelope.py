"""Envelope rules: ids, tenants, timestamps, unknown fields, reply helpers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas import (
    EventValidationError,
    LockCommand,
    LockState,
    UsageReport,
    caused_by,
    decode_event,
)
from schemas.envelope import Envelope


def _cmd(**fields: object) -> LockCommand:
    return LockCommand.model_validate(
        {"tenant": "acme", "action": "status", "user": "u", **fields}
    )


def test_event_id_defaults_to_a_fresh_uuid4() -> None:
    first, second = _cmd(), _cmd()
    assert uuid.UUID(first.event_id).version == 4
    assert first.event_id != second.event_id


def test_event_id_is_canonicalised() -> None:
    raw = uuid.uuid4()
    assert _cmd(event_id=str(raw).upper()).event_id == str(raw)
    assert _cmd(event_id=raw).event_id == str(raw)


def test_invalid_event_id_is_rejected_with_reason() -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_event(
            b'{"tenant": "acme", "action": "status", "user": "u", "event_id": "42"}',
            LockCommand,
        )
    assert "event_id: must be a UUID string" in caught.value.reason
    assert caught.value.reason.startswith("LockCommand: ")


@pytest.mark.parametrize("tenant", ["", "-acme", "ac me", "a/b", "x" * 129])
def test_bad_tenants_are_rejected(tenant: str) -> None:
    with pytest.raises(ValidationError):
        _cmd(tenant=tenant)


def test_tenant_is_required() -> None:
    with pytest.raises(EventValidationError, match="tenant: Field required"):
        decode_event(b'{"action": "status", "user": "u"}', LockCommand)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1_714_564_800_123, datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        (1_714_564_800_123.9, datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        (1000, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (
            "2024-05-01T12:00:00.123Z",
            datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        ),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        (datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (
            datetime(2024, 5, 1, 7, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 5, 1, 12, 0, 0, 999000, tzinfo=UTC),
        ),
    ],
)
def test_occurred_at_accepts_epoch_ms_and_iso(
    given: object, expected: datetime
) -> None:
    stamp = _cmd(occurred_at=given).occurred_at
    assert stamp == expected
    assert stamp.tzinfo is UTC


def test_epoch_numbers_are_always_milliseconds_in_json() -> None:
    event = decode_event(
        b'{"tenant": "acme", "action": "status", "user": "u", "occurred_at": 1714564800000}',
        LockCommand,
    )
    assert event.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad", ["yesterday", "1714564800000", True, float("nan"), 10**20]
)
def test_bad_timestamps_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        _cmd(occurred_at=bad)
    assert caught.value.errors()[0]["loc"] == ("occurred_at",)


def test_default_occurred_at_is_now_utc_in_whole_ms() -> None:
    stamp = _cmd().occurred_at
    assert stamp.tzinfo is UTC
    assert stamp.microsecond % 1000 == 0
    assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=5)


def test_every_timestamp_field_takes_epoch_ms(
    lock_state_factory: Callable[..., LockState],
) -> None:
    state = lock_state_factory(
        expires_at=1_714_564_800_000, acquired_at="2024-05-01T11:00:00Z"
    )
    assert state.expires_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert state.acquired_at == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    report = UsageReport.model_validate(
        {"tenant": "t", "report": "rollup", "window_start": 0}
    )
    assert report.window_start == datetime(1970, 1, 1, tzinfo=UTC)


def test_unknown_field_is_rejected_with_clear_reason() -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_event(
            b'{"tenant": "acme", "action": "status", "user": "u", "colour": "red"}',
            LockCommand,
        )
    assert caught.value.reason == (
        "LockCommand: colour: unknown field (not part of the event contract)"
    )
    assert caught.value.errors[0]["type"] == "extra_forbidden"


def test_literal_violation_reads_well() -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_event(b'{"tenant": "acme", "action": "on", "user": "u"}', LockCommand)
    assert caught.value.reason == (
        "LockCommand: action: Input should be 'enable', 'disable', 'extend' or 'status' (got 'on')"
    )
    assert caught.value.model == "LockCommand"


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(EventValidationError) as caught:
        decode_event(
            b'{"tenant": "acme", "action": "on", "ttl_seconds": 0}', LockCommand
        )
    reason = caught.value.reason
    assert "action: Input should be" in reason
    assert "user: Field required" in reason
    assert "ttl_seconds: Input should be greater than 0 (got 0)" in reason


def test_caused_by_links_a_reply_to_its_request(
    lock_command_factory: Callable[..., LockCommand],
) -> None:
    command = lock_command_factory(correlation_id=None)
    reply = LockState(**caused_by(command), status="active")
    assert reply.tenant == command.tenant
    assert reply.causation_id == command.event_id
    assert reply.correlation_id == command.event_id
    assert reply.event_id != command.event_id

    follow_up = LockState(**Envelope.caused_by(reply), status="released")
    assert follow_up.correlation_id == command.event_id
    assert follow_up.causation_id == reply.event_id
