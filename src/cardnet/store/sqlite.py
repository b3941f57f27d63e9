"""SQLite implementation of :class:`cardnet.store.base.Store`.

One file per card or service; WAL journal; ``synchronous=FULL`` unless the
URL says ``?durable=0`` (then ``NORMAL``: a crash may lose the last
transactions but never tears one). Writers take ``BEGIN IMMEDIATE``. The
schema is versioned by ``PRAGMA user_version`` and migrated forward on open;
a file written by a newer cardnet is refused rather than guessed at.

Group commit (:meth:`SqliteStore.group`): one ``BEGIN IMMEDIATE`` for a whole
block of one thread; every ``transaction()`` and ``write()`` of that thread
inside it is a SAVEPOINT (all or nothing on its own) and the block's end is
the one COMMIT (one fsync). The group holds the store's lock: other threads
wait for its end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cardnet.store.base import claim_kind
from cardnet.store.errors import StoreError
from cardnet.store.owner import describe, holder

# Each entry migrates from version i to i + 1. Never edit a released entry: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE kv (tbl TEXT NOT NULL, k BLOB NOT NULL, v BLOB NOT NULL, PRIMARY KEY (tbl, k))
        WITHOUT ROWID;
    CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, v BLOB NOT NULL);
    CREATE INDEX log_by_name ON log (name, seq);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteTxn:
    """A transaction on one connection; not used after its ``with`` block."""

    __slots__ = ("_c", "_sp")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn
        self._sp = 0

    def get(self, table: str, key: bytes) -> bytes | None:
        row = self._c.execute("SELECT v FROM kv WHERE tbl=? AND k=?", (table, key)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._c.execute("INSERT OR REPLACE INTO kv (tbl, k, v) VALUES (?, ?, ?)", (table, key, value))

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None:
        self._c.executemany("INSERT OR REPLACE INTO kv (tbl, k, v) VALUES (?, ?, ?)", [(table, k, v) for k, v in items])

    def delete_many(self, table: str, keys: list[bytes]) -> int:
        return self._c.executemany("DELETE FROM kv WHERE tbl=? AND k=?", [(table, k) for k in keys]).rowcount

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        cur = self._c.execute("INSERT OR IGNORE INTO kv (tbl, k, v) VALUES (?, ?, ?)", (table, key, value))
        return cur.rowcount == 1

    def insert_many(self, table: str, items: list[tuple[bytes, bytes]]) -> int:
        rows = [(table, k, v) for k, v in items]
        return self._c.executemany("INSERT OR IGNORE INTO kv (tbl, k, v) VALUES (?, ?, ?)", rows).rowcount

    def delete(self, table: str, key: bytes) -> bool:
        return self._c.execute("DELETE FROM kv WHERE tbl=? AND k=?", (table, key)).rowcount == 1

    def scan(self, table: str, prefix: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        lim = -1 if limit is None else limit
        if prefix:
            upper = _prefix_upper(prefix)
            if upper is None:
                rows = self._c.execute(
                    "SELECT k, v FROM kv WHERE tbl=? AND k>=? ORDER BY k LIMIT ?", (table, prefix, lim)
                )
            else:
                rows = self._c.execute(
                    "SELECT k, v FROM kv WHERE tbl=? AND k>=? AND k<? ORDER BY k LIMIT ?",
                    (table, prefix, upper, lim),
                )
        else:
            rows = self._c.execute("SELECT k, v FROM kv WHERE tbl=? ORDER BY k LIMIT ?", (table, lim))
        return [(bytes(k), bytes(v)) for k, v in rows]

    def count(self, table: str, prefix: bytes = b"") -> int:
        if not prefix:
            return int(self._c.execute("SELECT count(*) FROM kv WHERE tbl=?", (table,)).fetchone()[0])
        upper = _prefix_upper(prefix)
        if upper is None:
            row = self._c.execute("SELECT count(*) FROM kv WHERE tbl=? AND k>=?", (table, prefix)).fetchone()
        else:
            row = self._c.execute(
                "SELECT count(*) FROM kv WHERE tbl=? AND k>=? AND k<?", (table, prefix, upper)
            ).fetchone()
        return int(row[0])

    def append(self, log: str, value: bytes) -> int:
        cur = self._c.execute("INSERT INTO log (name, v) VALUES (?, ?)", (log, value))
        seq = cur.lastrowid
        assert seq is not None
        return seq

    def read_log(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, bytes]]:
        rows = self._c.execute(
            "SELECT seq, v FROM log WHERE name=? AND seq>? ORDER BY seq LIMIT ?",
            (log, after, -1 if limit is None else limit),
        )
        return [(int(s), bytes(v)) for s, v in rows]

    def delete_log(self, log: str, seqs: list[int]) -> int:
        cur = self._c.executemany("DELETE FROM log WHERE name=? AND seq=?", [(log, s) for s in seqs])
        return cur.rowcount

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._sp += 1
        name = f"sp{self._sp}"
        self._c.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._c.execute(f"ROLLBACK TO {name}")
            self._c.execute(f"RELEASE {name}")
            raise
        else:
            self._c.execute(f"RELEASE {name}")
        finally:
            self._sp -= 1


_MULTI_ROWS = 8
_MULTI_DELETE = 64
OPEN_WAIT_S = 2.0  # how long an open waits for another owner to let go of the file


@functools.cache
def _put_rows_sql(n: int) -> str:
    return "INSERT OR REPLACE INTO kv (tbl, k, v) VALUES " + ", ".join(["(?, ?, ?)"] * n)


_PUT_2_ROWS = _put_rows_sql(2)


@functools.cache
def _delete_rows_sql(n: int) -> str:
    return "DELETE FROM kv WHERE tbl=? AND k IN (" + ", ".join(["?"] * n) + ")"


def _blob(b: bytes) -> bytearray:
    """``b`` as a bytearray: the sqlite3 module binds a bytearray directly, but first asks a
    bytes object for adapters (two failed attribute lookups a parameter, about 0.2 us each)."""
    return bytearray(b)


def _prefix_upper(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


def _prepare_file(path: str, create: bool) -> bool:
    """Before SQLite opens ``path``: refuse a missing file unless ``create`` (then make it 0600, so that
    SQLite gives its -wal and -shm files the same mode), and refuse an existing empty one. True: made here."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) if create else -1
    except FileExistsError:
        fd = -1
    except OSError as exc:
        raise StoreError("io", f"cannot create store {path}: {exc.strerror}") from None
    if fd >= 0:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.close(fd)
        return True  # a new store: SQLite writes its header on open
    try:
        os.stat(path)
    except PermissionError as exc:  # (not "missing": whether it is there is hidden from this user)
        folder = os.path.dirname(os.path.abspath(path))
        raise StoreError(
            "io",
            f"cannot open store {path}: this user may not enter its folder {folder} ({exc.strerror})",
            hint=f"make {folder} searchable by the user this runs as (chmod u+x), or run as its owner",
        ) from None
    except OSError:
        pass
    if not os.path.exists(path):
        raise StoreError("missing", f"there is no store {path}: check the path (this command creates no store)")
    if os.path.isdir(path):
        raise StoreError(
            "io",
            f"cannot open store {path}: it is a directory, not a store file",
            hint=f"give a file's path ({path}/...)",
        )
    if not os.path.isfile(path):
        raise StoreError(
            "io",
            f"cannot open store {path}: it is not a regular file (a FIFO, a device or a socket)",
            hint="give the path of a store file",
        )
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # (non-blocking: a FIFO put there since would wait)
    except OSError as exc:
        raise StoreError(
            "io",
            f"cannot open store {path}: {exc.strerror}",
            hint="give a store this user may read and write (its owner can chmod u+rw it), or run as its owner",
        ) from None
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise StoreError(
            "empty",
            f"store {path} is empty (0 bytes): it was truncated or is not a cardnet store; "
            "restore it from a backup, or delete it and create a new one",
        )
    return False


