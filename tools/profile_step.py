"""Instruction counts of the hot paths, repeatable on a loaded machine (callgrind).

Wall-time benchmarks (``cardnet bench card``, ``cardnet bench etp``) need a quiet
machine; instruction counts do not. This driver runs one kind of operation
in-process, and counts what one operation costs:

    python tools/profile_step.py run KIND --n N      # N operations, nothing else
    python tools/profile_step.py count KIND --n N    # instructions per operation
    python tools/profile_step.py count all           # every kind

Kinds:

* ``card``: one ``Card.step`` of the counter applet and its ack, on a durable
  exclusive SQLite store: ``cardnet bench card``'s ``steps_per_s`` op
  (:func:`cardnet.bench.card.card_steps`);
* ``commit``: one bare one-row durable SQLite commit, the bench's bound
  (:func:`cardnet.bench.card.bare_commit`, normal and ``commit-x`` exclusive);
* ``etp``: one ``bench.ping`` / ``bench.pong`` round trip card A -> card B ->
  card A between two in-process host cores (pingpong applet, durable SQLite
  stores), each message framed and decoded as the TCP transport does, the hosts
  pumping with the servers' ``MAX_GROUP``: what ``cardnet bench etp``'s hosts do
  per round trip, without the sockets and the event loop;
* ``fairx``: one complete fair exchange of vouchers between two in-process wallet cards, the authority, agent
  and TTP cards beside them on one in-process host (durable SQLite stores, sessions already open): what
  ``cardnet bench fairx`` counts its operations on (:func:`cardnet.bench.fairx.exchange_rig`), so the card
  runtime, the session layer and the fairx, trn and trace protocols, without sockets and event loops;
* ``speed``: one normal-mode SPEED purchase of a 16-byte product by one in-process customer card, the vendor and
  the broker in the same process over loopback TCP (durable SQLite stores, connections open, certificates
  checked): what ``cardnet bench speed`` counts its operations on (:func:`cardnet.bench.speed.purchase_rig`),
  so the event loop and the framing are in, the kernel's share of the sockets is not.

``count`` runs ``run`` under ``valgrind --tool=callgrind`` twice, with N and 2N
operations, and prints ``(I(2N) - I(N)) / N``: set-up, imports and the
interpreter's start cancel out (``PYTHONHASHSEED=0``: the same dict
layouts in every run). Add ``--keep DIR`` to keep the callgrind
files (open them with ``callgrind_annotate``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cardnet.applets.pingpong import PING_DONE, PING_START, PingPongApplet
from cardnet.bench.card import bare_commit, card_steps
from cardnet.bench.fairx import exchange_rig
from cardnet.bench.speed import Net, purchase_rig
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.core import Host, Origin, SendRemote, all_sent
from cardnet.host.server import MAX_GROUP
from cardnet.store import SqliteStore
from cardnet.transport.framing import FrameDecoder, encode_frame
from cardnet.wire import Message

KINDS = ("card", "commit", "commit-x", "etp", "fairx", "speed")
ETP_WINDOW = 64  # pings in flight in the in-process round trips
APP = Origin("app")
_PER = {"etp": "round trip", "fairx": "exchange", "speed": "purchase"}
_TOTAL = re.compile(r"^summary:\s*(\d+)", re.MULTILINE)


@contextmanager
def etp_round_trips(directory: str) -> Iterator[Callable[[int], int]]:
    """An op doing ``n`` round trips card A -> card B -> card A between two in-process host cores."""
    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("profile CA", now=now)
    cards = []
    for name in ("a", "b"):
        store = SqliteStore(f"{directory}/{name}.db", exclusive=True)  # as a host holds its cards
        card = Card(store, applets=[PingPongApplet()], capacity_bytes=16 << 20)
        personalise(card, ca, pin="0000", now=now)
        cards.append(card)
    a, b = cards
    host_a = Host([a], routes={b.uid.domain: "b"}, name="a")
    host_b = Host([b], routes={a.uid.domain: "a"}, name="b")
    hosts = {"a": host_a, "b": host_b}
    decoders = {"a": FrameDecoder(), "b": FrameDecoder()}
    origins = {"a": Origin("remote", "b"), "b": Origin("remote", "a")}
    app = host_a.allocate_port()
    done: list[Message] = []
    host_a.attach_app(app, done.append)

    def carry(effects: list[SendRemote]) -> None:
        """Frame each message, hand the bytes to the other host's decoder (as one TCP read), ack them."""
        by_address: dict[str, list[bytes]] = {}
        for eff in effects:
            by_address.setdefault(eff.address, []).append(encode_frame(eff.msg))
        all_sent(effects)
        for address, frames in by_address.items():
            hosts[address].receive_many(decoders[address].feed(b"".join(frames)), origins[address])

    def op(n: int) -> int:
        done.clear()
        host_a.submit(PING_START.make(app, a.uid, peer=b.uid, count=n, window=min(ETP_WINDOW, n), notify=app), APP)
        for _ in range(100 * n + 100):
            if done:
                break
            for h in (host_a, host_b):
                if not h.idle:
                    carry(h.pump(0.0, max_group=MAX_GROUP))
        if not done or PING_DONE.parse(done[0])["count"] != n:
            raise SystemExit(f"the ping run did not finish: {done}")
        return n

    try:
        yield op
    finally:
        a.close()
        b.close()


