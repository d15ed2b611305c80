"""The engine contains failures to the record that causes them, on the real embedded broker.

A tiny agent runs in this process on a real :class:`AgentRunner` (real consumer group, changelog,
DLQ); only its business logic is the test's: it crashes on commands whose ``reason`` says so, the way
a bug in an agent would. Every other record must be answered exactly once, the culprit must end in the
DLQ with the crash named, and the agent must go on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from schemas import LockCommand, LockState, caused_by, decode_event, encode_event, new_event_id
from streams.catalog import TopicSpec, ensure_topics
from streams.dlq import parse_dlq_headers
from streams.engine import AgentContext, AgentSpec, Batch, BatchStream
from streams.engine.dedupe import SEEN_TABLE
from streams.engine.runner import REROUTED_FROM
from streams.kafka import admin_factory
from streams.settings import Settings
from tests.support.engine import AgentHarness
from tests.support.stack import TopicReader, json_bytes, start_broker

ADMIN = {"user": "root", "roles": ["admin"]}


def _command(tenant: str, reason: str = "ok", **fields: Any) -> LockCommand:
    return LockCommand.model_validate({"event_id": new_event_id(), "tenant": tenant, "action": "status",
                                       "reason": reason, **ADMIN, **fields})


async def _isolation_agent(stream: BatchStream[LockCommand], context: AgentContext) -> None:
    """Answers every command once; ``reason`` steers the failures (crash, fail, huge)."""
    async for batch in stream:
        for record in batch:
            command = record.event
            if command.reason == "crash":
                raise RuntimeError(f"agent bug on {command.event_id}")
            if command.reason == "huge-unguarded":
                batch.outbox.send(_OUT, command.tenant.encode(), b"x" * (2 * 1024 * 1024))
            with batch.guard(record):
                seen = batch.table(SEEN_TABLE)
                if seen.get(command.event_id, record.partition) is not None:
                    continue
                seen.set(command.event_id, 1, record.partition)
                _answer(batch, command)
                if command.reason == "fail":
                    raise ValueError("failed inside the guard after its writes")
                if command.reason == "huge":
                    batch.outbox.send(_OUT, command.tenant.encode(), b"x" * (2 * 1024 * 1024))


_OUT = ""


def _answer(batch: Batch[LockCommand], command: LockCommand) -> None:
    event = LockState(**caused_by(command), status="released", detail=command.reason)
    batch.emit(_OUT, command.tenant, event)


class Harness(AgentHarness):
    """The isolation agent's runner, with readers of its output and of its DLQ."""

    def __init__(self, bootstrap: str, spec: AgentSpec, settings: Settings, out: TopicReader,
                 dlq: TopicReader) -> None:
        super().__init__(bootstrap, spec, settings)
        self.out = out
        self.dlq = dlq

    async def send_commands(self, *commands: LockCommand,
                            key: Callable[[LockCommand], bytes | None] | None = None) -> None:
        await self.send(commands, key or (lambda c: c.tenant.encode()))

    def answers(self, command_id: str) -> list[Any]:
        return [r for r in self.out.seen if decode_event(r.value or b"", LockState).causation_id == command_id]

    async def wait_answered(self, ids: list[str], timeout: float = 60.0) -> None:
        wanted = set(ids)
        await self.out.wait_for(lambda r: decode_event(r.value or b"", LockState).causation_id in wanted,
                                timeout=timeout, count=len(wanted))


@pytest.fixture
async def harness_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    broker = start_broker(tmp_path)
    made: list[Harness] = []
    readers: list[TopicReader] = []

    async def make(**env: str) -> Harness:
        global _OUT
        name = f"test.engine.{uuid.uuid4().hex[:8]}"
        _OUT = f"{name}.out"
        topic = TopicSpec(name, LockCommand, "tenant", "engine isolation test input", is_input=True)
        settings = Settings.from_env({
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "SOMA_DATA_DIR": str(tmp_path / name),
            "SOMA_APP_ID": name, "SOMA_PARTITIONS": "2", **env,
        })
        admin = admin_factory(settings)
        await admin.start()
        try:
            await ensure_topics(admin, [NewTopic(t, 2, 1) for t in (name, topic.dlq, _OUT)])
        finally:
            await admin.close()
        out = await TopicReader(broker.bootstrap_servers, _OUT).start()
        dlq = await TopicReader(broker.bootstrap_servers, topic.dlq).start()
        readers.extend([out, dlq])
        spec = AgentSpec("isolation", topic, _isolation_agent, tables=(SEEN_TABLE,))
        harness = Harness(broker.bootstrap_servers, spec, settings, out, dlq)
        await harness.start()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.stop()
    for reader in readers:
        await reader.stop()
    broker.stop()


