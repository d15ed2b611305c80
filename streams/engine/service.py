"""The Faust service that runs every registered agent inside ``soma worker``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from mode import Service

from streams.catalog import all_topics, ensure_topics
from streams.engine.context import Resources
from streams.engine.recovery import readiness
from streams.engine.registry import registered_agents, set_running
from streams.engine.runner import AgentRunner
from streams.engine.sensor import AgentSensor, SensorFactory
from streams.gcpause import freeze_long_lived
from streams.kafka import admin_factory, producer_factory
from streams.settings import Settings
from streams.web import page

__all__ = ["StreamEngine", "changelog_topics", "prepare_topics", "readyz_page"]

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15.0


def changelog_topics(config: Settings) -> list[NewTopic]:
    """The compacted changelog topic of every table of every registered agent."""
    topics = []
    for spec in registered_agents():
        for table in spec.tables:
            topics.append(
                NewTopic(
                    spec.changelog_topic(config.app_id, table),
                    config.partitions,
                    config.replication_factor,
                    topic_configs={"cleanup.policy": "compact", "retention.ms": "-1"},
                )
            )
    return topics


async def prepare_topics(config: Settings) -> list[str]:
    """Create the catalog's topics, their DLQs and the agents' changelogs where missing."""
    admin = admin_factory(config)
    await admin.start()
    try:
        topics = all_topics(config.partitions, config.replication_factor) + changelog_topics(config)
        return await ensure_topics(admin, topics)
    finally:
        await admin.close()


class StreamEngine(Service):
    """Starts one :class:`AgentRunner` per registered agent, sharing two producers.

    The batch producer lingers a few milliseconds so that batches fill; the live producer
    (``Batch.publish``: answer chunks a client is watching) sends at once, because there every
    millisecond of linger is a millisecond of time-to-first-token. ``sensor_factory`` builds each
    runner's :class:`~streams.engine.sensor.AgentSensor` (the app passes the Prometheus one).
    """

    def __init__(self, settings: Settings, sensor_factory: SensorFactory = AgentSensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.sensor_factory = sensor_factory
        self.producer: AIOKafkaProducer | None = None
        self.live_producer: AIOKafkaProducer | None = None
        self.runners: list[AgentRunner] = []
        self.resources = Resources()
        self._runner_tasks: list[asyncio.Task[None]] = []
        self._freezer: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        global _engine
        _engine = self
        specs = registered_agents()
        await prepare_topics(self.settings)
        self.producer = producer_factory(self.settings)
        await self.producer.start()
        self.live_producer = producer_factory(self.settings, linger_ms=0, client_id=f"{self.settings.app_id}-live")
        await self.live_producer.start()
        for spec in specs:
            runner = AgentRunner(spec, self.settings, self.producer, self.live_producer, self.resources,
                                 self.sensor_factory(spec.name, spec.topic))
            self.runners.append(runner)
            self._runner_tasks.append(asyncio.create_task(runner.run(), name=f"agent-{spec.name}"))
        set_running(self.runners)
        self._freezer = asyncio.create_task(freeze_long_lived(), name="gc-freeze")
        logger.info("stream engine started agents: %s", ", ".join(spec.name for spec in specs) or "none")

    async def on_stop(self) -> None:
        if self._freezer is not None:
            self._freezer.cancel()
        for runner in self.runners:
            await runner.stop()
        # Let each agent finish and commit its batch in flight; cancel what is still busy after that.
        tasks = self._runner_tasks
        _, busy = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS) if tasks else (set(), set())
        for task in busy:
            task.cancel()
        await asyncio.gather(*self._runner_tasks, return_exceptions=True)
        self._runner_tasks = []
        set_running([])
        # After every agent's context is closed: what they shared (the Qdrant client, the models) goes last.
        await self.resources.close()
        for producer in (self.live_producer, self.producer):
            if producer is not None:
                await producer.stop()
        self.producer = self.live_producer = None


#: The engine of this worker process, once started (what ``/readyz`` reports on).
_engine: StreamEngine | None = None


@page("/readyz")
async def readyz_page(self: Any, request: Any) -> Any:
    """200 once every agent processes every partition it owns; 503 naming what is starting or restoring."""
    if _engine is None:
        return self.json({"ready": False, "starting": ["engine"]}, status=503)
    status, body = readiness(_engine.runners)
    return self.json(body, status=status)
