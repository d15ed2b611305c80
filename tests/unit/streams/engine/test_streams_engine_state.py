"""Tables and partition stores: every rule on both implementations, RocksDB in a temporary directory and
memory; what only a disk does (a restart of the worker, a wiped directory) on RocksDB alone."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine.state import BaseTable, MemoryStore, MemoryTable, PartitionStore, RocksDBStore, RocksDBTable

CHANGELOG = "soma-streams-locks-changelog"
IMPLEMENTATIONS = ["rocksdb", "memory"]


def _new_table(implementation: str, name: str, directory: Path) -> BaseTable:
    if implementation == "rocksdb":
        return RocksDBTable(name, CHANGELOG, directory)
    return MemoryTable(name, CHANGELOG)


def _tables(implementation: str, tmp_path: Path) -> Iterator[Callable[..., BaseTable]]:
    made: list[BaseTable] = []

    def make(*partitions: int, name: str = "locks", directory: Path | None = None) -> BaseTable:
        table = _new_table(implementation, name, directory or tmp_path / name)
        for partition in partitions:
            table.open(partition)
        made.append(table)
        return table

    yield make
    for table in made:
        table.close_all()


@pytest.fixture(params=IMPLEMENTATIONS)
def table_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., BaseTable]]:
    """``table_factory(*partitions, name=...)``: a table with those partitions open, once per implementation.

    Tables made here are closed at the end of the test.
    """
    yield from _tables(request.param, tmp_path)


@pytest.fixture
def rocksdb_table_factory(tmp_path: Path) -> Iterator[Callable[..., BaseTable]]:
    """``rocksdb_table_factory(*partitions, name=..., directory=...)``: a RocksDB table with those partitions open.

    A second call on the same directory is a restart of the worker, so close the first table before it.
    """
    yield from _tables("rocksdb", tmp_path)


@pytest.fixture(params=IMPLEMENTATIONS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], PartitionStore]]:
    """``store_factory()``: an empty partition store, once per implementation (closed at the end)."""
    made: list[PartitionStore] = []

    def make() -> PartitionStore:
        store = RocksDBStore(tmp_path / f"store-{len(made)}") if request.param == "rocksdb" else MemoryStore()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _commit_all(table: BaseTable, offsets: dict[int, int] | None = None) -> dict[int, dict[bytes, bytes | None]]:
    """What the engine does after the changelog acknowledged: write every pending change."""
    pending = table.take_pending()
    for partition, changes in pending.items():
        table.commit(partition, changes, (offsets or {}).get(partition))
    return pending


def test_pending_writes_are_visible_before_commit(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)

    table.set("acme", {"status": "active", "fencing_token": 1}, 0)
    table.set("globex", [1, 2, 3], 0)

    assert table.get("acme", 0) == {"status": "active", "fencing_token": 1}
    assert table.get("globex", 0) == [1, 2, 3]
    assert dict(table.items(0)) == {"acme": {"status": "active", "fencing_token": 1}, "globex": [1, 2, 3]}


def test_get_of_missing_key_returns_default(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)

    assert table.get("nobody", 0) is None
    assert table.get("nobody", 0, default={"status": "released"}) == {"status": "released"}


def test_take_pending_and_commit_persist_and_record_changelog_offset(
    table_factory: Callable[..., BaseTable],
) -> None:
    table = table_factory(0, 1)
    table.set("a", 1, 0)
    table.set("b", {"x": "y"}, 1)

    pending = table.take_pending()

    assert set(pending) == {0, 1}
    assert set(pending[0]) == {b"a"}
    assert set(pending[1]) == {b"b"}
    assert table.take_pending() == {}  # taken once

    table.commit(0, pending[0], 41)
    table.commit(1, pending[1], 7)

    assert table.get("a", 0) == 1
    assert table.get("b", 1) == {"x": "y"}
    assert table.open(0).changelog_offset == 41
    assert table.open(1).changelog_offset == 7


def test_partitions_are_separate(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0, 1)
    table.set("same-key", "zero", 0)
    table.set("same-key", "one", 1)
    _commit_all(table)

    assert table.get("same-key", 0) == "zero"
    assert table.get("same-key", 1) == "one"
    assert dict(table.items(0)) == {"same-key": "zero"}
    assert table.partitions == [0, 1]


def test_pending_write_shadows_stored_value(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("k", "old", 0)
    _commit_all(table)

    table.set("k", "new", 0)

    assert table.get("k", 0) == "new"
    assert list(table.items(0)) == [("k", "new")]


def test_delete_hides_a_key_before_and_after_commit(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("gone", 1, 0)
    table.set("kept", 2, 0)
    _commit_all(table, {0: 10})

    table.delete("gone", 0)

    assert table.get("gone", 0) is None
    assert dict(table.items(0)) == {"kept": 2}

    pending = _commit_all(table, {0: 11})

    assert pending == {0: {b"gone": None}}
    assert table.get("gone", 0) is None
    assert dict(table.items(0)) == {"kept": 2}
    assert table.open(0).changelog_offset == 11


def test_set_after_delete_in_same_batch_wins(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("k", 1, 0)
    _commit_all(table)

    table.delete("k", 0)
    table.set("k", 2, 0)
    _commit_all(table)

    assert table.get("k", 0) == 2


def test_discard_pending_drops_uncommitted_writes(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("k", "committed", 0)
    _commit_all(table)

    table.set("k", "uncommitted", 0)
    table.set("other", 1, 0)
    table.discard_pending()

    assert table.get("k", 0) == "committed"
    assert table.get("other", 0) is None
    assert table.take_pending() == {}


def test_reopen_after_close_keeps_data_and_offset(
    tmp_path: Path, rocksdb_table_factory: Callable[..., BaseTable]
) -> None:
    directory = tmp_path / "restart"
    first = rocksdb_table_factory(0, 3, directory=directory)
    first.set("acme", {"fencing_token": 4}, 0)
    first.set("initech", "x", 3)
    _commit_all(first, {0: 99, 3: 5})
    first.set("lost", "never committed", 0)
    first.close_all()
    assert first.partitions == []

    second = rocksdb_table_factory(0, 3, directory=directory)  # the worker restarted

    assert second.get("acme", 0) == {"fencing_token": 4}
    assert second.get("initech", 3) == "x"
    assert second.get("lost", 0) is None
    assert second.open(0).changelog_offset == 99
    assert second.open(3).changelog_offset == 5


def test_commit_without_offset_keeps_the_previous_offset(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("a", 1, 0)
    _commit_all(table, {0: 20})
    table.set("b", 2, 0)
    _commit_all(table)  # offset None

    assert table.open(0).changelog_offset == 20
    assert dict(table.items(0)) == {"a": 1, "b": 2}


@pytest.mark.parametrize("operation", ["get", "set", "delete", "items"])
def test_unassigned_partition_raises_key_error_naming_it(
    operation: str, table_factory: Callable[..., BaseTable]
) -> None:
    table = table_factory(0, name="usage")

    with pytest.raises(KeyError) as caught:
        if operation == "get":
            table.get("k", 5)
        elif operation == "set":
            table.set("k", 1, 5)
        elif operation == "delete":
            table.delete("k", 5)
        else:
            list(table.items(5))

    message = str(caught.value)
    assert "usage" in message
    assert "5" in message
    assert "not assigned" in message
    assert table.take_pending() == {}  # nothing was queued for the unassigned partition


def test_closed_partition_is_no_longer_readable(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0, 1)
    table.set("k", 1, 1)

    table.close(1)

    assert table.partitions == [0]
    with pytest.raises(KeyError):
        table.get("k", 1)
    assert table.take_pending() == {}  # its pending writes went with it


def test_wipe_removes_local_data(tmp_path: Path, rocksdb_table_factory: Callable[..., BaseTable]) -> None:
    table = rocksdb_table_factory(0, 1, directory=tmp_path / "wiped")
    table.set("k", 1, 0)
    table.set("k", 2, 1)
    _commit_all(table, {0: 3, 1: 4})

    table.wipe(0)

    assert not (tmp_path / "wiped" / "0").exists()
    assert table.partitions == [1]
    store = table.open(0)  # reassigned: an empty store, rebuilt from the changelog by the engine
    assert table.get("k", 0) is None
    assert list(table.items(0)) == []
    assert store.changelog_offset == -1
    assert table.get("k", 1) == 2  # the other partition is untouched


def test_open_is_idempotent(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)

    assert table.open(0) is table.open(0)


def test_partition_store_offset_and_items(store_factory: Callable[[], PartitionStore]) -> None:
    store = store_factory()
    assert store.changelog_offset == -1
    assert list(store.items()) == []

    store.write({b"a": b"1", b"b": b"2"}, 17)
    store.write({b"a": None}, None)

    assert store.get(b"a") is None
    assert store.get(b"b") == b"2"
    # The offset bookkeeping never shows up as a key.
    assert list(store.items()) == [(b"b", b"2")]
    assert store.changelog_offset == 17


def test_partition_store_lists_in_key_order_from_a_start_key(store_factory: Callable[[], PartitionStore]) -> None:
    store = store_factory()
    store.write({b"c": b"3", b"a": b"1", b"b": b"2", b"d": b"4"}, 1)

    assert [key for key, _ in store.items()] == [b"a", b"b", b"c", b"d"]
    assert list(store.items(b"b")) == [(b"b", b"2"), (b"c", b"3"), (b"d", b"4")]
    assert list(store.items(b"bb")) == [(b"c", b"3"), (b"d", b"4")]


def test_a_closed_partition_keeps_its_data_until_wiped(table_factory: Callable[..., BaseTable]) -> None:
    """A revoke closes a partition and a re-assign opens it again: only a wipe starts it from scratch."""
    table = table_factory(0)
    table.set("k", 1, 0)
    _commit_all(table, {0: 8})
    table.close(0)

    table.open(0)
    assert table.get("k", 0) == 1
    assert table.open(0).changelog_offset == 8

    table.wipe(0)
    assert table.partitions == []
    assert table.open(0).changelog_offset == -1
    assert list(table.items(0)) == []


_keys = st.sampled_from(["a", "b", "c", "ünï", "with space"])
_values = st.one_of(st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers()))
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _keys, _values),
        st.tuples(st.just("delete"), _keys, st.none()),
        st.tuples(st.just("commit"), st.none(), st.none()),
        st.tuples(st.just("discard"), st.none(), st.none()),
    ),
    max_size=30,
)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=40, deadline=None)
@given(operations=_operations)
def test_table_behaves_like_a_dict_with_a_pending_layer(
    implementation: str, operations: list[tuple[str, str | None, object]]
) -> None:
    committed: dict[str, object] = {}
    visible: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as directory:
        table = _new_table(implementation, "model", Path(directory))
        table.open(0)
        try:
            offset = 0
            for operation, key, value in operations:
                if operation == "set":
                    assert key is not None
                    table.set(key, value, 0)
                    visible[key] = value
                elif operation == "delete":
                    assert key is not None
                    table.delete(key, 0)
                    visible.pop(key, None)
                elif operation == "commit":
                    offset += 1
                    _commit_all(table, {0: offset})
                    committed = dict(visible)
                else:
                    table.discard_pending()
                    visible = dict(committed)
                assert dict(table.items(0)) == visible
                assert len(list(table.items(0))) == len(visible)
                for candidate in ("a", "b", "c", "ünï", "with space"):
                    assert table.get(candidate, 0) == visible.get(candidate)
            table.close_all()
            table.open(0)
            assert dict(table.items(0)) == committed
        finally:
            table.close_all()


def test_writes_being_flushed_stay_visible_until_committed(table_factory: Callable[..., BaseTable]) -> None:
    """Work that runs across batches reads while a flush waits for the broker: it must see the newest value."""
    table = table_factory(0)
    table.set("session", ["turn 1"], 0)
    taken = table.take_pending()

    assert table.get("session", 0) == ["turn 1"], "taken for the changelog, not yet in RocksDB"
    assert dict(table.items(0)) == {"session": ["turn 1"]}
    table.set("session", ["turn 1", "turn 2"], 0)  # a newer write during the flush wins
    assert table.get("session", 0) == ["turn 1", "turn 2"]

    table.commit(0, taken[0], 0)
    assert table.get("session", 0) == ["turn 1", "turn 2"], "the pending newer write still wins"
    second = table.take_pending()
    table.commit(0, second[0], 1)
    assert table.get("session", 0) == ["turn 1", "turn 2"]


def test_a_deleted_key_being_flushed_reads_as_absent(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("k", 1, 0)
    table.commit(0, table.take_pending()[0], 0)
    table.delete("k", 0)
    taken = table.take_pending()

    assert table.get("k", 0) is None
    assert dict(table.items(0)) == {}
    table.commit(0, taken[0], 1)
    assert table.get("k", 0) is None


def test_rollback_undoes_the_writes_since_begin_and_keeps_earlier_ones(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.set("kept", 1, 0)
    table.set("overwritten", "before", 0)
    table.begin()
    table.set("overwritten", "after", 0)
    table.set("new", 2, 0)
    table.delete("kept", 0)
    table.set("new", 3, 0)  # the same key twice: the undo goes back to before the first write

    table.rollback()

    assert table.get("kept", 0) == 1
    assert table.get("overwritten", 0) == "before"
    assert table.get("new", 0) is None
    assert dict(table.items(0)) == {"kept": 1, "overwritten": "before"}


def test_release_keeps_the_writes_and_stops_journaling(table_factory: Callable[..., BaseTable]) -> None:
    table = table_factory(0)
    table.begin()
    table.set("a", 1, 0)
    table.release()
    table.set("b", 2, 0)

    table.rollback()  # nothing journaled any more: a no-op

    assert dict(table.items(0)) == {"a": 1, "b": 2}
