"""Poison records: whatever the bytes, decoding raises a SchemaError with a reason, nothing else.

A consumer dead-letters on ``SchemaError`` and moves on; any other exception escaping the codec makes
an agent crash and restart on the same record forever (issue 12: a JSON LockCommand dated
``0001-01-01T00:00:00+01:00`` raised ``OverflowError`` out of ``decode_event``). Only the public API
is used here, so the file also runs against older versions of the contracts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import fastavro
import pytest

from schemas import (
    SUBJECTS,
    ConversationTurn,
    DecodeError,
    EmbeddingJob,
    EmbeddingResult,
    Envelope,
    EventValidationError,
    LockCommand,
    LockState,
    SchemaError,
    TurnEvent,
    UsageEvent,
    UsageReport,
    decode_any,
    decode_event,
    encode_event,
    latest_schema_id,
)
from schemas.codec import read_json_object
from schemas.faust_codec import SomaAvroCodec
from schemas.registry import get_schema_table

EventFactory = Callable[..., Envelope]

LOCK = {"tenant": "acme", "action": "status", "user": "u"}
TURN = {"tenant": "acme", "session_id": "s", "user": "u", "prompt": "hi"}
USAGE = {"tenant": "acme", "provider": "openai", "model": "m", "kind": "chat"}
SEARCH = {"tenant": "acme", "job": "search", "collection": "c", "query": "q"}
UPSERT = {"tenant": "acme", "job": "upsert", "collection": "c", "documents": [{"id": "d", "text": "t"}]}


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def _reason(data: bytes, model: type[Envelope]) -> SchemaError:
    """Decode ``data`` expecting a SchemaError; returns it (any other exception fails the test)."""
    with pytest.raises(SchemaError) as caught:
        decode_event(data, model)
    assert caught.value.reason
    return caught.value


# --- timestamps out of range, in both directions, whatever the offset -------------------------

OUT_OF_RANGE_TIMESTAMPS: list[Any] = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC: astimezone overflowed
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01T00:59:59+01:00",  # 1969-12-31T23:59:59Z
    "2200-01-01T00:00:00Z",
    "2199-12-31T23:30:00-01:00",  # 2200-01-01T00:30:00Z
    10**20,
    -(10**20),
    -1,
    10**400,
    253_402_300_800_000,  # 10000-01-01 in epoch ms
]


@pytest.mark.parametrize("stamp", OUT_OF_RANGE_TIMESTAMPS, ids=repr)
@pytest.mark.parametrize(
    ("model", "fields"),
    [(LockCommand, LOCK), (ConversationTurn, TURN), (UsageEvent, USAGE), (EmbeddingJob, SEARCH)],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_out_of_range_occurred_at_is_a_validation_error(
    model: type[Envelope], fields: dict[str, Any], stamp: Any
) -> None:
    error = _reason(_json({**fields, "occurred_at": stamp}), model)
    assert isinstance(error, EventValidationError)
    assert "occurred_at: " in error.reason
    assert "out of range" in error.reason


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 10**20])
@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (LockState, {"tenant": "acme", "status": "active", "field": "expires_at"}),
        (LockState, {"tenant": "acme", "status": "active", "field": "acquired_at"}),
        (UsageReport, {"tenant": "acme", "report": "rollup", "field": "window_start"}),
        (UsageReport, {"tenant": "acme", "report": "rollup", "field": "window_end"}),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v.get("field", ""),
)
def test_out_of_range_timestamps_on_answers_are_validation_errors(
    model: type[Envelope], fields: dict[str, Any], stamp: Any
) -> None:
    name = fields["field"]
    body = {k: v for k, v in fields.items() if k != "field"}
    error = _reason(_json({**body, name: stamp}), model)
    assert isinstance(error, EventValidationError)
    assert f"{name}: " in error.reason


def _avro_frame(model: type[Envelope], record: dict[str, Any]) -> bytes:
    """A frame written with fastavro straight from ``record`` (bypassing the models' checks)."""
    schema_id = latest_schema_id(model)
    entry = get_schema_table().get(schema_id)
    assert entry is not None
    body = io.BytesIO()
    fastavro.schemaless_writer(body, entry.parsed, record)
    return b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()


def _lock_record(**overrides: Any) -> dict[str, Any]:
    return {
        "event_id": "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77",
        "tenant": "acme",
        "schema_version": 1,
        "occurred_at": 1_714_564_800_000,
        "correlation_id": None,
        "causation_id": None,
        "action": "status",
        "user": "u",
        "roles": [],
        "reason": "",
        "ttl_seconds": None,
        **overrides,
    }


@pytest.mark.parametrize("millis", [2**63 - 1, -(2**63), 10**18, -(10**18), -1, 7_258_118_400_000])
def test_out_of_range_avro_timestamps_are_schema_errors(millis: int) -> None:
    error = _reason(_avro_frame(LockCommand, _lock_record(occurred_at=millis)), LockCommand)
    assert "occurred_at: epoch milliseconds out of range" in error.reason


# --- numbers: inf from 1e309, values beyond their wire type, negatives that mean nothing -------

BAD_NUMBERS: list[tuple[type[Envelope], dict[str, Any], str, Any]] = [
    (LockCommand, LOCK, "ttl_seconds", "1e309"),
    (LockCommand, LOCK, "ttl_seconds", "-1e309"),
    (LockCommand, LOCK, "ttl_seconds", str(10**30)),
    (LockCommand, LOCK, "ttl_seconds", "-1"),
    (LockCommand, LOCK, "schema_version", str(10**30)),
    (LockCommand, LOCK, "schema_version", str(2**31)),
    (ConversationTurn, TURN, "max_tokens", str(10**30)),
    (ConversationTurn, TURN, "max_tokens", "1e309"),
    (ConversationTurn, TURN, "max_tokens", "-1"),
    (ConversationTurn, TURN, "temperature", "1e309"),
    (ConversationTurn, TURN, "temperature", "-1e309"),
    (ConversationTurn, TURN, "memory", '{"collection": "c", "top_k": ' + str(10**30) + "}"),
    (UsageEvent, USAGE, "input_tokens", str(10**30)),
    (UsageEvent, USAGE, "input_tokens", "1e309"),
    (UsageEvent, USAGE, "output_tokens", str(2**63)),
    (UsageEvent, USAGE, "cached_tokens", "-1"),
    (UsageEvent, USAGE, "cost_usd", "1e309"),
    (UsageEvent, USAGE, "cost_usd", "-1"),
    (UsageEvent, USAGE, "cost_usd", "1e300"),
    (UsageEvent, USAGE, "latency_ms", "1e309"),
    (UsageEvent, USAGE, "latency_ms", "-0.5"),
    (EmbeddingJob, SEARCH, "top_k", str(10**30)),
    (EmbeddingJob, SEARCH, "top_k", "-1"),
    (EmbeddingJob, SEARCH, "score_threshold", "1e309"),
    (EmbeddingJob, SEARCH, "score_threshold", "-1e309"),
]


@pytest.mark.parametrize(
    ("model", "fields", "name", "literal"),
    BAD_NUMBERS,
    ids=[f"{m.__name__}.{n}={v[:12]}" for m, _, n, v in BAD_NUMBERS],
)
def test_numbers_outside_their_bounds_are_validation_errors(
    model: type[Envelope], fields: dict[str, Any], name: str, literal: str
) -> None:
    data = _json(fields)[:-1] + f', "{name}": {literal}}}'.encode()
    error = _reason(data, model)
    assert isinstance(error, EventValidationError)
    assert f"{name}" in error.reason


@pytest.mark.parametrize(
    ("model", "fields", "name", "value"),
    [
        (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "chunk"}, "seq", 10**30),
        (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "chunk"}, "seq", -1),
        (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "completed"}, "cost_usd", float("inf")),
        (TurnEvent, {"session_id": "s", "turn_id": "t", "type": "completed"}, "ttft_ms", float("nan")),
        (
            TurnEvent,
            {"session_id": "s", "turn_id": "t", "type": "completed"},
            "usage",
            {"input_tokens": 10**30},
        ),
        (
            TurnEvent,
            {"session_id": "s", "turn_id": "t", "type": "completed"},
            "sources",
            [{"collection": "c", "doc_id": "d", "chunk": -1, "score": 0.5}],
        ),
        (
            TurnEvent,
            {"session_id": "s", "turn_id": "t", "type": "completed"},
            "sources",
            [{"collection": "c", "doc_id": "d", "chunk": 0, "score": float("inf")}],
        ),
        (LockState, {"status": "active"}, "fencing_token", 2**63),
        (LockState, {"status": "active"}, "fencing_token", -1),
        (EmbeddingResult, {"job_id": "j", "status": "ok"}, "upserted", 10**30),
        (EmbeddingResult, {"job_id": "j", "status": "ok"}, "deleted", -1),
        (EmbeddingResult, {"job_id": "j", "status": "ok"}, "latency_ms", float("inf")),
        (
            EmbeddingResult,
            {"job_id": "j", "status": "ok"},
            "hits",
            [{"doc_id": "d", "chunk": 0, "score": float("nan")}],
        ),
        (UsageReport, {"report": "rollup"}, "input_tokens", 2**63),
        (UsageReport, {"report": "rollup"}, "events", -1),
        (UsageReport, {"report": "rollup"}, "cost_usd", float("inf")),
        (UsageReport, {"report": "forecast"}, "forecast_cost_usd", float("nan")),
        (UsageReport, {"report": "forecast"}, "upper_cost_usd", float("-inf")),
        (UsageReport, {"report": "budget_alert"}, "budget_usd", float("inf")),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else (v if isinstance(v, str) else ""),
)
def test_numbers_outside_their_bounds_on_answers_are_refused(
    model: type[Envelope], fields: dict[str, Any], name: str, value: Any
) -> None:
    """Answers are read back by views, the bridge and ``soma tail``: the same bounds hold there."""
    with pytest.raises(ValueError, match=name):  # pydantic's ValidationError is a ValueError
        model.model_validate({"tenant": "acme", **fields, name: value})