def _unmake(path: str) -> None:
    """Remove the store ``path`` that this open made and could not set up (a full disk): no half-made file is left to
    refuse the next try as empty or damaged."""
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


DISK_HINT = "free space on the disk that holds the store (or mend the disk), then try again: nothing was written"


def _disk_failed(exc: sqlite3.DatabaseError) -> bool:
    """SQLite could not write the file: a full disk (``SQLITE_FULL``), a file-size limit or a failing disk
    (``SQLITE_IOERR``)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _open_failed(path: str, exc: sqlite3.DatabaseError) -> StoreError:
    """``io``: SQLite could not open (or set up) the store at ``path``; with what to do when the disk is to blame."""
    if _disk_failed(exc):
        return StoreError("io", f"cannot open store {path}: {exc}", hint=DISK_HINT)
    return StoreError("io", f"cannot open store {path}: {exc} (is it a cardnet store?)")


def _io_failed(what: str, url: str, exc: sqlite3.DatabaseError) -> StoreError:
    """``io``: ``what`` (a write, a commit) failed on ``url``; with what to do when the disk is to blame."""
    return StoreError("io", f"{what} failed on {url}: {exc}", hint=DISK_HINT if _disk_failed(exc) else None)


def _txn_failed(url: str, exc: sqlite3.DatabaseError) -> StoreError:
    """A read or write of a transaction on ``url`` failed in SQLite: ``damaged`` for a file whose pages are not
    SQLite's (random bytes, a torn copy), ``io`` for one this process may not write, else as :func:`_io_failed`."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreError("damaged", f"store {url} is damaged ({exc}): restore it from a backup")
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(
            "io",
            f"cannot write store {url} ({exc})",
            hint="make the store file and its folder writable by the user this runs as (or give another store)",
        )
    return _io_failed("transaction", url, exc)


