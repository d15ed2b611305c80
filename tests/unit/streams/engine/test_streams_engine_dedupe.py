"""The incremental sweep of seen ids, on real tables (RocksDB in a temporary directory) and a real batch."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.catalog import LOCK_COMMANDS
from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.engine.runner import AgentRunner, AgentSpec
from streams.engine.state import Table
from streams.engine.stream import Batch
from streams.settings import Settings

NOW = 1_700_000_000_000


async def _noop(stream: Any, context: Any) -> None:
    return None


def _runner(directory: Path, partitions: list[int]) -> AgentRunner:
    config = Settings.from_env({"SOMA_DATA_DIR": str(directory)})
    runner = AgentRunner(AgentSpec("a", LOCK_COMMANDS, _noop, tables=(SEEN_TABLE,)), config,
                         producer=None)  # type: ignore[arg-type]
    for partition in partitions:
        runner.tables[SEEN_TABLE].open(partition)
    runner.assigned_partitions = list(partitions)
    return runner


@pytest.fixture
def runner_factory(tmp_path: Path) -> Iterator[Callable[[list[int]], AgentRunner]]:
    made: list[AgentRunner] = []

    def make(partitions: list[int]) -> AgentRunner:
        made.append(_runner(tmp_path / str(len(made)), partitions))
        return made[-1]

    yield make
    for runner in made:
        for table in runner.tables.values():
            table.close_all()


def _store(table: Table, ids: dict[str, int], partition: int) -> None:
    for event_id, expires in ids.items():
        table.set(event_id, expires, partition)
    _finish(table)


def _finish(table: Table) -> None:
    """What finishing a batch does with a table's writes once the changelog acknowledged them."""
    for partition, changes in table.take_pending().items():
        table.commit(partition, changes, None)


def _ids(table: Table, partition: int) -> dict[str, int]:
    return dict(table.items(partition))


def test_scan_lists_stored_keys_in_order_after_a_key_with_pending_values(runner_factory: Any) -> None:
    table = runner_factory([0]).tables[SEEN_TABLE]
    _store(table, {f"k{i}": i for i in range(5)}, 0)
    table.set("k1", 100, 0)      # pending overrides the stored value
    table.delete("k2", 0)        # pending deletion hides it
    table.set("new", 7, 0)       # only pending: not listed

    assert table.scan(0, None, 10) == [("k0", 0), ("k1", 100), ("k3", 3), ("k4", 4)]
    assert table.scan(0, "k1", 2) == [("k3", 3), ("k4", 4)]
    assert table.scan(0, "k0", 1) == [("k1", 100)]
    assert table.scan(0, "k4", 10) == []


def test_a_sweep_examines_at_most_a_slice_per_call_and_resumes_where_it_stopped(runner_factory: Any) -> None:
    runner = runner_factory([0, 1])
    table = runner.tables[SEEN_TABLE]
    ids = {partition: {f"p{partition}-{i:03}": NOW - 1 if i % 2 else NOW + 1 for i in range(25)}
           for partition in (0, 1)}
    for partition, stored in ids.items():
        _store(table, stored, partition)
    seen = SeenIds(ttl_ms=1000, sweep_every_ms=60_000, slice_size=10)
    forgotten = []
    while True:
        batch = Batch(runner, [], NOW)
        forgotten.append(seen.sweep(batch))
        _finish(table)
        if not seen.sweeping:
            break

    # 50 ids, 10 per call (the 5 left of partition 0 and the first 5 of partition 1 share the third
    # call), and a sixth call that finds partition 1's end; 24 expired ids gone, never more than 5 a call.
    assert forgotten == [5, 5, 4, 5, 5, 0]
    for partition, stored in ids.items():
        assert _ids(table, partition) == {k: v for k, v in stored.items() if v > NOW}
    # The next round waits for sweep_every_ms.
    assert seen.sweep(Batch(runner, [], NOW + 59_999)) == 0 and not seen.sweeping


def test_a_round_skips_partitions_given_up_and_leaves_new_ones_for_the_next(runner_factory: Any) -> None:
    runner = runner_factory([0, 1])
    table = runner.tables[SEEN_TABLE]
    for partition in (0, 1, 2):
        table.open(partition)
        _store(table, {f"p{partition}-{i}": NOW - 1 for i in range(6)}, partition)
    seen = SeenIds(ttl_ms=1000, slice_size=4)
    assert seen.sweep(Batch(runner, [], NOW)) == 4          # partition 0, first slice
    runner.assigned_partitions = [0, 2]                      # 1 given up, 2 gained
    while seen.sweeping:
        seen.sweep(Batch(runner, [], NOW))
        _finish(table)
    assert _ids(table, 0) == {} and len(_ids(table, 1)) == 6 and len(_ids(table, 2)) == 6
    seen.sweep(Batch(runner, [], NOW + 60_000))
    while seen.sweeping:
        seen.sweep(Batch(runner, [], NOW + 60_000))
    _finish(table)
    assert _ids(table, 2) == {}


@settings(max_examples=40, deadline=None)
@given(
    stored=st.dictionaries(st.uuids().map(str), st.integers(NOW - 10_000, NOW + 10_000), max_size=60),
    added=st.lists(st.tuples(st.uuids().map(str), st.integers(1, 20_000)), max_size=20),
    slice_size=st.integers(1, 25),
    partitions=st.integers(1, 3),
)
def test_every_expired_id_is_eventually_forgotten_and_no_unexpired_one(
    stored: dict[str, int], added: list[tuple[str, int]], slice_size: int, partitions: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        owned = list(range(partitions))
        runner = _runner(Path(directory), owned)
        table = runner.tables[SEEN_TABLE]
        try:
            expected: dict[int, dict[str, int]] = {p: {} for p in owned}
            for index, (event_id, expires) in enumerate(stored.items()):
                table.set(event_id, expires, index % partitions)
                expected[index % partitions][event_id] = expires
            _finish(table)
            seen = SeenIds(ttl_ms=20_000, slice_size=slice_size)
            calls = 0
            pending_adds = list(added)
            while calls == 0 or seen.sweeping:
                batch = Batch(runner, [], NOW)
                if pending_adds:  # ids the batch adds while the round is under way: never expired
                    event_id, ttl = pending_adds.pop()
                    partition = calls % partitions
                    if all(event_id not in ids for ids in expected.values()):
                        table.set(event_id, NOW + ttl, partition)
                        expected[partition][event_id] = NOW + ttl
                seen.sweep(batch)
                _finish(table)
                calls += 1
                assert calls <= len(stored) + len(added) + partitions + 2, "the round never ends"
            for partition in owned:
                assert _ids(table, partition) == {k: v for k, v in expected[partition].items() if v > NOW}
        finally:
            table.close_all()
