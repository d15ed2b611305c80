"""Backward-compatibility checker: shipped schemas pass, breaking changes are named."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas.compat import check_all, check_backward_compatible, roundtrip_check
from schemas.registry import AVRO_DIR, SUBJECTS, FileSchemaTable


def _record(*fields: dict[str, Any], name: str = "Thing") -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "soma.events",
        "fields": list(fields),
    }


COLOR = {"type": "enum", "name": "Color", "symbols": ["red", "green", "blue"]}
BASE = _record(
    {"name": "id", "type": "string"},
    {"name": "count", "type": "int"},
    {"name": "color", "type": COLOR},
    {"name": "note", "type": ["null", "string"], "default": None},
    {
        "name": "inner",
        "type": _record({"name": "x", "type": "long"}, name="Inner"),
    },
)


def _changed(path: list[str | int], value: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    node: Any = schema
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return schema


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [*schema["fields"], field]}


def test_shipped_schemas_have_no_problems() -> None:
    results = check_all()
    assert set(results) >= set(SUBJECTS.values())
    assert results == {subject: [] for subject in results}


def test_identical_schema_is_compatible() -> None:
    assert check_backward_compatible(BASE, BASE) == []


def test_added_field_without_default_is_caught() -> None:
    problems = check_backward_compatible(
        BASE, _with_field(BASE, {"name": "owner", "type": "string"})
    )
    assert problems == ["Thing.owner: field added without a default"]


def test_added_field_with_default_is_accepted() -> None:
    new = _with_field(BASE, {"name": "owner", "type": "string", "default": ""})
    assert check_backward_compatible(BASE, new) == []
    assert roundtrip_check(BASE, new) == []


def test_removed_enum_symbol_is_caught() -> None:
    new = _changed(["fields", 2, "type"], {**COLOR, "symbols": ["red", "green"]})
    problems = check_backward_compatible(BASE, new)
    assert len(problems) == 1
    assert "Thing.color" in problems[0] and "['blue']" in problems[0]


def test_removed_enum_symbol_with_enum_default_is_accepted() -> None:
    new = _changed(
        ["fields", 2, "type"], {**COLOR, "symbols": ["red", "green"], "default": "red"}
    )
    assert check_backward_compatible(BASE, new) == []
    assert roundtrip_check(BASE, new) == []


def test_int_to_string_is_caught() -> None:
    problems = check_backward_compatible(
        BASE, _changed(["fields", 1, "type"], "string")
    )
    assert problems == [
        "Thing.count: type changed from int to string, which Avro cannot promote"
    ]


@pytest.mark.parametrize("promoted", ["long", "float", "double"])
def test_int_promotions_are_accepted(promoted: str) -> None:
    new = _changed(["fields", 1, "type"], promoted)
    assert check_backward_compatible(BASE, new) == []
    assert roundtrip_check(BASE, new) == []


def test_long_to_int_is_caught() -> None:
    new = copy.deepcopy(BASE)
    new["fields"][4]["type"]["fields"][0]["type"] = "int"
    assert check_backward_compatible(BASE, new) == [
        "Thing.inner.x: type changed from long to int, which Avro cannot promote"
    ]


def test_nested_record_field_added_without_default_is_caught() -> None:
    new = copy.deepcopy(BASE)
    new["fields"][4]["type"]["fields"].append({"name": "y", "type": "long"})
    assert check_backward_compatible(BASE, new) == [
        "Thing.inner.y: field added without a default"
    ]


def test_optional_to_required_is_caught_and_widening_is_not() -> None:
    narrowed = _changed(
        ["fields", 3], {"name": "note", "type": "string", "default": ""}
    )
    problems = check_backward_compatible(BASE, narrowed)
    assert problems and "Thing.note" in problems[0] and "null" in problems[0]

    widened = _changed(
        ["fields", 0], {"name": "id", "type": ["null", "string"], "default": None}
    )
    assert check_backward_compatible(BASE, widened) == []
    assert roundtrip_check(BASE, widened) == []


def test_removed_field_is_compatible() -> None:
    new = {**BASE, "fields": [f for f in BASE["fields"] if f["name"] != "note"]}
    assert check_backward_compatible(BASE, new) == []


def test_renamed_field_needs_an_alias() -> None:
    renamed = _changed(["fields", 0], {"name": "key", "type": "string"})
    assert check_backward_compatible(BASE, renamed) == [
        "Thing.key: field added without a default"
    ]
    aliased = _changed(
        ["fields", 0], {"name": "key", "aliases": ["id"], "type": "string"}
    )
    assert check_backward_compatible(BASE, aliased) == []


def test_logical_type_change_is_caught() -> None:
    new = _changed(["fields", 0, "type"], {"type": "string", "logicalType": "json"})
    assert "logical type changed" in check_backward_compatible(BASE, new)[0]


def test_invalid_schema_is_reported() -> None:
    broken = _with_field(BASE, {"name": "n", "type": "int", "default": "zero"})
    assert check_backward_compatible(BASE, broken)[0].startswith(
        "new schema is invalid"
    )


def _table_with(tmp_path: Path, v2: dict[str, Any]) -> FileSchemaTable:
    for avsc in AVRO_DIR.glob("*.avsc"):
        shutil.copy(avsc, tmp_path / avsc.name)
    (tmp_path / "usage_event.v2.avsc").write_text(json.dumps(v2))
    ids = json.loads((AVRO_DIR / "ids.json").read_text())
    ids["100"] = "usage_event.v2.avsc"
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    return FileSchemaTable(tmp_path)


def test_check_all_compares_consecutive_versions(tmp_path: Path) -> None:
    v1 = json.loads((AVRO_DIR / "usage_event.v1.avsc").read_text())
    good = _with_field(
        v1, {"name": "region", "type": ["null", "string"], "default": None}
    )
    assert check_all(_table_with(tmp_path, good))["usage_event"] == []

    bad = _with_field(v1, {"name": "region", "type": "string"})
    assert check_all(_table_with(tmp_path, bad))["usage_event"] == [
        "v1 -> v2: UsageEvent.region: field added without a default"
    ]


def test_check_all_reports_version_gaps(tmp_path: Path) -> None:
    for avsc in AVRO_DIR.glob("*.avsc"):
        shutil.copy(avsc, tmp_path / avsc.name)
    shutil.copy(AVRO_DIR / "usage_event.v1.avsc", tmp_path / "usage_event.v3.avsc")
    ids = json.loads((AVRO_DIR / "ids.json").read_text())
    ids["100"] = "usage_event.v3.avsc"
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    problems = check_all(FileSchemaTable(tmp_path))["usage_event"]
    assert problems[0] == "versions must run 1, 2, 3... without gaps, found [1, 3]"
