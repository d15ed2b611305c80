"""Backward-compatibility checks between consecutive versions of an event schema.

"Backward compatible" here means: a consumer using the *new* schema as reader can read every record
written with the *old* one, by the Avro schema-resolution rules. Events stay in topics (and in the
compacted lock-state topic, indefinitely), so a deployed consumer must always be able to read what older
producers wrote. The static check explains *why* a change breaks; :func:`roundtrip_check` then proves a
passing pair with fastavro itself.
"""

from __future__ import annotations

import io
import itertools
import logging
from typing import Any, cast

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, UnknownType
from fastavro.utils import generate_many

from schemas.registry import SUBJECTS, SchemaTable, get_schema_table

__all__ = ["check_all", "check_backward_compatible", "roundtrip_check"]

logger = logging.getLogger(__name__)

PRIMITIVES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
NAMED = frozenset({"record", "error", "enum", "fixed"})
_PARSE_ERRORS = (SchemaParseException, UnknownType, ValueError, TypeError, KeyError)
_READ_ERRORS = (
    SchemaResolutionError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
)


def check_backward_compatible(
    old_schema: dict[str, Any], new_schema: dict[str, Any]
) -> list[str]:
    """Problems preventing ``new_schema`` from reading data written with ``old_schema`` (empty = OK)."""
    try:
        old = _parse(old_schema)
    except _PARSE_ERRORS as exc:
        return [f"old schema is invalid: {exc}"]
    try:
        new = _parse(new_schema)
    except _PARSE_ERRORS as exc:
        return [f"new schema is invalid: {exc}"]
    return _Resolver(old, new).check(old, new, _short(old.get("name", "")))


def roundtrip_check(
    old_schema: dict[str, Any], new_schema: dict[str, Any], samples: int = 20
) -> list[str]:
    """Write random records with ``old_schema`` and read them back with ``new_schema`` as reader."""
    old = _parse(old_schema)
    new = _parse(new_schema)
    problems: list[str] = []
    for datum in generate_many(old, samples):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, old, datum)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, old, new)
        except _READ_ERRORS as exc:
            problems.append(f"fastavro cannot read old data with the new schema: {exc}")
            break
    return problems


def check_all(table: SchemaTable | None = None) -> dict[str, list[str]]:
    """Compatibility problems per subject, comparing each version with the one before it."""
    table = table or get_schema_table()
    results: dict[str, list[str]] = {}
    for subject in [
        *table.subjects(),
        *(s for s in SUBJECTS.values() if s not in table.subjects()),
    ]:
        problems: list[str] = []
        versions = list(table.versions(subject))
        if not versions:
            problems.append("event model has no Avro schema in the table")
        numbers = [entry.version for entry in versions]
        if numbers and numbers != list(range(1, len(numbers) + 1)):
            problems.append(
                f"versions must run 1, 2, 3... without gaps, found {numbers}"
            )
        for before, after in itertools.pairwise(versions):
            step = f"v{before.version} -> v{after.version}"
            found = check_backward_compatible(before.raw, after.raw)
            if not found:
                found = roundtrip_check(before.raw, after.raw)
            problems.extend(f"{step}: {problem}" for problem in found)
        if problems:
            logger.warning("schema subject %s: %s", subject, "; ".join(problems))
        results[subject] = problems
    return results


def _parse(schema: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], fastavro.parse_schema(schema))


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _describe(node: Any) -> str:
    if isinstance(node, str):
        return _short(node)
    if isinstance(node, list):
        return "[" + ", ".join(_describe(branch) for branch in node) + "]"
    kind = node["type"]
    if kind in NAMED:
        return f"{kind} {_short(node['name'])}"
    if kind == "array":
        return f"array<{_describe(node['items'])}>"
    if kind == "map":
        return f"map<{_describe(node['values'])}>"
    logical = node.get("logicalType")
    return f"{_describe(kind)} ({logical})" if logical else _describe(kind)


