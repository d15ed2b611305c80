"""Tables: state per partition, made durable by a compacted changelog topic.

A table is partitioned like the input topic of its agent: the value for a key lives in the partition
the key's events arrive on, so one worker owns it. Writes made while a batch is processed are held in
memory; when the batch is finished the engine sends them to the changelog, waits for the broker to
acknowledge, writes them to the partition's store in one atomic write together with the changelog
offset they reached, and only then commits the input offsets. A crash anywhere in between replays the
batch, which agents make harmless by remembering processed event ids in a table of their own.

:class:`BaseTable` is what agents use; the worker's tables are :class:`RocksDBTable` (``Table``), and
:class:`MemoryTable` runs the same rules without a disk for tests.
"""

from streams.engine.state.base import BaseTable, PartitionStore
from streams.engine.state.memory import MemoryStore, MemoryTable
from streams.engine.state.rocksdb import RocksDBStore, RocksDBTable

#: The table the engine builds for every agent: the name the runner and existing code use.
Table = RocksDBTable

__all__ = ["BaseTable", "MemoryStore", "MemoryTable", "PartitionStore", "RocksDBStore", "RocksDBTable", "Table"]
