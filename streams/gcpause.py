"""Keep Python's cyclic garbage collector from stalling a latency-sensitive event loop."""

from __future__ import annotations

import asyncio
import gc

__all__ = ["freeze_long_lived"]


async def freeze_long_lived(interval: float = 2.0) -> None:
    """Move objects that outlived a young collection out of the collector's reach, every ``interval`` seconds.

    A process that holds many long-lived objects (a bridge with 10,000 connections, a worker with Faust,
    its tables and its clients) pays for them in every generation-1/2 collection, which stalls the
    event loop, and a stalled loop is every client's latency. Frozen objects are still freed by
    reference counting; only cyclic garbage that
    survived the young collection right before the freeze stays, which the bridge hardly makes. The
    oldest generation is collected far less often than Python's default for the same reason.
    """
    gc.set_threshold(10_000, 20, 1000)
    while True:
        await asyncio.sleep(interval)
        gc.collect(1)
        gc.freeze()
