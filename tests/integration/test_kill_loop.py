"""Kill loop: a worker SIGKILLed again and again while lock commands, usage events and embedding jobs flow.

The traffic is sent in slices, one per life of the worker, with some records sent twice byte for byte
(a producer's retry). Most kills land while a slice is being processed, a few before the worker is
ready. Afterwards: every lock command answered exactly once (answers are told apart by their event id,
which a replay reproduces), fencing tokens strictly increasing per tenant and every outcome the one the
rules give; usage rollups equal to the totals the test computes; every embedding job answered once;
Redis agreeing with the lock state of every tenant.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio as aioredis

from connectors.broker import free_port
from schemas import (
    EmbeddingJob,
    EmbeddingResult,
    LockCommand,
    LockState,
    UsageEvent,
    UsageReport,
    decode_event,
    encode_event,
)
from streams.catalog import (
    EMBEDDING_JOBS,
    EMBEDDING_RESULTS,
    LOCK_COMMANDS,
    LOCK_STATE,
    USAGE_EVENTS,
    USAGE_REPORTS,
)
from tests.integration.conftest import Stack
from tests.support.stack import TopicReader, produce_raw

pytestmark = pytest.mark.integration

KILLS = 15
ANN = {"user": "ann", "roles": ["admin"]}
BOB = {"user": "bob", "roles": ["admin"]}
#: One tenant's script and what the rules answer to each step: (status, fencing token or None).
LOCK_SCRIPT: list[tuple[dict[str, Any], tuple[str, int | None]]] = [
    ({"action": "enable", "ttl_seconds": 3600, **ANN}, ("active", 1)),
    ({"action": "extend", "ttl_seconds": 60, **ANN}, ("active", 1)),
    ({"action": "enable", "ttl_seconds": 3600, **BOB}, ("rejected", None)),
    ({"action": "disable", **ANN}, ("released", 1)),
    ({"action": "enable", "ttl_seconds": 3600, **BOB}, ("active", 2)),
    ({"action": "status", **BOB}, ("active", 2)),
    ({"action": "disable", **BOB}, ("released", 2)),
    ({"action": "enable", "ttl_seconds": 3600, **ANN}, ("active", 3)),
]
HOURS = 6


def _traffic(rng: random.Random) -> tuple[list[list[tuple[str, bytes, bytes]]], dict[str, Any]]:
    """The records of every slice, (topic, key, value), and what the test expects of them."""
    run = uuid.uuid4().hex[:6]
    lock_tenants = [f"kl-{run}-{i}" for i in range(12)]
    usage_tenants = [f"ku-{run}-{i}" for i in range(3)]
    embed_tenant = f"ke-{run}"
    lock_ids: dict[str, list[str]] = {}
    records: list[tuple[str, bytes, bytes]] = []
    # Lock commands go out step by step across all tenants, so every slice holds some of each.
    commands = {t: [LockCommand.model_validate({"tenant": t, **step}) for step, _ in LOCK_SCRIPT] for t in lock_tenants}
    for tenant, sequence in commands.items():
        lock_ids[tenant] = [c.event_id for c in sequence]
    for step in range(len(LOCK_SCRIPT)):
        for tenant in lock_tenants:
            command = commands[tenant][step]
            records.append((LOCK_COMMANDS.name, tenant.encode(), encode_event(command)))
    usage_reference: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    usage_records = []
    for tenant in usage_tenants:
        for hour in range(HOURS):
            for minute in range(0, 60, 6):
                inp, out = rng.randint(1, 5000), rng.randint(1, 500)
                event = UsageEvent(tenant=tenant, occurred_at=f"2025-03-01T{hour:02d}:{minute:02d}:00Z",
                                   provider="openai", model="gpt-4o", kind="chat", input_tokens=inp,
                                   output_tokens=out)
                usage_records.append((USAGE_EVENTS.name, tenant.encode(), encode_event(event)))
                for window in (f"hour:{hour:02d}", "day"):
                    totals = usage_reference[(tenant, window)]
                    totals[0] += inp
                    totals[1] += out
                    totals[2] += 1
    jobs = [
        EmbeddingJob(tenant=embed_tenant, job="upsert", collection="kill",
                     documents=[{"id": f"d{i}", "text": f"document number {i} about lock {i % 3}"}])
        for i in range(10)
    ]
    job_records = [(EMBEDDING_JOBS.name, embed_tenant.encode(), encode_event(job)) for job in jobs]
    # Interleave the three kinds, then cut into one slice per life of the worker.
    mixed: list[tuple[str, bytes, bytes]] = []
    streams = [records, usage_records, job_records]
    while any(streams):
        for stream in streams:
            take = max(1, len(stream) // 20)
            mixed.extend(stream[:take])
            del stream[:take]
    size = -(-len(mixed) // KILLS)
    slices = [mixed[i:i + size] for i in range(0, len(mixed), size)]
    # The events that close every 2025-03-01 window come last, once everything else was sent.
    closing = [
        (USAGE_EVENTS.name, t.encode(), encode_event(UsageEvent(
            tenant=t, occurred_at="2025-03-02T00:30:00Z", provider="openai", model="gpt-4o", kind="chat",
            input_tokens=1, output_tokens=1)))
        for t in usage_tenants
    ]
    slices.append(closing)
    expected = {"lock_ids": lock_ids, "usage": dict(usage_reference), "usage_tenants": usage_tenants,
                "job_ids": [j.event_id for j in jobs]}
    return slices, expected


async def _send(bootstrap: str, records: list[tuple[str, bytes, bytes]], rng: random.Random) -> None:
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for topic, key, value in records:
        by_topic[topic].append((key, value))
        if rng.random() < 0.1:
            by_topic[topic].append((key, value))  # an exact resend
    for topic, messages in by_topic.items():
        await produce_raw(bootstrap, topic, messages)


def _distinct(records: list[Any], model: Any) -> dict[str, Any]:
    """Events by event id: a replayed answer carries the same id as the first."""
    events: dict[str, Any] = {}
    for record in records:
        event = decode_event(record.value or b"", model)
        events[event.event_id] = event
    return events


@pytest.mark.timeout(900)
async def test_kill_loop_loses_and_doubles_nothing(stack_factory: Any, redis_url: str) -> None:
    rng = random.Random(20261202)
    stack: Stack = stack_factory()
    env = {"SOMA_USAGE_IDLE_CLOSE_SECONDS": "0", "SOMA_USAGE_TICK_SECONDS": "1",
           "SOMA_LOCK_EXPIRY_CHECK_SECONDS": "1"}
    slices, expected = _traffic(rng)
    app_id = f"kill{uuid.uuid4().hex[:8]}"
    first = stack.worker(app_id=app_id, SOMA_WEB_PORT=str(free_port()), **env)
    await asyncio.to_thread(first.wait_ready, "locks", 120)  # it creates the topics the readers follow
    readers = [await TopicReader(stack.bootstrap, topic).start()
               for topic in (LOCK_STATE.name, USAGE_REPORTS.name, EMBEDDING_RESULTS.name,
                             LOCK_COMMANDS.dlq, USAGE_EVENTS.dlq, EMBEDDING_JOBS.dlq)]
    states, reports, results, *dlqs = readers
    kills = 0
    began = time.monotonic()
    try:
        for life, records in enumerate(slices):
            worker = first if life == 0 else stack.worker(app_id=app_id, SOMA_WEB_PORT=str(free_port()), **env)
            if 0 < life < KILLS and rng.random() < 0.2:
                await asyncio.sleep(rng.uniform(0.5, 4.0))  # killed before it is even ready
                await _send(stack.bootstrap, records, rng)
            else:
                await asyncio.to_thread(worker.wait_ready, "locks", 120)
                await _send(stack.bootstrap, records, rng)
                await asyncio.sleep(rng.uniform(0.0, 2.5))  # mostly in the middle of the slice
            if life < KILLS:
                worker.kill()
                kills += 1
                print(f"kill {kills} at {time.monotonic() - began:.0f} s", flush=True)
        assert kills >= KILLS

        # The last life runs to the end: everything must be answered.
        lock_ids = expected["lock_ids"]
        wanted = {cid for ids in lock_ids.values() for cid in ids}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            await states.poll()
            await results.poll()
            await reports.poll()
            answered = {e.causation_id for e in _distinct(states.seen, LockState).values()}
            done_jobs = {e.job_id for e in _distinct(results.seen, EmbeddingResult).values()}
            rolled = _rollups(reports.seen, expected["usage_tenants"])
            if wanted <= answered and set(expected["job_ids"]) <= done_jobs and len(rolled) == len(expected["usage"]):
                break
            await asyncio.sleep(0.5)
        for reader in dlqs:
            await reader.poll()

        # Locks: each command answered by exactly one distinct event, with the outcome the rules give.
        answers: dict[str, list[LockState]] = defaultdict(list)
        for event in _distinct(states.seen, LockState).values():
            if event.causation_id:
                answers[event.causation_id].append(event)
        for tenant, ids in lock_ids.items():
            tokens = []
            for command_id, (_, (status, token)) in zip(ids, LOCK_SCRIPT, strict=True):
                got = answers.get(command_id, [])
                assert len(got) == 1, f"{tenant}: command {command_id} answered {len(got)} times"
                assert got[0].status == status, f"{tenant}: {got[0].status} != {status} ({got[0].detail})"
                if token is not None:
                    assert got[0].fencing_token == token
                if status == "active" and got[0].action == "enable":
                    tokens.append(got[0].fencing_token)
            assert tokens == sorted(set(tokens)), f"{tenant}: fencing tokens not strictly increasing: {tokens}"

        # Usage: the last rollup of every window equals the reference.
        assert _rollups(reports.seen, expected["usage_tenants"]) == expected["usage"]

        # Embedding jobs: one distinct result each, all ok.
        by_job: dict[str, list[EmbeddingResult]] = defaultdict(list)
        for result in _distinct(results.seen, EmbeddingResult).values():
            by_job[result.job_id].append(result)
        for job_id in expected["job_ids"]:
            assert [r.status for r in by_job[job_id]] == ["ok"], f"job {job_id}: {by_job[job_id]}"

        assert all(reader.seen == [] for reader in dlqs), "valid records went to a DLQ"

        # Redis agrees with the lock state of every tenant (the final state: active, token 3, ann).
        client = aioredis.Redis.from_url(redis_url)
        try:
            deadline = time.monotonic() + 15
            while True:
                mirrored = {t: await client.get(f"training:lock:{t}") for t in lock_ids}
                if all(v is not None for v in mirrored.values()) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await client.aclose()
        for tenant, raw in mirrored.items():
            assert raw is not None, f"{tenant}: no Redis key for an active lock"
            mirror = json.loads(raw)
            assert (mirror["holder"], mirror["fencing_token"]) == ("ann", 3), f"{tenant}: {mirror}"
    finally:
        for reader in readers:
            await reader.stop()


def _rollups(records: list[Any], tenants: list[str]) -> dict[tuple[str, str], list[int]]:
    """The newest rollup of every 2025-03-01 window of the tenants: [input, output, events]."""
    newest: dict[tuple[str, str], list[int]] = {}
    for record in records:
        report = decode_event(record.value or b"", UsageReport)
        if report.report != "rollup" or report.tenant not in tenants or report.window_start is None:
            continue
        if report.window_start.date().isoformat() != "2025-03-01":
            continue
        window = "day" if report.window == "day" else f"hour:{report.window_start.hour:02d}"
        newest[(report.tenant, window)] = [report.input_tokens, report.output_tokens, report.events]
    return newest