class _Resolver:
    """Avro resolution of a writer (old) schema against a reader (new) schema, collecting problems."""

    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.writer_named: dict[str, Any] = old.get("__named_schemas", {})
        self.reader_named: dict[str, Any] = new.get("__named_schemas", {})
        self.visited: set[tuple[str, str]] = set()

    def check(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer = self._deref(writer, self.writer_named)
        reader = self._deref(reader, self.reader_named)
        if isinstance(writer, list):
            problems: list[str] = []
            for branch in writer:
                problems.extend(self.check(branch, reader, path))
            return problems
        if isinstance(reader, list):
            for branch in reader:
                if self._matches(writer, self._deref(branch, self.reader_named)):
                    return self.check(writer, branch, path)
            return [
                (
                    f"{path}: old type {_describe(writer)} is not among the new union's branches "
                    f"{_describe(reader)}"
                )
            ]
        writer_kind, reader_kind = _kind(writer), _kind(reader)
        if writer_kind in PRIMITIVES or reader_kind in PRIMITIVES:
            return self._check_primitive(writer, reader, path)
        if writer_kind != reader_kind:
            return [
                f"{path}: type changed from {_describe(writer)} to {_describe(reader)}"
            ]
        if writer_kind == "array":
            return self.check(writer["items"], reader["items"], f"{path}[]")
        if writer_kind == "map":
            return self.check(writer["values"], reader["values"], f"{path}{{}}")
        if not _same_name(writer, reader):
            return [
                (
                    f"{path}: {writer_kind} renamed from {_short(writer['name'])} to "
                    f"{_short(reader['name'])} without an alias"
                )
            ]
        if writer_kind == "enum":
            return self._check_enum(writer, reader, path)
        if writer_kind == "fixed":
            if writer["size"] != reader["size"]:
                return [
                    f"{path}: fixed size changed from {writer['size']} to {reader['size']}"
                ]
            return []
        return self._check_record(writer, reader, path)

    def _check_primitive(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer_kind, reader_kind = _kind(writer), _kind(reader)
        if writer_kind != reader_kind and reader_kind not in PROMOTIONS.get(
            writer_kind, ()
        ):
            return [
                (
                    f"{path}: type changed from {_describe(writer)} to {_describe(reader)}, "
                    "which Avro cannot promote"
                )
            ]
        writer_logical, reader_logical = _logical(writer), _logical(reader)
        if writer_logical != reader_logical:
            return [
                (
                    f"{path}: logical type changed from {writer_logical or 'none'} to "
                    f"{reader_logical or 'none'}, which changes the meaning of stored values"
                )
            ]
        return []

    def _check_enum(
        self, writer: dict[str, Any], reader: dict[str, Any], path: str
    ) -> list[str]:
        removed = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if removed and "default" not in reader:
            return [
                (
                    f"{path}: enum {_short(reader['name'])} lost symbols {removed} and has no default "
                    "symbol to read them as"
                )
            ]
        return []

    def _check_record(
        self, writer: dict[str, Any], reader: dict[str, Any], path: str
    ) -> list[str]:
        key = (writer["name"], reader["name"])
        if key in self.visited:
            return []
        self.visited.add(key)
        written = {f["name"]: f for f in writer["fields"]}
        problems: list[str] = []
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", ())]
            source = next((written[n] for n in names if n in written), None)
            field_path = f"{path}.{field['name']}"
            if source is None:
                if "default" not in field:
                    problems.append(f"{field_path}: field added without a default")
                continue
            problems.extend(self.check(source["type"], field["type"], field_path))
        return problems

    def _matches(self, writer: Any, reader: Any) -> bool:
        """Avro's branch selection: the first reader branch of the same kind (and name) is used."""
        if isinstance(writer, list) or isinstance(reader, list):
            return False
        writer_kind, reader_kind = _kind(writer), _kind(reader)
        if writer_kind in PRIMITIVES:
            return writer_kind == reader_kind or reader_kind in PROMOTIONS.get(
                writer_kind, ()
            )
        if writer_kind != reader_kind:
            return False
        if writer_kind in NAMED:
            return _same_name(writer, reader)
        return True

    @staticmethod
    def _deref(node: Any, named: dict[str, Any]) -> Any:
        if isinstance(node, str) and node in named:
            return named[node]
        return node


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    kind = node["type"]
    return kind if isinstance(kind, str) else _kind(kind)


def _logical(node: Any) -> str | None:
    return node.get("logicalType") if isinstance(node, dict) else None


def _same_name(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    names = {_short(reader["name"]), *(_short(a) for a in reader.get("aliases", ()))}
    return _short(writer["name"]) in names
