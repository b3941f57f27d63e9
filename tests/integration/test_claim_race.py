"""Services started at one instant on one store, with real processes (store/owner.py, docs/store.md "One running
service per store").

Starters released together from a barrier (tests/integration/barrierstart.py) race for the claim of one store, over
and over, on a claim file left by a SIGKILLed winner (its record names a process that is gone) and on none (the
winner stopped in order removed it): exactly one serves, and every other is refused ``in_use`` naming the one that
serves, by its pid. Before, a loser could read the claim file while the winner was still writing it, or before it
wrote it: it named "another running service (its claim file does not say which)", or the dead winner of the round
before. The same race is run some hundred times more in forked processes that claim through store/owner.py (a start
of ``cardnet`` takes a good part of a second; a fork, a millisecond), and with a process that asks who holds the
store (:func:`~cardnet.store.owner.holder`, as a command refused by a card's store does) beside a service that
starts and stops: before, its moment's shared lock refused the start, naming nobody.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest
from hostprocs import cardnet

from cardnet.store.errors import StoreError
from cardnet.store.owner import claim, holder

BARRIER = Path(__file__).with_name("barrierstart.py")
ROUNDS = 30
STARTERS = 3
FORKED_ROUNDS = 300
FORK = multiprocessing.get_context("fork")


def armed(*args: str) -> subprocess.Popen[str]:
    """``cardnet ARGS --json`` imported and waiting at the barrier."""
    p = subprocess.Popen([sys.executable, str(BARRIER), *args, "--json"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert p.stderr is not None and p.stderr.readline() == "armed\n"
    return p


@pytest.mark.slow
def test_services_started_at_one_instant_on_one_store_one_serves_and_the_others_name_it(tmp_path: Path) -> None:
    v = tmp_path / "vendor.db"
    cardnet("millicent", "vendor", "init", "--store", str(v), "--id", "00000000000000a1")
    run = ("millicent", "vendor", "run", "--store", str(v), "--listen", "127.0.0.1:0")
    wrong: list[str] = []
    for round_ in range(ROUNDS):
        procs = [armed(*run) for _ in range(STARTERS)]
        try:
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            firsts = {}
            for p in procs:
                assert p.stdout is not None
                line = p.stdout.readline()  # the ready line of the one that serves; the others' error, whole
                firsts[p.pid] = json.loads(line if line.startswith('{"ready"') else line + p.stdout.read())
            serving = [p for p in procs if "ready" in firsts[p.pid]]
            assert len(serving) == 1, (round_, firsts)
            winner = serving[0]
            for p in procs:
                if p is winner:
                    continue
                assert p.wait(30) != 0
                error = firsts[p.pid]["error"]
                assert error["reason"] == "in_use", (round_, error)
                if f"a millicent vendor (pid {winner.pid}, " not in error["message"]:
                    wrong.append(f"round {round_}: winner {winner.pid}, loser {p.pid} said {error['message']!r}")
                elif error["hint"] != f"stop it first (kill {winner.pid}), or give another --store":
                    wrong.append(f"round {round_}: winner {winner.pid}, hint {error['hint']!r}")
            # the next round races on a claim file naming a dead winner (SIGKILL), or on none (SIGTERM)
            winner.send_signal(signal.SIGKILL if round_ % 2 == 0 else signal.SIGTERM)
            assert winner.wait(30) in (-signal.SIGKILL, 0)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(30)
                for f in (p.stdin, p.stdout, p.stderr):
                    if f is not None:
                        f.close()
    assert not wrong, "\n".join(wrong)


def starter(store: str, barrier: Barrier, out: Connection) -> None:
    """A forked start: claim ``store`` when the barrier lets go; say ``("won", pid)`` and serve until told to stop
    (``release``: in order) or killed, or say ``("refused", message, hint)``."""
    barrier.wait()
    try:
        c = claim(store, "millicent vendor")
    except StoreError as exc:
        out.send(("refused", str(exc), exc.hint))
        return
    assert c is not None
    out.send(("won", os.getpid()))
    if out.recv() == "release":
        c.release()


def test_forked_starts_at_one_instant_one_claims_and_the_others_name_it(tmp_path: Path) -> None:
    store = str(tmp_path / "vendor.db")
    wrong: list[str] = []
    for round_ in range(FORKED_ROUNDS):
        barrier = FORK.Barrier(STARTERS)
        pipes = [FORK.Pipe() for _ in range(STARTERS)]
        procs = [FORK.Process(target=starter, args=(store, barrier, theirs)) for _, theirs in pipes]
        for p in procs:
            p.start()
        try:
            said = [ours.recv() for ours, _ in pipes]
            won = [i for i, s in enumerate(said) if s[0] == "won"]
            assert len(won) == 1, (round_, said)
            pid = said[won[0]][1]
            for s in said:
                if (
                    s[0] == "refused"
                    and f"a millicent vendor (pid {pid}, starting) already runs on {store}: " not in s[1]
                ):
                    wrong.append(f"round {round_}: winner {pid}: {s[1]!r}")
                elif s[0] == "refused" and s[2] != f"stop it first (kill {pid}), or give another --store":
                    wrong.append(f"round {round_}: winner {pid}: hint {s[2]!r}")
            if round_ % 2 == 0:
                procs[won[0]].kill()  # the next round races on its record, which names a process that is gone
            else:
                pipes[won[0]][0].send("release")
        finally:
            for p in procs:
                p.join(30)
                if p.exitcode is None:
                    p.kill()
                    p.join()
            for ours, theirs in pipes:
                ours.close()
                theirs.close()
    assert not wrong, f"{len(wrong)} of {FORKED_ROUNDS} rounds:\n" + "\n".join(wrong[:10])


def asker(store: str, stop: Event) -> None:
    """Asks who holds ``store`` until told to stop, as fast as it can."""
    while not stop.is_set():
        holder(store)


def test_asking_who_holds_a_store_never_refuses_a_start(tmp_path: Path) -> None:
    store = str(tmp_path / "vendor.db")
    stop = FORK.Event()
    askers = [FORK.Process(target=asker, args=(store, stop)) for _ in range(2)]
    for p in askers:
        p.start()
    refused: list[str] = []
    try:
        for _ in range(2000):
            try:
                c = claim(store, "millicent vendor")
            except StoreError as exc:
                refused.append(str(exc))
                continue
            assert c is not None
            held = holder(store)
            assert held is not None and held["pid"] == os.getpid(), held
            c.release()
    finally:
        stop.set()
        for p in askers:
            p.join(30)
            if p.exitcode is None:
                p.kill()
                p.join()
    assert not refused, f"{len(refused)} of 2000 starts refused, e.g. {refused[0]!r}"