# --- nesting, size, encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"tenant": "acme", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"tenant": "acme", "x": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
    ],
    ids=["array-100k-deep", "object-100k-deep", "object-in-field-100k-deep"],
)
def test_deep_nesting_is_a_decode_error(data: bytes) -> None:
    error = _reason(data, LockCommand)
    assert isinstance(error, DecodeError)
    assert "deep" in error.reason


@pytest.mark.parametrize("depth", [33, 200, 900])
def test_deep_json_fields_are_refused(depth: int) -> None:
    deep: Any = 1
    for _ in range(depth):
        deep = {"a": deep}
    job = {**UPSERT, "documents": [{"id": "d", "text": "t", "metadata": deep}]}
    error = _reason(_json(job), EmbeddingJob)
    assert "documents.0.metadata" in error.reason
    assert "nested deeper than" in error.reason
    deep_list: Any = []
    for _ in range(depth):
        deep_list = [deep_list]
    error = _reason(_json({**SEARCH, "filter": {"x": deep_list}}), EmbeddingJob)
    assert "filter" in error.reason


def test_deep_json_field_inside_avro_is_a_decode_error(
    event_factory: EventFactory,
) -> None:
    """``metadata`` travels as a JSON string in Avro: a string nesting 100,000 deep."""
    job = event_factory(EmbeddingJob)
    record = job.model_dump()
    record["documents"][0]["metadata"] = "[" * 100_000 + "]" * 100_000
    record["documents"][1]["metadata"] = "{}"
    record["filter"] = None
    error = _reason(_avro_frame(EmbeddingJob, record), EmbeddingJob)
    assert "json field" in error.reason


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", 1e309),
        ("x", 10**30),
        ("x", -(2**63) - 1),
        ("big", "y" * 70_000),
        ("many", list(range(20_000))),
        ("s", "\ud800"),
        ("\udfff", 1),
    ],
    ids=["inf", "1e30", "below-int64", "70k-string", "20k-items", "lone-surrogate", "surrogate-key"],
)
def test_json_fields_hold_only_bounded_json(name: str, value: Any) -> None:
    # ensure_ascii writes surrogates as \\udxxx escapes; 1e309 is how a producer spells inf in JSON
    text = json.dumps({"lang": "en", name: value}).replace("Infinity", "1e309")
    body = _json(UPSERT).replace(b'"text": "t"}', b'"text": "t", "metadata": ' + text.encode() + b"}")
    error = _reason(body, EmbeddingJob)
    assert isinstance(error, EventValidationError)
    assert "metadata" in error.reason


