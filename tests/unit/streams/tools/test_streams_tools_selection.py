"""Times, rates and record filters as the operator commands read them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.tools.exceptions import ArgumentError
from streams.tools.selection import (
    RecordFilter,
    TimeRange,
    decode_value,
    format_ms,
    parse_assignments,
    parse_rate,
    parse_time,
)
from tests.support.poison import poison_values

NOW = int(datetime(2026, 11, 25, 15, 30, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("2h", NOW - 2 * HOUR),
    ("-2h", NOW - 2 * HOUR),
    ("2h ago", NOW - 2 * HOUR),
    ("1h30m", NOW - 90 * 60_000),
    ("90s", NOW - 90_000),
    ("1d", NOW - 24 * HOUR),
    ("1w", NOW - 7 * 24 * HOUR),
    ("today", int(datetime(2026, 11, 25, tzinfo=UTC).timestamp() * 1000)),
    ("yesterday", int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-25T08:00:00Z", int(datetime(2026, 11, 25, 8, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-25T10:00:00+02:00", int(datetime(2026, 11, 25, 8, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-25", int(datetime(2026, 11, 25, tzinfo=UTC).timestamp() * 1000)),
    ("2026-11-25 08:00", int(datetime(2026, 11, 25, 8, tzinfo=UTC).timestamp() * 1000)),
    ("1764057600000", 1764057600000),
])
def test_parse_time_reads_absolute_relative_and_epoch_ms(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty time"), ("soon", "cannot read the time"), ("3x", "cannot read the time"),
    ("1764057600", "looks like seconds"),
])
def test_parse_time_rejects_what_it_cannot_read(text: str, reason: str) -> None:
    with pytest.raises(ArgumentError, match=reason):
        parse_time(text, NOW)


def test_time_range_bounds_are_inclusive_and_ordered() -> None:
    window = TimeRange.parse("2h", "1h", NOW)
    assert NOW - 2 * HOUR in window and NOW - HOUR in window
    assert NOW - 2 * HOUR - 1 not in window and NOW - HOUR + 1 not in window
    assert TimeRange() .bounded is False and 0 in TimeRange()
    with pytest.raises(ArgumentError, match="before --since"):
        TimeRange.parse("1h", "2h", NOW)


@pytest.mark.parametrize(("text", "rate"), [
    ("500", 500.0), ("500/s", 500.0), (" 2.5 / s ", 2.5), ("30000/m", 500.0), ("3600/h", 1.0), (None, None),
])
def test_parse_rate(text: str | None, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-5", "0", "5/d"])
def test_parse_rate_rejects_nonsense(text: str) -> None:
    with pytest.raises(ArgumentError):
        parse_rate(text)


def test_parse_assignments_reads_json_values_or_text() -> None:
    assert parse_assignments(["model=new-model", "max_tokens=256", "memory.top_k=5", "flag=true"]) == {
        "model": "new-model", "max_tokens": 256, "memory.top_k": 5, "flag": True}
    with pytest.raises(ArgumentError, match="--set takes NAME=VALUE"):
        parse_assignments(["model"])


def test_envelope_filters_partition_time_key_and_headers() -> None:
    selection = RecordFilter.from_options(keys=["a", "b"], headers=["h=1"], partitions=[2],
                                          time=TimeRange(100, 200))
    ok = dict(partition=2, timestamp=150, key=b"a", headers=[("h", b"1"), ("x", b"y")])
    assert selection.matches_envelope(**ok)
    assert not selection.matches_envelope(**{**ok, "partition": 1})
    assert not selection.matches_envelope(**{**ok, "timestamp": 201})
    assert not selection.matches_envelope(**{**ok, "key": b"c"})
    assert not selection.matches_envelope(**{**ok, "key": None})
    assert not selection.matches_envelope(**{**ok, "headers": [("h", b"2")]})
    assert not selection.matches_envelope(**{**ok, "headers": None})
    assert not selection.needs_value


def test_value_filters_tenant_and_fields_including_nested_and_lists() -> None:
    selection = RecordFilter.from_options(tenants=["acme", "globex"],
                                          fields=["action=enable", "roles=admin", "memory.top_k=5"])
    event = {"tenant": "acme", "action": "enable", "roles": ["ml", "admin"], "memory": {"top_k": 5}}
    assert selection.needs_value and selection.matches_value(event)
    assert not selection.matches_value({**event, "tenant": "initech"})
    assert not selection.matches_value({**event, "roles": ["viewer"]})
    assert not selection.matches_value({**event, "memory": {"top_k": 6}})
    assert not selection.matches_value({k: v for k, v in event.items() if k != "memory"})
    assert not selection.matches_value(None), "an undecodable value matches no value filter"
    assert RecordFilter.from_options(fields=["ttl_seconds=null"]).matches_value({"ttl_seconds": None})
    assert RecordFilter.from_options(fields=["ok=true"]).matches_value({"ok": True})


def test_decode_value_reads_avro_json_and_says_why_not() -> None:
    from schemas import LockCommand, encode_event

    command = LockCommand(tenant="acme", action="status", user="ann")
    assert decode_value("soma.training.lock.commands", encode_event(command)).data["event_id"] == command.event_id
    assert decode_value("anything", encode_event(command)).avro
    as_json = decode_value("soma.training.lock.commands", b'{"tenant": "acme", "action": "status", "user": "u"}')
    assert as_json.fields is not None and as_json.fields["tenant"] == "acme"
    broken = decode_value("soma.training.lock.commands", b'{"tenant": ')
    assert broken.error and "invalid JSON" in broken.error and broken.fields is None
    invalid_in_dlq = decode_value("soma.training.lock.commands.dlq", b'{"tenant": "acme", "action": "explode"}')
    assert invalid_in_dlq.fields == {"tenant": "acme", "action": "explode"}, "a DLQ shows the original as it was"
    assert decode_value("x", b"\xff\xfe").error.endswith("shown as hex)")


def test_format_ms() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(None) == "-" and format_ms(-1) == "-"


_LOCK_COMMAND = {"event_id": "0b6a8c36-3c4e-4a55-9f57-8a6a4c1c2f11", "tenant": "acme", "schema_version": 1,
                 "occurred_at": "2026-11-25T08:00:00Z", "action": "status", "user": "ann"}


@pytest.mark.parametrize("topic", ["soma.training.lock.commands", "soma.training.lock.commands.dlq", "other"])
@pytest.mark.parametrize("kind,value", poison_values(_LOCK_COMMAND), ids=[k for k, _ in poison_values(_LOCK_COMMAND)])
def test_decode_value_never_raises(topic: str, kind: str, value: bytes) -> None:
    decoded = decode_value(topic, value)  # whatever the decoder raised, the record is shown, not fatal
    assert decoded.error is None or decoded.fields is None
    if topic == "soma.training.lock.commands" and kind.startswith("date"):
        assert decoded.error is not None and "occurred_at: timestamp out of range" in decoded.error
        assert isinstance(decoded.data, str) and ("0001-01-01" in decoded.data or "9999-12-31" in decoded.data)


def test_decode_value_reports_any_decoder_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.tools.selection as selection

    def explode(value: bytes, model: type) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(selection, "decode_event", explode)
    decoded = decode_value("soma.training.lock.commands", b'{"tenant": "acme"}')
    assert decoded.error == "RecursionError: maximum recursion depth exceeded"
    assert decoded.data == '{"tenant": "acme"}'
