"""Processed event ids, remembered per partition in an agent's ``seen`` table for a while.

At-least-once delivery replays records after a crash or a rebalance, and producers resend; an agent
makes its effects idempotent by remembering the ``event_id`` of each event it has acted on. The
``seen`` table maps an id to the epoch millisecond when it may be forgotten (the table is partitioned
like the input, so the worker owning a record owns its id). A sweep drops expired ids at most once a
minute, so the table stays bounded by the traffic of one TTL.
"""

from __future__ import annotations

from typing import Any

from streams.engine.stream import Batch

__all__ = ["SEEN_TABLE", "SeenIds"]

SEEN_TABLE = "seen"
_SWEEP_EVERY_MS = 60_000


class SeenIds:
    """The ``seen`` table of one agent: ``contains`` before acting, ``add`` once the effect is made."""

    def __init__(self, ttl_ms: int, sweep_every_ms: int = _SWEEP_EVERY_MS) -> None:
        self.ttl_ms = ttl_ms
        self.sweep_every_ms = sweep_every_ms
        self._next_sweep_ms = 0

    def contains(self, batch: Batch[Any], event_id: str, partition: int) -> bool:
        return batch.table(SEEN_TABLE).get(event_id, partition) is not None

    def add(self, batch: Batch[Any], event_id: str, partition: int) -> None:
        batch.table(SEEN_TABLE).set(event_id, batch.now_ms + self.ttl_ms, partition)

    def sweep(self, batch: Batch[Any]) -> int:
        """Forget the expired ids of the partitions this worker owns (at most every ``sweep_every_ms``)."""
        now = batch.now_ms
        if now < self._next_sweep_ms:
            return 0
        self._next_sweep_ms = now + self.sweep_every_ms
        seen = batch.table(SEEN_TABLE)
        forgotten = 0
        for partition in batch.partitions:
            for event_id, expires in list(seen.items(partition)):
                if expires <= now:
                    seen.delete(event_id, partition)
                    forgotten += 1
        return forgotten
