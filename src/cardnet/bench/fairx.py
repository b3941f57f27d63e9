"""``cardnet bench fairx``: complete, durable fair exchanges between wallet host processes, against their bounds.

Setup (:class:`~cardnet.bench.trnnet.TrnNet` with a TTP): the authority's host (authority, agent and TTP cards)
and wallet hosts a and b over TCP on 127.0.0.1, every card in its own durable SQLite store. The agent mints
``2 * in_flight`` vouchers, half to each wallet, traced.

Figures (all measured in one run):

* ``exchanges_per_s``: ``in_flight`` exchanges at once, each a voucher of one wallet for one of the other's,
  through the wallet library: the initiator offers, the other owner accepts as soon as the offer is listed.
  An exchange is *complete* when both cards' records say ``done`` and both vouchers are enabled on their new
  cards (traced by the authority). Rounds alternate the initiator. Rate = exchanges completed / the round's time.
* ``p50_ms``, ``p99_ms``: one exchange at a time on an otherwise idle system, offer to complete (the accept
  follows the offer as soon as the other wallet lists it).
* ``crypto_bound_exchanges_per_s``: the CPU time of every signature, verification, certificate check, HPKE seal
  and open and record seal and open that one exchange needs, counted by running one exchange in this process on
  in-process cards and timed here, spread over the machine's cores.
* ``serial_bound_exchanges_per_s``: the same, on one core, plus one durable SQLite commit per card step that
  wrote (counted the same way): nothing grouped, nothing overlapped.
* ``paper_exchange_ms``: 1788, the paper's card (TENeT Table 2), for the record.

Targets: ``p50_ms <= 5`` and ``exchanges_per_s >= 0.4 x crypto_bound_exchanges_per_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.applets import fairx as fa
from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.trn import MINT, SEND, SET_AUTHORITY, TrnApplet
from cardnet.bench.card import sqlite_commit_rate
from cardnet.bench.crypto_ops import OPS, bounds, counting, op_rates
from cardnet.bench.trnnet import DEFAULT_CAPACITY_BYTES, TrnNet
from cardnet.card import Applet, Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.errors import CardnetError
from cardnet.host import Host
from cardnet.services.wallet import Event, Wallet
from cardnet.store import SqliteStore
from cardnet.wire import MType, Uid

PAPER_EXCHANGE_MS = 1788
CAPACITY_BYTES = DEFAULT_CAPACITY_BYTES  # the hosts' default: a wallet keeps its 16 latest finished exchanges
PIN = "1357"
Progress = Callable[[str], None]


class BenchError(CardnetError):
    """The benchmark could not finish (the hosts' logs say why)."""


# -- counting one exchange's operations, in process ------------------------------------------------------


@contextlib.contextmanager
def exchange_rig(tmp: Path) -> Iterator[Callable[[bytes, bytes], None]]:
    """Two in-process wallet cards (authority, agent and TTP beside them) on one host, each holding a voucher,
    sessions open: yields ``exchange(give, want)``, one complete exchange card a -> card b (a gives ``give``)."""
    now_dt = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("bench fairx CA", now=now_dt)
    host = Host(name="count")
    cards: dict[str, Card] = {}
    apps: dict[str, Any] = {}
    now = now_dt.timestamp()
    applets: dict[str, tuple[pki.Role, Callable[[], Applet]]] = {
        "authority": (pki.Role.SERVICE, AuthorityApplet), "agent": (pki.Role.AGENT, TrnApplet),
        "ttp": (pki.Role.SERVICE, fa.TtpApplet), "a": (pki.Role.DEVICE, TrnApplet), "b": (pki.Role.DEVICE, TrnApplet),
    }  # fmt: skip
    for name, (role, make) in applets.items():
        card = Card(SqliteStore(str(tmp / f"{name}.db")), applets=[make()])
        personalise(card, ca, pin=PIN, now=now_dt, role=role, name=name)
        host.add_card(card)
        cards[name] = card
        apps[name] = host.acquire(card.uid.domain, now)
        apps[name].send(card.uid, cm.PIN_VERIFY, pin=PIN)

    def run() -> None:
        nonlocal now
        for _ in range(500):
            now += 0.001
            host.pump(now)
            if host.idle:
                return
        raise BenchError("failed", "the in-process exchange did not settle")

    def order(name: str, mtype: MType, **fields: Any) -> None:
        apps[name].send(cards[name].uid, mtype, **fields)
        run()

    def exchange(give: bytes, want: bytes) -> None:
        order("a", fa.START, give=give, want=want, to=cards["b"].uid)
        n1 = _n1(apps["a"])
        order("b", fa.ACCEPT, n1=n1)
        run()

    try:
        run()
        order("authority", ADD_AGENT, cert=cards["agent"].certificate_der)
        for name in ("agent", "a", "b"):
            order(name, SET_AUTHORITY, authority=cards["authority"].uid)
        for name in ("a", "b"):
            order(name, fa.SET_TTP, ttp=cards["ttp"].uid)
        for oid, to in ((b"\x01" * 16, "a"), (b"\x02" * 16, "b")):
            order("agent", MINT, oid=oid, body=b"voucher")
            order("agent", SEND, oid=oid, to=cards[to].uid)
        # (sessions a-b and a,b-TTP open once and carry many exchanges: open them before counting)
        order("a", fa.START, give=b"\x01" * 16, want=b"\x02" * 16, to=cards["b"].uid)
        order("a", fa.GIVE_UP, n1=_n1(apps["a"]))
        for app in apps.values():
            app.receive_all()
        yield exchange
    finally:
        for card in cards.values():
            card.close()


def ops_per_exchange(tmp: Path) -> dict[str, int]:
    """Run one exchange between two in-process wallet cards (authority, agent and TTP beside them) and count."""
    with exchange_rig(tmp) as exchange, counting() as counts:
        exchange(b"\x01" * 16, b"\x02" * 16)
    return {op: counts[op] for op in (*OPS, "commit")}


def _n1(app: Any) -> bytes:
    got = [fa.STATE.parse(m) for m in app.receive_all() if m.mtype == fa.STATE.code]
    if not got:
        raise BenchError("failed", "the card did not answer the exchange order")
    return bytes(got[-1]["n1"])


# -- exchanges between host processes --------------------------------------------------------------------------


async def _complete(giver: Wallet, changes: asyncio.Queue[Event], pending: dict[bytes, bytes]) -> None:
    """Until every exchange of ``pending`` (n1 -> the voucher got) is done on the initiator ``giver`` and the
    voucher got is enabled there, as the card pushes its changes (nothing polls)."""
    done: set[bytes] = set()
    arrived: set[bytes] = set()
    while pending:
        e = await changes.get()
        if e.kind == "missed":  # (read too slowly: resync from the lists)
            done |= {x.n1 for x in await giver.exchanges() if x.swapped}
            arrived |= {v.oid for v in await giver.vouchers() if v.status == "enabled"}
        elif e.exchange is not None and e.exchange.n1 in pending:
            if e.exchange.swapped:
                done.add(e.exchange.n1)
            elif e.exchange.finished:
                x = e.exchange
                raise BenchError("failed", f"exchange {x.n1.hex()} ended without a swap ({x.phase}: {x.why})")
        elif e.kind == "token_arrived" and e.voucher is not None:
            arrived.add(e.voucher.oid)
        for n1, gets in list(pending.items()):
            if n1 in done and gets in arrived:
                del pending[n1]


async def _accepting(taker: Wallet, changes: asyncio.Queue[Event]) -> None:
    """The other owner: accepts every offer as soon as the card tells of it, without waiting for the answers
    to earlier accepts (the wallet pipelines its orders: accepts that reach the host together share a commit)."""
    accepts: set[asyncio.Task[Any]] = set()

    def accept(n1: bytes) -> None:
        task = asyncio.create_task(taker.accept(n1))
        accepts.add(task)
        task.add_done_callback(accepts.discard)

    try:
        while True:
            e = await changes.get()
            if e.kind == "offer_received" and e.exchange is not None:
                accept(e.exchange.n1)
            elif e.kind == "missed":
                for x in await taker.offers():
                    accept(x.n1)
            for task in [t for t in accepts if t.done()]:
                task.result()  # a refused accept fails the round
    finally:
        for task in accepts:
            task.cancel()


async def _round(w: dict[str, Wallet], pairs: list[tuple[bytes, bytes]], first: str, peer: Uid) -> float:
    """Every pair (``first``'s voucher, the other's) exchanged at once; exchanges per second."""
    other = "b" if first == "a" else "a"
    async with w[first].subscription() as mine, w[other].subscription() as theirs:
        taker = asyncio.create_task(_accepting(w[other], theirs))
        t0 = time.perf_counter()
        try:
            offers = await asyncio.gather(*(w[first].offer(give, want, peer) for give, want in pairs))
            await _complete(w[first], mine, {x.n1: x.want for x in offers})
        finally:
            taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taker
        return len(pairs) / (time.perf_counter() - t0)


async def _run(tmp: Path, in_flight: int, rounds: int, samples_idle: int, progress: Progress) -> dict[str, Any]:
    net = TrnNet(tmp, ("a", "b"), ttp=True, capacity_bytes=CAPACITY_BYTES)
    progress("starting the hosts")
    net.start()
    w: dict[str, Wallet] = {}
    try:
        await net.setup_trace()
        progress(f"minting {2 * in_flight} vouchers and sending them, traced, to the wallets")
        mine = {"a": [bytes([1, i]) + bytes(14) for i in range(in_flight)],
                "b": [bytes([2, i]) + bytes(14) for i in range(in_flight)]}  # fmt: skip
        for name, oids in mine.items():
            for oid in oids:
                if not (await net.ask("agent", MINT, oid=oid, body=b"voucher"))["ok"]:
                    raise BenchError("failed", "the agent refused to mint")
                await net.ask("agent", SEND, oid=oid, to=net.uids[name])
        for name, oids in mine.items():
            for oid in oids:
                await net.settle(name, oid, timeout_s=120)
        for name in ("a", "b"):
            w[name] = await Wallet.open(net.host_of(name).socket, pin=PIN, card=net.uids[name].domain)
            await w[name].set_ttp(net.uids["ttp"])
        uid = {"a": net.uids["b"], "b": net.uids["a"]}
        progress("warming up (opens the sessions)")
        await _round(w, [(mine["a"][0], mine["b"][0])], "a", uid["a"])
        mine["a"][0], mine["b"][0] = mine["b"][0], mine["a"][0]
        latencies = []
        for i in range(samples_idle):
            progress(f"idle exchange {i + 1}/{samples_idle}")
            first = "a" if i % 2 == 0 else "b"
            other = "b" if first == "a" else "a"
            t0 = time.perf_counter()
            await _round(w, [(mine[first][0], mine[other][0])], first, uid[first])
            latencies.append(1e3 * (time.perf_counter() - t0))
            mine[first][0], mine[other][0] = mine[other][0], mine[first][0]
        rates_live = []
        for r in range(rounds):
            first = "a" if r % 2 == 0 else "b"
            other = "b" if first == "a" else "a"
            progress(f"round {r + 1}/{rounds}: {in_flight} exchanges at once")
            rates_live.append(await _round(w, list(zip(mine[first], mine[other], strict=True)), first, uid[first]))
            mine[first], mine[other] = mine[other], mine[first]
    except TimeoutError:
        raise BenchError("failed", f"an exchange did not end; logs:\n{net.logs()}") from None
    finally:
        for wallet in w.values():
            with contextlib.suppress(Exception):
                await wallet.close()
        net.stop()
    latencies.sort()
    return {
        "exchanges_per_s": round(statistics.median(rates_live), 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "idle_samples": len(latencies),
        "in_flight": in_flight,
    }


def run(
    *, seconds: float = 1.0, in_flight: int = 16, rounds: int = 3, idle: int = 20, progress: Progress | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="cardnet-bench-fairx-") as d:
        tmp = Path(d)
        say("counting one exchange's operations (in process)")
        (tmp / "count").mkdir()
        ops = ops_per_exchange(tmp / "count")
        say("timing those operations and a durable commit on this disk")
        rates = op_rates(seconds / 4)
        commit_rate = sqlite_commit_rate(str(tmp), seconds / 2)
        (tmp / "net").mkdir()
        live = asyncio.run(_run(tmp / "net", in_flight, rounds, idle, say))
    cpus = os.cpu_count() or 1
    crypto_bound, serial_bound = bounds(ops, rates, commit_rate, cpus)
    result: dict[str, Any] = {
        **live,
        "crypto_bound_exchanges_per_s": round(crypto_bound, 1),
        "serial_bound_exchanges_per_s": round(serial_bound, 1),
        "exchanges_vs_crypto_bound": round(live["exchanges_per_s"] / crypto_bound, 3),
        "paper_exchange_ms": PAPER_EXCHANGE_MS,
        "ops_per_exchange": ops,
        "op_rates_per_s": {k: round(v) for k, v in rates.items()},
        "sqlite_commit_per_s": round(commit_rate),
        "cpus": cpus,
    }
    result["targets"] = {
        "p50_ms <= 5": live["p50_ms"] <= 5,
        "exchanges_per_s >= 0.4 x crypto_bound_exchanges_per_s": live["exchanges_per_s"] >= 0.4 * crypto_bound,
    }
    return result
