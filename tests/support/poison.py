"""Poison record values: bytes a raw Kafka client can write that no decoder should choke on.

Each kind is built from one valid event's JSON fields, so the record looks plausible up to the one
thing that is wrong with it (the way real garbage does). The project's own producers refuse all of
these; readers and agents must skip or dead-letter each one and go on.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["poison_values"]


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _raw_field(valid: dict[str, Any], name: str, literal: str) -> bytes:
    """``valid`` with one field's value written as a raw JSON token (json.dumps cannot write these)."""
    return json.dumps({**valid, name: "\x00marker"}).replace('"\\u0000marker"', literal).encode()


def poison_values(valid: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(kind, value) pairs derived from ``valid`` (the JSON fields of a valid event of the topic)."""
    return [
        ("empty", b""),
        ("framed garbage body", b"\x00\x00\x00\x00\x01garbage"),
        ("framed unknown schema id", b"\x00\x00\x00\x7f\xffgarbage"),
        ("framed, nothing after the id", b"\x00\x00\x00\x00\x01"),
        ("invalid utf-8", b"\xff\xfe\xfd{"),
        ("invalid utf-8 inside json", b'{"tenant": "\xff\xfe"}'),
        ("lone surrogate", _json({**valid, "tenant": "\ud800"})),
        ("json array", b"[1, 2, 3]"),
        ("json null", b"null"),
        ("json string", b'"hello"'),
        ("truncated json", _json(valid)[:-3]),
        ("date before year 1", _json({**valid, "occurred_at": "0001-01-01T00:00:00+01:00"})),
        ("date after year 9999", _json({**valid, "occurred_at": "9999-12-31T23:59:59-01:00"})),
        ("int beyond long", _json({**valid, "schema_version": 10**30})),
        ("float overflow", _raw_field(valid, "schema_version", "1e309")),
        ("nan", _raw_field(valid, "schema_version", "NaN")),
        ("infinity", _raw_field(valid, "schema_version", "-Infinity")),
        ("deep nesting", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("deep list in a field", b'{"tenant": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("huge string", _json({**valid, "tenant": "x" * 600_000})),
        ("wrong types", _json({**valid, "tenant": ["not", "a", "string"]})),
    ]
