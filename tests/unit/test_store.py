"""The Store conformance suite, run against every store implementation.

Shaped like trio's ``check_two_way_stream``: the tests under "conformance"
take a ``make_store`` fixture, parametrized over ``STORE_FACTORIES``. A
factory gets pytest's ``tmp_path`` and returns an *opener*: each call opens
the same underlying store again (a second connection to the same file or
database), so durability and cross-connection visibility can be tested. A
PostgreSQL store joins by adding one factory (that creates a fresh database
or schema per test) to the list; stores that cannot be reopened (in-memory)
set ``persistent=False`` and skip those tests.

The tests after "SQLite specifics" check what only SQLite has: the file
layout, PRAGMAs, migrations and URL forms.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.errors import CardnetError
from cardnet.store import SqliteStore, Store, StoreError, open_store
from cardnet.store.base import iter_pages
from cardnet.store.sqlite import SCHEMA_VERSION

Opener = Callable[[], Store]


@dataclass(frozen=True)
class StoreFactory:
    name: str
    make: Callable[[Path], Opener]
    persistent: bool = True


def _sqlite_file(query: str = "") -> Callable[[Path], Opener]:
    def make(tmp_path: Path) -> Opener:
        url = f"sqlite:///{tmp_path / 'store.db'}{query}"  # tmp_path is absolute: sqlite:////tmp/...
        return lambda: open_store(url)

    return make


STORE_FACTORIES: list[StoreFactory] = [
    StoreFactory("sqlite-file", _sqlite_file()),
    StoreFactory("sqlite-file-nondurable", _sqlite_file("?durable=0")),
    StoreFactory("sqlite-memory", lambda _tmp: lambda: open_store("sqlite://:memory:"), persistent=False),
]


class Stores:
    """Opens stores through one factory and closes them all at the end of the test."""

    def __init__(self, factory: StoreFactory, tmp_path: Path) -> None:
        self.factory = factory
        self._open = factory.make(tmp_path)
        self._opened: list[Store] = []

    @property
    def persistent(self) -> bool:
        return self.factory.persistent

    def __call__(self) -> Store:
        store = self._open()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture(params=STORE_FACTORIES, ids=[f.name for f in STORE_FACTORIES])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    stores = Stores(request.param, tmp_path)
    yield stores
    stores.close_all()


@pytest.fixture
def store(make_store: Stores) -> Store:
    return make_store()


PERSISTENT_FACTORIES = [f for f in STORE_FACTORIES if f.persistent]


@pytest.fixture(params=PERSISTENT_FACTORIES, ids=[f.name for f in PERSISTENT_FACTORIES])
def make_persistent_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """Like make_store, but only stores that can be closed and opened again (files, databases)."""
    stores = Stores(request.param, tmp_path)
    yield stores
    stores.close_all()


class Boom(Exception):
    """Raised inside transactions to make them fail."""


# =========================================================================== conformance


def test_get_put(store: Store) -> None:
    with store.transaction() as t:
        assert t.get("t", b"k") is None
        t.put("t", b"k", b"v1")
        assert t.get("t", b"k") == b"v1"  # a transaction reads its own writes
        t.put("t", b"k", b"v2")  # put overwrites
        assert t.get("t", b"k") == b"v2"
    with store.transaction() as t:
        assert t.get("t", b"k") == b"v2"


def test_empty_and_binary_keys_and_values(store: Store) -> None:
    keys = [b"", b"\x00", b"\x00\x00", b"\xff", b"a\x00b", bytes(range(256))]
    with store.transaction() as t:
        for k in keys:
            t.put("t", k, k + b"!")
        t.put("t", b"empty", b"")
    with store.transaction() as t:
        for k in keys:
            assert t.get("t", k) == k + b"!"
        value = t.get("t", b"empty")
        assert value == b"" and value is not None  # an empty value is not a missing one
        assert type(value) is bytes


def test_large_value(store: Store) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    with store.transaction() as t:
        t.put("t", b"big", big)
    with store.transaction() as t:
        assert t.get("t", b"big") == big


def test_tables_are_separate(store: Store) -> None:
    with store.transaction() as t:
        t.put("a", b"k", b"in a")
        t.put("b", b"k", b"in b")
        assert t.insert("c", b"k", b"in c")
    with store.transaction() as t:
        assert (t.get("a", b"k"), t.get("b", b"k"), t.get("c", b"k")) == (b"in a", b"in b", b"in c")
        assert t.delete("a", b"k")
        assert t.get("b", b"k") == b"in b"
        assert [t.count(x) for x in "abcd"] == [0, 1, 1, 0]
        assert t.scan("b") == [(b"k", b"in b")]


def test_insert_is_first_wins(store: Store) -> None:
    with store.transaction() as t:
        assert t.insert("spent", b"s1", b"first") is True
        assert t.insert("spent", b"s1", b"second") is False
        assert t.get("spent", b"s1") == b"first"
    with store.transaction() as t:
        assert t.insert("spent", b"s1", b"third") is False
        assert t.get("spent", b"s1") == b"first"
        t.put("spent", b"s1", b"put overwrites")
        assert t.get("spent", b"s1") == b"put overwrites"
        assert t.delete("spent", b"s1")
        assert t.insert("spent", b"s1", b"again") is True
        assert t.get("spent", b"s1") == b"again"


def test_insert_first_wins_across_connections(make_persistent_store: Stores) -> None:
    a, b = make_persistent_store(), make_persistent_store()
    with a.transaction() as t:
        assert t.insert("ttp", b"x", b"abort")
    with b.transaction() as t:
        assert not t.insert("ttp", b"x", b"resolve")
        assert t.get("ttp", b"x") == b"abort"


def test_delete(store: Store) -> None:
    with store.transaction() as t:
        assert t.delete("t", b"k") is False
        t.put("t", b"k", b"v")
        t.put("t", b"k2", b"v")
        assert t.delete("t", b"k") is True
        assert t.delete("t", b"k") is False
        assert t.get("t", b"k") is None
        assert t.get("t", b"k2") == b"v"


def test_scan_order_and_prefix(store: Store) -> None:
    keys = [b"", b"\x00", b"a", b"a\x00", b"a\xff", b"ab", b"abc", b"ac", b"b", b"\x7f", b"\x80", b"\xff"]
    with store.transaction() as t:
        for k in reversed(keys):
            t.put("t", k, b"v" + k)
        t.put("other", b"a", b"not me")
    with store.transaction() as t:
        assert t.scan("t") == [(k, b"v" + k) for k in sorted(keys)]  # bytewise (memcmp) order
        assert [k for k, _ in t.scan("t", b"a")] == [b"a", b"a\x00", b"ab", b"abc", b"ac", b"a\xff"]
        assert [k for k, _ in t.scan("t", b"ab")] == [b"ab", b"abc"]
        assert [k for k, _ in t.scan("t", b"abc")] == [b"abc"]
        assert t.scan("t", b"abcd") == []
        assert t.scan("t", b"zz") == []
        assert t.scan("empty") == []
        assert [k for k, _ in t.scan("t", b"\x00")] == [b"\x00"]
        assert [t.count("t", p) for p in (b"", b"a", b"ab", b"abcd", b"\xff", b"\x00")] == [len(keys), 6, 2, 0, 1, 1]
        assert t.count("empty", b"a") == 0


def test_scan_limit(store: Store) -> None:
    with store.transaction() as t:
        for i in range(10):
            t.put("t", bytes([i]), b"")
    with store.transaction() as t:
        assert [k for k, _ in t.scan("t", limit=3)] == [b"\x00", b"\x01", b"\x02"]
        assert t.scan("t", limit=0) == []
        assert len(t.scan("t", limit=100)) == 10
        assert len(t.scan("t", b"\x05", limit=5)) == 1


@pytest.mark.parametrize("prefix", [b"\xff", b"\xff\xff", b"a\xff", b"a\xff\xff", b"\x00\xff"])
def test_scan_prefix_of_ff_bytes(store: Store, prefix: bytes) -> None:
    # The upper bound of a prefix ending in 0xff is not prefix[:-1] + 0x100: the implementation must carry.
    candidates = [
        b"",
        b"\x00",
        b"\x00\xfe",
        b"\x00\xff",
        b"\x00\xff\x00",
        b"\x01",
        b"a",
        b"a\xfe",
        b"a\xff",
        b"a\xff\xff",
        b"a\xff\xff\x00",
        b"b",
        b"\xfe",
        b"\xfe\xff",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"\xff\xff\xff",
    ]
    with store.transaction() as t:
        for k in candidates:
            t.put("t", k, b"")
    with store.transaction() as t:
        assert [k for k, _ in t.scan("t", prefix)] == sorted(k for k in candidates if k.startswith(prefix))
        assert [k for k, _ in t.scan("t", prefix, limit=1)] == sorted(k for k in candidates if k.startswith(prefix))[:1]
        assert t.count("t", prefix) == sum(1 for k in candidates if k.startswith(prefix))


def test_count(store: Store) -> None:
    with store.transaction() as t:
        assert t.count("t") == 0
        for i in range(5):
            t.put("t", bytes([i]), b"")
        t.put("t", b"\x00", b"again")  # overwrite: still 5
        t.insert("t", b"\x01", b"refused")
        assert t.count("t") == 5
        t.delete("t", b"\x02")
        assert t.count("t") == 4


_model_tables = itertools.count()  # one fresh table per hypothesis example: the store is shared


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "insert", "delete"]),
            st.lists(st.sampled_from([0x00, 0x01, 0x7F, 0xFE, 0xFF]), max_size=3).map(bytes),
            st.binary(max_size=3),
        ),
        max_size=30,
    ),
    prefix=st.lists(st.sampled_from([0x00, 0x7F, 0xFF]), max_size=2).map(bytes),
    limit=st.none() | st.integers(0, 5),
)
def test_kv_matches_a_dict_model(
    store: Store, ops: list[tuple[str, bytes, bytes]], prefix: bytes, limit: int | None
) -> None:
    table = f"model{next(_model_tables)}"
    model: dict[bytes, bytes] = {}
    with store.transaction() as t:
        for op, k, v in ops:
            if op == "put":
                t.put(table, k, v)
                model[k] = v
            elif op == "insert":
                assert t.insert(table, k, v) == (k not in model)
                model.setdefault(k, v)
            else:
                assert t.delete(table, k) == (k in model)
                model.pop(k, None)
    with store.transaction() as t:
        expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
        assert t.scan(table, prefix, limit) == (expected if limit is None else expected[:limit])
        assert t.count(table) == len(model)
        assert t.count(table, prefix) == len(expected)  # counted with the same bounds as the scan


# --------------------------------------------------------------------------- logs


def test_log_append_and_read(store: Store) -> None:
    with store.transaction() as t:
        s1 = t.append("out", b"one")
        s2 = t.append("out", b"two")
        s3 = t.append("out", b"")
        assert s1 < s2 < s3
        assert t.read_log("out") == [(s1, b"one"), (s2, b"two"), (s3, b"")]  # in its own transaction
    with store.transaction() as t:
        assert t.read_log("out") == [(s1, b"one"), (s2, b"two"), (s3, b"")]
        assert t.read_log("out", after=s1) == [(s2, b"two"), (s3, b"")]
        assert t.read_log("out", after=s3) == []
        assert t.read_log("out", limit=2) == [(s1, b"one"), (s2, b"two")]
        assert t.read_log("out", after=s1, limit=1) == [(s2, b"two")]
        assert t.read_log("out", limit=0) == []
        assert t.read_log("nothing") == []


def test_log_sequence_grows_across_logs_and_transactions(store: Store) -> None:
    seqs = []
    for i in range(3):
        with store.transaction() as t:
            seqs.append(t.append("a", b"%d" % i))
            seqs.append(t.append("b", b"%d" % i))
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    with store.transaction() as t:
        assert [v for _, v in t.read_log("a")] == [b"0", b"1", b"2"]
        assert [v for _, v in t.read_log("b")] == [b"0", b"1", b"2"]
        assert [s for s, _ in t.read_log("a")] == seqs[0::2]


def test_delete_log(store: Store) -> None:
    with store.transaction() as t:
        seqs = [t.append("out", bytes([i])) for i in range(5)]
        other = t.append("other", b"x")
    with store.transaction() as t:
        assert t.delete_log("out", seqs[:2]) == 2
        assert t.delete_log("out", seqs[:2]) == 0  # already gone
        assert t.delete_log("out", []) == 0
        assert t.delete_log("out", [other]) == 0  # a seq of another log is not touched
        assert t.read_log("out") == [(s, bytes([i])) for i, s in enumerate(seqs) if i >= 2]
        assert t.read_log("other") == [(other, b"x")]
        assert t.delete_log("out", [seqs[4], seqs[2]]) == 2  # any order, gaps allowed
        assert t.read_log("out") == [(seqs[3], b"\x03")]


def test_log_sequence_not_reused_after_delete(store: Store) -> None:
    # An outbox acknowledges by seq: a new entry must never take the seq of an acknowledged one.
    with store.transaction() as t:
        last = t.append("out", b"a")
        t.delete_log("out", [last])
    with store.transaction() as t:
        assert t.append("out", b"b") > last


def test_iter_pages(store: Store) -> None:
    with store.transaction() as t:
        seqs = [t.append("out", bytes([i])) for i in range(7)]
    with store.transaction() as t:
        assert list(iter_pages(t, "out", page=3)) == [(s, bytes([i])) for i, s in enumerate(seqs)]
        assert list(iter_pages(t, "out", page=7)) == list(iter_pages(t, "out"))
        assert list(iter_pages(t, "none", page=2)) == []


# --------------------------------------------------------------------------- transactions


def test_rollback_on_exception_leaves_nothing(store: Store) -> None:
    with store.transaction() as t:
        t.put("t", b"keep", b"1")
        kept_seq = t.append("out", b"kept")
    err = Boom("fail")
    with pytest.raises(Boom) as ei, store.transaction() as t:
        t.put("t", b"new", b"x")
        t.put("t", b"keep", b"changed")
        t.delete("t", b"keep")
        t.insert("t", b"ins", b"x")
        t.append("out", b"lost")
        t.delete_log("out", [kept_seq])
        raise err
    assert ei.value is err  # the caller's exception comes out unchanged
    with store.transaction() as t:
        assert t.scan("t") == [(b"keep", b"1")]
        assert t.read_log("out") == [(kept_seq, b"kept")]


def test_rollback_on_base_exception(store: Store) -> None:
    with pytest.raises(KeyboardInterrupt), store.transaction() as t:
        t.put("t", b"k", b"v")
        raise KeyboardInterrupt
    with store.transaction() as t:
        assert t.get("t", b"k") is None


def test_store_usable_after_rollback(store: Store) -> None:
    for _ in range(3):
        with pytest.raises(Boom), store.transaction() as t:
            t.put("t", b"k", b"v")
            raise Boom
    with store.transaction() as t:
        t.put("t", b"k", b"ok")
    with store.transaction() as t:
        assert t.get("t", b"k") == b"ok"


def test_savepoint_rollback_keeps_outer_work(store: Store) -> None:
    with store.transaction() as t:
        t.put("t", b"outer", b"1")
        before = t.append("out", b"outer")
        with pytest.raises(Boom), t.savepoint():
            t.put("t", b"inner", b"x")
            t.put("t", b"outer", b"overwritten")
            t.append("out", b"inner")
            raise Boom
        assert t.get("t", b"inner") is None
        assert t.get("t", b"outer") == b"1"
        with t.savepoint():
            t.put("t", b"second", b"2")
        t.put("t", b"after", b"3")
    with store.transaction() as t:
        assert t.scan("t") == [(b"after", b"3"), (b"outer", b"1"), (b"second", b"2")]
        assert [v for _, v in t.read_log("out")] == [b"outer"]
        assert t.read_log("out")[0][0] == before


def test_nested_savepoints(store: Store) -> None:
    with store.transaction() as t:
        with t.savepoint():
            t.put("t", b"a", b"")
            with pytest.raises(Boom), t.savepoint():
                t.put("t", b"b", b"")
                with t.savepoint():
                    t.put("t", b"c", b"")
                raise Boom
            t.put("t", b"d", b"")
        with pytest.raises(Boom), t.savepoint():
            with t.savepoint():
                t.put("t", b"e", b"")
            raise Boom
    with store.transaction() as t:
        assert [k for k, _ in t.scan("t")] == [b"a", b"d"]


def test_group_commit_shape(store: Store) -> None:
    """Several steps in one transaction, each in a savepoint; a failing step is dropped alone."""
    results = []
    with store.transaction() as t:
        for i in range(5):
            try:
                with t.savepoint():
                    t.append("out", bytes([i]))
                    if i % 2:
                        raise Boom(i)
                results.append(i)
            except Boom:
                pass
    assert results == [0, 2, 4]
    with store.transaction() as t:
        assert [v for _, v in t.read_log("out")] == [b"\x00", b"\x02", b"\x04"]


def test_exception_in_outer_after_savepoint_loses_all(store: Store) -> None:
    with pytest.raises(Boom), store.transaction() as t:
        with t.savepoint():
            t.put("t", b"k", b"v")
        raise Boom
    with store.transaction() as t:
        assert t.count("t") == 0


def test_closed_store(make_store: Stores) -> None:
    s = make_store()
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError) as ei, s.transaction():
        pass
    assert ei.value.reason == "closed"
    assert isinstance(ei.value, CardnetError)


# --------------------------------------------------------------------------- durability and sharing


def test_durable_across_close_and_reopen(make_persistent_store: Stores) -> None:
    s = make_persistent_store()
    with s.transaction() as t:
        t.put("t", b"k", b"v")
        seq = t.append("out", b"entry")
    with pytest.raises(Boom), s.transaction() as t:
        t.put("t", b"lost", b"x")
        raise Boom
    s.close()
    s2 = make_persistent_store()
    with s2.transaction() as t:
        assert t.scan("t") == [(b"k", b"v")]
        assert t.read_log("out") == [(seq, b"entry")]
        assert t.append("out", b"next") > seq


def test_commit_visible_to_another_connection(make_persistent_store: Stores) -> None:
    a, b = make_persistent_store(), make_persistent_store()
    with a.transaction() as t:
        t.put("t", b"k", b"from a")
    with b.transaction() as t:
        assert t.get("t", b"k") == b"from a"
        t.put("t", b"k", b"from b")
    with a.transaction() as t:
        assert t.get("t", b"k") == b"from b"


def test_url_attribute(make_store: Stores) -> None:
    s = make_store()
    assert isinstance(s.url, str) and s.url


# =========================================================================== SQLite specifics


def pragma(store: Store, name: str) -> object:
    assert isinstance(store, SqliteStore)
    return store._c.execute(f"PRAGMA {name}").fetchone()[0]


def test_sqlite_durable_pragmas(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "d.db")) as s:
        assert s.durable
        assert pragma(s, "journal_mode") == "wal"
        assert pragma(s, "synchronous") == 2  # FULL


@pytest.mark.parametrize("query", ["?durable=0", "?durable=false", "?durable=no"])
def test_sqlite_nondurable_pragmas(tmp_path: Path, query: str) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'n.db'}{query}")
    try:
        assert isinstance(s, SqliteStore) and not s.durable
        assert pragma(s, "journal_mode") == "wal"
        assert pragma(s, "synchronous") == 1  # NORMAL
    finally:
        s.close()


def test_sqlite_durable_is_default_and_explicit(tmp_path: Path) -> None:
    for query in ("", "?durable=1"):
        s = open_store(f"sqlite:///{tmp_path / 'x.db'}{query}")
        try:
            assert pragma(s, "synchronous") == 2
        finally:
            s.close()


def test_sqlite_layout(tmp_path: Path) -> None:
    path = tmp_path / "layout.db"
    with SqliteStore(str(path)) as s, s.transaction() as t:
        t.put("tbl", b"k", b"v")
        t.append("lg", b"x")
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"kv", "log"} <= tables
        assert conn.execute("SELECT tbl, k, v FROM kv").fetchall() == [("tbl", b"k", b"v")]
        assert conn.execute("SELECT name, v FROM log").fetchall() == [("lg", b"x")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is a property of the file
    finally:
        conn.close()


def test_migration_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    with SqliteStore(str(path)) as s:
        assert s.schema_version == SCHEMA_VERSION >= 1
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    with SqliteStore(str(path)) as s:  # reopening does not migrate again
        assert s.schema_version == SCHEMA_VERSION


def test_migration_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError) as ei:
        SqliteStore(str(path))
    assert ei.value.reason == "newer_schema"
    assert "upgrade cardnet" in str(ei.value)
    with pytest.raises(StoreError) as ei:
        open_store(f"sqlite:///{path}")
    assert ei.value.reason == "newer_schema"
    conn = sqlite3.connect(path)  # and the file is left as it was
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    "content", [b"this is not a database" * 100, b"\x00" * 4096, b"SQLite format 3\x00" + b"\xff" * 200]
)
def test_non_sqlite_file_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as ei:
        SqliteStore(str(path))
    assert ei.value.reason == "io"
    assert path.read_bytes() == content  # never overwritten


def test_refused_file_closes_its_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    newer = tmp_path / "newer.db"
    conn = real_connect(newer)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    for path, reason in ((junk, "io"), (newer, "newer_schema")):
        with pytest.raises(StoreError) as ei:
            SqliteStore(str(path))
        assert ei.value.reason == reason
    assert len(opened) == 2
    for c in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            c.execute("SELECT 1")


def test_missing_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as ei:
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    assert ei.value.reason == "io"
    assert not (tmp_path / "no").exists()


def test_directory_as_file_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as ei:
        SqliteStore(str(tmp_path))
    assert ei.value.reason == "io"


# --------------------------------------------------------------------------- URLs


def test_url_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    s = open_store("sqlite:///sub/rel.db")
    try:
        assert isinstance(s, SqliteStore)
        assert s.path == "sub/rel.db"
        assert s.url == "sqlite:///sub/rel.db"
    finally:
        s.close()
    assert (tmp_path / "sub" / "rel.db").exists()


def test_url_absolute(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    url = "sqlite:///" + str(path)
    assert url.startswith("sqlite:////")
    s = open_store(url)
    try:
        assert isinstance(s, SqliteStore) and s.path == str(path) and s.url == url
    finally:
        s.close()
    assert path.exists()


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:", "sqlite://", "sqlite://:memory:?durable=0"])
def test_url_memory(url: str) -> None:
    s = open_store(url)
    try:
        assert isinstance(s, SqliteStore) and s.path == ":memory:"
        with s.transaction() as t:
            t.put("t", b"k", b"v")
    finally:
        s.close()
    s2 = open_store(url)  # every open is a new, empty store
    try:
        with s2.transaction() as t:
            assert t.get("t", b"k") is None
    finally:
        s2.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative.db",  # two slashes: a host part, which SQLite has not
        "sqlite:///",  # no path at all
        "sqlite:/x.db",
        "sqlite:x.db",
        "store.db",
        "/tmp/store.db",
        "",
        "mysql://localhost/db",
        "file:///tmp/x.db",
        "SQLITE:///x.db",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreError) as ei:
        open_store(url)
    assert ei.value.reason == "bad_url"
    assert "sqlite:///" in str(ei.value)  # says what to write instead


@pytest.mark.parametrize("url", ["postgresql://user@localhost/cardnet", "postgres://localhost/cardnet"])
def test_postgresql_unsupported_for_now(url: str) -> None:
    with pytest.raises(StoreError) as ei:
        open_store(url)
    assert ei.value.reason == "unsupported"


@pytest.mark.parametrize("n_puts", [0, 1, 3, 8, 9, 40])
def test_write_puts_then_deletes_in_one_transaction(tmp_path: Path, n_puts: int) -> None:
    store = SqliteStore(str(tmp_path / "w.db"))
    with store.transaction() as t:
        t.put("t", b"old", b"x")
    store.write("t", [(b"k%d" % i, b"v%d" % i) for i in range(n_puts)], [b"old"])
    with store.transaction() as t:
        assert t.scan("t") == sorted((b"k%d" % i, b"v%d" % i) for i in range(n_puts))
    store.close()


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("n_puts", [1, 2, 8, 9])
@pytest.mark.parametrize("n_deletes", [0, 1, 32, 65])
def test_write_every_shape_survives_reopen(tmp_path: Path, exclusive: bool, n_puts: int, n_deletes: int) -> None:
    """Puts alone (one autocommit statement), with deletes (one IN statement, or many), either locking mode."""
    path = str(tmp_path / "w.db")
    store = SqliteStore(path, exclusive=exclusive)
    store.write("t", [(b"old%03d" % i, b"x") for i in range(70)], [])
    store.write("t", [(b"k%d" % i, b"v%d" % i) for i in range(n_puts)], [b"old%03d" % i for i in range(n_deletes)])
    store.close()
    again = SqliteStore(path, exclusive=exclusive)
    with again.transaction() as t:
        rows = dict(t.scan("t"))
    again.close()
    assert {k: v for k, v in rows.items() if k.startswith(b"k")} == {b"k%d" % i: b"v%d" % i for i in range(n_puts)}
    assert sorted(k for k in rows if k.startswith(b"old")) == [b"old%03d" % i for i in range(n_deletes, 70)]


def test_an_exclusive_store_has_one_owner(tmp_path: Path) -> None:
    """A card's store is held by the host running the card: a second opener is refused, with what to do."""
    url = f"sqlite:///{tmp_path / 'card.db'}"
    owner = open_store(url, exclusive=True)
    owner.write("t", [(b"k", b"v")], [])
    for exclusive in (True, False):
        with pytest.raises(StoreError) as ei:
            open_store(url, exclusive=exclusive)
        assert ei.value.reason == "in_use" and "held by another process" in str(ei.value)
        assert "stop that process, then try again" in str(ei.value)
    owner.close()
    reader = open_store(url)  # the owner let go: anyone may open it now
    with reader.transaction() as t:
        assert t.get("t", b"k") == b"v"
    reader.close()