@pytest.mark.parametrize(
    ("model", "fields", "name", "length"),
    [
        (ConversationTurn, TURN, "prompt", 1_000_001),
        (ConversationTurn, TURN, "user", 257),
        (ConversationTurn, TURN, "session_id", 257),
        (ConversationTurn, TURN, "model", 257),
        (LockCommand, LOCK, "reason", 10_001),
        (LockCommand, LOCK, "user", 257),
        (LockCommand, LOCK, "correlation_id", 257),
        (UsageEvent, USAGE, "model", 257),
        (UsageEvent, USAGE, "provider", 257),
        (EmbeddingJob, SEARCH, "query", 1_000_001),
        (EmbeddingJob, SEARCH, "collection", 257),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else (v if isinstance(v, str) else ""),
)
def test_strings_longer_than_their_bound_are_refused(
    model: type[Envelope], fields: dict[str, Any], name: str, length: int
) -> None:
    error = _reason(_json({**fields, name: "é" * length}), model)
    assert isinstance(error, EventValidationError)
    assert f"{name}: String should have at most" in error.reason
    assert len(error.reason) < 500  # the value is not copied into the reason


@pytest.mark.parametrize(
    ("model", "fields", "name", "items"),
    [
        (LockCommand, LOCK, "roles", ["r"] * 101),
        (EmbeddingJob, {**UPSERT, "documents": []}, "documents", [{"id": "d", "text": "t"}] * 1001),
        (EmbeddingJob, {**SEARCH, "job": "delete"}, "doc_ids", ["d"] * 10_001),
    ],
    ids=["roles", "documents", "doc_ids"],
)
def test_lists_longer_than_their_bound_are_refused(
    model: type[Envelope], fields: dict[str, Any], name: str, items: list[Any]
) -> None:
    error = _reason(_json({**fields, name: items}), model)
    assert f"{name}: List should have at most" in error.reason


def test_a_huge_payload_gives_a_short_reason() -> None:
    unknown = {f"field{i}": "v" * 100 for i in range(50_000)}
    error = _reason(_json({**LOCK, **unknown, "user": "x" * 5_000_000}), LockCommand)
    assert isinstance(error, EventValidationError)
    assert len(error.reason) <= 2000
    assert "unknown field" in error.reason
    assert "more problems" in error.reason


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"tenant": "acme", "action": "status", "user": "\xff"}', "not valid UTF-8"),
        (b'{"tenant": "acme", "action": "status", "user": "\xed\xa0\x80"}', "not valid UTF-8"),
        (b'{"tenant": "acme", "action": "status", "user": "\xc3"}', "not valid UTF-8"),
        (b'{"tenant": "acme", "action": "status", "user": "\\ud800"}', "user"),
        (b'{"tenant": "acme", "action": "status", "user": "u\\udfffv"}', "user"),
        (b'{"tenant": "acme", "action": "status", "user": "u", "roles": ["\\udbff"]}', "roles.0"),
        (b'{"tenant": "acme", "action": "status", "user": "u", "\\ud800": 1}', "a field name: not valid Unicode"),
    ],
    ids=["xff", "utf8-encoded-surrogate", "truncated-sequence", "lone-high", "lone-low", "in-list", "in-key"],
)
def test_invalid_utf8_and_lone_surrogates_are_refused(data: bytes, fragment: str) -> None:
    error = _reason(data, LockCommand)
    assert fragment in error.reason


