"""Events to bytes and back: Confluent-framed Avro, plus UTF-8 JSON objects on the way in.

Frame: ``b"\\x00"`` (magic) + 4-byte big-endian schema id + schemaless Avro body, so registry-aware
tools can read the topics. Input topics also accept a plain JSON object for producers in any
language; both paths end in the same pydantic validation.

This is the hot path of every agent: per event type and per schema id, everything that can be worked
out once (header bytes, parsed schemas, json-field transforms, reader schema for evolution) is cached.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any, TypeVar, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from pydantic import ValidationError

from schemas._jsonfields import (
    Transform,
    compile_transform,
    dump_json_value,
    load_json_value,
)
from schemas.envelope import Envelope
from schemas.exceptions import (
    DecodeError,
    EncodeError,
    EventValidationError,
    SchemaError,
)
from schemas.registry import (
    SchemaEntry,
    add_table_listener,
    get_schema_table,
    model_for_subject,
    subject_for_model,
)

__all__ = [
    "MAGIC_BYTE",
    "decode_any",
    "decode_event",
    "encode_event",
    "is_avro_framed",
    "read_json_object",
    "schema_id_of",
    "to_json",
    "to_json_dict",
    "validation_reason",
]

logger = logging.getLogger(__name__)

MAGIC_BYTE = 0
_HEADER_SIZE = 5
_JSON_START = ord("{")
_WHITESPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
_SHOWN_INPUT_CHARS = 60
_LISTED_ERRORS = 10
_TIMESTAMP_MILLIS = "timestamp-millis"
_KEPT_ERRORS = 100

T = TypeVar("T", bound=Envelope)
Payload = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class _WritePlan:
    header: bytes
    schema: dict[str, Any]
    to_wire: Transform | None
    flat: bool


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    entry: SchemaEntry
    model: type[Envelope]
    writer_schema: dict[str, Any]
    reader_schema: dict[str, Any] | None
    from_wire: Transform | None


_write_plans: dict[type[Envelope], _WritePlan] = {}
_read_plans: dict[int, _ReadPlan] = {}


def _clear_plans() -> None:
    _write_plans.clear()
    _read_plans.clear()


add_table_listener(_clear_plans)


def _write_plan(model_cls: type[Envelope]) -> _WritePlan:
    try:
        entry = get_schema_table().latest(subject_for_model(model_cls))
    except SchemaError as exc:
        raise EncodeError(f"cannot encode {model_cls.__name__}: {exc.reason}") from None
    to_wire = compile_transform(entry.parsed, dump_json_value)
    plan = _WritePlan(
        header=bytes([MAGIC_BYTE]) + entry.schema_id.to_bytes(4, "big"),
        schema=entry.parsed,
        to_wire=to_wire,
        flat=to_wire is None and not _has_nested_records(entry.parsed),
    )
    _write_plans[model_cls] = plan
    return plan


def _has_nested_records(parsed: dict[str, Any]) -> bool:
    """Whether a record has record-typed parts; without them ``model.__dict__`` is already writable."""
    named = parsed.get("__named_schemas", {})
    return any(
        schema.get("type") == "record" and name != parsed["name"]
        for name, schema in named.items()
    )


def _read_plan(schema_id: int) -> _ReadPlan:
    table = get_schema_table()
    entry = table.get(schema_id)
    if entry is None:
        raise DecodeError(f"unknown schema id {schema_id}")
    try:
        model = model_for_subject(entry.subject)
    except SchemaError:
        raise DecodeError(
            f"schema id {schema_id} ({entry.subject} v{entry.version}) has no event model"
        ) from None
    latest = table.latest(entry.subject)
    reader = None if latest.schema_id == schema_id else _read_as_longs(latest.raw)
    if reader is not None:
        logger.info(
            "reading %s v%d data (schema id %d) with the v%d schema",
            entry.subject,
            entry.version,
            schema_id,
            latest.version,
        )
    writer = _read_as_longs(entry.raw)
    plan = _ReadPlan(
        entry=entry,
        model=model,
        writer_schema=writer,
        reader_schema=reader,
        from_wire=compile_transform(reader or writer, load_json_value),
    )
    _read_plans[schema_id] = plan
    return plan


def _read_as_longs(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` parsed for reading, with ``timestamp-millis`` read as plain epoch milliseconds.

    The model turns the number into a datetime and checks its range, so a timestamp outside it is
    reported with its field name (fastavro's own conversion fails with a bare ``OverflowError``
    beyond year 9999).
    """

    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(n) for n in node]
        if not isinstance(node, dict):
            return node
        if node.get("logicalType") == _TIMESTAMP_MILLIS and node.get("type") == "long":
            return "long"
        return {k: strip(v) for k, v in node.items()}

    return cast(dict[str, Any], parse_schema(strip(raw)))


