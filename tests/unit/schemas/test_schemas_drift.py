"""Models, .avsc files and the id table must agree; the layer must stay at the bottom."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import schemas
from schemas import SUBJECTS, Envelope, LockCommand, LockState
from schemas.registry import (
    AVRO_DIR,
    get_schema_table,
    latest_schema_id,
    model_for_subject,
    schema_for_id,
)

ALL_MODELS = list(SUBJECTS)
PACKAGE_DIR = Path(schemas.__file__).parent

# Ids are permanent: bytes written under them may live in topics forever. Append, never edit.
SHIPPED_IDS = {
    "1": "lock_command.v1.avsc",
    "2": "lock_state.v1.avsc",
    "3": "conversation_turn.v1.avsc",
    "4": "turn_event.v1.avsc",
    "5": "embedding_job.v1.avsc",
    "6": "embedding_result.v1.avsc",
    "7": "usage_event.v1.avsc",
    "8": "usage_report.v1.avsc",
    "9": "turn_event.v2.avsc",
}


def _unwrap(annotation: Any) -> Any:
    """The inner type of ``X | None``, ``list[X]`` and ``Annotated[X, ...]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(inner)
    if origin is list:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _avro_inner(avro_type: Any, named: dict[str, Any]) -> Any:
    if isinstance(avro_type, list):
        (inner,) = [t for t in avro_type if t != "null"]
        return _avro_inner(inner, named)
    if isinstance(avro_type, str):
        return named.get(avro_type, avro_type)
    if avro_type["type"] == "array":
        return _avro_inner(avro_type["items"], named)
    return avro_type


def _compare(
    model: type[BaseModel], record: dict[str, Any], named: dict[str, Any]
) -> None:
    assert record["name"].rsplit(".", 1)[-1] == model.__name__
    avro_fields = {f["name"]: f for f in record["fields"]}
    assert list(avro_fields) == list(model.model_fields), model.__name__
    for name, info in model.model_fields.items():
        avro_field = avro_fields[name]
        inner_py = _unwrap(info.annotation)
        inner_avro = _avro_inner(avro_field["type"], named)
        if isinstance(inner_py, type) and issubclass(inner_py, BaseModel):
            _compare(inner_py, inner_avro, named)
        if typing.get_origin(inner_py) is typing.Literal:
            assert list(typing.get_args(inner_py)) == inner_avro["symbols"], (
                f"{model.__name__}.{name}"
            )
        _compare_default(model, name, avro_field)


def _compare_default(
    model: type[BaseModel], name: str, avro_field: dict[str, Any]
) -> None:
    info = model.model_fields[name]
    where = f"{model.__name__}.{name}"
    if info.is_required():
        assert "default" not in avro_field, where
    elif info.default_factory is not None:
        produced = info.default_factory()  # type: ignore[call-arg]
        if produced in ([], {}):
            expected = "{}" if produced == {} else []
            assert avro_field.get("default") == expected, where
        else:
            assert "default" not in avro_field, (
                f"{where}: dynamic default cannot live in Avro"
            )
    else:
        assert info.default is not PydanticUndefined
        assert avro_field.get("default", "<none>") == info.default, where


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_model_matches_its_latest_schema(model: type[Envelope]) -> None:
    entry = get_schema_table().latest(SUBJECTS[model])
    assert entry.raw["namespace"] == "soma.events"
    _compare(model, entry.parsed, entry.parsed["__named_schemas"])


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_schema_version_default_is_the_latest_version(model: type[Envelope]) -> None:
    entry = get_schema_table().latest(SUBJECTS[model])
    assert model.model_fields["schema_version"].default == entry.version


def test_shipped_ids_are_permanent() -> None:
    ids = json.loads((AVRO_DIR / "ids.json").read_text())
    assert {k: ids[k] for k in SHIPPED_IDS} == SHIPPED_IDS
    assert len(set(ids.values())) == len(ids)
    on_disk = {p.name for p in AVRO_DIR.glob("*.avsc")}
    assert on_disk == set(ids.values())


def test_registry_lookups() -> None:
    assert latest_schema_id(LockCommand) == 1
    subject, version, parsed = schema_for_id(2)
    assert (subject, version, parsed["name"]) == (
        "lock_state",
        1,
        "soma.events.LockState",
    )
    assert model_for_subject("lock_state") is LockState
    assert set(get_schema_table().subjects()) == set(SUBJECTS.values())


def test_schemas_imports_nothing_of_ours() -> None:
    forbidden = {"streams", "agents", "connectors", "faust_app", "deploy", "tests"}
    for source in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, f"{source.name} imports {name}"
                if top == "faust":
                    assert (
                        source.name == "faust_codec.py" and name == "faust.serializers"
                    )


def test_importing_schemas_does_not_load_faust() -> None:
    code = "import schemas, sys; assert 'faust' not in sys.modules, 'faust loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE_DIR.parent)
