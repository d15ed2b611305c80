"""``soma dlq list|show|redrive`` with the real lock agent: events parked in the DLQ come back healed.

The cause is real: the lock worker runs with ``SOMA_MAX_EVENT_BYTES`` below the size of some lock
commands (commands with a long ``reason``), so the engine dead-letters them as ``EventTooLarge``. The
fix is the operator's: restart the worker with the default limit. Re-driving then gets every parked
command answered by the real agent, exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas import LockState, decode_event
from streams.catalog import LOCK_COMMANDS
from tests.integration.conftest import ADMIN, LockClient
from tests.support.cli import soma
from tests.support.stack import TopicReader

pytestmark = pytest.mark.integration

LONG_REASON = "fine-tune run with config " + "x" * 1000


async def test_dlq_redrive_heals_events_once_the_cause_is_fixed(
    stack_factory: Any, lock_client_factory: Any, tmp_path: Path, redis_client: Any
) -> None:
    stack = stack_factory()
    worker = stack.worker(SOMA_MAX_EVENT_BYTES="700")
    worker.wait_ready("locks")
    client: LockClient = await lock_client_factory(stack.bootstrap)
    tenants = [f"heal-{i}" for i in range(5)]
    data_dir = tmp_path / "ops"
    record_file = tmp_path / "redrive.jsonl"

    big = await client.send(*({"tenant": t, "action": "enable", "reason": LONG_REASON, **ADMIN} for t in tenants))
    await client.send_raw(b"broken", b'{"tenant": "broken", "action": ')
    marker = await client.ask({"tenant": "heal-marker", "action": "enable", "reason": "short", **ADMIN})
    assert marker.status == "active", "small commands still go through"
    await client.dlq.wait_for(lambda r: True, count=6, timeout=30)

    listed = await soma("dlq", "list", "--json", bootstrap=stack.bootstrap, data_dir=data_dir)
    assert listed.code == 0, listed
    (lock_dlq,) = [d for d in listed.json()["dlqs"] if d["topic"] == LOCK_COMMANDS.dlq]
    classes = {c["error_class"]: c for c in lock_dlq["classes"]}
    assert lock_dlq["entries"] == 6
    assert classes["EventTooLarge"]["count"] == 5 and classes["DecodeError"]["count"] == 1
    assert "SOMA_MAX_EVENT_BYTES (700)" in classes["EventTooLarge"]["example"]
    assert classes["EventTooLarge"]["agents"] == ["locks"]

    shown = await soma("dlq", "show", LOCK_COMMANDS.name, "--error-class", "EventTooLarge", "--json",
                       bootstrap=stack.bootstrap, data_dir=data_dir)
    assert shown.code == 0, shown
    entries = shown.json_lines()
    assert sorted(e["value"]["event_id"] for e in entries) == sorted(big), "show decodes the original events"
    assert all(e["dlq"]["topic"] == LOCK_COMMANDS.name and not e["redriven"] for e in entries)

    dry = await soma("dlq", "redrive", LOCK_COMMANDS.name, "--error-class", "EventTooLarge", "--record",
                     str(record_file), "--json", bootstrap=stack.bootstrap, data_dir=data_dir)
    assert dry.code == 0, dry
    assert dry.json()["dry_run"] is True and dry.json()["selected"] == 5 and dry.json()["sent"] == 0
    assert not record_file.exists()

    # Fix the cause: the same worker (same group, same state) with the default limit.
    worker.stop()
    fixed = stack.worker(app_id=worker.app_id)
    fixed.wait_ready("locks")

    redriven = await soma("dlq", "redrive", LOCK_COMMANDS.name, "--error-class", "EventTooLarge", "--record",
                          str(record_file), "--execute", "--json", bootstrap=stack.bootstrap, data_dir=data_dir)
    assert redriven.code == 0, redriven
    summary = redriven.json()
    assert summary["sent"] == 5 and summary["by_error_class"] == {"EventTooLarge": 5}

    answers = [await client.answer(command_id, timeout=30) for command_id in big]
    assert [a.status for a in answers] == ["active"] * 5
    assert {a.tenant for a in answers} == set(tenants)
    assert all(a.holder == "ann" and a.reason == LONG_REASON and a.fencing_token == 1 for a in answers)
    assert await redis_client.get(f"training:lock:{tenants[0]}") is not None, "the Redis mirror follows"

    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert sorted(line["event_id"] for line in lines) == sorted(big)
    assert {line["redrive_id"] for line in lines} == {summary["redrive_id"]}
    assert all(line["dlq_topic"] == LOCK_COMMANDS.dlq and line["topic"] == LOCK_COMMANDS.name
               and line["error_class"] == "EventTooLarge" and line["offset"] >= 0 for line in lines)

    commands = await TopicReader(stack.bootstrap, LOCK_COMMANDS.name).start()
    try:
        resent = await commands.wait_for(lambda r: any(n == "redrive.id" for n, _ in r.headers), count=5)
    finally:
        await commands.stop()
    for record in resent:
        names = {name for name, _ in record.headers}
        assert not any(name.startswith("dlq.") for name in names), "dlq.* headers are stripped"
        assert {"redrive.dlq.offset", "redrive.error.class", "redrive.original.offset"} <= names
        assert (record.partition, record.offset) in {(line["partition"], line["offset"]) for line in lines}

    again = await soma("dlq", "redrive", LOCK_COMMANDS.name, "--record", str(record_file), "--execute", "--json",
                       bootstrap=stack.bootstrap, data_dir=data_dir)
    assert again.code == 0, again
    assert again.json()["sent"] == 1, "only the DecodeError entry was never re-driven"
    assert again.json()["skipped"] == {"re-driven before (see --again)": 5}
    states = [decode_event(r.value or b"", LockState) for r in client.reader.seen]
    assert sum(1 for s in states if s.causation_id in set(big)) == 5, "each healed command answered once"
