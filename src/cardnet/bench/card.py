"""``cardnet bench card``: durable card steps against the disk's own limits.

Figures (all measured in one run, in one directory on one disk):

* ``fsync_per_s``: raw ``write(64 B) + fsync`` on a plain file;
* ``sqlite_commit_per_s``: a bare one-row durable SQLite commit (WAL,
  ``synchronous=FULL``, SQLite's default locking): the bound for one durable step;
* ``sqlite_commit_exclusive_per_s``: the same in exclusive locking mode, as a
  host holds its card stores (no lock system calls a commit): shown beside the
  bound so that the part of the margin that comes from the locking mode is seen;
* ``steps_per_s``: card steps of the counter applet, one transaction each
  (read state, write state, emit a reply into the outbox, the host acks it);
* ``grouped_steps_per_s``: the same with group commit, ``group`` messages a
  transaction.

Targets: ``steps_per_s >= 0.8 * sqlite_commit_per_s`` and
``grouped_steps_per_s >= 10 * steps_per_s``. The bare commits and the single
steps are measured side by side in slices of ``SLICE`` operations each, in
turn (the order reversed every turn), and ``steps_vs_sqlite_commit`` is the
median of the adjacent slices' ratios: a disk whose fsync time drifts within
a second moves both sides of each ratio alike.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cardnet.applets.counter import COUNT, CounterApplet
from cardnet.bench.timing import paired_rates, rate
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.store import SqliteStore
from cardnet.wire import Uid


def fsync_rate(directory: str, seconds: float) -> float:
    path = os.path.join(directory, "fsync.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:

        def op() -> int:
            os.write(fd, b"x" * 64)
            os.fsync(fd)
            return 1

        return rate(op, seconds)
    finally:
        os.close(fd)
        os.unlink(path)


@contextmanager
def bare_commit(directory: str, *, exclusive: bool = False) -> Iterator[Callable[[], int]]:
    """An op doing one bare one-row durable commit; ``exclusive``: in the locking mode card stores use."""
    path = os.path.join(directory, "bare-x.db" if exclusive else "bare.db")
    c = sqlite3.connect(path, isolation_level=None)
    try:
        if exclusive:
            c.execute("PRAGMA locking_mode=EXCLUSIVE")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
        row = b"x" * 64

        def op() -> int:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO t (v) VALUES (?)", (row,))
            c.execute("COMMIT")
            return 1

        yield op
    finally:
        c.close()


def sqlite_commit_rate(directory: str, seconds: float, *, exclusive: bool = False) -> float:
    """Bare one-row durable commits per second (see :func:`bare_commit`)."""
    with bare_commit(directory, exclusive=exclusive) as op:
        return rate(op, seconds)


_serial = itertools.count()


def _bench_card(directory: str, name: str) -> tuple[Card, Uid]:
    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("bench CA", now=now)
    store = SqliteStore(os.path.join(directory, f"{name}.db"), exclusive=True)  # as a host holds its cards
    card = Card(store, applets=[CounterApplet()], capacity_bytes=1 << 20)
    personalise(card, ca, pin="0000", now=now)
    return card, Uid(card.uid.domain, 1)


@contextmanager
def card_steps(directory: str, group: int) -> Iterator[Callable[[], int]]:
    """An op doing ``group`` card steps in one transaction (``group`` 1: ``Card.step``), acked by the host."""
    card, app = _bench_card(directory, f"card{group}-{next(_serial)}")
    # Inputs arrive encoded from the host; build them before timing (the card's work is what is measured).
    pool = [COUNT.make(app, card.uid, n=i) for i in range(4096)]
    n = 0
    try:

        def op() -> int:
            nonlocal n
            start = n % (len(pool) - group)
            msgs = pool[start : start + group]
            n += group
            results = card.step_many(msgs, 0.0) if group > 1 else [card.step(msgs[0], 0.0)]
            card.ack([o.seq for outs in results for o in outs if o.seq is not None])
            return group

        yield op
    finally:
        card.close()


def step_rate(directory: str, seconds: float, group: int) -> float:
    """Card steps per second, ``group`` a transaction (see :func:`card_steps`)."""
    with card_steps(directory, group) as op:
        return rate(op, seconds)


def paired_ratio(op: list[float], bound: list[float]) -> float:
    """``op``'s rate / ``bound``'s, from slices (seconds per unit) measured in turn: the median over adjacent
    slices of ``bound``'s time per unit / ``op``'s."""
    return statistics.median(b / o for o, b in zip(op, bound, strict=True))


def run(seconds: float = 2.0, group: int = 32, directory: str | None = None, rounds: int = 5) -> dict[str, Any]:
    """Measure every figure in ``rounds`` interleaved rounds; report each figure's median.

    Interleaving puts a passing disturbance (another process's fsyncs) into one
    round of every figure rather than into all rounds of one figure. The bare
    commits and the single steps, whose ratio is the target, are interleaved
    finer still: slices of ``SLICE`` commits, ``SLICE`` exclusive commits and
    ``SLICE`` steps in turn (:func:`~cardnet.bench.timing.paired_rates`), and
    the ratios are the medians of the adjacent slices' ratios.
    """
    tmp = tempfile.mkdtemp(prefix="cardnet-bench-", dir=directory)
    per = seconds / rounds
    samples: dict[str, list[float]] = {k: [] for k in FIGURES}
    slices: dict[str, list[float]] = {"commit": [], "commit_x": [], "step": []}
    try:
        for _ in range(rounds):
            samples["fsync_per_s"].append(fsync_rate(tmp, per))
            with (
                bare_commit(tmp) as commit,
                bare_commit(tmp, exclusive=True) as commit_x,
                card_steps(tmp, 1) as step,
            ):
                rates, took = paired_rates(
                    {"commit": commit, "commit_x": commit_x, "step": step}, 3 * per, slice_units=SLICE
                )
            samples["sqlite_commit_per_s"].append(rates["commit"])
            samples["sqlite_commit_exclusive_per_s"].append(rates["commit_x"])
            samples["steps_per_s"].append(rates["step"])
            for name, values in took.items():
                slices[name].extend(values)
            samples["grouped_steps_per_s"].append(step_rate(tmp, per, group))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {k: round(statistics.median(v)) for k, v in samples.items()}
    result.update(group=group, seconds_per_figure=seconds, rounds=rounds, slice=SLICE, slices=len(slices["step"]))
    result["steps_vs_sqlite_commit"] = round(paired_ratio(slices["step"], slices["commit"]), 3)
    result["steps_vs_sqlite_commit_exclusive"] = round(paired_ratio(slices["step"], slices["commit_x"]), 3)
    result["grouped_vs_steps"] = round(result["grouped_steps_per_s"] / result["steps_per_s"], 2)
    result["targets"] = {
        "steps_per_s >= 0.8 x sqlite_commit_per_s": result["steps_vs_sqlite_commit"] >= 0.8,
        "grouped_steps_per_s >= 10 x steps_per_s": result["grouped_vs_steps"] >= 10,
    }
    return result


SLICE = 16  # operations of each kind in one slice of the paired measurement
FIGURES = ("fsync_per_s", "sqlite_commit_per_s", "sqlite_commit_exclusive_per_s", "steps_per_s", "grouped_steps_per_s")
