"""``soma offsets`` and ``soma topics`` against real lock workers and their consumer groups."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.catalog import LOCK_COMMANDS
from tests.integration.conftest import ADMIN, LockClient, Stack
from tests.support.cli import soma
from tests.support.stack import TopicReader

pytestmark = pytest.mark.integration


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_reset_is_refused_while_the_group_has_active_members(
    lock_stack: Stack, lock_client_factory: Any, tenant: str, tmp_path: Path
) -> None:
    client: LockClient = await lock_client_factory(lock_stack.bootstrap)
    await client.ask({"tenant": tenant, "action": "enable", **ADMIN})
    group = f"{lock_stack.workers[0].app_id}.locks"
    before = await soma("offsets", "show", "--group", group, "--json", bootstrap=lock_stack.bootstrap,
                        data_dir=tmp_path)
    assert before.code == 0, before
    assert before.json()["members"], "the running worker is a member"

    refused = await soma("offsets", "reset", "--group", group, "--to-earliest", "--execute",
                         bootstrap=lock_stack.bootstrap, data_dir=tmp_path)

    assert refused.code == 1, refused
    assert "refused" in refused.stderr and "active member" in refused.stderr
    after = await soma("offsets", "show", "--group", group, "--json", bootstrap=lock_stack.bootstrap,
                       data_dir=tmp_path)
    committed = lambda result: {(p["topic"], p["partition"]): p["committed"] for p in result.json()["partitions"]}  # noqa: E731
    assert committed(after) == committed(before), "a refused reset changes nothing"
    state = await client.ask({"tenant": tenant, "action": "status", "user": "viewer"}, timeout=60)
    assert state.status == "active", "the group keeps working after the refusal"


async def test_reset_of_a_stopped_group_to_a_time_commits_the_planned_offsets(
    lock_stack: Stack, lock_client_factory: Any, tmp_path: Path
) -> None:
    worker = lock_stack.worker()
    worker.wait_ready("locks")
    group = f"{worker.app_id}.locks"
    client: LockClient = await lock_client_factory(lock_stack.bootstrap)
    first = await client.send(*({"tenant": f"rewind-{i}", "action": "status", "user": "v"} for i in range(20)))
    await asyncio.sleep(1.0)
    cut = int(time.time() * 1000)
    await asyncio.sleep(1.0)
    second = await client.send(*({"tenant": f"rewind-{i}", "action": "status", "user": "w"} for i in range(20)))
    for command_id in first + second:
        await client.answer(command_id)
    worker.stop()

    reader = await TopicReader(lock_stack.bootstrap, LOCK_COMMANDS.name).start()
    try:
        for _ in range(10):
            await reader.poll(timeout_ms=200)
    finally:
        await reader.stop()
    ends = {p: 1 + max((r.offset for r in reader.seen if r.partition == p), default=-1) for p in range(4)}
    expected = {p: min((r.offset for r in reader.seen if r.partition == p and r.timestamp >= cut), default=ends[p])
                for p in range(4)}
    assert sum(ends[p] - expected[p] for p in range(4)) == len(second)

    plan = await soma("offsets", "reset", "--group", group, "--to-time", _iso(cut), "--json",
                      bootstrap=lock_stack.bootstrap, data_dir=tmp_path)
    assert plan.code == 0, plan
    assert plan.json()["dry_run"] is True
    assert {p["partition"]: p["after"] for p in plan.json()["partitions"]} == expected
    assert {p["partition"]: p["before"] for p in plan.json()["partitions"]} == ends, "a dry run changes nothing"

    applied = await soma("offsets", "reset", "--group", group, "--to-time", _iso(cut), "--execute", "--json",
                         bootstrap=lock_stack.bootstrap, data_dir=tmp_path)
    assert applied.code == 0, applied
    assert applied.json()["applied"] is True

    shown = await soma("offsets", "show", "--group", group, "--json", bootstrap=lock_stack.bootstrap,
                       data_dir=tmp_path)
    assert {p["partition"]: p["committed"] for p in shown.json()["partitions"]} == expected
    assert shown.json()["members"] == [], "the reset left the group empty"

    topics = await soma("topics", "--group", group, "--json", bootstrap=lock_stack.bootstrap, data_dir=tmp_path)
    assert topics.code == 0, topics
    (commands,) = [t for t in topics.json()["topics"] if t["topic"] == LOCK_COMMANDS.name]
    (lag,) = [g for g in commands["groups"] if g["group"] == group]
    assert lag["lag"] == len(second) and commands["records"] == sum(ends.values())
