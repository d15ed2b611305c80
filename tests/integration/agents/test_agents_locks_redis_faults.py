"""The lock agent while Redis answers errors or loses its data: a real redis-server made to misbehave.

Error replies are produced the way they happen in production: ``OOM`` by a ``maxmemory`` below what is
used with ``noeviction``, ``READONLY`` by turning the server into a replica of a master that does not
answer, ``MISCONF`` by a failed snapshot (the server's directory is ``/proc``, where no file can be
created, so ``BGSAVE`` fails and writes are refused). While Redis refuses writes every command must be
answered on the state topic without the agent restarting; once Redis is healed it must agree with the
lock table for every tenant. ``WRONGTYPE`` cannot happen here: the mirror only runs SET, DEL and
EXISTS, which accept a key of any type (the connector maps any error reply; see the unit tests).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from agents.locks import redis_key
from schemas import LockState, decode_event
from tests.integration.conftest import ADMIN, OTHER_ADMIN, LockClient, Stack
from tests.support.stack import WorkerProcess, free_port, start_redis_server

pytestmark = pytest.mark.integration


class PrivateRedis:
    """A redis-server of the test's own, on a fixed port so it can be restarted empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = start_redis_server(self.port, workdir)
        self.client = aioredis.Redis.from_url(self.url)

    def restart_empty(self) -> None:
        """Stop and start again: no persistence, so every key is gone."""
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = start_redis_server(self.port, self.workdir)

    async def close(self) -> None:
        await self.client.aclose()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
async def misbehaving_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(Path("/proc"))  # see the module docstring: snapshots there fail
    yield server
    await server.close()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    await server.close()


def _lock_worker(stack: Stack, redis: PrivateRedis) -> tuple[WorkerProcess, int]:
    web_port = free_port()
    worker = stack.worker(REDIS_URL=redis.url, SOMA_WEB_PORT=str(web_port))
    worker.wait_ready("locks")
    return worker, web_port


async def _restarts(web_port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{web_port}/metrics") as response:
        text = await response.text()
    found = re.search(r'^soma_agent_restarts_total\{agent="locks"\} (\S+)$', text, flags=re.M)
    assert found, "the worker exports no restart counter for the lock agent"
    return float(found.group(1))


async def _assert_never_restarted(worker: WorkerProcess, web_port: int) -> None:
    assert worker.process is not None and worker.process.poll() is None, worker.tail_log()
    assert "agent locks crashed" not in (worker.log_path.read_text(errors="replace") if worker.log_path else ""), \
        worker.tail_log()
    assert await _restarts(web_port) == 0


def _table(client: LockClient, tenants: list[str]) -> dict[str, LockState]:
    """The lock table as the state topic shows it: the last state published under each tenant's key."""
    latest: dict[str, LockState] = {}
    for record in client.reader.seen:
        key = (record.key or b"").decode()
        if key in tenants:
            latest[key] = decode_event(record.value or b"", LockState)
    return latest


async def _wait_until_redis_agrees(redis: PrivateRedis, client: LockClient, tenants: list[str],
                                   timeout: float) -> None:
    """Every active lock mirrored (same holder and fencing token, a TTL), every other tenant absent."""
    deadline = time.monotonic() + timeout
    while True:
        await client.reader.poll(timeout_ms=50)
        table = _table(client, tenants)
        disagreements = []
        for tenant in tenants:
            state = table.get(tenant)
            try:
                raw = await redis.client.get(redis_key(tenant))
                ttl = await redis.client.ttl(redis_key(tenant))
            except Exception as exc:
                disagreements.append(f"{tenant}: redis answers {exc}")
                continue
            mirrored = json.loads(raw) if raw is not None else None
            if state is not None and state.status == "active":
                if mirrored is None or mirrored["fencing_token"] != state.fencing_token \
                        or mirrored["holder"] != state.holder or ttl <= 0:
                    disagreements.append(f"{tenant}: table {state.status}/{state.fencing_token}, redis {mirrored}")
            elif mirrored is not None:
                disagreements.append(f"{tenant}: table {state.status if state else None}, redis {mirrored}")
        if not disagreements:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"redis disagrees with the lock table after {timeout} s: {disagreements}")
        await asyncio.sleep(0.2)


