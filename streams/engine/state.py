"""Tables: RocksDB state per partition, made durable by a compacted changelog topic.

A table is partitioned like the input topic of its agent: the value for a key lives in the partition
the key's events arrive on, so one worker owns it. Writes made while a batch is processed are held in
memory; when the batch is finished the engine sends them to the changelog, waits for the broker to
acknowledge, writes them to RocksDB in one atomic write batch together with the changelog offset they
reached, and only then commits the input offsets. A crash anywhere in between replays the batch, which
agents make harmless by remembering processed event ids in a table of their own.

When a partition is assigned, its store is opened from the local RocksDB directory and brought up to
date from the changelog, so a worker that lost its disk, or a partition that moved to another worker,
recovers the same state.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteBatch

__all__ = ["PartitionStore", "Table"]

logger = logging.getLogger(__name__)

#: Key of the changelog offset a store has applied; outside the user key space (keys are UTF-8 text).
_OFFSET_KEY = b"\xff__changelog_offset__"


class PartitionStore:
    """One RocksDB database: one partition of one table."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options=options)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def items(self, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value in key order, from ``start`` (included) when given."""
        for key, value in self._db.items(from_key=start) if start is not None else self._db.items():
            if key != _OFFSET_KEY:
                yield bytes(key), bytes(value)  # type: ignore[arg-type]  # raw mode: always bytes

    @property
    def changelog_offset(self) -> int:
        """Offset of the last changelog record applied here, -1 when none."""
        raw = self._db.get(_OFFSET_KEY)
        return -1 if raw is None else int(bytes(raw))

    def write(self, changes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        """Apply writes (None deletes) and the changelog offset atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(_OFFSET_KEY, str(changelog_offset).encode())
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()


class Table:
    """A named, partitioned key → JSON value table owned by one agent."""

    def __init__(self, name: str, changelog_topic: str, directory: Path) -> None:
        self.name = name
        self.changelog_topic = changelog_topic
        self.directory = directory
        self._stores: dict[int, PartitionStore] = {}
        self._pending: dict[int, dict[bytes, bytes | None]] = {}
        #: Writes taken by a finish that is waiting for the broker: still the newest values for readers
        #: (agents whose work runs across batches read while a flush is in flight).
        self._flushing: dict[int, dict[bytes, bytes | None]] = {}
        #: While a record is guarded: the pending entries its writes replaced, to undo them if it fails.
        self._journal: list[tuple[int, bytes, bool, bytes | None]] | None = None

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
            store = self._stores[partition] = PartitionStore(self.directory / str(partition))
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
        shutil.rmtree(self.directory / str(partition), ignore_errors=True)

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
