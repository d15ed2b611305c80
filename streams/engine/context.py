"""What an agent gets besides its stream: the settings, shared connectors and its own per-run objects.

An agent declares its context class in ``@agent(..., context=LockContext)``. The engine creates one
context per run of the agent (its first start, and each restart after a crash), hands it to the agent
function with the stream, calls its ``assigned``/``revoked`` hooks on rebalances, and closes it when the
run ends, so a restarted agent starts from its tables, not from what the crashed run held in memory.
Nothing lives in module globals: two engines in one process (as in tests) never share an agent's state.

Objects that must exist once per worker process, whatever the number of agents using them (one Qdrant
local-mode client per data directory, one embedding model in memory), are kept in :class:`Resources`,
which the engine owns and closes when it stops.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, Self, TypeVar

from streams.settings import Settings

__all__ = ["AgentContext", "Resources"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Resources:
    """Objects one worker process shares between its agents, created on first use, closed at the end."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}

    def get(self, name: str, create: Callable[[], T]) -> T:
        """The object registered as ``name``, created with ``create()`` the first time it is asked for."""
        if name not in self._objects:
            self._objects[name] = create()
        obj: T = self._objects[name]
        return obj

    async def close(self) -> None:
        """Close every object (``aclose()`` or ``close()``, awaited when it is a coroutine), newest first."""
        objects, self._objects = list(self._objects.items()), {}
        for name, obj in reversed(objects):
            closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
            if closer is None:
                continue
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("closing the shared %s failed", name)


class AgentContext:
    """Base of the per-run context of an agent; subclasses add what their agent needs.

    A subclass builds its objects in :meth:`create` (called inside the running event loop, so clients
    may bind to it) and releases them in :meth:`close`. ``assigned`` runs when partitions become ready
    (their tables restored), ``revoked`` when they leave this worker, before another worker may take
    them: an agent with work in flight for them cancels it there.
    """

    def __init__(self, settings: Settings, resources: Resources) -> None:
        self.settings = settings
        self.resources = resources

    @classmethod
    def create(cls, settings: Settings, resources: Resources) -> Self:
        return cls(settings, resources)

    async def assigned(self, partitions: list[int]) -> None:
        """Partitions ready for this agent on this worker (override to react)."""

    async def revoked(self, partitions: list[int]) -> None:
        """Partitions leaving this worker (override to cancel work in flight for them)."""

    async def close(self) -> None:
        """Release what :meth:`create` acquired (override; the base holds nothing)."""