def _in_use(path: str) -> StoreError:
    """``in_use``: another process holds the store ``path``; naming it when it claimed the store (store/owner.py)."""
    record = holder(path)
    if record is not None:
        return StoreError(
            "in_use", f"store {path} is held by {describe(record or None)}, which runs on it: stop it, then try again"
        )
    return StoreError(
        "in_use",
        f"store {path} is held by another process (a store held this way has one owner: the host running the card, "
        "or the SPEED broker whose SAM card it is): stop that process, then try again",
    )


def _roll_back(c: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction (SQLite rolled it back itself on a full disk: nothing is left;
    on a damaged file the ROLLBACK can fail too: the first error stands)."""
    if c.in_transaction:
        with contextlib.suppress(sqlite3.DatabaseError):
            c.execute("ROLLBACK")


class SqliteStore:
    """A store in one SQLite file (or in memory for ``sqlite://:memory:``)."""

    def __init__(
        self,
        path: str,
        *,
        durable: bool = True,
        url: str | None = None,
        exclusive: bool = False,
        kind: str | None = None,
        version: int = 1,
        create: bool = True,
    ) -> None:
        self.path = path
        self.durable = durable
        self.exclusive = exclusive and path != ":memory:"
        self.url = url or f"sqlite:///{path}"
        self._lock = threading.RLock()
        self._closed = False
        self._in_group = False  # a group() is open (on the thread that holds _lock: others wait for it)
        self._group_lost = False  # SQLite rolled the group's transaction back under it: its end must fail
        self._group_depth = 0  # savepoints open inside the group
        if path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise StoreError("io", f"cannot open store {path}: directory {parent} does not exist")
            made = _prepare_file(path, create)
        else:
            made = False
        try:
            self._open(path, durable, kind, version)
        except BaseException as exc:
            if made and not (isinstance(exc, StoreError) and exc.reason == "in_use"):  # (in use: not ours alone)
                _unmake(path)
            raise

    def _open(self, path: str, durable: bool, kind: str | None, version: int) -> None:
        try:
            self._c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_WAIT_S)
            try:
                # One process owns a store (a card belongs to one host): hold the file's lock for the
                # connection's life. WAL's index then lives in this process's memory, and a commit
                # skips the shared-memory lock calls (about 4 us of system calls a transaction).
                if self.exclusive:
                    self._c.execute("PRAGMA locking_mode=EXCLUSIVE")
                self._c.execute("PRAGMA journal_mode=WAL")
                self._c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._c.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                if kind is not None:
                    with self.transaction() as txn:
                        claim_kind(txn, kind, version, path)
                if self.exclusive:
                    self._c.execute("BEGIN IMMEDIATE")  # take the write lock now and keep it (exclusive mode)
                    self._c.execute("COMMIT")
            except BaseException:
                self._c.close()  # a refused file must not leak its connection
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise _in_use(path) from None
            raise _open_failed(path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise _open_failed(path, exc) from None

    def _migrate(self) -> None:
        version = int(self._c.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                "newer_schema",
                f"{self.path} has schema version {version}, this cardnet knows {SCHEMA_VERSION}: upgrade cardnet",
            )
        while version < SCHEMA_VERSION:
            self._c.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        self._c.execute(stmt)
                version += 1
                self._c.execute(f"PRAGMA user_version={version}")
                self._c.execute("COMMIT")
            except BaseException:
                if self._c.in_transaction:  # (SQLite rolled back itself on a full disk: the first error stands)
                    self._c.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self._c.execute("PRAGMA user_version").fetchone()[0])

    def _begin(self) -> sqlite3.Connection:
        """BEGIN IMMEDIATE on the open connection (call with the lock held)."""
        if self._closed:
            raise StoreError("closed", f"store {self.url} is closed")
        try:
            self._c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError("busy", f"cannot start a transaction on {self.url}: {exc}") from None
        return self._c

    @contextmanager
    def group(self) -> Iterator[None]:
        """One durable transaction for everything this thread does in the block (group commit).

        Holds the store's lock for the whole block (other threads' transactions wait for its end).
        Each ``transaction()`` and ``write()`` inside is a SAVEPOINT of the group: released when it
        succeeds, rolled back alone when its block raises. The end of the block commits once (one
        fsync with ``synchronous=FULL``): nothing of the group is durable, or visible to another
        connection, before that. If the block raises, everything of the group is rolled back and
        the exception propagates; a failed COMMIT rolls everything back and raises
        ``StoreError("io")``. A group inside a group is refused (``nested``).
        """
        with self._lock:
            if self._in_group:
                raise StoreError(
                    "nested",
                    f"a group is open on {self.url} already: groups do not nest (open one per batch of work)",
                )
            c = self._begin()
            self._in_group, self._group_lost, self._group_depth = True, False, 0
            try:
                try:
                    yield
                except BaseException as exc:
                    _roll_back(c)
                    if isinstance(exc, sqlite3.DatabaseError):
                        raise _txn_failed(self.url, exc) from None
                    raise
                if self._group_lost:
                    if c.in_transaction:
                        c.execute("ROLLBACK")
                    raise StoreError("io", f"group commit failed on {self.url}: its transaction was lost")
                self._commit_or_roll_back(c, "group commit")
            finally:
                self._in_group = False

    @contextmanager
    def _grouped(self) -> Iterator[sqlite3.Connection]:
        """A SAVEPOINT of the open group (call with the lock held, inside ``group()``): released when the
        block returns, rolled back (and released) when it raises, whose exception then propagates."""
        c = self._c
        if self._closed:
            raise StoreError("closed", f"store {self.url} is closed")
        self._group_depth += 1
        name = f"g{self._group_depth}"
        try:
            self._in_group_exec(c, f"SAVEPOINT {name}")
            try:
                yield c
            except BaseException:
                try:
                    if c.in_transaction:
                        c.execute(f"ROLLBACK TO {name}")
                        c.execute(f"RELEASE {name}")
                    else:
                        self._group_lost = True
                except sqlite3.DatabaseError:
                    self._group_lost = True
                raise
            self._in_group_exec(c, f"RELEASE {name}")
        finally:
            self._group_depth -= 1

    def _in_group_exec(self, c: sqlite3.Connection, sql: str) -> None:
        """``sql`` (a savepoint's start or release) inside the group's transaction; a failure, or a transaction
        SQLite already rolled back (e.g. a full disk), fails the whole group (``io``)."""
        if self._group_lost or not c.in_transaction:
            self._group_lost = True  # a SAVEPOINT outside it would begin (and commit) a transaction of its own
            raise StoreError("io", f"the group's transaction on {self.url} was lost: the whole group fails")
        try:
            c.execute(sql)
        except sqlite3.DatabaseError as exc:
            self._group_lost = True
            raise _io_failed("transaction", self.url, exc) from None

    @contextmanager
    def transaction(self) -> Iterator[SqliteTxn]:
        with self._lock:
            if self._in_group:
                try:
                    with self._grouped() as gc:
                        yield SqliteTxn(gc)
                except sqlite3.DatabaseError as exc:  # (a read or write of the block: the group fails with it)
                    raise _txn_failed(self.url, exc) from None
                return
            c = self._begin()
            try:
                yield SqliteTxn(c)
            except BaseException as exc:
                _roll_back(c)
                if isinstance(exc, sqlite3.DatabaseError):  # a read or write of the block: the store's error
                    raise _txn_failed(self.url, exc) from None
                raise
            self._commit_or_roll_back(c, "commit")

    def _commit_or_roll_back(self, c: sqlite3.Connection, what: str) -> None:
        """COMMIT; if it fails, what is left of the transaction is rolled back and ``io`` raised."""
        try:
            c.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            _roll_back(c)
            raise _io_failed(what, self.url, exc) from None

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """``transaction()`` with puts then deletes, without the context-manager machinery (hot path)."""
        with self._lock:
            if self._in_group:
                try:
                    with self._grouped() as gc:
                        txn = SqliteTxn(gc)
                        txn.put_many(table, puts)
                        txn.delete_many(table, deletes)
                except sqlite3.DatabaseError as exc:
                    raise _io_failed("write", self.url, exc) from None
                return
            if not deletes and len(puts) == 2:  # a card step (state row, outbox row): _write_one_statement, inlined
                if self._closed:
                    raise StoreError("closed", f"store {self.url} is closed")
                (k1, v1), (k2, v2) = puts
                try:
                    self._c.execute(
                        _PUT_2_ROWS, [table, bytearray(k1), bytearray(v1), table, bytearray(k2), bytearray(v2)]
                    )
                except sqlite3.DatabaseError as exc:
                    raise _io_failed("write", self.url, exc) from None
                return
            if not deletes and 0 < len(puts) <= _MULTI_ROWS:
                self._write_one_statement(table, puts)
                return
            c = self._begin()
            try:
                if not puts:
                    pass
                elif len(puts) <= _MULTI_ROWS:  # one statement for a few rows: cheaper than executemany
                    c.execute(_put_rows_sql(len(puts)), [x for k, v in puts for x in (table, _blob(k), _blob(v))])
                else:
                    c.executemany(
                        "INSERT OR REPLACE INTO kv (tbl, k, v) VALUES (?, ?, ?)", [(table, k, v) for k, v in puts]
                    )
                if len(deletes) > _MULTI_DELETE:
                    c.executemany("DELETE FROM kv WHERE tbl=? AND k=?", [(table, k) for k in deletes])
                elif deletes:  # one statement: the card deletes its finished outbox rows 32 at a time
                    c.execute(_delete_rows_sql(len(deletes)), [table, *map(_blob, deletes)])
                c.execute("COMMIT")
            except BaseException as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError):
                    raise _io_failed("write", self.url, exc) from None
                raise

    def _write_one_statement(self, table: str, puts: list[tuple[bytes, bytes]]) -> None:
        """A few puts as one autocommit statement: SQLite makes a statement atomic and,
        outside BEGIN, commits it durably on its own (same fsync, two fewer statements)."""
        if self._closed:
            raise StoreError("closed", f"store {self.url} is closed")
        try:
            params = [x for k, v in puts for x in (table, bytearray(k), bytearray(v))]
            self._c.execute(_put_rows_sql(len(puts)), params)
        except sqlite3.DatabaseError as exc:
            raise _io_failed("write", self.url, exc) from None

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._c.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
