"""Tables on RocksDB: what the worker runs, one database per partition under the agent's data directory.

A partition's database holds the values the changelog acknowledged and, in the same atomic write
batch, the changelog offset they reached. When a partition is assigned, its database is opened from
the local directory and brought up to date from the changelog (:mod:`streams.engine.recovery`), so a
worker that lost its disk, or a partition that moved to another worker, recovers the same state.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from streams.engine.state.base import BaseTable, PartitionStore

__all__ = ["RocksDBStore", "RocksDBTable"]

logger = logging.getLogger(__name__)

#: Key of the changelog offset a store has applied; outside the user key space (keys are UTF-8 text).
_OFFSET_KEY = b"\xff__changelog_offset__"


class RocksDBStore(PartitionStore):
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
        for key, value in self._db.items(from_key=start) if start is not None else self._db.items():
            if key != _OFFSET_KEY:
                yield bytes(key), bytes(value)  # type: ignore[arg-type]  # raw mode: always bytes

    @property
    def changelog_offset(self) -> int:
        raw = self._db.get(_OFFSET_KEY)
        return -1 if raw is None else int(bytes(raw))

    def write(self, changes: dict[bytes, bytes | None], changelog_offset: int | None) -> None:
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


class RocksDBTable(BaseTable):
    """A table whose partitions live in ``directory/<partition>``: they survive a restart of the worker."""

    def __init__(self, name: str, changelog_topic: str, directory: Path) -> None:
        super().__init__(name, changelog_topic)
        self.directory = directory

    def _open_store(self, partition: int) -> RocksDBStore:
        return RocksDBStore(self.directory / str(partition))

    def _remove_store(self, partition: int) -> None:
        shutil.rmtree(self.directory / str(partition), ignore_errors=True)