async def _serve_through(client: LockClient, tenants: list[str], round_: int) -> None:
    """A round of commands that changes every tenant; each must be answered from the table."""
    for index, tenant in enumerate(tenants):
        if (index + round_) % 2 == 0:
            answer = await client.ask({"tenant": tenant, "action": "enable", "reason": f"round {round_}", **ADMIN},
                                      timeout=30)
            assert answer.status in ("active", "rejected"), answer
        else:
            answer = await client.ask({"tenant": tenant, "action": "disable", **ADMIN}, timeout=30)
            assert answer.status in ("released", "rejected"), answer
    status = await client.ask({"tenant": tenants[0], "action": "status", **OTHER_ADMIN}, timeout=30)
    assert status.tenant == tenants[0]


async def test_error_replies_are_treated_as_redis_down(stack_factory: Any, lock_client_factory: Any,
                                                       misbehaving_redis: PrivateRedis) -> None:
    redis = misbehaving_redis
    stack: Stack = stack_factory()
    worker, web_port = _lock_worker(stack, redis)
    client: LockClient = await lock_client_factory(stack.bootstrap)
    tenants = [f"fault-{i}" for i in range(6)]
    await _serve_through(client, tenants, 0)
    await _wait_until_redis_agrees(redis, client, tenants, timeout=15)

    async def oom() -> None:
        await redis.client.config_set("maxmemory-policy", "noeviction")
        await redis.client.config_set("maxmemory", "1")

    async def heal_oom() -> None:
        await redis.client.config_set("maxmemory", "0")

    async def readonly() -> None:
        await redis.client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    async def heal_readonly() -> None:
        await redis.client.execute_command("REPLICAOF", "NO", "ONE")

    async def misconf() -> None:
        await redis.client.config_set("save", "3600 1")
        await redis.client.bgsave()
        async with asyncio.timeout(10):
            while True:
                info = await redis.client.info("persistence")
                if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == "err":
                    break
                await asyncio.sleep(0.05)

    async def heal_misconf() -> None:
        await redis.client.config_set("save", "")

    faults = [(OutOfMemoryError, None, oom, heal_oom), (ReadOnlyError, None, readonly, heal_readonly),
              (ResponseError, "MISCONF", misconf, heal_misconf)]
    for round_, (reply, pattern, break_redis, heal) in enumerate(faults, start=1):
        await break_redis()
        with pytest.raises(reply, match=pattern):  # Redis now refuses writes with that error reply
            await redis.client.set("probe", "1")
        await _serve_through(client, tenants, round_)
        await _assert_never_restarted(worker, web_port)
        await heal()
        await _wait_until_redis_agrees(redis, client, tenants, timeout=15)
    await _assert_never_restarted(worker, web_port)
    assert "answered an error" in worker.tail_log(400), "the log says why the mirror is out of sync"


async def test_lost_redis_data_is_rewritten_without_any_command(stack_factory: Any, lock_client_factory: Any,
                                                                private_redis: PrivateRedis) -> None:
    redis = private_redis
    stack: Stack = stack_factory()
    worker, web_port = _lock_worker(stack, redis)
    client: LockClient = await lock_client_factory(stack.bootstrap)
    tenants = [f"lost-{i}" for i in range(8)]  # spread over the partitions
    for tenant in tenants:
        await client.ask({"tenant": tenant, "action": "enable", "reason": "kept", **ADMIN})
    await _wait_until_redis_agrees(redis, client, tenants, timeout=15)

    await redis.client.flushall()
    assert await redis.client.get(redis_key(tenants[0])) is None
    # No command from here on: the mirror itself must notice, within the bound the README promises.
    await _wait_until_redis_agrees(redis, client, tenants, timeout=10)

    redis.restart_empty()
    await _wait_until_redis_agrees(redis, client, tenants, timeout=10)
    await _assert_never_restarted(worker, web_port)
