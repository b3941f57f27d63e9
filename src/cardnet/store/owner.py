"""One running service per store (docs/store.md, "One running service per store").

A service that runs (a host and its card stores, a SPEED or Millicent vendor or broker, the ticketing server) keeps
state in memory besides its store: spent scrip, serials, counters, caches. A second process serving the same store
would keep its own and could take the same scrip twice or give a serial twice, so a service *claims* each store it
serves before it opens it, and holds the claim until it ends.

The claim is the kernel's: an exclusive ``flock`` on ``STORE-owner``, a file beside the store (as SQLite's ``-wal``
and ``-shm``), held on a descriptor the process keeps open, so it goes with the process, SIGKILL included; the next
start takes it at once. A service that stops removes the file (while it holds it: a start that opened it meanwhile
finds it gone once it has the lock, and claims anew). The file says who holds it (the service, its pid, where it
listens): a second start is refused with ``in_use`` in those words. The store itself stays shared: the service's own
commands (``cardnet millicent broker deposit``, ``cardnet speed vendor add``, ...) write to it while the service
runs, which SQLite's exclusive locking mode (as a host holds a card's store) would forbid. A file left by a process
that was killed is not held: it is taken over, not refused. A store in memory has nothing to claim.

Who holds it is read with care: the holder writes its record only once it has the lock, over whatever the file held
(nothing, when it made the file; the record of a process killed before it, when it took one over), and a reader
(:func:`holder`) takes the lock shared for an instant. So a start that finds the lock held, and a :func:`holder`
that does, trust the record only when it names a process that is alive; otherwise they try the lock again (the
holder writes its record at once; a reader lets go at once) for up to ``RECORD_WAIT_S``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from cardnet.store.errors import StoreError

SUFFIX = "-owner"
MAX_RECORD = 4096  # a longer file is not a claim record: read as unknown
RECORD_WAIT_S = 2.0  # how long a held lock may go without a record naming a live process before it is named unknown
RETRY_S = 0.002


def owner_path(store: str) -> str | None:
    """The claim file of the SQLite store at ``store`` (a path or a ``sqlite:///`` URL), or None: nothing to claim
    (a store in memory, another kind of URL)."""
    if "://" in store:
        if not store.startswith("sqlite:///"):
            return None
        store = store[len("sqlite://") :].partition("?")[0][1:]
    if store in ("", ":memory:", "/:memory:"):
        return None
    return os.path.realpath(store) + SUFFIX


def describe(record: dict[str, Any] | None) -> str:
    """``a millicent broker (pid 12, listening on 127.0.0.1:7100)``: who holds a claim, from its record."""
    if record is None:
        return "another running service (its claim file does not say which)"
    what = str(record.get("service") or "service")
    facts = [f"pid {record['pid']}"] if isinstance(record.get("pid"), int) else []
    listening = record.get("listening")
    facts.append(f"listening on {listening}" if listening else "starting")
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what} ({', '.join(facts)})"


def _read(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, MAX_RECORD, 0)
        record = json.loads(raw.decode()) if raw else None
    except (OSError, ValueError):
        return None  # (nothing yet, or read while it was being written)
    return record if isinstance(record, dict) else None


def _alive(record: dict[str, Any] | None) -> bool:
    """``record`` names a process that runs: the holder's own, not one a killed holder left in the file."""
    pid = record.get("pid") if record else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (another user's process: it runs)
    return True


def _holding(fd: int, mode: int) -> dict[str, Any] | None:
    """Lock ``fd`` (``LOCK_EX`` or ``LOCK_SH``, without waiting): None once locked; else the record of the process
    that holds it (``{}``: it does not say who). A record that does not name a live process is not trusted at once:
    the holder may not have written its own yet, or a reader (:func:`holder`) holds it shared for an instant; the
    lock is tried again until one or the other (see the module docstring). Raises ``OSError`` but for a held lock."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        record = _read(fd)
        if _alive(record):
            return record
        if time.monotonic() >= deadline:
            return {}  # (held all along by one that does not say who: its record is not its own)
        time.sleep(RETRY_S)


def holder(store: str) -> dict[str, Any] | None:
    """The record of the running service that claims ``store`` (``{}``: it does not say which), or None (no claim
    file, or nobody holds it)."""
    path = owner_path(store)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            record = _holding(fd, fcntl.LOCK_SH)
        except OSError:
            return None
        if record is not None:
            return record
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: a file left by a process that ended
        return None
    finally:
        os.close(fd)


class Claim:
    """A held claim on one store: :meth:`serving` says where the service listens; :meth:`release` (or the
    process's end) lets it go."""

    def __init__(self, fd: int, record: dict[str, Any]) -> None:
        self._fd: int | None = fd
        self._record = record
        self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = json.dumps(self._record).encode()
        with contextlib.suppress(OSError):  # the record only words a refusal: the lock is what counts
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))

    def serving(self, listening: str) -> None:
        """The service now listens at ``listening``: a second start's refusal says so."""
        self._record["listening"] = listening
        self._write()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # removed while held: a start that opened it takes it and retries
                os.unlink(str(self._record["store"]) + SUFFIX)
            os.close(self._fd)  # (closing the descriptor lets the lock go)
            self._fd = None


class Claims:
    """The claims of one service on each store it serves (all or none), released together."""

    def __init__(self) -> None:
        self.held: list[Claim] = []

    def serving(self, listening: str) -> None:
        for c in self.held:
            c.serving(listening)

    def release(self) -> None:
        while self.held:
            self.held.pop().release()


def claim(store: str, service: str, *, other: str = "give another --store") -> Claim | None:
    """Claim ``store`` for the running ``service`` (e.g. ``millicent broker``) until :meth:`Claim.release` or the
    process's end; None for a store with nothing to claim. Raises ``StoreError("in_use")`` naming the service that
    holds it, with what to do (``other``: how this command is given another store)."""
    path = owner_path(store)
    if path is None:
        return None
    shown = path[: -len(SUFFIX)]
    if not os.path.isdir(os.path.dirname(path)):
        return None  # no such folder: opening the store says so
    _writable(shown, service, other)
    for _ in range(100):  # (a retry only when the holder let go and removed the file between our open and lock)
        fd = _lock(path, shown, service, other)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return Claim(fd, {"service": service, "pid": os.getpid(), "store": shown, "listening": None})
        except OSError:
            pass  # removed by the holder as it ended: the file is not the claim any more
        os.close(fd)
    raise StoreError("in_use", f"cannot claim store {shown} for the {service}: {path} keeps changing")


def _writable(store: str, service: str, other: str) -> None:
    """``io`` when the store file is there and this process may not write it (a running service writes its store;
    SQLite would open it read-only and the service fail at its first write)."""
    try:
        fd = os.open(store, os.O_RDWR)
    except (FileNotFoundError, IsADirectoryError):
        return  # (a new store, or a directory: opening the store says so)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            return  # (opening the store says what else is wrong)
        folder = os.path.dirname(store)
        if exc.errno == errno.EACCES and not os.access(folder, os.X_OK):
            raise StoreError(
                "io",
                f"cannot claim store {store} for the {service}: this user may not enter its folder {folder} "
                f"({exc.strerror})",
                hint=f"make {folder} readable, writable and searchable by the user this runs as (chmod u+rwx), or "
                f"{other}",
            ) from None
        raise StoreError(
            "io",
            f"cannot claim store {store} for the {service}: this user may not read and write it ({exc.strerror}), "
            "and a running service writes its store",
            hint=f"make {store} writable by the user this runs as, or {other}",
        ) from None
    os.close(fd)


def _lock(path: str, shown: str, service: str, other: str) -> int:
    """``path`` opened (made if need be) and locked exclusively; ``in_use`` naming its holder if it is held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if os.path.lexists(path) and exc.errno in (errno.EACCES, errno.EPERM):
            hint = (
                f"the claim file {path} is another user's (a service ran on {shown} as that user): stop that service "
                f"if it still runs, or remove the file if none does; or {other}"
            )
        else:
            hint = (
                "a running service writes beside its store (this claim file, SQLite's -wal and -shm): make "
                f"{os.path.dirname(path)} writable by the user this runs as, or {other}"
            )
        raise StoreError(
            "io", f"cannot claim store {shown} for the {service}: {path}: {exc.strerror}", hint=hint
        ) from None
    try:
        record = _holding(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise StoreError("io", f"cannot claim store {shown} for the {service}: {path}: {exc.strerror}") from None
    if record is not None:
        os.close(fd)
        pid = record.get("pid")
        stop = f"stop it first (kill {pid})" if isinstance(pid, int) else "stop it first"
        raise StoreError(
            "in_use",
            f"{describe(record or None)} already runs on {shown}: one store serves one running service (two would "
            "each keep their own memory of it)",
            hint=f"{stop}, or {other}",
        )
    return fd


@contextlib.contextmanager
def claimed(stores: list[tuple[str, str]], service: str) -> Iterator[Claims]:
    """Claim each ``(store, other)`` for ``service`` (all or none: a refusal lets go of those taken) for the
    block; ``other`` says how the command is given another store (e.g. ``give another --sam-store``)."""
    claims = Claims()
    try:
        for store, other in stores:
            c = claim(store, service, other=other)
            if c is not None:
                claims.held.append(c)
        yield claims
    finally:
        claims.release()
