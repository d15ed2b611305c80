"""The generic json-field walker, on shapes the shipped schemas do not (yet) use."""

from __future__ import annotations

import json
from typing import Any, cast

import fastavro
import pytest

from schemas import SchemaError
from schemas._jsonfields import compile_transform, dump_json_value, load_json_value

JSON = {"type": "string", "logicalType": "json"}


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], fastavro.parse_schema(schema))


def test_schema_without_json_fields_needs_no_transform() -> None:
    schema = _parse(
        {"type": "record", "name": "A", "fields": [{"name": "x", "type": "long"}]}
    )
    assert compile_transform(schema, dump_json_value) is None


def test_maps_arrays_and_recursive_records_are_walked() -> None:
    schema = _parse(
        {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "attrs", "type": {"type": "map", "values": JSON}},
                {"name": "children", "type": {"type": "array", "items": "Node"}},
                {"name": "plain", "type": "string"},
            ],
        }
    )
    to_wire = compile_transform(schema, dump_json_value)
    from_wire = compile_transform(schema, load_json_value)
    assert to_wire is not None and from_wire is not None
    tree = {
        "attrs": {"a": {"k": [1]}},
        "children": [{"attrs": {"b": None}, "children": [], "plain": "{}"}],
        "plain": "{}",
    }
    wire = to_wire(json.loads(json.dumps(tree)))
    assert wire["attrs"] == {"a": '{"k":[1]}'}
    assert wire["children"][0]["attrs"] == {"b": "null"}
    assert wire["plain"] == "{}"
    assert from_wire(wire) == tree


def test_ambiguous_unions_are_refused() -> None:
    schema = _parse(
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "x", "type": ["string", JSON]}],
        }
    )
    with pytest.raises(SchemaError, match="only beside null"):
        compile_transform(schema, dump_json_value)
