"""The usage agent's tables in memory: the accounting's unit tests run it on the engine's table rules
(JSON values, pending writes, commits) without RocksDB or a broker."""

from __future__ import annotations

from agents.usage.accounting import TABLES, Stores
from streams.engine.state import MemoryTable


def memory_stores(partition: int = 0) -> Stores:
    """The usage tables with one partition assigned, as the agent's batch sees them."""
    tables = {name: MemoryTable(name, f"soma-streams-usage-{name}-changelog") for name in TABLES}
    for table in tables.values():
        table.open(partition)
    return Stores.of_partition(tables, partition)


def flush(stores: Stores) -> None:
    """What the engine does once the changelog acknowledged a batch: store the batch's writes."""
    for view in (stores.seen, stores.windows, stores.tenants, stores.history, stores.latest):
        for partition, changes in view.table.take_pending().items():
            view.table.commit(partition, changes, None)
