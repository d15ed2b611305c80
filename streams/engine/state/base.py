"""What every table is, whatever stores its partitions: the reads and writes agents make, the savepoints
of :meth:`Batch.guard`, and the hand-over of a batch's writes to the changelog.

A table keeps the writes of the batch being processed in memory (``pending``), hands them to the
engine when the batch is finished (``flushing``, still visible to readers while the changelog
acknowledges them) and gives them to its :class:`PartitionStore` once acknowledged, together with the
changelog offset they reached. Only the store differs between implementations: RocksDB on disk for
the worker (:mod:`streams.engine.state.rocksdb`), a sorted dict for the tests
(:mod:`streams.engine.state.memory`), so both run the same pending/flushing/journal rules.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

__all__ = ["BaseTable", "PartitionStore"]

logger = logging.getLogger(__name__)


class PartitionStore(ABC):
    """The durable part of one partition of one table: bytes keys → bytes values and a changelog offset."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def items(self, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value in key order, from ``start`` (included) when given."""

    @property
    @abstractmethod
    def changelog_offset(self) -> int:
        """Offset of the last changelog record applied here, -1 when none."""

    @abstractmethod
    def write(self, changes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        """Apply writes (None deletes) and the changelog offset atomically."""

    @abstractmethod
    def close(self) -> None: ...


class BaseTable(ABC):
    """A named, partitioned key → JSON value table owned by one agent."""

    def __init__(self, name: str, changelog_topic: str) -> None:
        self.name = name
        self.changelog_topic = changelog_topic
        self._stores: dict[int, PartitionStore] = {}
        self._pending: dict[int, dict[bytes, bytes | None]] = {}
        #: Writes taken by a finish that is waiting for the broker: still the newest values for readers
        #: (agents whose work runs across batches read while a flush is in flight).
        self._flushing: dict[int, dict[bytes, bytes | None]] = {}
        #: While a record is guarded: the pending entries its writes replaced, to undo them if it fails.
        self._journal: list[tuple[int, bytes, bool, bytes | None]] | None = None

    @abstractmethod
    def _open_store(self, partition: int) -> PartitionStore:
        """The store of a partition being assigned, with what it kept from before (if anything)."""

    @abstractmethod
    def _remove_store(self, partition: int) -> None:
        """Forget what a closed partition's store kept, so its next open starts empty."""

    # -- reads and writes made by agents -----------------------------------------------------------

    def get(self, key: str, partition: int, default: Any = None) -> Any:
        encoded = key.encode()
        pending = self._pending.get(partition)
        flushing = self._flushing.get(partition)
        if pending is not None and encoded in pending:
            raw = pending[encoded]
        elif flushing is not None and encoded in flushing:
            raw = flushing[encoded]
        else:
            raw = self._store(partition).get(encoded)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, partition: int) -> None:
        self._write(partition, key.encode(), json.dumps(value, separators=(",", ":")).encode())

    def delete(self, key: str, partition: int) -> None:
        self._write(partition, key.encode(), None)

    def _write(self, partition: int, key: bytes, raw: bytes | None) -> None:
        self._store(partition)
        pending = self._pending.setdefault(partition, {})
        if self._journal is not None:
            self._journal.append((partition, key, key in pending, pending.get(key)))
        pending[key] = raw

    # -- savepoints: a record whose handling fails leaves no write behind --------------------------

    def begin(self) -> None:
        """Start journaling writes, so :meth:`rollback` can undo those of one record."""
        self._journal = []

    def rollback(self) -> None:
        """Undo the writes made since :meth:`begin` (newest first) and stop journaling."""
        journal, self._journal = self._journal, None
        for partition, key, existed, previous in reversed(journal or ()):
            pending = self._pending.get(partition)
            if pending is None:
                continue
            if existed:
                pending[key] = previous
            else:
                pending.pop(key, None)

    def release(self) -> None:
        """Keep the writes made since :meth:`begin` and stop journaling."""
        self._journal = None

    def items(self, partition: int) -> Iterator[tuple[str, Any]]:
        """Every key and value of a partition, including writes not yet flushed."""
        pending = {**self._flushing.get(partition, {}), **self._pending.get(partition, {})}
        for key, raw in self._store(partition).items():
            if key in pending:
                raw_pending = pending.pop(key)
                if raw_pending is None:
                    continue
                raw = raw_pending
            yield key.decode(), json.loads(raw)
        for key, raw_pending in pending.items():
            if raw_pending is not None:
                yield key.decode(), json.loads(raw_pending)

    def scan(self, partition: int, after: str | None, limit: int) -> list[tuple[str, Any]]:
        """Up to ``limit`` stored keys after ``after`` (in key order), with their newest values.

        For work done a slice at a time (sweeps): the next call passes the last key returned. Writes
        not flushed yet override the stored values; keys that exist only in such writes are not listed
        (they are the batch's own new keys, listed once stored).
        """
        pending = {**self._flushing.get(partition, {}), **self._pending.get(partition, {})}
        found: list[tuple[str, Any]] = []
        start = after.encode() if after is not None else None
        for key, raw in self._store(partition).items(start):
            if key == start:
                continue
            if key in pending:
                raw_pending = pending[key]
                if raw_pending is None:
                    continue
                raw = raw_pending
            found.append((key.decode(), json.loads(raw)))
            if len(found) >= limit:
                break
        return found

    @property
    def partitions(self) -> list[int]:
        return sorted(self._stores)

    def _store(self, partition: int) -> PartitionStore:
        store = self._stores.get(partition)
        if store is None:
            raise KeyError(f"table {self.name}: partition {partition} is not assigned to this worker")
        return store

    # -- lifecycle driven by the engine ------------------------------------------------------------

    def open(self, partition: int) -> PartitionStore:
        store = self._stores.get(partition)
        if store is None:
            store = self._stores[partition] = self._open_store(partition)
        return store

    def close(self, partition: int) -> None:
        self._pending.pop(partition, None)
        self._flushing.pop(partition, None)
        store = self._stores.pop(partition, None)
        if store is not None:
            store.close()

    def close_all(self) -> None:
        for partition in list(self._stores):
            self.close(partition)

    def wipe(self, partition: int) -> None:
        """Drop a partition's local store so it is rebuilt from the changelog."""
        self.close(partition)
        self._remove_store(partition)

    def take_pending(self) -> dict[int, dict[bytes, bytes | None]]:
        """Hand the writes to a finish; readers keep seeing them until :meth:`commit` stores them."""
        pending, self._pending = self._pending, {}
        taken = {partition: changes for partition, changes in pending.items() if changes}
        for partition, changes in taken.items():
            self._flushing.setdefault(partition, {}).update(changes)
        return taken

    def discard_pending(self) -> None:
        self._pending = {}
        self._flushing = {}
        self._journal = None

    def commit(self, partition: int, changes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        store = self._stores.get(partition)
        if store is not None:
            store.write(changes, changelog_offset)
        flushing = self._flushing.get(partition)
        if flushing:
            for key, value in changes.items():
                if key in flushing and flushing[key] is value:
                    del flushing[key]
