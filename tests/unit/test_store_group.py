"""``SqliteStore.group()``: group commit across code that opens its own transactions (real SQLite files).

Inside a group every ``transaction()`` and ``write()`` of the thread is a savepoint: each stays all or nothing on
its own, nothing is visible to another connection before the group's one COMMIT, and everything after it; an
exception, or a failed COMMIT, rolls the whole group back; groups do not nest; another thread waits for the end.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.store import SqliteStore, StoreError

T = "t"


class Boom(Exception):
    pass


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "group.db")


@pytest.fixture
def store(path: str) -> Iterator[SqliteStore]:
    s = SqliteStore(path)
    yield s
    s.close()


def committed(path: str) -> dict[bytes, bytes]:
    """What another connection sees: the committed rows of table ``t``."""
    c = sqlite3.connect(path)
    try:
        return {bytes(k): bytes(v) for k, v in c.execute("SELECT k, v FROM kv WHERE tbl=?", (T,))}
    finally:
        c.close()


def statements(store: SqliteStore) -> list[str]:
    """Every statement the store's connection runs from now on (BEGIN, SAVEPOINT, COMMIT, ...)."""
    seen: list[str] = []
    store._c.set_trace_callback(seen.append)
    return seen


def test_each_transaction_is_a_savepoint_and_the_group_commits_once(store: SqliteStore, path: str) -> None:
    seen = statements(store)
    with store.group():
        for i in range(3):
            with store.transaction() as txn:
                txn.put(T, b"k%d" % i, b"v%d" % i)
        store.write(T, [(b"w", b"1")], [])
        with store.transaction() as txn:  # a transaction sees what the group wrote before it
            assert txn.get(T, b"k0") == b"v0" and txn.get(T, b"w") == b"1"
        assert committed(path) == {}  # nothing visible (nor durable) before the end
    assert committed(path) == {b"k0": b"v0", b"k1": b"v1", b"k2": b"v2", b"w": b"1"}
    assert [s for s in seen if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert sum(1 for s in seen if s.startswith("SAVEPOINT")) == 5


def test_a_failing_transaction_inside_a_group_leaves_the_others(store: SqliteStore, path: str) -> None:
    with store.group():
        with store.transaction() as txn:
            txn.put(T, b"a", b"1")
        with pytest.raises(Boom), store.transaction() as txn:
            txn.put(T, b"a", b"changed")
            txn.put(T, b"b", b"2")
            raise Boom
        with store.transaction() as txn:
            assert txn.get(T, b"a") == b"1" and txn.get(T, b"b") is None  # all of it undone, nothing else
            txn.put(T, b"c", b"3")
    assert committed(path) == {b"a": b"1", b"c": b"3"}


def test_a_failing_write_inside_a_group_leaves_the_others(store: SqliteStore, path: str) -> None:
    with store.group():
        store.write(T, [(b"a", b"1")], [])
        with pytest.raises(StoreError):
            store.write("x" * 2, [(b"b", b"2"), (b"c", None)], [])  # type: ignore[list-item]  # NOT NULL fails
        with store.transaction() as txn:
            assert txn.get("xx", b"b") is None
    assert committed(path) == {b"a": b"1"}


def test_an_exception_rolls_the_whole_group_back(store: SqliteStore, path: str) -> None:
    with store.transaction() as txn:
        txn.put(T, b"before", b"0")
    with pytest.raises(Boom), store.group():
        with store.transaction() as txn:
            txn.put(T, b"a", b"1")
        store.write(T, [(b"before", b"overwritten")], [])
        raise Boom
    assert committed(path) == {b"before": b"0"}
    with store.transaction() as txn:  # the store works on after it
        txn.put(T, b"after", b"2")
    assert committed(path) == {b"before": b"0", b"after": b"2"}


def test_a_failed_commit_rolls_everything_back_and_raises_io(path: str) -> None:
    # a deferred foreign key is checked at COMMIT: a violation makes SQLite's COMMIT itself fail
    c = sqlite3.connect(path)
    c.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                    "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);")  # fmt: skip
    c.close()
    store = SqliteStore(path)
    try:
        with pytest.raises(StoreError) as err, store.group():
            with store.transaction() as txn:
                txn.put(T, b"a", b"1")
            store._c.execute("INSERT INTO child (p) VALUES (42)")  # no parent 42: the COMMIT will fail
        assert err.value.reason == "io" and "group commit failed" in str(err.value)
        assert committed(path) == {}
        assert not store._c.in_transaction
        with store.transaction() as txn:  # usable afterwards, and outside any group again
            txn.put(T, b"b", b"2")
        assert committed(path) == {b"b": b"2"}
    finally:
        store.close()


