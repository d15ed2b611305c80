"""Wire format: Avro framing, JSON input, errors for bad bytes, json fields, schema evolution."""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import (
    SUBJECTS,
    ConversationTurn,
    DecodeError,
    EmbeddingJob,
    EmbeddingResult,
    EncodeError,
    Envelope,
    EventValidationError,
    LockCommand,
    LockState,
    decode_any,
    decode_event,
    encode_event,
    latest_schema_id,
    to_json,
    to_json_dict,
)
from schemas.registry import AVRO_DIR, FileSchemaTable, set_schema_table

ALL_MODELS = list(SUBJECTS)
EventFactory = Callable[..., Envelope]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_avro_round_trip(model: type[Envelope], event_factory: EventFactory) -> None:
    event = event_factory(model)
    data = encode_event(event)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == latest_schema_id(model)
    decoded = decode_event(data, model)
    assert type(decoded) is model
    assert decoded.model_dump() == event.model_dump()
    assert decoded == event


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_json_round_trip(model: type[Envelope], event_factory: EventFactory) -> None:
    event = event_factory(model)
    assert decode_event(to_json(event), model) == event
    text = json.dumps(to_json_dict(event)).encode()
    assert decode_event(text, model) == event


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_decode_any_picks_the_type_from_the_schema_id(
    model: type[Envelope], event_factory: EventFactory
) -> None:
    event = event_factory(model)
    assert decode_any(encode_event(event)) == event
    assert decode_event(encode_event(event), Envelope) == event


def test_minimal_events_round_trip_with_defaults() -> None:
    command = LockCommand(tenant="t", action="status", user="u")
    decoded = decode_event(encode_event(command), LockCommand)
    assert decoded == command
    assert decoded.roles == [] and decoded.ttl_seconds is None


def test_json_fields_keep_nested_values(event_factory: EventFactory) -> None:
    metadata: dict[str, Any] = {
        "lang": "fr",
        "tags": ["a", {"b": [1, 2.5, None, True]}],
        "unicode": "é✓😀",
        "empty": {},
    }
    job = event_factory(
        EmbeddingJob,
        documents=[{"id": "d", "text": "t", "metadata": metadata}],
        filter={"must": [{"key": "tenant", "match": {"value": "x"}}]},
    )
    decoded = decode_event(encode_event(job), EmbeddingJob)
    assert decoded.documents[0].metadata == metadata
    assert decoded.filter == {"must": [{"key": "tenant", "match": {"value": "x"}}]}
    no_filter = decode_event(
        encode_event(job.model_copy(update={"filter": None})), EmbeddingJob
    )
    assert no_filter.filter is None

    result = event_factory(EmbeddingResult)
    assert decode_event(encode_event(result), EmbeddingResult).hits[0].metadata == {
        "lang": "en",
        "page": 3,
        "deep": {"list": [1, {"y": True}]},
    }