def test_invalid_utf8_in_an_avro_string_is_a_decode_error() -> None:
    good = _avro_frame(LockCommand, _lock_record(user="uu"))
    assert good.count(b"\x04uu") == 1  # zig-zag length 2, then the bytes
    bad = good.replace(b"\x04uu", b"\x04\xff\xfe")
    error = _reason(bad, LockCommand)
    assert isinstance(error, DecodeError)
    assert "corrupt Avro body" in error.reason


# --- framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty payload"),
        (b"\x00", "not a Confluent frame"),
        (b"\x00\x00\x00\x00", "not a Confluent frame"),
        (b"\x00\xff\xff\xff\xff", "unknown schema id 4294967295"),
        (b"\x00\xff\xff\xff\xff" + b"garbage", "unknown schema id"),
        (b"\x00\x00\x00\x00\x00garbage", "unknown schema id 0"),
        (b"\x00\x00\x00\x00\x01", "corrupt Avro body"),
        (b"\x00\x00\x00\x00\x01" + b"\xff" * 64, "corrupt Avro body"),
        (b"\x00\x00\x00\x00\x01" + b"\x01" * 64, "corrupt Avro body"),
        (b"\x00\x00\x00\x00\x01" + bytes(range(256)), "corrupt Avro body"),
        (b"[1, 2]", "nor a JSON object"),
        (b"1", "nor a JSON object"),
        (b'"a string"', "nor a JSON object"),
        (b"null", "nor a JSON object"),
        (b"true", "nor a JSON object"),
        (b"\xef\xbb\xbf[1]", "nor a JSON object"),
        (b"\xef\xbb\xbf", "nor a JSON object"),
        (b"\xef\xbb\xbf\xef\xbb\xbf{}", "nor a JSON object"),
        (b"\xef\xbb\xbf{", "invalid JSON"),
        (b"\xef\xbb\xbf{} {}", "invalid JSON"),
        (b"{}", "LockCommand: "),
        (b'{"tenant": "acme"}' * 2, "invalid JSON"),
        (b"\xff\xfe{\x00}\x00", "nor a JSON object"),  # UTF-16 with its BOM
    ],
)
def test_bad_frames_and_non_objects_are_schema_errors(data: bytes, fragment: str) -> None:
    error = _reason(data, LockCommand)
    assert fragment in error.reason


