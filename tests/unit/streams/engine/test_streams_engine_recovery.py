"""The pure pieces of the recovery: what a restore reads, its retry delays, and the worker's readiness."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streams.catalog import LOCK_COMMANDS, USAGE_EVENTS
from streams.engine.recovery import PartitionRestore, plan_restore, readiness
from streams.engine.runner import AgentRunner, AgentSpec
from streams.settings import Settings
from streams.supervise import retry_delays

CHANGELOG = "app.locks.seen.changelog"


def _tp(partition: int) -> TopicPartition:
    return TopicPartition(CHANGELOG, partition)


def test_a_restore_reads_from_the_offset_after_the_applied_one_to_the_end() -> None:
    plan = plan_restore(
        applied={_tp(0): -1, _tp(1): 41, _tp(2): 99, _tp(3): -1, _tp(4): 9},
        ends={_tp(0): 10, _tp(1): 100, _tp(2): 100, _tp(3): 0, _tp(4): 11},
    )
    # Nothing applied: from 0. Applied 41: from 42. Up to date (99 of 100), or an empty changelog: nothing.
    # Applied 9 of 11: the one record at offset 10.
    assert plan.ranges == {_tp(0): (0, 10), _tp(1): (42, 100), _tp(4): (10, 11)}
    assert plan.ahead == {}


def test_a_store_past_its_changelog_end_is_ahead_and_kept() -> None:
    # The broker lost the tail (or the topic was recreated): the local state is kept, nothing is read.
    plan = plan_restore(applied={_tp(0): 500, _tp(1): 7}, ends={_tp(0): 20, _tp(1): 7})
    assert plan.ranges == {} and plan.ahead == {_tp(0): (500, 20), _tp(1): (7, 7)}


def test_retries_wait_one_second_doubling_to_thirty() -> None:
    assert list(itertools.islice(retry_delays(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert list(itertools.islice(retry_delays(0.5, 1.5), 4)) == [0.5, 1, 1.5, 1.5]


async def _noop(stream: Any, context: Any) -> None:
    return None


def _runners(tmp_path: Path) -> tuple[AgentRunner, AgentRunner]:
    config = Settings.from_env({"SOMA_DATA_DIR": str(tmp_path)})
    locks = AgentRunner(AgentSpec("locks", LOCK_COMMANDS, _noop, tables=("seen",)), config,
                        producer=None)  # type: ignore[arg-type]
    usage = AgentRunner(AgentSpec("usage", USAGE_EVENTS, _noop), config, producer=None)  # type: ignore[arg-type]
    return locks, usage


def test_ready_once_every_agent_processes_its_partitions(tmp_path: Path) -> None:
    locks, usage = _runners(tmp_path)
    locks.ready.set()
    status, body = readiness([locks, usage])
    assert status == 503 and body["starting"] == ["usage"] and "restoring" not in body

    usage.ready.set()
    locks.assigned_partitions, usage.assigned_partitions = [0, 1], [2]
    assert readiness([locks, usage]) == (200, {"ready": True, "partitions": {"locks": [0, 1], "usage": [2]}})


def test_not_ready_while_a_partition_restores_or_waits_to_retry_naming_it(tmp_path: Path) -> None:
    locks, usage = _runners(tmp_path)
    locks.ready.set()
    usage.ready.set()
    locks.recovery.restoring = {
        3: PartitionRestore(3, attempts=2, error="RangeReadError: reading to … did not finish within 0.5 s"),
        1: PartitionRestore(1, attempts=1),
    }
    status, body = readiness([locks, usage])
    assert status == 503 and body["ready"] is False
    assert [(entry["agent"], entry["partition"], entry["state"], entry["attempts"]) for entry in body["restoring"]] \
        == [("locks", 1, "restoring", 1), ("locks", 3, "retrying", 2)]
    assert body["restoring"][1]["error"].startswith("RangeReadError")