async def _purchases(tmp: Path, n: int) -> None:
    net = Net(tmp, 1)
    try:
        async with purchase_rig(net, "normal") as buy:
            for _ in range(n):
                await buy()
    finally:
        net.close()


def run(kind: str, n: int) -> None:
    tmp = tempfile.mkdtemp(prefix="cardnet-profile-")
    try:
        if kind == "etp":
            with etp_round_trips(tmp) as trips:
                if n:
                    trips(n)
            return
        if kind == "fairx":
            with exchange_rig(Path(tmp)) as exchange:
                vouchers = [b"\x01" * 16, b"\x02" * 16]
                for _ in range(n + 1):  # one to warm up; card a gives what it holds, wants what b holds
                    exchange(vouchers[0], vouchers[1])
                    vouchers.reverse()
            return
        if kind == "speed":
            asyncio.run(_purchases(Path(tmp), n))
            return
        ops = {
            "card": lambda: card_steps(tmp, 1),
            "commit": lambda: bare_commit(tmp),
            "commit-x": lambda: bare_commit(tmp, exclusive=True),
        }
        with ops[kind]() as op:
            op()  # warm up: first statement preparation, first page of the table
            for _ in range(n):
                op()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def instructions(kind: str, n: int, keep: Path | None) -> int:
    """Total instructions (``Ir``) of ``run KIND --n N`` under callgrind."""
    out_dir = keep or Path(tempfile.mkdtemp(prefix="cardnet-callgrind-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"callgrind.{kind}.{n}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "run",
        kind,
        "--n",
        str(n),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts every run: repeatable counts
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    try:
        match = _TOTAL.search(out.read_text(errors="replace"))
        if match is None:
            raise SystemExit(f"no summary line in {out}")
        return int(match.group(1))
    finally:
        if keep is None:
            shutil.rmtree(out_dir, ignore_errors=True)


def count(kind: str, n: int, keep: Path | None) -> int:
    """Instructions per operation: ``(I(2n) - I(n)) / n``."""
    return round((instructions(kind, 2 * n, keep) - instructions(kind, n, keep)) / n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="do N operations in-process")
    p_run.add_argument("kind", choices=KINDS)
    p_run.add_argument("--n", type=int, default=1000)
    p_count = sub.add_parser("count", help="instructions per operation, under callgrind")
    p_count.add_argument("kind", choices=(*KINDS, "all"))
    p_count.add_argument("--n", type=int, default=500)
    p_count.add_argument("--keep", type=Path, help="keep the callgrind output files in this directory")
    p_count.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        run(args.kind, args.n)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    kinds = KINDS if args.kind == "all" else (args.kind,)
    result: dict[str, float] = {kind: count(kind, args.n, args.keep) for kind in kinds}
    if "card" in result and "commit-x" in result:
        result["card_vs_commit_x"] = round(result["card"] / result["commit-x"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key == "card_vs_commit_x":
                print(f"{key:>18}  {value:>10}  (a card step's instructions / a bare exclusive commit's)")
            else:
                print(f"{key:>18}  {value:>10,}  instructions per {_PER.get(key, 'op')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
