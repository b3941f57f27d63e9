"""Tear test: SIGKILL a real OS process that steps a card, at random instants, 200 times.

A child process (fork) opens the card from its SQLite file, re-emits its
outbox, then steps counter messages in a loop — single steps and groups of
random size — printing every output it releases to a pipe before acking it.
The parent kills it with SIGKILL after a random delay, reopens the card and
checks that state and outbox agree with what was released:

* the counter total T equals the number of committed steps, and the outputs
  carry totals 1..T exactly once each between "released" and "still in the
  outbox" (nothing lost, each step all or nothing);
* no released output names a total above T (nothing leaves before commit);
* a total is released twice only as a re-emission of an unacknowledged output.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
from pathlib import Path

import pytest

from cardnet.applets.counter import COUNT, COUNTED, CounterApplet
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.store import SqliteStore
from cardnet.wire import Uid
from conftest import NOW

KILLS = 200


def child(path: str, wfd: int, seed: int) -> None:
    """Runs in the forked process; never returns."""
    try:
        rng = random.Random(seed)
        card = Card(SqliteStore(path), applets=[CounterApplet()])
        app = Uid(card.uid.domain, 1)
        for out in card.outbox():
            p = COUNTED.parse(out.msg)
            os.write(wfd, f"R {out.seq} {p['total']}\n".encode())
            card.ack([out.seq])  # type: ignore[list-item]
        n = 0
        while True:
            size = 1 if rng.random() < 0.5 else rng.randint(2, 8)
            msgs = [COUNT.make(app, card.uid, n=n + i) for i in range(size)]
            n += size
            for outs in card.step_many(msgs, 0.0):
                for out in outs:
                    p = COUNTED.parse(out.msg)
                    os.write(wfd, f"O {out.seq} {p['total']}\n".encode())
                    card.ack([out.seq])  # type: ignore[list-item]
    finally:
        os._exit(3)


def run_and_kill(path: str, seed: int, delay_s: float) -> list[tuple[str, int, int]]:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(rfd)
        child(path, wfd, seed)
    os.close(wfd)
    data = b""
    deadline = time.monotonic() + delay_s
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the child died by itself"
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    lines = []
    for line in data.decode().splitlines():
        kind, seq, total = line.split()
        lines.append((kind, int(seq), int(total)))
    return lines


@pytest.mark.slow
def test_sigkill_at_random_instants_never_tears_a_step(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    path = str(tmp_path / "tear.db")
    card = Card(SqliteStore(path), applets=[CounterApplet()])
    personalise(card, ca, pin="1234", now=NOW)
    card.close()

    rng = random.Random(20261123)
    released: dict[int, int] = {}  # total -> seq, over all runs
    stepped_runs = 0
    for kill in range(KILLS):
        lines = run_and_kill(path, seed=kill, delay_s=rng.uniform(0.0, 0.08))
        reopened = Card(SqliteStore(path), applets=[CounterApplet()])
        try:
            raw = reopened._mem.get(("a.counter", b"total"))
            total = 0 if raw is None else int.from_bytes(raw, "big")
            outbox = {COUNTED.parse(o.msg)["total"]: o.seq for o in reopened.outbox()}
        finally:
            reopened._store.close()  # no flush: leave the card exactly as found
        outbox_before = set(outbox)
        for kind, seq, t in lines:
            assert t <= total, f"kill {kill}: output for step {t} left the card but the card has only {total}"
            if kind == "R":
                assert t in released or t in outbox_before or t <= total, f"kill {kill}: re-emitted unknown {t}"
            else:
                assert t not in released, f"kill {kill}: step {t} released twice as a new output"
                stepped_runs += 1
            released[t] = seq
        for t, seq in outbox.items():
            if t in released:
                assert released[t] == seq, f"kill {kill}: step {t} has two outbox numbers"
        missing = [t for t in range(1, total + 1) if t not in released and t not in outbox]
        assert not missing, f"kill {kill}: steps {missing[:5]} committed but their outputs are lost"
        assert len(outbox) + len([t for t in released if t not in outbox]) >= total
    assert stepped_runs > KILLS, "the child hardly stepped: the test did not exercise tears"
