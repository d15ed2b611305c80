"""Conversion of free-form JSON fields (Avro logical type ``json``) between dicts and strings.

Avro has no "any JSON value" type, so such fields travel as strings tagged ``logicalType: json``.
Rather than naming those fields in code, the codec compiles each schema once into a transform that
visits only the paths leading to ``json`` strings, and applies it in place to every record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic_core import to_json

from schemas.exceptions import DecodeError, SchemaError

__all__ = [
    "JSON_LOGICAL_TYPE",
    "Transform",
    "compile_transform",
    "dump_json_value",
    "load_json_value",
]

JSON_LOGICAL_TYPE = "json"
Transform = Callable[[Any], Any]


def dump_json_value(value: Any) -> str:
    """Serialise like ``model_dump(mode="json")`` does (datetimes, UUIDs... become strings)."""
    return to_json(value).decode("utf-8")


def load_json_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise DecodeError(f"a json field holds invalid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("a json field holds JSON nested too deep to parse") from None
    except Exception as exc:  # whatever else a parser may raise on hostile input
        raise DecodeError(
            f"a json field holds invalid JSON: {type(exc).__name__}: {exc}"
        ) from None


def compile_transform(
    parsed_schema: dict[str, Any], leaf: Transform
) -> Transform | None:
    """A function applying ``leaf`` to every ``json`` value of a record of ``parsed_schema``.

    Returns ``None`` when the schema has no ``json`` field, so callers can skip the walk entirely.
    Records are changed in place (and returned). Unions may hold a ``json`` value only beside
    ``null``: with two candidate branches a value's branch could not be told from its Python type.
    """
    named: dict[str, Any] = parsed_schema.get("__named_schemas", {})
    compiled: dict[str, Transform | None] = {}
    pending: set[str] = set()

    def walk_record(node: dict[str, Any]) -> Transform | None:
        name: str = node["name"]
        if name in compiled:
            return compiled[name]
        if name in pending:
            return lambda value: (compiled[name] or _identity)(value)
        pending.add(name)
        fields = [(f["name"], walk(f["type"])) for f in node["fields"]]
        pending.discard(name)
        active = [(field_name, t) for field_name, t in fields if t is not None]
        compiled[name] = _fields(active) if active else None
        return compiled[name]

    def walk(node: Any) -> Transform | None:
        if isinstance(node, str):
            return walk(named[node]) if node in named else None
        if isinstance(node, list):
            return walk_union(node)
        if node.get("logicalType") == JSON_LOGICAL_TYPE:
            return leaf
        kind = node["type"]
        if kind == "record" or kind == "error":
            return walk_record(node)
        if kind == "array":
            items = walk(node["items"])
            return None if items is None else _each(items)
        if kind == "map":
            values = walk(node["values"])
            return None if values is None else _each_value(values)
        if isinstance(kind, dict | list) or kind in named:
            return walk(kind)
        return None

    def walk_union(branches: list[Any]) -> Transform | None:
        active = [t for t in (walk(b) for b in branches) if t is not None]
        if not active:
            return None
        if len(branches) - ("null" in branches) > 1:
            raise SchemaError(
                "a union may hold a json value (or a record containing one) only beside null: "
                f"{branches!r}"
            )
        return _unless_none(active[0])

    return walk(parsed_schema)


def _identity(value: Any) -> Any:
    return value


def _unless_none(inner: Transform) -> Transform:
    def apply(value: Any) -> Any:
        return None if value is None else inner(value)

    return apply


def _each(inner: Transform) -> Transform:
    def apply(values: list[Any]) -> list[Any]:
        return [inner(v) for v in values]

    return apply


def _each_value(inner: Transform) -> Transform:
    def apply(values: dict[str, Any]) -> dict[str, Any]:
        return {k: inner(v) for k, v in values.items()}

    return apply


def _fields(active: list[tuple[str, Transform]]) -> Transform:
    def apply(record: dict[str, Any]) -> dict[str, Any]:
        for name, transform in active:
            if name in record:
                record[name] = transform(record[name])
        return record

    return apply
