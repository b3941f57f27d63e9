"""The group-committing server (services/serving.py) over real TCP and a real SQLite file.

Requests that wait at once, from all connections, are answered in one group (one COMMIT); a connection's frames
leave only after its request's group committed, in order; a request that raises fails alone; a group whose commit
fails sends nothing; the lock is held while a group runs; a group holds at most ``max_group`` requests.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cardnet.services.serving import GroupCommitServer, Refused
from cardnet.store import SqliteStore, StoreError
from cardnet.transport import BrokenError, TcpConnection, dial
from cardnet.wire import Message, Uid

R = TypeVar("R")
ME = Uid(b"\x00" * 12, 1)
T = "t"
ASK, ANSWER, MORE, REFUSED = 0x7F01, 0x7F02, 0x7F03, 0x7F04


class Boom(Exception):
    pass


class Rig:
    """A store, an ``answer`` that records each request durably, and the server around them."""

    def __init__(self, tmp: Path, *, max_group: int = 64, refused: Refused | None = None) -> None:
        self.path = str(tmp / "served.db")
        self.store = SqliteStore(self.path)
        self.commits = 0
        self.store._c.set_trace_callback(self._trace)
        self.fail_commit = threading.Event()  # the next group's commit fails
        self.lock_held: list[bool] = []
        self.server = GroupCommitServer(self.answer, group=self.group, max_group=max_group, refused=refused)

    def _trace(self, sql: str) -> None:
        if sql == "COMMIT":
            self.commits += 1

    @contextmanager
    def group(self) -> Iterator[None]:
        with self.store.group():
            yield
            if self.fail_commit.is_set():
                self.fail_commit.clear()
                raise StoreError("io", "commit failed (test)")

    def answer(self, msg: Message) -> list[Message]:
        key = msg.param
        self.lock_held.append(self.server.lock.locked())
        with self.store.transaction() as txn:
            txn.put(T, key, b"done")
            if key.startswith(b"bad"):
                raise Boom(f"request {key!r} fails")
        return [msg.reply(ANSWER, key), msg.reply(MORE, key)]

    def committed(self) -> set[bytes]:
        c = sqlite3.connect(self.path)
        try:
            return {bytes(k) for (k,) in c.execute("SELECT k FROM kv WHERE tbl=?", (T,))}
        finally:
            c.close()


def run(tmp: Path, body: Callable[[Rig, str, int], Awaitable[R]], **kw: Any) -> R:
    rig = Rig(tmp, **kw)

    async def go() -> R:
        host, port = await rig.server.start()
        try:
            return await body(rig, host, port)
        finally:
            await rig.server.aclose()

    try:
        return asyncio.run(go())
    finally:
        rig.store.close()


async def ask(conn: TcpConnection, key: bytes, rig: Rig | None = None) -> list[bytes]:
    """Send one request; its two frames' params (and, with ``rig``, check it was committed when they came)."""
    await conn.send(Message(ME, ME, ASK, key))
    got = [await conn.recv(), await conn.recv()]
    if rig is not None:
        assert key in rig.committed(), f"{key!r} answered before its group committed"
    assert [m.mtype for m in got] == [ANSWER, MORE]
    return [m.param for m in got]


async def connections(host: str, port: int, n: int) -> list[TcpConnection]:
    return [await dial(host, port) for _ in range(n)]


async def queued(rig: Rig, n: int) -> None:
    """Wait until ``n`` requests wait for the next group (the batcher holds one of them, waiting for the lock)."""
    for _ in range(500):
        if rig.server._waiting.qsize() >= n - 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} requests did not arrive")


