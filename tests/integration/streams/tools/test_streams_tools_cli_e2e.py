"""The operator commands as a user meets them: errors and exit codes against a real broker, ``soma tail`` selection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from connectors.broker import EmbeddedBroker, free_port
from schemas import LockCommand, encode_event
from streams.catalog import LOCK_COMMANDS, all_topics, ensure_topics
from tests.support.cli import CliResult, soma
from tests.support.stack import start_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker with the catalog's topics and no worker: the commands are clients only."""
    started = start_broker(tmp_path_factory.mktemp("cli-broker"))

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=started.bootstrap_servers)
        await admin.start()
        try:
            await ensure_topics(admin, all_topics(4, 1))
        finally:
            await admin.close()

    asyncio.run(create())
    yield started
    started.stop()


async def _run_all(broker: EmbeddedBroker, data_dir: Path, *calls: tuple[str, ...]) -> list[CliResult]:
    """Run commands two at a time (the machine has two cores)."""
    results: list[CliResult] = []
    for start in range(0, len(calls), 2):
        results += await asyncio.gather(*(soma(*args, bootstrap=broker.bootstrap_servers, data_dir=data_dir)
                                          for args in calls[start:start + 2]))
    return results


#: Errors that need the broker's answer; argument errors found before connecting are unit-tested
#: (tests/unit/streams/tools/test_streams_tools_cli.py).
BAD_ARGUMENTS: list[tuple[tuple[str, ...], int, str]] = [
    (("replay", "no.such.topic", "--to", "soma.usage.events"), 1, "topic no.such.topic does not exist"),
    (("replay", "soma.usage.events", "--to", "soma.usage.events", "--partition", "9"), 1, "has no partition 9"),
    (("offsets", "show", "--group", "nobody"), 1, "has no committed offsets"),
    (("tail", "no.such.topic"), 2, "no topic 'no.such.topic'"),
]


async def test_bad_arguments_give_clear_errors_and_exit_codes(broker: EmbeddedBroker, tmp_path: Path) -> None:
    results = await _run_all(broker, tmp_path, *(args for args, _, _ in BAD_ARGUMENTS))
    for (args, code, message), result in zip(BAD_ARGUMENTS, results, strict=True):
        assert result.code == code, f"soma {' '.join(args)}: {result}"
        assert message in result.stderr, f"soma {' '.join(args)}: {result}"
        assert "Traceback" not in result.stderr, f"soma {' '.join(args)}: {result}"


async def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = await soma("topics", bootstrap=nobody, data_dir=tmp_path)
    assert result.code == 1, result
    assert f"cannot reach Kafka at {nobody}" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60


async def _produce(bootstrap: str, records: list[tuple[LockCommand, int, int, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(LOCK_COMMANDS.name, key=c.tenant.encode(), value=encode_event(c),
                                       partition=p, timestamp_ms=ts, headers=h) for c, p, ts, h in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_tail_selects_by_start_position_time_and_filters(broker: EmbeddedBroker, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    hour = 3_600_000
    records: list[tuple[LockCommand, int, int, list[tuple[str, bytes]]]] = []
    for i in range(40):
        command = LockCommand(tenant=f"tail-{i % 4}", action="enable" if i % 2 else "status", user="ann",
                              roles=["admin"] if i % 5 else ["viewer"])
        records.append((command, i % 2, now - (3 * hour if i < 20 else 0) + i, [("origin", f"o{i % 3}".encode())]))
    await _produce(broker.bootstrap_servers, records)

    def ids(result: CliResult) -> list[str]:
        assert result.code == 0, result
        return [line["value"]["event_id"] for line in result.json_lines()]

    def expect(keep: Any) -> list[str]:
        return [c.event_id for c, p, ts, h in records if keep(c, p, ts, h)]

    calls: list[tuple[str, ...]] = [
        ("tail", LOCK_COMMANDS.name, "--since", "1h"),
        ("tail", LOCK_COMMANDS.name, "--until", "2h", "--tenant", "tail-1"),
        ("tail", LOCK_COMMANDS.name, "--field", "action=enable", "--field", "roles=viewer"),
        ("tail", LOCK_COMMANDS.name, "--header", "origin=o2", "--key", "tail-0", "--key", "tail-2"),
        ("tail", LOCK_COMMANDS.name, "--partition", "1", "--offset", "15"),
        ("tail", LOCK_COMMANDS.name, "--from", "latest"),
        ("tail", LOCK_COMMANDS.name, "-n", "3", "--partition", "0"),
    ]
    results = await _run_all(broker, tmp_path, *calls)
    by_partition = sorted  # lines of different partitions interleave; compare the selections as sets
    assert by_partition(ids(results[0])) == by_partition(expect(lambda c, p, ts, h: ts >= now - hour))
    assert by_partition(ids(results[1])) == by_partition(
        expect(lambda c, p, ts, h: ts <= now - 2 * hour and c.tenant == "tail-1"))
    assert by_partition(ids(results[2])) == by_partition(
        expect(lambda c, p, ts, h: c.action == "enable" and "viewer" in c.roles))
    assert by_partition(ids(results[3])) == by_partition(
        expect(lambda c, p, ts, h: h == [("origin", b"o2")] and c.tenant in ("tail-0", "tail-2")))
    partition_one = [c.event_id for c, p, ts, h in records if p == 1]
    assert ids(results[4]) == partition_one[15:], "--offset starts there, in offset order"
    assert ids(results[5]) == [], "--from latest shows only new events (the end is the real end)"
    assert ids(results[6]) == [c.event_id for c, p, ts, h in records if p == 0][:3]
