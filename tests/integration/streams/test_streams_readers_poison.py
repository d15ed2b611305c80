"""Readers of result topics against a real broker, with garbage written by a plain Kafka client.

The topic view (what the conversation agent reads the training lock from) must still see the state
that follows the garbage; ``soma tail`` and ``soma dlq show`` must print the bad records as skips and
go on to the valid ones. (The bridge's reader is covered in test_streams_bridge.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from connectors.broker import EmbeddedBroker
from schemas import LockState, decode_event, encode_event, to_json_dict
from streams.catalog import LOCK_COMMANDS, LOCK_STATE, all_topics, ensure_topics
from streams.metrics import RECORDS_SKIPPED
from streams.settings import Settings
from streams.views import TopicView
from tests.support.cli import soma
from tests.support.poison import poison_values
from tests.support.stack import produce_raw, start_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    started = start_broker(tmp_path_factory.mktemp("poison-broker"))

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=started.bootstrap_servers)
        await admin.start()
        try:
            await ensure_topics(admin, all_topics(2, 1))
        finally:
            await admin.close()

    asyncio.run(create())
    yield started
    started.stop()


def _state(tenant: str, status: str, token: int) -> LockState:
    return LockState(tenant=tenant, status=status, holder="ann", fencing_token=token)  # type: ignore[arg-type]


def _poison(tenant: str) -> list[tuple[bytes, bytes]]:
    valid = to_json_dict(_state(tenant, "active", 1))
    return [(tenant.encode(), value) for _, value in poison_values(valid)]


def _decodes(value: bytes) -> bool:
    try:
        decode_event(value, LockState)
    except Exception:
        return False
    return True


async def test_the_lock_view_sees_the_state_after_garbage(broker: EmbeddedBroker) -> None:
    tenant = f"view-{time.monotonic_ns()}"
    poison = [(key, value) for key, value in _poison(tenant) if not _decodes(value)]
    skipped_before = RECORDS_SKIPPED.labels("view", LOCK_STATE.name)._value.get()
    await produce_raw(broker.bootstrap_servers, LOCK_STATE.name, [(tenant.encode(), encode_event(
        _state(tenant, "active", 1)))])
    await produce_raw(broker.bootstrap_servers, LOCK_STATE.name, poison)
    await produce_raw(broker.bootstrap_servers, LOCK_STATE.name, [(tenant.encode(), encode_event(
        _state(tenant, "released", 1)))])
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers})
    view: TopicView[LockState] = TopicView(settings, LOCK_STATE)
    view.start()
    try:
        async with asyncio.timeout(30):
            while (seen := view.get(tenant)) is None or seen.status != "released":
                await asyncio.sleep(0.1)
        # More garbage and a new state while the view follows the topic live.
        await produce_raw(broker.bootstrap_servers, LOCK_STATE.name, poison)
        await produce_raw(broker.bootstrap_servers, LOCK_STATE.name, [(tenant.encode(), encode_event(
            _state(tenant, "active", 2)))])
        async with asyncio.timeout(30):
            while (seen := view.get(tenant)) is None or seen.fencing_token != 2:
                await asyncio.sleep(0.1)
    finally:
        await view.stop()
    assert RECORDS_SKIPPED.labels("view", LOCK_STATE.name)._value.get() - skipped_before == 2 * len(poison)
    assert view.skips.total == 2 * len(poison)


async def test_soma_tail_prints_a_skip_and_goes_on(broker: EmbeddedBroker, tmp_path: Path) -> None:
    tenant = f"tail-{time.monotonic_ns()}"
    poison = _poison(tenant)
    first, last = _state(tenant, "active", 1), _state(tenant, "released", 1)
    await produce_raw(broker.bootstrap_servers, LOCK_STATE.name,
                      [(tenant.encode(), encode_event(first)), *poison, (tenant.encode(), encode_event(last))])
    result = await soma("tail", LOCK_STATE.name, "--key", tenant, bootstrap=broker.bootstrap_servers,
                        data_dir=tmp_path)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result
    lines = result.json_lines()
    assert len(lines) == len(poison) + 2, result
    assert lines[0]["value"]["event_id"] == first.event_id
    assert lines[-1]["value"]["event_id"] == last.event_id, "tail stopped at a poison record"
    undecodable = [line for line in lines if "decode_error" in line]
    assert len(undecodable) == sum(not _decodes(value) for _, value in poison)
    reasons = {line["decode_error"] for line in undecodable}
    assert any("occurred_at: timestamp out of range" in reason for reason in reasons), reasons


async def test_soma_dlq_show_lists_garbage_entries(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Anyone can write to a DLQ: values that are not events and headers that are not numbers."""
    tenant = f"dlq-{time.monotonic_ns()}"
    headers = [("dlq.original.topic", LOCK_COMMANDS.name.encode()), ("dlq.original.partition", b"zero"),
               ("dlq.original.offset", b"\xff"), ("dlq.error.class", b"Garbage"), ("dlq.attempts", b"many")]
    poison = _poison(tenant)
    await produce_raw(broker.bootstrap_servers, LOCK_COMMANDS.dlq, poison, headers=headers)
    result = await soma("dlq", "show", LOCK_COMMANDS.name, "--error-class", "Garbage", "--json",
                        bootstrap=broker.bootstrap_servers, data_dir=tmp_path)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result
    entries = result.json_lines()
    assert len(entries) == len(poison)
    assert all(entry["dlq"]["partition"] == -1 and entry["dlq"]["attempts"] == 1 for entry in entries)