def test_requests_waiting_at_once_are_answered_in_one_group_with_one_commit(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        conns = await connections(host, port, 10)
        async with rig.server.lock:  # busy (as in a group): the ten requests queue up meanwhile
            asks = [asyncio.create_task(ask(c, b"k%d" % i, rig)) for i, c in enumerate(conns)]
            await queued(rig, 10)
            commits = rig.commits
        assert await asyncio.gather(*asks) == [[b"k%d" % i] * 2 for i in range(10)]
        assert rig.server.groups == 1 and rig.server.grouped == 10
        assert rig.commits == commits + 1  # one COMMIT (one fsync) for the ten
        assert all(rig.lock_held)
        for c in conns:
            c.close()

    run(tmp_path, body)


def test_each_connection_gets_its_answers_in_order_and_only_after_their_commit(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        conns = await connections(host, port, 8)

        async def customer(i: int, conn: TcpConnection) -> None:
            for j in range(20):
                assert await ask(conn, b"c%d-%d" % (i, j), rig) == [b"c%d-%d" % (i, j)] * 2

        await asyncio.gather(*(customer(i, c) for i, c in enumerate(conns)))
        assert rig.server.grouped == 160 and rig.server.groups <= 160
        assert len(rig.committed()) == 160
        for c in conns:
            c.close()

    run(tmp_path, body)


def test_a_request_that_raises_fails_alone(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        conns = await connections(host, port, 5)
        keys = [b"ok0", b"ok1", b"bad2", b"ok3", b"ok4"]
        async with rig.server.lock:
            asks = [asyncio.create_task(ask(c, k)) for c, k in zip(conns, keys, strict=True)]
            await queued(rig, 5)
        got = await asyncio.gather(*asks, return_exceptions=True)
        assert rig.server.groups == 1
        assert isinstance(got[2], BrokenError)  # its connection failed, as when a request raised alone
        assert [g for i, g in enumerate(got) if i != 2] == [[k, k] for k in keys if k != b"bad2"]
        assert rig.committed() == {b"ok0", b"ok1", b"ok3", b"ok4"}  # its own write rolled back, no other
        conns.append(await dial(host, port))
        assert await ask(conns[-1], b"after") == [b"after", b"after"]
        for c in conns:
            c.close()

    run(tmp_path, body)


def test_a_group_whose_commit_fails_sends_nothing(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        conns = await connections(host, port, 4)
        rig.fail_commit.set()
        async with rig.server.lock:
            asks = [asyncio.create_task(ask(c, b"k%d" % i)) for i, c in enumerate(conns)]
            await queued(rig, 4)
        got = await asyncio.gather(*asks, return_exceptions=True)
        assert all(isinstance(g, BrokenError) for g in got), got  # not one frame of the group left
        assert rig.committed() == set()
        assert rig.server.groups == 0
        conn = await dial(host, port)  # the server goes on
        assert await ask(conn, b"again", rig) == [b"again", b"again"]
        conn.close()
        for c in conns:
            c.close()

    run(tmp_path, body)


def fail_commits(db: str, on: bool) -> None:
    """While ``on``, every transaction that writes a record fails at its COMMIT (SQLite checks a deferred foreign
    key there, which a trigger on the records breaks; as tests/integration/failing_commits.py)."""
    c = sqlite3.connect(db, isolation_level=None)
    try:
        if on:
            c.executescript("""
                CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
                CREATE TRIGGER fail_all AFTER INSERT ON kv BEGIN INSERT INTO child (p) VALUES (42); END;
            """)  # fmt: skip
        else:
            c.execute("DROP TRIGGER fail_all")
    finally:
        c.close()


def test_a_store_that_cannot_be_written_is_refused_in_words_and_the_connection_goes_on(tmp_path: Path) -> None:
    """The group's COMMIT fails for real (SQLite: a deferred foreign key broken by a trigger): the request is
    answered with the protocol's refusal, ``store_failed``, and the same connection's next request is served. A
    store error that is not a failed write (the store closed) closes the connection as before: no words about a
    disk that is not to blame."""

    def refused(msg: Message, reason: str, detail: str) -> Message:
        return msg.reply(REFUSED, f"{reason}: {detail}".encode())

    async def body(rig: Rig, host: str, port: int) -> None:
        conn = await dial(host, port)
        fail_commits(rig.path, True)
        await conn.send(Message(ME, ME, ASK, b"k1"))
        got = await conn.recv()
        assert got.mtype == REFUSED and got.param.startswith(b"store_failed: the service cannot write its store")
        assert rig.committed() == set()
        fail_commits(rig.path, False)
        assert await ask(conn, b"k1", rig) == [b"k1", b"k1"]  # the same connection, the same request again
        rig.store.close()
        await conn.send(Message(ME, ME, ASK, b"k2"))
        with pytest.raises(BrokenError):
            await conn.recv()
        conn.close()

    run(tmp_path, body, refused=refused)


def test_a_group_holds_at_most_max_group_requests(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        conns = await connections(host, port, 7)
        async with rig.server.lock:
            asks = [asyncio.create_task(ask(c, b"k%d" % i, rig)) for i, c in enumerate(conns)]
            await queued(rig, 7)
        await asyncio.gather(*asks)
        assert rig.server.groups == 3 and rig.server.grouped == 7  # 3 + 3 + 1
        for c in conns:
            c.close()

    run(tmp_path, body, max_group=3)


def test_call_runs_in_the_next_group_and_returns_after_its_commit(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        def work(key: bytes) -> bytes:
            with rig.store.transaction() as txn:
                txn.put(T, key, b"call")
            return key * 2

        def failing() -> None:
            raise Boom("no")

        got = await rig.server.call(work, b"x")
        assert got == b"xx" and b"x" in rig.committed()
        with pytest.raises(Boom):
            await rig.server.call(failing)

    run(tmp_path, body)


def test_closing_fails_calls_still_waiting(tmp_path: Path) -> None:
    async def body(rig: Rig, host: str, port: int) -> None:
        async with rig.server.lock:
            first = asyncio.create_task(rig.server.call(lambda: 1))
            second = asyncio.create_task(rig.server.call(lambda: 2))
            await asyncio.sleep(0.05)
            closing = asyncio.create_task(rig.server.aclose())
            await asyncio.sleep(0.05)
        await closing
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(r in (1, 2) or getattr(r, "reason", "") == "closed" for r in results), results

    run(tmp_path, body)