def test_json_input_tolerates_whitespace_and_bom() -> None:
    body = b'\xef\xbb\xbf \n\t{"tenant": "acme", "action": "enable", "user": "u"}\n'
    assert decode_event(body, LockCommand).action == "enable"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"tenant": "acme", "action": ', "invalid JSON at line 1 column"),
        (b'{"tenant": "acme",}', "invalid JSON at line 1 column 19"),
        (b'{"tenant": NaN}', "invalid JSON"),
        (b'{"tenant": "\xff\xfe"}', "not valid UTF-8 at byte 12"),
        (
            b"hello world",
            "neither Confluent-framed Avro (magic byte 0) nor a JSON object",
        ),
        (b"[1, 2]", "neither Confluent-framed Avro"),
        (b"\x01\x02\x03", "neither Confluent-framed Avro"),
        (b"   ", "neither Confluent-framed Avro"),
        (b"", "empty payload"),
        (b"\x00\x00\x00", "not a Confluent frame"),
        (b"\x00\x00\x00\x03\xe7" + b"\x02", "unknown schema id 999"),
    ],
)
def test_undecodable_bytes_raise_decode_error(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(data, LockCommand)
    assert fragment in caught.value.reason


def test_corrupt_avro_body_raises_decode_error(
    lock_command_factory: Callable[..., LockCommand],
) -> None:
    data = encode_event(lock_command_factory())
    with pytest.raises(DecodeError, match="corrupt Avro body for schema id 1"):
        decode_event(data[:20], LockCommand)
    with pytest.raises(DecodeError, match="bytes left over"):
        decode_event(data + b"\x00\x00", LockCommand)


def test_wrong_event_type_raises_validation_error(
    lock_state_factory: Callable[..., LockState],
) -> None:
    data = encode_event(lock_state_factory())
    with pytest.raises(EventValidationError) as caught:
        decode_event(data, LockCommand)
    assert caught.value.reason == (
        "LockCommand: expected a LockCommand event, got LockState (schema id 2, lock_state v1)"
    )


def test_avro_input_is_validated_too() -> None:
    forged = LockCommand.model_construct(
        **LockCommand(tenant="acme", action="status", user="u").model_dump()
    )
    forged.tenant = "bad tenant!"
    with pytest.raises(
        EventValidationError, match="tenant: String should match pattern"
    ):
        decode_event(encode_event(forged), LockCommand)


def test_cross_field_rules_apply_on_decode() -> None:
    with pytest.raises(
        EventValidationError, match="an upsert job needs at least one document"
    ):
        decode_event(
            b'{"tenant": "t", "job": "upsert", "collection": "c"}', EmbeddingJob
        )


def test_values_outside_the_schema_raise_encode_error() -> None:
    forged = LockCommand.model_construct(tenant="t", action="explode", user="u")
    with pytest.raises(EncodeError, match="LockCommand does not fit its Avro schema"):
        encode_event(forged)


def test_events_without_a_subject_cannot_be_encoded() -> None:
    with pytest.raises(EncodeError):
        encode_event(Envelope(tenant="t"))


def test_decode_any_refuses_json() -> None:
    with pytest.raises(DecodeError, match="needs Confluent-framed Avro"):
        decode_any(b'{"tenant": "t"}')


def test_to_json_dict_is_printable(event_factory: EventFactory) -> None:
    printable = to_json_dict(event_factory(ConversationTurn))
    assert printable["occurred_at"] == "2024-05-01T12:00:00.123000Z"
    assert printable["memory"] == {"collection": "notes", "top_k": 3}
    json.dumps(printable)


def _older_lock_command(directory: Path) -> dict[str, Any]:
    """A table where lock_command v1 lacked ``reason`` and ``ttl_seconds`` and v2 is today's."""
    for avsc in AVRO_DIR.glob("*.avsc"):
        shutil.copy(avsc, directory / avsc.name)
    current = json.loads((AVRO_DIR / "lock_command.v1.avsc").read_text())
    older = {
        **current,
        "fields": [
            f for f in current["fields"] if f["name"] not in ("reason", "ttl_seconds")
        ],
    }
    (directory / "lock_command.v1.avsc").write_text(json.dumps(older))
    (directory / "lock_command.v2.avsc").write_text(json.dumps(current))
    ids = json.loads((AVRO_DIR / "ids.json").read_text())
    ids[str(max(map(int, ids)) + 1)] = "lock_command.v2.avsc"
    (directory / "ids.json").write_text(json.dumps(ids))
    return older


@pytest.mark.usefixtures("restore_schema_table")
def test_older_schema_versions_are_read_with_the_latest_reader(tmp_path: Path) -> None:
    older = _older_lock_command(tmp_path)
    set_schema_table(FileSchemaTable(tmp_path))
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(older),
        {
            "event_id": "0b9c4c1e-6f1a-4d8e-9a51-3f0f4c1b2a77",
            "tenant": "acme",
            "schema_version": 1,
            "occurred_at": 1_714_564_800_000,
            "correlation_id": None,
            "causation_id": None,
            "action": "disable",
            "user": "old-producer",
            "roles": [],
        },
    )
    decoded = decode_event(
        b"\x00" + (1).to_bytes(4, "big") + body.getvalue(), LockCommand
    )
    assert decoded.user == "old-producer"
    assert decoded.reason == ""
    assert decoded.ttl_seconds is None
    new_id = max(map(int, json.loads((AVRO_DIR / "ids.json").read_text()))) + 1
    assert latest_schema_id(LockCommand) == new_id
    fresh = encode_event(LockCommand(tenant="t", action="status", user="u"))
    assert fresh[:5] == b"\x00" + new_id.to_bytes(4, "big")
