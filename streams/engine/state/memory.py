"""Tables in memory: the same rules as the RocksDB tables, for tests and benchmarks' references.

A partition's store is a dict kept by its table until :meth:`~BaseTable.wipe`, the way a RocksDB
directory stays on disk: closing and reopening a partition (a revoke and a re-assign) finds what was
committed before. Nothing outlives the process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from streams.engine.state.base import BaseTable, PartitionStore

__all__ = ["MemoryStore", "MemoryTable"]

logger = logging.getLogger(__name__)


class MemoryStore(PartitionStore):
    """One partition of one table in a dict, listed in key order like RocksDB lists it."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._offset = -1

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # A snapshot, as a RocksDB iterator reads one: writes made meanwhile do not disturb the listing.
        for key, value in sorted(self._data.items()):
            if start is None or key >= start:
                yield key, value

    @property
    def changelog_offset(self) -> int:
        return self._offset

    def write(self, changes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
        for key, value in changes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        if changelog_offset is not None:
            self._offset = changelog_offset

    def close(self) -> None:
        """Nothing to release: the table keeps the data for the partition's next open."""


class MemoryTable(BaseTable):
    """A table whose partitions live in this process."""

    def __init__(self, name: str, changelog_topic: str) -> None:
        super().__init__(name, changelog_topic)
        self._kept: dict[int, MemoryStore] = {}

    def _open_store(self, partition: int) -> MemoryStore:
        return self._kept.setdefault(partition, MemoryStore())

    def _remove_store(self, partition: int) -> None:
        self._kept.pop(partition, None)