def encode_event(event: Envelope) -> bytes:
    """The event as Confluent-framed Avro, written with the latest schema of its type."""
    cls = type(event)
    plan = _write_plans.get(cls) or _write_plan(cls)
    if plan.flat:
        record: dict[str, Any] = event.__dict__
    else:
        record = event.model_dump()
        if plan.to_wire is not None:
            plan.to_wire(record)
    out = BytesIO()
    out.write(plan.header)
    try:
        schemaless_writer(out, plan.schema, record)
    except Exception as exc:
        raise EncodeError(
            f"{cls.__name__} does not fit its Avro schema: {exc}"
        ) from exc
    return out.getvalue()


def decode_event(data: Payload, model: type[T]) -> T:
    """Decode and validate one event of type ``model`` (or a subclass) from Avro or JSON bytes.

    Raises :class:`DecodeError` when the bytes are not a readable event at all, and
    :class:`EventValidationError` when they are, but not a valid ``model``. Nothing else escapes,
    whatever the bytes: a consumer can dead-letter on :class:`SchemaError` and go on.
    """
    try:
        return _decode_event(data, model)
    except SchemaError:
        raise
    except Exception as exc:
        raise _unexpected("decoding", exc) from exc


def _decode_event(data: Payload, model: type[T]) -> T:
    if not data:
        raise DecodeError(
            "empty payload: neither Confluent-framed Avro nor a JSON object"
        )
    if data[0] == MAGIC_BYTE:
        plan, record = _read_avro(data)
        if not issubclass(plan.model, model):
            raise EventValidationError(
                f"{model.__name__}: expected a {model.__name__} event, got {plan.model.__name__} "
                f"(schema id {plan.entry.schema_id}, {plan.entry.subject} v{plan.entry.version})",
                model=model.__name__,
            )
        return _validate(plan.model, record)
    return _validate(model, read_json_object(data))


def decode_any(data: Payload) -> Envelope:
    """Decode Avro-framed bytes into whatever event type their schema id names (for tooling).

    Like :func:`decode_event`, raises only :class:`SchemaError` subclasses.
    """
    if not data or data[0] != MAGIC_BYTE:
        raise DecodeError(
            "decode_any needs Confluent-framed Avro (magic byte 0); "
            "a JSON object does not say which event type it is"
        )
    try:
        plan, record = _read_avro(data)
        return _validate(plan.model, record)
    except SchemaError:
        raise
    except Exception as exc:
        raise _unexpected("decoding", exc) from exc


def _unexpected(step: str, exc: Exception) -> DecodeError:
    """Last resort: an exception no decoder or validator should raise still becomes a bad record.

    Logged with its traceback, since reaching this means a check is missing somewhere.
    """
    logger.warning(
        "unexpected %s while %s an event; treated as undecodable",
        type(exc).__name__,
        step,
        exc_info=exc,
    )
    return DecodeError(f"undecodable event: {type(exc).__name__} while {step}: {exc}")


def is_avro_framed(data: Payload | None) -> bool:
    """Whether ``data`` starts like a Confluent frame (magic byte and a full header)."""
    return data is not None and len(data) >= _HEADER_SIZE and data[0] == MAGIC_BYTE


def schema_id_of(data: Payload) -> int:
    """The schema id in a Confluent frame header."""
    if len(data) < _HEADER_SIZE or data[0] != MAGIC_BYTE:
        raise DecodeError(
            f"not a Confluent frame: need magic byte 0 and a 4-byte schema id ({len(data)} bytes)"
        )
    return int.from_bytes(data[1:_HEADER_SIZE], "big")


