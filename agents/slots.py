"""Model slots shared fairly among tenants: per-tenant queues served round-robin.

The conversation agent lets at most ``SOMA_MAX_CONCURRENT_TURNS`` turns call the model at once. A
plain semaphore hands free slots out in arrival order, so a tenant that sends a thousand turns puts
every other tenant's turn behind its thousand. :class:`FairSlots` keeps one FIFO queue per tenant
and gives each freed slot to the next tenant in turn: a tenant with one turn waiting gets a slot
after at most one turn of each other waiting tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["FairSlots"]

logger = logging.getLogger(__name__)


class FairSlots:
    """``size`` slots; waiters are queued per key (the tenant) and served round-robin over the keys."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._free = size
        #: Keys with waiters, in the order they are served next (a served key moves to the end).
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def busy(self) -> int:
        """Slots taken now."""
        return self.size - self._free

    def waiting(self, key: str | None = None) -> int:
        """Waiters of ``key`` (of every key when None)."""
        if key is not None:
            return len(self._queues.get(key, ()))
        return sum(len(queue) for queue in self._queues.values())

    async def acquire(self, key: str) -> None:
        if self._free > 0 and not self._queues:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted in the same moment as we were cancelled: pass it on
            else:
                self._forget(key, future)
            raise

    def release(self) -> None:
        while self._queues:
            key, queue = next(iter(self._queues.items()))
            future = queue.popleft()
            if queue:
                self._queues.move_to_end(key)
            else:
                del self._queues[key]
            if not future.done():
                future.set_result(None)  # the slot passes straight to the waiter: _free is unchanged
                return
        self._free += 1

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        if not queue:
            del self._queues[key]
