"""Processed event ids, remembered per partition in an agent's ``seen`` table for a while.

At-least-once delivery replays records after a crash or a rebalance, and producers resend; an agent
makes its effects idempotent by remembering the ``event_id`` of each event it has acted on. The
``seen`` table maps an id to the epoch millisecond when it may be forgotten (the table is partitioned
like the input, so the worker owning a record owns its id). A sweep drops expired ids, so the table
stays bounded by the traffic of about one TTL.

The sweep is incremental: a table holds a TTL's worth of ids (millions for a week of steady
traffic), and reading them all in one go held the event loop — and with it every consumer's
heartbeats and fetches in the worker — for seconds. A sweep *round* starts at most once a minute; each
call (agents call it once per batch) examines at most ``slice_size`` ids, in key order, and the next
call resumes after the last one, partition by partition, until the round has seen every id.
"""

from __future__ import annotations

from typing import Any

from streams.engine.stream import Batch

__all__ = ["SEEN_TABLE", "SeenIds"]

SEEN_TABLE = "seen"
_SWEEP_EVERY_MS = 60_000
#: Ids examined per call: a few milliseconds of work, and more than a batch adds
#: (``SOMA_BATCH_MAX_RECORDS``, 2,000), so that under load the rounds keep up with the new ids.
_SWEEP_SLICE = 5_000


class SeenIds:
    """The ``seen`` table of one agent: ``contains`` before acting, ``add`` once the effect is made."""

    def __init__(self, ttl_ms: int, sweep_every_ms: int = _SWEEP_EVERY_MS, slice_size: int = _SWEEP_SLICE) -> None:
        self.ttl_ms = ttl_ms
        self.sweep_every_ms = sweep_every_ms
        self.slice_size = slice_size
        self._next_sweep_ms = 0
        #: Partitions the current round has still to go through (the first one is under way), and the
        #: last id examined in it.
        self._round: list[int] = []
        self._after: str | None = None

    def contains(self, batch: Batch[Any], event_id: str, partition: int) -> bool:
        return batch.table(SEEN_TABLE).get(event_id, partition) is not None

    def add(self, batch: Batch[Any], event_id: str, partition: int) -> None:
        batch.table(SEEN_TABLE).set(event_id, batch.now_ms + self.ttl_ms, partition)

    @property
    def sweeping(self) -> bool:
        """A round is under way (the next calls continue it)."""
        return bool(self._round)

    def sweep(self, batch: Batch[Any]) -> int:
        """Forget expired ids of the partitions this worker owns, ``slice_size`` ids at most per call.

        A round starts at most every ``sweep_every_ms`` and goes through each owned partition in key
        order; partitions given up meanwhile are skipped, partitions gained meanwhile wait for the next
        round. Returns the number of ids forgotten by this call.
        """
        now = batch.now_ms
        if not self._round:
            if now < self._next_sweep_ms:
                return 0
            self._next_sweep_ms = now + self.sweep_every_ms
            self._round, self._after = sorted(batch.partitions), None
        seen = batch.table(SEEN_TABLE)
        owned = set(batch.partitions)
        budget, forgotten = self.slice_size, 0
        while self._round and budget > 0:
            partition = self._round[0]
            if partition not in owned:
                self._round.pop(0)
                self._after = None
                continue
            limit = budget
            found = seen.scan(partition, self._after, limit)
            budget -= len(found)
            for event_id, expires in found:
                if expires <= now:
                    seen.delete(event_id, partition)
                    forgotten += 1
            if len(found) < limit:
                self._round.pop(0)  # the partition is done
                self._after = None
            else:
                self._after = found[-1][0]
        return forgotten
