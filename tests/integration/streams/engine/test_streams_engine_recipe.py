"""The README's "Adding an agent" recipe, done once: a context, an ``@agent`` function, run by the engine.

The agent is registered with the real decorator, found through the real registry and run on a real
:class:`AgentRunner` against the embedded broker, exactly as the worker's engine runs every agent.
A second agent checks what the recipe promises about deferred work: finished without any tick and
without new records, its offset is still committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from schemas import LockCommand, LockState, caused_by, decode_event, new_event_id
from streams.catalog import TopicSpec, ensure_topics
from streams.dlq import parse_dlq_headers
from streams.engine import AgentContext, BatchStream, Resources, agent, registry
from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.kafka import admin_factory
from streams.settings import Settings
from streams.tools.cluster import Cluster
from tests.support.engine import AgentHarness
from tests.support.stack import TopicReader, produce_raw, start_broker


def _command(tenant: str) -> LockCommand:
    return LockCommand(event_id=new_event_id(), tenant=tenant, action="status", user="ann", roles=[])


@pytest.fixture
def scoped_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents registered by a test stay out of the registry other tests (and workers) see."""
    monkeypatch.setattr(registry, "_AGENTS", dict(registry._AGENTS))


@pytest.fixture
async def engine_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    broker = start_broker(tmp_path)
    started: list[Any] = []

    async def make(name: str, topics: list[str]) -> tuple[Settings, Callable[[str], Any]]:
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                                      "SOMA_DATA_DIR": str(tmp_path / name), "SOMA_APP_ID": name,
                                      "SOMA_PARTITIONS": "2"})
        admin = admin_factory(settings)
        await admin.start()
        try:
            await ensure_topics(admin, [NewTopic(topic, 2, 1) for topic in topics])
        finally:
            await admin.close()

        async def reader(topic: str) -> TopicReader:
            found = await TopicReader(broker.bootstrap_servers, topic).start()
            started.append(found)
            return found

        return settings, reader

    yield make
    for thing in started:
        await thing.stop()
    broker.stop()


async def test_an_agent_added_by_the_recipe_runs_on_the_engine(
    scoped_registry: None, engine_factory: Callable[..., Any],
) -> None:
    name = f"recipe-{uuid.uuid4().hex[:8]}"
    greetings = TopicSpec(f"{name}.commands", LockCommand, "tenant", "recipe test input", is_input=True)
    answers_topic = f"{name}.answers"
    contexts: list[GreeterContext] = []

    # -- the recipe: a context with what the agent needs, and the agent itself -----------------------
    class GreeterContext(AgentContext):
        def __init__(self, settings: Settings, resources: Resources) -> None:
            super().__init__(settings, resources)
            self.seen = SeenIds(settings.dedupe_ttl_seconds * 1000)
            self.closed = False
            contexts.append(self)

        async def close(self) -> None:
            self.closed = True

    @agent(name, topic=greetings, tables=(SEEN_TABLE,), context=GreeterContext)
    async def greeter(stream: BatchStream[LockCommand], context: GreeterContext) -> None:
        async for batch in stream:
            for record in batch:
                with batch.guard(record):
                    command = record.event
                    if context.seen.contains(batch, command.event_id, record.partition):
                        continue
                    context.seen.add(batch, command.event_id, record.partition)
                    batch.emit(answers_topic, command.tenant,
                               LockState(**caused_by(command), status="released", detail=f"hello {command.user}"))
    # -------------------------------------------------------------------------------------------------

    spec = next(spec for spec in registry.registered_agents() if spec.name == name)
    settings, reader = await engine_factory(name, [greetings.name, greetings.dlq, answers_topic])
    answers, dlq = await reader(answers_topic), await reader(greetings.dlq)
    harness = AgentHarness(settings.bootstrap_servers, spec, settings)
    await harness.start()
    try:
        commands = [_command("acme") for _ in range(3)]
        await harness.send([*commands, commands[0]], key=lambda c: c.tenant.encode())
        await produce_raw(settings.bootstrap_servers, greetings.name, [(b"acme", b"not an event")])

        found = await answers.wait_for(lambda r: True, timeout=60, count=3)
        assert sorted(decode_event(r.value or b"", LockState).causation_id or "" for r in found) == \
            sorted(c.event_id for c in commands)
        letters = await dlq.wait_for(lambda r: True, timeout=60)
        assert parse_dlq_headers(letters[0].headers).error_class == "DecodeError"
        await asyncio.sleep(1.0)  # the duplicate, sent before the bad bytes, is long read: no 4th answer
        assert len(answers.seen) == 3
        assert len(contexts) == 1 and harness.runner is not None and harness.runner.context is contexts[0]
    finally:
        await harness.stop()
    assert contexts[0].closed, "the engine closes the context when the agent's run ends"
    assert harness.runner.context is None


async def test_deferred_work_finished_in_an_idle_stream_is_committed_without_a_tick(
    scoped_registry: None, engine_factory: Callable[..., Any],
) -> None:
    name = f"deferred-{uuid.uuid4().hex[:8]}"
    topic = TopicSpec(f"{name}.commands", LockCommand, "tenant", "deferred test input", is_input=True)
    finished: list[str] = []

    @agent(name, topic=topic)  # no tick_seconds: nothing but the finished work can end the fetch wait
    async def slow(stream: BatchStream[LockCommand], context: AgentContext) -> None:
        async def work(event_id: str, done: Callable[[], None]) -> None:
            await asyncio.sleep(1.5)
            finished.append(event_id)
            done()

        tasks = set()
        async for batch in stream:
            for record in batch:
                task = asyncio.create_task(work(record.event.event_id, batch.defer(record)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    spec = next(spec for spec in registry.registered_agents() if spec.name == name)
    settings, _ = await engine_factory(name, [topic.name, topic.dlq])
    harness = AgentHarness(settings.bootstrap_servers, spec, settings)
    await harness.start()
    tps = [TopicPartition(topic.name, partition) for partition in range(settings.partitions)]
    assert harness.runner is not None
    group = harness.runner.group_id
    try:
        async with Cluster(settings) as cluster:
            command = _command("acme")
            await harness.send([command], key=lambda c: c.tenant.encode())
            committed: dict[TopicPartition, int | None] = {}
            for _ in range(200):  # up to 20 s
                committed = await cluster.committed(group, tps)
                if any((offset or 0) >= 1 for offset in committed.values()):
                    break
                await asyncio.sleep(0.1)
        assert finished == [command.event_id]
        assert any((offset or 0) >= 1 for offset in committed.values()), \
            f"the finished record's offset was never committed: {committed}"
    finally:
        await harness.stop()
