"""Run one agent in the test process on a real :class:`AgentRunner` against the embedded broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from schemas import Envelope, encode_event
from streams.engine import AgentRunner, AgentSpec
from streams.kafka import producer_factory
from streams.settings import Settings
from tests.support.stack import produce_raw

__all__ = ["AgentHarness"]


class AgentHarness:
    """One agent's runner (real consumer group, tables, changelogs, DLQ) and a way to feed it events."""

    def __init__(self, bootstrap: str, spec: AgentSpec, settings: Settings) -> None:
        self.bootstrap = bootstrap
        self.spec = spec
        self.settings = settings
        self.runner: AgentRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None

    async def start(self, ready_timeout: float = 60.0) -> AgentHarness:
        self._producer = producer_factory(self.settings, max_batch_size=256 * 1024, max_request_size=1024 * 1024)
        await self._producer.start()
        self.runner = AgentRunner(self.spec, self.settings, self._producer)
        self._task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(self.runner.ready.wait(), ready_timeout)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, events: Iterable[Envelope], key: Callable[[Any], bytes | None]) -> None:
        """Produce ``events`` to the agent's input topic, keyed by ``key(event)``; wait for the acks."""
        await produce_raw(self.bootstrap, self.spec.topic.name, [(key(event), encode_event(event)) for event in events])