def _read_avro(data: Payload) -> tuple[_ReadPlan, dict[str, Any]]:
    schema_id = schema_id_of(data)
    plan = _read_plans.get(schema_id) or _read_plan(schema_id)
    body = BytesIO(data)
    body.seek(_HEADER_SIZE)
    try:
        record = schemaless_reader(body, plan.writer_schema, plan.reader_schema)
    except Exception as exc:
        raise DecodeError(
            f"corrupt Avro body for schema id {schema_id} ({plan.entry.subject} v{plan.entry.version}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if body.tell() != len(data):
        raise DecodeError(
            f"corrupt Avro body for schema id {schema_id} ({plan.entry.subject} v{plan.entry.version}): "
            f"{len(data) - body.tell()} bytes left over after the record"
        )
    if not isinstance(record, dict):
        raise DecodeError(f"schema id {schema_id} does not describe a record")
    if plan.from_wire is not None:
        plan.from_wire(record)
    return plan, record


def read_json_object(data: Payload) -> dict[str, Any]:
    """Parse bytes holding one UTF-8 JSON object; anything else raises :class:`DecodeError`."""
    try:
        return _read_json_object(data)
    except SchemaError:
        raise
    except Exception as exc:
        raise _unexpected("parsing JSON of", exc) from exc


def _read_json_object(data: Payload) -> dict[str, Any]:
    raw = bytes(data).removeprefix(_UTF8_BOM)
    stripped = raw.lstrip(_WHITESPACE)
    if not stripped or stripped[0] != _JSON_START:
        raise DecodeError(
            "neither Confluent-framed Avro (magic byte 0) nor a JSON object "
            f"(payload starts with {bytes(data[:16])!r})"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"JSON payload is not valid UTF-8 at byte {exc.start}: {exc.reason}"
        ) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from None
    except RecursionError:
        raise DecodeError("invalid JSON: nested too deep to parse") from None
    except ValueError as exc:  # NaN/Infinity literals, integers of more than 4300 digits
        raise DecodeError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("JSON payload is not an object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validate(model: type[T], obj: dict[str, Any]) -> T:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise EventValidationError(
            validation_reason(model.__name__, exc),
            model=model.__name__,
            errors=[
                dict(e)
                for e in exc.errors(include_url=False, include_context=False)[
                    :_KEPT_ERRORS
                ]
            ],
        ) from None
    except RecursionError:
        raise EventValidationError(
            f"{model.__name__}: nested too deep to validate", model=model.__name__
        ) from None
    except Exception as exc:
        # Validators raise ValueError (a field error above); anything else is a missing check.
        logger.warning(
            "unexpected %s while validating a %s; treated as invalid",
            type(exc).__name__,
            model.__name__,
            exc_info=exc,
        )
        raise EventValidationError(
            f"{model.__name__}: {type(exc).__name__} while validating: {exc}",
            model=model.__name__,
        ) from exc


def validation_reason(model_name: str, exc: ValidationError) -> str:
    """One line naming every failing field and why, e.g.
    ``LockCommand: action: Input should be 'enable', 'disable', 'extend' or 'status' (got 'on')``.

    At most ``_LISTED_ERRORS`` problems are listed (then how many more), so a payload with a
    million unknown fields still gives a reason that fits a DLQ header.
    """
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:_LISTED_ERRORS]:
        path = ".".join(str(p) for p in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown field (not part of the event contract)"
        elif kind == "string_unicode" and not path:
            path, message = "a field name", "not valid Unicode (a lone surrogate)"
        elif kind == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])
        else:
            message = error["msg"]
        if kind not in ("missing", "extra_forbidden") and not isinstance(
            error["input"], dict | list
        ):
            message = f"{message} (got {_shown(error['input'])})"
        parts.append(f"{path}: {message}" if path else message)
    if len(errors) > _LISTED_ERRORS:
        parts.append(f"and {len(errors) - _LISTED_ERRORS} more problems")
    return f"{model_name}: " + "; ".join(parts)


def _shown(value: Any) -> str:
    """A short repr of an offending input (cut before ``repr``: the input may be megabytes)."""
    if isinstance(value, str | bytes) and len(value) > _SHOWN_INPUT_CHARS:
        value = value[:_SHOWN_INPUT_CHARS]
        cut = True
    else:
        cut = False
    try:
        shown = repr(value)
    except Exception:  # e.g. an int of more than 4300 digits
        shown = f"a {type(value).__name__} that cannot be shown"
    if cut or len(shown) > _SHOWN_INPUT_CHARS:
        shown = shown[: _SHOWN_INPUT_CHARS - 3] + "..."
    return shown


def to_json_dict(event: Envelope) -> dict[str, Any]:
    """The event as JSON-ready data (ISO timestamps), for printing and JSON producers."""
    return event.model_dump(mode="json")


def to_json(event: Envelope) -> bytes:
    """The event as a compact UTF-8 JSON object, the form ``decode_event`` accepts on input topics."""
    return event.model_dump_json().encode("utf-8")