async def test_a_record_that_crashes_the_agent_is_quarantined_and_the_rest_answered_once(
    harness_factory: Callable[..., Any],
) -> None:
    harness = await harness_factory()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    good = [_command(tenant) for _ in range(30)]
    poison = _command(tenant, reason="crash")
    commands = [*good[:11], poison, *good[11:]]
    await harness.send_commands(*commands)

    await harness.wait_answered([c.event_id for c in good])
    letters = await harness.dlq.wait_for(lambda r: True, timeout=60)
    letter = parse_dlq_headers(letters[0].headers)
    assert letter.error_class == "RuntimeError"
    assert "quarantined after 3 crashes" in letter.error_message
    assert letters[0].value == encode_event(poison)
    for command in good:
        assert len(harness.answers(command.event_id)) == 1, command.event_id
    assert harness.runner.quarantined == 1

    after = _command(tenant)
    await harness.send_commands(after)
    await harness.wait_answered([after.event_id])
    assert len(harness.dlq.seen) == 1


async def test_an_output_that_can_never_be_sent_fails_only_its_record(
    harness_factory: Callable[..., Any],
) -> None:
    harness = await harness_factory()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    good = [_command(tenant) for _ in range(8)]
    guarded, unguarded = _command(tenant, reason="huge"), _command(tenant, reason="huge-unguarded")
    await harness.send_commands(*good[:3], guarded, *good[3:6], unguarded, *good[6:])

    await harness.wait_answered([c.event_id for c in good])
    letters = await harness.dlq.wait_for(lambda r: True, timeout=60, count=2)
    by_offset = {parse_dlq_headers(r.headers).offset: parse_dlq_headers(r.headers) for r in letters}
    assert {letter.error_class for letter in by_offset.values()} == {"OutputTooLarge"}
    messages = sorted(letter.error_message for letter in by_offset.values())
    # Inside a guard: dead-lettered on the spot. Outside one it crashes the agent, and an output that
    # can never be produced is quarantined at its first crash instead of after three.
    assert messages[0].startswith("a message for ")
    assert messages[1].startswith("quarantined after 1 crash of agent isolation")
    assert harness.answers(guarded.event_id) == []  # its answer was emitted before the failure: undone
    for command in good:
        assert len(harness.answers(command.event_id)) == 1


async def test_a_failure_inside_the_guard_leaves_no_write_and_no_output_so_a_redrive_is_answered(
    harness_factory: Callable[..., Any],
) -> None:
    harness = await harness_factory()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    failing = _command(tenant, reason="fail")
    await harness.send_commands(failing)
    letters = await harness.dlq.wait_for(lambda r: True, timeout=60)
    assert parse_dlq_headers(letters[0].headers).error_class == "ValueError"
    assert harness.answers(failing.event_id) == []  # the output emitted before the failure was undone
    assert harness.runner.restarts == 0

    # Re-driven as it is (same event id): its 'seen' write was undone too, so it is handled again.
    redriven = failing.model_copy(update={"reason": "ok"})
    await harness.send_commands(redriven)
    await harness.wait_answered([failing.event_id])


async def test_wrongly_keyed_records_are_rerouted_and_processed_once_under_the_right_key(
    harness_factory: Callable[..., Any],
) -> None:
    harness = await harness_factory()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    null_keyed, wrong_keyed, right = _command(tenant), _command(tenant), _command(tenant)
    await harness.send_commands(null_keyed, key=lambda c: None)
    await harness.send_commands(wrong_keyed, key=lambda c: b"someone-else")
    await harness.send_commands(right)
    await harness.wait_answered([null_keyed.event_id, wrong_keyed.event_id, right.event_id])
    await asyncio.sleep(1.0)  # time for a second answer, were there one
    await harness.out.poll()
    for command in (null_keyed, wrong_keyed, right):
        (answer,) = harness.answers(command.event_id)
        assert answer.key == tenant.encode()
    assert harness.runner.rerouted == 2
    assert harness.dlq.seen == []


async def test_a_json_event_without_an_id_gets_one_from_its_position_so_replays_are_duplicates(
    harness_factory: Callable[..., Any],
) -> None:
    harness = await harness_factory()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    payload = {"tenant": tenant, "action": "status", "reason": "ok", **ADMIN}
    producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(harness.spec.topic.name, json_bytes(payload), key=None, partition=1)
    finally:
        await producer.stop()
    (answer,) = await harness.out.wait_for(lambda r: True, timeout=60)
    state = decode_event(answer.value or b"", LockState)
    # The id comes from where the record was first written (partition 1, offset 0): a replay of that
    # record gets the same id and is dropped as a duplicate wherever it is processed.
    position_ids = uuid.UUID("5f0c6a8e-2b1d-4c77-9d0e-7a1b3c5d9e21")
    assert state.causation_id == str(uuid.uuid5(position_ids, f"{harness.spec.topic.name}/1/0"))
    inputs = await TopicReader(harness.bootstrap, harness.spec.topic.name).start()
    try:
        rerouted = await inputs.wait_for(lambda r: r.key == tenant.encode(), timeout=30)
    finally:
        await inputs.stop()
    assert dict(rerouted[0].headers)[REROUTED_FROM] == f"{harness.spec.topic.name}[1]@0".encode()
