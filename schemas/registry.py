"""Which Avro schema belongs to which event type, and under which permanent schema id.

Ids come from ``avro/ids.json``: a fixed table mapping an id to a ``<subject>.v<version>.avsc`` file.
An id, once shipped, is never reused or remapped, because bytes written with it may sit in a topic
forever. A new schema version is a new file appended under a new id.

The table sits behind :class:`SchemaTable` so that a Confluent Schema Registry can later supply the ids
(:func:`set_schema_table`); everything else asks this module, never the files.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import fastavro

from schemas.conversation import ConversationTurn, TurnEvent
from schemas.embeddings import EmbeddingJob, EmbeddingResult
from schemas.envelope import Envelope
from schemas.exceptions import DecodeError, SchemaError
from schemas.locks import LockCommand, LockState
from schemas.usage import UsageEvent, UsageReport

__all__ = [
    "AVRO_DIR",
    "SUBJECTS",
    "FileSchemaTable",
    "SchemaEntry",
    "SchemaTable",
    "add_table_listener",
    "get_schema_table",
    "latest_schema_id",
    "model_for_subject",
    "schema_for_id",
    "set_schema_table",
    "subject_for_model",
]

logger = logging.getLogger(__name__)

AVRO_DIR = Path(__file__).resolve().parent / "avro"
_FILE_NAME = re.compile(
    r"^(?P<subject>[a-z][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$"
)

SUBJECTS: Mapping[type[Envelope], str] = MappingProxyType(
    {
        LockCommand: "lock_command",
        LockState: "lock_state",
        ConversationTurn: "conversation_turn",
        TurnEvent: "turn_event",
        EmbeddingJob: "embedding_job",
        EmbeddingResult: "embedding_result",
        UsageEvent: "usage_event",
        UsageReport: "usage_report",
    }
)
_MODELS: Mapping[str, type[Envelope]] = MappingProxyType(
    {s: m for m, s in SUBJECTS.items()}
)


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One registered schema: ``raw`` as written in its ``.avsc``, ``parsed`` as fastavro uses it."""

    schema_id: int
    subject: str
    version: int
    raw: dict[str, Any] = field(repr=False, compare=False)
    parsed: dict[str, Any] = field(repr=False, compare=False)


class SchemaTable(ABC):
    """Source of schema ids. Implementations must return the same entry for an id every time."""

    @abstractmethod
    def get(self, schema_id: int) -> SchemaEntry | None:
        """The entry registered under ``schema_id``, or ``None`` when the id is unknown."""

    @abstractmethod
    def versions(self, subject: str) -> Sequence[SchemaEntry]:
        """Every registered version of ``subject``, oldest first (empty when unknown)."""

    @abstractmethod
    def subjects(self) -> Sequence[str]:
        """Every subject with at least one version."""

    def latest(self, subject: str) -> SchemaEntry:
        """The newest version of ``subject``; writers always use it."""
        found = self.versions(subject)
        if not found:
            raise SchemaError(f"no Avro schema registered for subject {subject!r}")
        return found[-1]


class FileSchemaTable(SchemaTable):
    """The table shipped with the code: ``ids.json`` plus the ``.avsc`` files beside it."""

    def __init__(self, directory: Path = AVRO_DIR) -> None:
        self.directory = directory
        self._by_id: dict[int, SchemaEntry] = {}
        self._by_subject: dict[str, list[SchemaEntry]] = {}
        self._load()

    def _load(self) -> None:
        ids_path = self.directory / "ids.json"
        try:
            table = json.loads(ids_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(f"cannot read schema id table {ids_path}: {exc}") from exc
        if not isinstance(table, dict):
            raise SchemaError(
                f"{ids_path}: expected an object mapping ids to .avsc file names"
            )
        seen: dict[tuple[str, int], int] = {}
        for key, file_name in sorted(table.items(), key=lambda item: int(item[0])):
            schema_id = int(key)
            if not 0 < schema_id < 2**31:
                raise SchemaError(f"{ids_path}: schema id {key} out of range")
            match = _FILE_NAME.match(str(file_name))
            if match is None:
                raise SchemaError(
                    f"{ids_path}: {file_name!r} is not named <subject>.v<N>.avsc"
                )
            subject, version = match["subject"], int(match["version"])
            if (subject, version) in seen:
                raise SchemaError(
                    f"{ids_path}: {file_name} registered twice (ids {seen[subject, version]} and {key})"
                )
            seen[subject, version] = schema_id
            raw = self._read_schema(self.directory / file_name)
            try:
                parsed = cast(dict[str, Any], fastavro.parse_schema(raw))
            except Exception as exc:
                raise SchemaError(f"{file_name}: invalid Avro schema: {exc}") from exc
            entry = SchemaEntry(schema_id, subject, version, raw, parsed)
            self._by_id[schema_id] = entry
            self._by_subject.setdefault(subject, []).append(entry)
        for entries in self._by_subject.values():
            entries.sort(key=lambda entry: entry.version)
        logger.debug("loaded %d Avro schemas from %s", len(self._by_id), self.directory)

    @staticmethod
    def _read_schema(path: Path) -> dict[str, Any]:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(f"cannot read Avro schema {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise SchemaError(f"{path}: top-level Avro schema must be a record object")
        return raw

    def get(self, schema_id: int) -> SchemaEntry | None:
        return self._by_id.get(schema_id)

    def versions(self, subject: str) -> Sequence[SchemaEntry]:
        return tuple(self._by_subject.get(subject, ()))

    def subjects(self) -> Sequence[str]:
        return tuple(self._by_subject)


_table: SchemaTable | None = None
_listeners: list[Callable[[], None]] = []


def get_schema_table() -> SchemaTable:
    """The active table; the shipped files unless :func:`set_schema_table` replaced it."""
    global _table
    if _table is None:
        _table = FileSchemaTable()
    return _table


def set_schema_table(table: SchemaTable | None) -> None:
    """Replace the active table (``None`` goes back to the shipped files); caches are dropped."""
    global _table
    _table = table
    for listener in _listeners:
        listener()


def add_table_listener(callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the active table is replaced, so derived caches can be dropped."""
    _listeners.append(callback)


def subject_for_model(model_cls: type[Envelope]) -> str:
    """The subject of an event type (a subclass of a registered model inherits its subject)."""
    subject = SUBJECTS.get(model_cls)
    if subject is not None:
        return subject
    for base in model_cls.__mro__[1:]:
        subject = SUBJECTS.get(base)
        if subject is not None:
            return subject
    raise SchemaError(
        f"{model_cls.__name__} has no Avro subject; register it in schemas.registry.SUBJECTS"
    )


def latest_schema_id(model_cls: type[Envelope]) -> int:
    """The id writers of ``model_cls`` put in the frame header."""
    return get_schema_table().latest(subject_for_model(model_cls)).schema_id


def schema_for_id(schema_id: int) -> tuple[str, int, dict[str, Any]]:
    """``(subject, version, parsed_schema)`` of a schema id; unknown ids raise :class:`DecodeError`."""
    entry = get_schema_table().get(schema_id)
    if entry is None:
        raise DecodeError(f"unknown schema id {schema_id}")
    return entry.subject, entry.version, entry.parsed


def model_for_subject(subject: str) -> type[Envelope]:
    """The pydantic model of a subject."""
    try:
        return _MODELS[subject]
    except KeyError:
        raise SchemaError(f"unknown subject {subject!r}") from None
