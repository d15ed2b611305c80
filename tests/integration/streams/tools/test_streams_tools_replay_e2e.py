"""``soma replay`` against the real broker (and the real lock agent for the dedupe behaviour).

Every test reads back what reached the destination topic and compares it record by record with what
the selection should contain, computed here from the records the test wrote.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas import LockState, UsageEvent, decode_any, decode_event, encode_event
from streams.catalog import LOCK_COMMANDS
from tests.integration.conftest import LockClient, Stack
from tests.support.cli import create_topics, soma
from tests.support.stack import Consumed, TopicReader

pytestmark = pytest.mark.integration

BASE = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _write(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Send records with explicit partition, timestamp and headers; wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=r["key"], value=r["value"], partition=r["partition"],
                                       timestamp_ms=r["timestamp"], headers=r["headers"]) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Consumed]:
    reader = await TopicReader(bootstrap, topic).start()
    try:
        if expected:
            await reader.wait_for(lambda r: True, count=expected, timeout=timeout)
        else:
            for _ in range(5):
                await reader.poll(timeout_ms=200)
        return list(reader.seen)
    finally:
        await reader.stop()


def _usage(tenant: str, provider: str, model: str, kind: str, tokens: int) -> UsageEvent:
    return UsageEvent(tenant=tenant, provider=provider, model=model, kind=kind, input_tokens=tokens)  # type: ignore[arg-type]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "soma-data"


@pytest.fixture
def topic_names() -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    return f"replay.src.{run}", f"replay.dst.{run}"


async def test_replay_by_time_range_is_exact_in_count_and_content(
    lock_stack: Stack, topic_names: tuple[str, str], data_dir: Path
) -> None:
    source, destination = topic_names
    await create_topics(lock_stack.bootstrap, (source, 4), (destination, 3))
    rng = random.Random(7)
    since, until = _ms(BASE - timedelta(hours=2)), _ms(BASE - timedelta(hours=1))
    records = []
    for index in range(400):
        band = rng.choice(["before", "inside", "after"])
        timestamp = {"before": since - rng.randint(1, 3_600_000), "inside": rng.randint(since, until),
                     "after": until + rng.randint(1, 3_600_000)}[band]
        if index == 0:
            timestamp = since  # both bounds are inclusive
        if index == 1:
            timestamp = until
        tenant = rng.choice(TENANTS)
        event = _usage(tenant, "openai", "gpt-x", "chat", index)
        headers = [("trace", f"t{index}".encode())] if index % 3 == 0 else []
        # Timestamps are shuffled within each partition: exactness must not depend on their order.
        records.append({"key": tenant.encode(), "value": encode_event(event), "partition": rng.randrange(4),
                        "timestamp": timestamp, "headers": headers})
    await _write(lock_stack.bootstrap, source, records)
    wanted = [r for r in records if since <= r["timestamp"] <= until]

    result = await soma("replay", source, "--to", destination, "--since", _iso(since), "--until", _iso(until),
                        "--execute", "--json", bootstrap=lock_stack.bootstrap, data_dir=data_dir)
    assert result.code == 0, result
    summary = result.json()
    assert summary["selected"] == summary["sent"] == len(wanted)
    assert len(wanted) <= summary["scanned"] <= len(records)

    copies = await _read_all(lock_stack.bootstrap, destination, len(wanted))
    await asyncio.sleep(0.5)
    assert len(copies) == len(wanted), "more records reached the destination than were selected"

    def identity(key: bytes | None, value: bytes | None, timestamp: int, headers: list[tuple[str, bytes]]) -> Any:
        return key, value, timestamp, tuple(h for h in headers if not h[0].startswith("replay."))

    assert Counter(identity(c.key, c.value, c.timestamp, c.headers) for c in copies) == \
        Counter(identity(r["key"], r["value"], r["timestamp"], r["headers"]) for r in wanted)
    partitioner = DefaultPartitioner()
    positions = records_by_position(records)
    replay_ids = set()
    for copy in copies:
        headers = dict(copy.headers)
        replay_ids.add(headers["replay.id"])
        assert headers["replay.original.topic"] == source.encode()
        original = positions[(int(headers["replay.original.partition"]), int(headers["replay.original.offset"]))]
        assert original["value"] == copy.value, "replay.original.* must point at the record copied"
        assert copy.partition == partitioner(copy.key, [0, 1, 2], [0, 1, 2]), "keys are partitioned like Kafka's"
    assert len(replay_ids) == 1 and summary["replay_id"].encode() in replay_ids


def records_by_position(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """(partition, offset) of each written record: the broker gives offsets in send order per partition."""
    positions: dict[tuple[int, int], dict[str, Any]] = {}
    next_offset: Counter[int] = Counter()
    for record in records:
        positions[(record["partition"], next_offset[record["partition"]])] = record
        next_offset[record["partition"]] += 1
    return positions


async def test_filters_select_exactly_the_matching_records(
    lock_stack: Stack, topic_names: tuple[str, str], data_dir: Path
) -> None:
    source, destination = topic_names
    await create_topics(lock_stack.bootstrap, (source, 4), (destination, 4))
    rng = random.Random(11)
    now = int(time.time() * 1000)
    records, events = [], []
    for index in range(300):
        tenant = rng.choice(TENANTS)
        event = _usage(tenant, rng.choice(["openai", "local"]), rng.choice(["gpt-x", "smol"]),
                       rng.choice(["chat", "embedding"]), index)
        headers = [("source", rng.choice([b"svc-a", b"svc-b"]))]
        records.append({"key": tenant.encode(), "value": encode_event(event), "partition": rng.randrange(4),
                        "timestamp": now - 1000 + index, "headers": headers})
        events.append(event)
    await _write(lock_stack.bootstrap, source, records)
    pairs = list(zip(records, events, strict=True))

    async def selected(*options: str) -> int:
        result = await soma("replay", source, "--to", destination, *options, "--json", "--sample", "0",
                            bootstrap=lock_stack.bootstrap, data_dir=data_dir)
        assert result.code == 0, result
        summary = result.json()
        assert summary["dry_run"] is True and summary["sent"] == 0
        return int(summary["selected"])

    assert await selected("--key", "acme", "--key", "hooli") == sum(r["key"] in (b"acme", b"hooli") for r in records)
    assert await selected("--tenant", "globex") == sum(e.tenant == "globex" for e in events)
    assert await selected("--header", "source=svc-b") == sum(r["headers"][0][1] == b"svc-b" for r in records)
    assert await selected("--field", "kind=embedding", "--field", "provider=local") == \
        sum(e.kind == "embedding" and e.provider == "local" for e in events)
    assert await selected("--partition", "1", "--partition", "3") == sum(r["partition"] in (1, 3) for r in records)

    combined = [(r, e) for r, e in pairs if e.tenant in ("acme", "initech") and e.model == "smol"
                and r["headers"][0][1] == b"svc-a"]
    result = await soma("replay", source, "--to", destination, "--tenant", "acme", "--tenant", "initech",
                        "--field", "model=smol", "--header", "source=svc-a", "--execute", "--json",
                        bootstrap=lock_stack.bootstrap, data_dir=data_dir)
    assert result.code == 0, result
    assert result.json()["sent"] == len(combined) > 0
    copies = await _read_all(lock_stack.bootstrap, destination, len(combined))
    await asyncio.sleep(0.3)
    assert sorted(decode_any(c.value or b"").event_id for c in copies) == sorted(e.event_id for _, e in combined)


async def test_rate_is_held_within_ten_percent(lock_stack: Stack, topic_names: tuple[str, str], data_dir: Path) -> None:
    source, destination = topic_names
    await create_topics(lock_stack.bootstrap, (source, 2), (destination, 2))
    now = int(time.time() * 1000)
    count, rate = 600, 200.0
    await _write(lock_stack.bootstrap, source, [
        {"key": f"k{i % 7}".encode(), "value": encode_event(_usage("acme", "openai", "m", "chat", i)),
         "partition": i % 2, "timestamp": now, "headers": []} for i in range(count)
    ])
    reader = await TopicReader(lock_stack.bootstrap, destination).start()
    arrivals: list[float] = []
    try:
        run = asyncio.create_task(soma("replay", source, "--to", destination, "--rate", f"{rate:g}/s", "--execute",
                                       "--json", bootstrap=lock_stack.bootstrap, data_dir=data_dir))
        deadline = time.monotonic() + 60
        while len(arrivals) < count and time.monotonic() < deadline:
            new = await reader.poll(timeout_ms=10)
            arrivals += [time.monotonic()] * len(new)
        result = await run
    finally:
        await reader.stop()
    assert result.code == 0, result
    assert len(arrivals) == count
    measured = (count - 1) / (arrivals[-1] - arrivals[0])
    assert abs(measured - rate) / rate <= 0.10, f"measured {measured:.1f}/s for --rate {rate:g}/s"
    reported = result.json()["events_per_second"]
    assert abs(reported - rate) / rate <= 0.10, f"the command reported {reported}/s"


async def test_dry_run_sends_nothing(lock_stack: Stack, topic_names: tuple[str, str], data_dir: Path) -> None:
    source, destination = topic_names
    await create_topics(lock_stack.bootstrap, (source, 4), (destination, 4))
    now = int(time.time() * 1000)
    await _write(lock_stack.bootstrap, source, [
        {"key": t.encode(), "value": encode_event(_usage(t, "openai", "m", "chat", 1)), "partition": i % 4,
         "timestamp": now, "headers": []} for i, t in enumerate(TENANTS * 10)
    ])

    result = await soma("replay", source, "--to", destination, "--sample", "2", bootstrap=lock_stack.bootstrap,
                        data_dir=data_dir)

    assert result.code == 0, result
    assert "dry run" in result.stdout and "nothing was sent" in result.stdout
    assert "total" in result.stdout and "50" in result.stdout
    assert result.stdout.count('"event_id"') == 2, "the sample shows two decoded events"
    assert await _read_all(lock_stack.bootstrap, destination, 0) == []


async def test_replayed_commands_are_dropped_as_duplicates_unless_new_ids(
    lock_stack: Stack, lock_client_factory: Any, tenant: str, data_dir: Path
) -> None:
    client: LockClient = await lock_client_factory(lock_stack.bootstrap)
    originals = await client.send(*({"tenant": tenant, "action": "status", "user": f"u{i}"} for i in range(3)))
    for command_id in originals:
        await client.answer(command_id)

    same = await soma("replay", LOCK_COMMANDS.name, "--to", LOCK_COMMANDS.name, "--tenant", tenant, "--execute",
                      "--json", bootstrap=lock_stack.bootstrap, data_dir=data_dir)
    assert same.code == 0, same
    assert same.json()["sent"] == 3
    marker = await client.ask({"tenant": tenant, "action": "status", "user": "marker"})
    # The marker is on the same partition and was sent after the copies, so they have been handled.
    answered = [s for s in client.states(tenant) if s.causation_id != marker.causation_id]
    assert sorted(s.causation_id or "" for s in answered) == sorted(originals), "copies must not be answered again"

    fresh = await soma("replay", LOCK_COMMANDS.name, "--to", LOCK_COMMANDS.name, "--tenant", tenant,
                       "--field", "user=u1", "--new-ids", "--execute", "--json",
                       bootstrap=lock_stack.bootstrap, data_dir=data_dir)
    assert fresh.code == 0, fresh
    # u1's command is in the topic twice by now: the original and the copy the first replay wrote.
    assert fresh.json()["sent"] == 2
    records = await client.reader.wait_for(
        lambda r: (s := decode_event(r.value, LockState)).tenant == tenant and s.causation_id not in
        {*originals, marker.causation_id}, timeout=30, count=2)
    answers = [decode_event(record.value or b"", LockState) for record in records]
    assert all(a.status == "released" and a.action == "status" for a in answers)
    assert len({a.causation_id for a in answers}) == 2, "each copy carries a new event id of its own"