@pytest.mark.parametrize("model", list(SUBJECTS), ids=lambda m: m.__name__)
def test_every_truncation_of_a_valid_frame_is_a_decode_error(
    model: type[Envelope], event_factory: EventFactory
) -> None:
    data = encode_event(event_factory(model))
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode_event(data[:cut], model)
        with pytest.raises(DecodeError):
            decode_any(data[:cut])


def test_a_frame_of_another_type_with_a_valid_header_is_refused(
    event_factory: EventFactory,
) -> None:
    data = encode_event(event_factory(UsageEvent))
    forged = b"\x00" + latest_schema_id(LockCommand).to_bytes(4, "big") + data[5:]
    error = _reason(forged, LockCommand)
    assert error.reason


@pytest.mark.parametrize(
    "reader",
    [
        lambda data: decode_any(data),
        lambda data: read_json_object(data),
        lambda data: SomaAvroCodec().loads(data),
    ],
    ids=["decode_any", "read_json_object", "faust_codec"],
)
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xff\xff\xff",
        b"\x00\x00\x00\x00\x01\xff\xff",
        b'{"a":' * 100_000,
        b"\xef\xbb\xbf[]",
        b'{"s": "\xff"}',
        b'{"x": 1' + b"0" * 5000 + b"}",  # an integer of more than 4300 digits
        b'{"x": NaN}',
        b'{"x": -Infinity}',
    ],
    ids=["empty", "unknown-id", "garbage-body", "deep", "bom-array", "bad-utf8", "huge-int", "nan", "-inf"],
)
def test_every_reader_raises_only_schema_errors(reader: Callable[[bytes], Any], data: bytes) -> None:
    with pytest.raises(SchemaError):
        reader(data)


def test_the_reported_repro_is_dead_lettered_not_raised() -> None:
    """Issue 12: this exact command made the lock agent crash-loop forever."""
    data = b'{"tenant": "acme", "action": "enable", "user": "ann", "occurred_at": "0001-01-01T00:00:00+01:00"}'
    with pytest.raises(EventValidationError) as caught:
        decode_event(data, LockCommand)
    assert caught.value.reason.startswith("LockCommand: occurred_at: timestamp out of range")