def test_a_group_inside_a_group_is_refused(store: SqliteStore, path: str) -> None:
    with store.group():
        with store.transaction() as txn:
            txn.put(T, b"a", b"1")
        with pytest.raises(StoreError) as err, store.group():
            pass
        assert err.value.reason == "nested" and "do not nest" in str(err.value)
        with store.transaction() as txn:  # the outer group goes on
            txn.put(T, b"b", b"2")
    assert committed(path) == {b"a": b"1", b"b": b"2"}


def test_another_threads_transaction_waits_for_the_group(store: SqliteStore, path: str) -> None:
    entered = threading.Event()
    seen_in_other: list[bytes | None] = []

    def other() -> None:
        with store.transaction() as txn:
            entered.set()
            seen_in_other.append(txn.get(T, b"g"))
            txn.put(T, b"o", b"other")

    t = threading.Thread(target=other)
    with store.group():
        with store.transaction() as txn:
            txn.put(T, b"g", b"group")
        t.start()
        time.sleep(0.2)
        assert not entered.is_set(), "another thread's transaction ran inside the group"
        store.write(T, [(b"g2", b"group")], [])
    t.join(10)
    assert entered.is_set()
    assert seen_in_other == [b"group"]  # it ran after the group committed, in a transaction of its own
    assert committed(path) == {b"g": b"group", b"g2": b"group", b"o": b"other"}


def test_group_on_a_closed_store(path: str) -> None:
    store = SqliteStore(path)
    store.close()
    with pytest.raises(StoreError) as err, store.group():
        pass
    assert err.value.reason == "closed"


def test_nested_savepoints_inside_a_grouped_transaction(store: SqliteStore, path: str) -> None:
    with store.group(), store.transaction() as txn:
        txn.put(T, b"a", b"1")
        with pytest.raises(Boom), txn.savepoint():
            txn.put(T, b"b", b"2")
            raise Boom
        with txn.savepoint():
            txn.put(T, b"c", b"3")
    assert committed(path) == {b"a": b"1", b"c": b"3"}


class _Tears:
    """A world stub for :class:`TearingStore`: tears at the draws named, in turn."""

    def __init__(self, *draws: str | None) -> None:
        self.draws = list(draws)

    def draw_tear(self, label: str) -> str | None:
        return self.draws.pop(0) if self.draws else None


@pytest.mark.parametrize("when", ["before", "after"])
def test_the_simulators_store_loses_the_whole_group_when_a_transaction_inside_is_torn(when: str) -> None:
    from cardnet.sim.world import TearingStore, Torn

    store = TearingStore(_Tears(None, None, when), "c")  # type: ignore[arg-type]
    store.armed = True
    with pytest.raises(Torn) as err, store.group():
        with store.transaction() as txn:
            txn.put(T, b"a", b"1")
        with pytest.raises(Torn), store.transaction() as txn:  # a server catches one request's error, goes on
            txn.put(T, b"b", b"2")
        with pytest.raises(Torn):
            store.write(T, [(b"c", b"3")], [])  # no power any more
    assert "torn before commit" in str(err.value)  # the group's end: nothing of it was committed
    assert store.torn
    store.torn, store.armed = False, False
    with store.transaction() as txn:
        assert txn.scan(T) == []
