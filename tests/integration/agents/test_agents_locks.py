"""The lock agent end to end: real broker, real Redis, a real worker process, checked through Kafka and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest

from agents.locks import redis_key, rejected_key
from schemas import LockState, decode_event, new_event_id
from streams.dlq import parse_dlq_headers
from tests.integration.conftest import ADMIN, OTHER_ADMIN, LockClient, Stack
from tests.support.stack import free_port, start_redis_server

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(lock_stack: Stack, lock_client_factory: Any) -> LockClient:
    result: LockClient = await lock_client_factory(lock_stack.bootstrap)
    return result


async def test_grant_publishes_active_state_and_mirrors_redis(
    client: LockClient, tenant: str, redis_client: Any
) -> None:
    state = await client.ask({"tenant": tenant, "action": "enable", "reason": "fine-tune", "ttl_seconds": 600, **ADMIN})

    assert state.status == "active"
    assert state.holder == "ann"
    assert state.reason == "fine-tune"
    assert state.fencing_token == 1
    assert state.expires_at is not None and state.acquired_at is not None
    assert state.expires_at - state.acquired_at == timedelta(seconds=600)
    record = next(r for r in client.reader.seen if decode_event(r.value, LockState).causation_id == state.causation_id)
    assert record.key == tenant.encode()

    mirrored = await _wait_for_redis(redis_client, tenant)
    assert mirrored["status"] == "active" and mirrored["holder"] == "ann" and mirrored["fencing_token"] == 1
    ttl = await redis_client.ttl(redis_key(tenant))
    assert 590 <= ttl <= 600


async def test_conflicting_enable_is_rejected_naming_the_holder(client: LockClient, tenant: str) -> None:
    await client.ask({"tenant": tenant, "action": "enable", "reason": "a", **ADMIN})
    rejected = await client.ask({"tenant": tenant, "action": "enable", "reason": "b", **OTHER_ADMIN})

    assert rejected.status == "rejected"
    assert "held by 'ann'" in rejected.detail
    assert rejected.holder == "ann"
    record = next(r for r in client.reader.seen if decode_event(r.value, LockState).event_id == rejected.event_id)
    assert record.key == rejected_key(tenant).encode(), "refusals must not overwrite the compacted state"


async def test_release_by_holder_deletes_the_redis_key(client: LockClient, tenant: str, redis_client: Any) -> None:
    await client.ask({"tenant": tenant, "action": "enable", **ADMIN})
    await _wait_for_redis(redis_client, tenant)

    released = await client.ask({"tenant": tenant, "action": "disable", **ADMIN})

    assert released.status == "released"
    assert await _wait_for_redis_absent(redis_client, tenant)
    status = await client.ask({"tenant": tenant, "action": "status", "user": "viewer"})
    assert status.status == "released"


async def test_extend_moves_the_expiry_and_the_redis_ttl(client: LockClient, tenant: str, redis_client: Any) -> None:
    granted = await client.ask({"tenant": tenant, "action": "enable", "ttl_seconds": 100, **ADMIN})
    extended = await client.ask({"tenant": tenant, "action": "extend", "ttl_seconds": 500, **ADMIN})

    assert extended.status == "active"
    assert granted.expires_at is not None and extended.expires_at is not None
    assert extended.expires_at - granted.expires_at == timedelta(seconds=500)
    assert extended.fencing_token == granted.fencing_token, "extending is not a new grant"
    deadline = time.monotonic() + 10
    while (ttl := await redis_client.ttl(redis_key(tenant))) < 590 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert 590 <= ttl <= 600


async def test_ttl_expiry_emits_expired_without_a_command(client: LockClient, tenant: str, redis_client: Any) -> None:
    granted = await client.ask({"tenant": tenant, "action": "enable", "ttl_seconds": 2, **ADMIN})
    await _wait_for_redis(redis_client, tenant)

    records = await client.reader.wait_for(
        lambda r: (e := decode_event(r.value, LockState)).tenant == tenant and e.status == "expired", timeout=15
    )
    expired = decode_event(records[0].value or b"", LockState)

    assert expired.action == "expire"
    assert expired.fencing_token == granted.fencing_token
    assert records[0].key == tenant.encode()
    assert await _wait_for_redis_absent(redis_client, tenant)


async def test_fencing_token_grows_with_every_grant(client: LockClient, tenant: str) -> None:
    tokens = []
    for _ in range(3):
        granted = await client.ask({"tenant": tenant, "action": "enable", **ADMIN})
        tokens.append(granted.fencing_token)
        await client.ask({"tenant": tenant, "action": "disable", **ADMIN})
    assert tokens == [1, 2, 3]


async def test_non_admin_cannot_enable(client: LockClient, tenant: str, redis_client: Any) -> None:
    rejected = await client.ask({"tenant": tenant, "action": "enable", "user": "mallory", "roles": ["viewer"]})

    assert rejected.status == "rejected"
    assert "mallory" in rejected.detail and "admin" in rejected.detail
    assert await redis_client.get(redis_key(tenant)) is None


async def test_duplicate_command_has_no_second_effect(client: LockClient, tenant: str) -> None:
    command = {"event_id": new_event_id(), "tenant": tenant, "action": "enable", **ADMIN}
    await client.send(command)
    await client.send(command)
    # A later command on the same partition proves the duplicate has been processed by now.
    marker = await client.ask({"tenant": tenant, "action": "status", "user": "viewer"})

    answers = [s for s in client.states(tenant) if s.causation_id == command["event_id"]]
    assert len(answers) == 1
    assert marker.status == "active" and marker.fencing_token == 1


async def test_malformed_json_goes_to_the_dlq_with_its_reason(client: LockClient, tenant: str) -> None:
    await client.send_raw(tenant.encode(), b'{"tenant": "' + tenant.encode() + b'", "action": ')

    records = await client.dlq.wait_for(lambda r: r.key == tenant.encode(), timeout=30)
    letter = parse_dlq_headers(records[0].headers)

    assert records[0].value == b'{"tenant": "' + tenant.encode() + b'", "action": '
    assert letter.topic == "soma.training.lock.commands"
    assert letter.error_class == "DecodeError"
    assert "JSON" in letter.error_message
    assert letter.offset >= 0 and letter.partition >= 0 and letter.timestamp > 0
    assert letter.attempts == 1


async def test_schema_invalid_command_goes_to_the_dlq_and_is_answered(client: LockClient, tenant: str) -> None:
    event_id = new_event_id()
    raw = json.dumps({"event_id": event_id, "tenant": tenant, "action": "explode", "user": "ann"}).encode()
    await client.send_raw(tenant.encode(), raw)

    records = await client.dlq.wait_for(lambda r: r.key == tenant.encode(), timeout=30)
    letter = parse_dlq_headers(records[0].headers)
    assert records[0].value == raw
    assert letter.error_class == "EventValidationError"
    assert "action" in letter.error_message and "explode" in letter.error_message

    answers = await client.reader.wait_for(lambda r: r.key == rejected_key(tenant).encode(), timeout=30)
    answer = decode_event(answers[0].value or b"", LockState)
    assert answer.status == "rejected" and answer.command_event_id == event_id
    assert "action" in answer.detail


async def test_agent_keeps_serving_after_poison_messages(client: LockClient, tenant: str) -> None:
    await client.send_raw(None, b"\x00\x00\x00\x03\xe7garbage")
    await client.send_raw(tenant.encode(), b"\xff\xfe not json")
    state = await client.ask({"tenant": tenant, "action": "enable", **ADMIN})
    assert state.status == "active"


async def test_worker_killed_with_sigkill_restarts_with_state_intact_and_nothing_lost(
    stack_factory: Any, lock_client_factory: Any
) -> None:
    stack: Stack = stack_factory()
    worker = stack.worker()
    worker.wait_ready("locks")
    client: LockClient = await lock_client_factory(stack.bootstrap)

    tenants = [f"kill-{i}" for i in range(40)]
    first = await client.send(*({"tenant": t, "action": "enable", "ttl_seconds": 3600, **ADMIN} for t in tenants))
    for command_id in first:
        await client.answer(command_id)

    # A burst the worker is in the middle of when it dies.
    second = await client.send(*(
        {"tenant": t, "action": action, "ttl_seconds": 60, **ADMIN}
        for _ in range(250) for t in tenants for action in ("extend",)
    ))
    await client.reader.wait_for(lambda r: True, count=len(first) + 50, timeout=30)
    worker.kill()

    restarted = stack.worker(app_id=worker.app_id)
    restarted.wait_ready("locks")
    answered = {c for c in (decode_event(r.value, LockState).causation_id for r in client.reader.seen) if c}
    deadline = time.monotonic() + 60
    while not set(second) <= answered and time.monotonic() < deadline:
        for record in await client.reader.poll():
            cause = decode_event(record.value or b"", LockState).causation_id
            if cause:
                answered.add(cause)
    missing = set(second) - answered
    assert not missing, f"{len(missing)} commands never answered after the restart"

    statuses = [await client.ask({"tenant": t, "action": "status", "user": "viewer"}) for t in tenants[:5]]
    for status in statuses:
        assert status.status == "active" and status.holder == "ann"
        assert status.fencing_token == 1, "a restart must not grant again or reset the fencing token"
        assert status.expires_at is not None and status.acquired_at is not None
        extended_by = (status.expires_at - status.acquired_at).total_seconds()
        assert extended_by == 3600 + 250 * 60, "each extend applied exactly once despite replays"


async def test_state_is_restored_from_the_changelog_when_local_data_is_lost(
    stack_factory: Any, lock_client_factory: Any
) -> None:
    stack: Stack = stack_factory()
    worker = stack.worker()
    worker.wait_ready("locks")
    client: LockClient = await lock_client_factory(stack.bootstrap)
    granted = await client.ask({"tenant": "restore-me", "action": "enable", "ttl_seconds": 3600, **ADMIN})
    worker.stop()

    import shutil
    shutil.rmtree(worker.workdir / "data")
    restarted = stack.worker(app_id=worker.app_id)
    restarted.wait_ready("locks")

    status = await client.ask({"tenant": "restore-me", "action": "status", "user": "viewer"})
    assert status.status == "active" and status.fencing_token == granted.fencing_token
    again = await client.ask({"tenant": "restore-me", "action": "enable", **OTHER_ADMIN})
    assert again.status == "rejected"


async def test_redis_down_keeps_serving_and_resyncs_when_it_returns(
    stack_factory: Any, lock_client_factory: Any, tmp_path: Any
) -> None:
    import redis.asyncio as aioredis

    port = free_port()
    redis_process = start_redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    stack: Stack = stack_factory()
    worker = stack.worker(REDIS_URL=url)
    worker.wait_ready("locks")
    client: LockClient = await lock_client_factory(stack.bootstrap)
    redis_client = aioredis.Redis.from_url(url)
    try:
        await client.ask({"tenant": "before", "action": "enable", **ADMIN})
        await _wait_for_redis(redis_client, "before")

        redis_process.terminate()
        redis_process.wait(timeout=10)
        during = await client.ask({"tenant": "during", "action": "enable", **ADMIN}, timeout=20)
        released = await client.ask({"tenant": "before", "action": "disable", **ADMIN}, timeout=20)
        assert during.status == "active" and released.status == "released"

        redis_process = start_redis_server(port, tmp_path)  # empty: everything must be re-written
        mirrored = await _wait_for_redis(redis_client, "during", timeout=20)
        assert mirrored["holder"] == "ann" and mirrored["status"] == "active"
        assert await redis_client.get(redis_key("before")) is None
    finally:
        await redis_client.aclose()
        redis_process.terminate()
        redis_process.wait(timeout=10)


async def _wait_for_redis(client: Any, tenant: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = await client.get(redis_key(tenant))
        except Exception:
            raw = None
        if raw is not None:
            result: dict[str, Any] = json.loads(raw)
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"{redis_key(tenant)} never appeared in Redis")


async def _wait_for_redis_absent(client: Any, tenant: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await client.get(redis_key(tenant)) is None:
            return True
        await asyncio.sleep(0.1)
    return False

