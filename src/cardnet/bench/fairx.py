"""``cardnet bench fairx``: complete, durable fair exchanges between wallet host processes, against their bounds.

Setup (:class:`~cardnet.bench.trnnet.TrnNet` with a TTP): the authority's host (authority, agent and TTP cards)
and wallet hosts a and b over TCP on 127.0.0.1, every card in its own durable SQLite store. The agent mints
``2 * in_flight`` vouchers, half to each wallet, traced.

Figures (all measured in one run):

* ``exchanges_per_s``: a closed loop of ``in_flight`` exchanges always under way, each a voucher of one wallet for
  one of the other's, through the wallet library: the initiator offers, the other owner accepts as soon as its
  card tells of the offer; each pair of vouchers is exchanged again (the initiator alternating) as soon as its
  last exchange completed. An exchange is *complete* when both cards' records say ``done`` and both vouchers are
  enabled on their new cards (traced by the authority). Rate = completions per second in each of ``rounds``
  one-second windows after a warm-up second; the median.
* ``p50_ms``, ``p99_ms``: the same loop with one exchange at a time (an otherwise idle system), offer to complete.
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
import functools
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
from cardnet.protocols import fairx as fx
from cardnet.services.wallet import Event, Wallet
from cardnet.store import SqliteStore
from cardnet.wire import MType, Uid

PAPER_EXCHANGE_MS = 1788
WINDOW_S = 1.0  # one measurement window of the closed loop
CAPACITY_BYTES = DEFAULT_CAPACITY_BYTES  # the hosts' default: a wallet keeps its 16 latest finished exchanges
PIN = "1357"
# A card holds at most MAX_PROPOSED offers for its owner at once (more are refused "busy"), and with the hosts'
# default capacity a wallet card holds the vouchers of about that many exchanges under way: beyond it the run
# would measure refusals, not exchanges.
MAX_IN_FLIGHT = fa.MAX_PROPOSED
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


class _Seen:
    """What each wallet's card pushed: exchanges swapped (by n1) and vouchers that became usable (by oid)."""

    def __init__(self) -> None:
        self.swapped: dict[str, set[bytes]] = {"a": set(), "b": set()}
        self.usable: dict[str, set[bytes]] = {"a": set(), "b": set()}
        self.changed = asyncio.Condition()


async def _watch(name: str, wallet: Wallet, changes: asyncio.Queue[Event], seen: _Seen) -> None:
    """One wallet's events into ``seen``; every offer accepted at once (its owner always agrees), without waiting
    for the answers to earlier accepts (the wallet pipelines its orders)."""
    accepts: set[asyncio.Task[Any]] = set()

    def accept(n1: bytes) -> None:
        task = asyncio.create_task(wallet.accept(n1))
        accepts.add(task)
        task.add_done_callback(accepts.discard)

    try:
        while True:
            e = await changes.get()
            if e.kind == "missed":  # (read too slowly: resync from the lists)
                for x in await wallet.exchanges():
                    if x.swapped:
                        seen.swapped[name].add(x.n1)
                    elif x.role == fx.RESPONDER and x.phase == fx.Phase.PROPOSED.value:
                        accept(x.n1)
                seen.usable[name] |= {v.oid for v in await wallet.vouchers() if v.status == "enabled"}
            elif e.kind == "offer_received" and e.exchange is not None:
                accept(e.exchange.n1)
            elif e.exchange is not None and e.exchange.swapped:
                seen.swapped[name].add(e.exchange.n1)
            elif e.exchange is not None and e.exchange.finished:
                x = e.exchange
                raise BenchError("failed", f"exchange {x.n1.hex()} ended without a swap ({x.phase}: {x.why})")
            elif e.kind == "token_arrived" and e.voucher is not None:
                seen.usable[name].add(e.voucher.oid)
            for task in [t for t in accepts if t.done()]:
                task.result()  # a refused accept fails the run
            async with seen.changed:
                seen.changed.notify_all()
    finally:
        for task in accepts:
            task.cancel()


def _complete(seen: _Seen, n1: bytes, first: str, other: str, give: bytes, want: bytes) -> bool:
    return (n1 in seen.swapped[first] and n1 in seen.swapped[other]
            and want in seen.usable[first] and give in seen.usable[other])  # fmt: skip


async def _flow(w: dict[str, Wallet], uid: dict[str, Uid], pairs: list[tuple[bytes, bytes]], *, seconds: float = 0.0,
                cycles: int = 0) -> list[tuple[float, float]]:  # fmt: skip
    """Closed loop: ``len(pairs)`` exchanges always under way, each pair (a's voucher, b's) exchanged again as
    soon as its last exchange completed, the initiator alternating, for ``seconds`` (or ``cycles`` exchanges of
    each pair); every exchange's (offer, complete) times. ``pairs`` is updated as vouchers change hands.

    An exchange is complete when both cards' records say it swapped and both vouchers are usable (enabled,
    traced) on their new cards, as the cards push their changes (nothing polls). The exchanges under way are at
    different steps at once, so the hosts work in parallel, as a busy system's would (exchanges that all start
    together would move in lockstep, one host at a time)."""
    seen = _Seen()
    times: list[tuple[float, float]] = []
    stop_at = time.perf_counter() + seconds

    async def cycle(i: int) -> None:
        held = {"a": pairs[i][0], "b": pairs[i][1]}
        first, other = "a", "b"
        n = 0
        while (n < cycles) if cycles else (time.perf_counter() < stop_at):
            give, want = held[first], held[other]
            seen.usable[first].discard(want)  # (markers of an earlier cycle: this one's arrivals are new)
            seen.usable[other].discard(give)
            t0 = time.perf_counter()
            x = await w[first].offer(give, want, uid[other])
            async with seen.changed:
                await seen.changed.wait_for(functools.partial(_complete, seen, x.n1, first, other, give, want))
            times.append((t0, time.perf_counter()))
            held[first], held[other] = want, give
            pairs[i] = (held["a"], held["b"])  # (who holds what now, for the caller's next flow)
            first, other = other, first
            n += 1

    async with w["a"].subscription() as qa, w["b"].subscription() as qb:
        watchers = [asyncio.create_task(_watch("a", w["a"], qa, seen)),
                    asyncio.create_task(_watch("b", w["b"], qb, seen))]  # fmt: skip
        try:
            cycles_done: asyncio.Future[list[None]] = asyncio.gather(*(cycle(i) for i in range(len(pairs))))
            waiting: set[asyncio.Future[Any]] = {cycles_done, *watchers}
            while not cycles_done.done():
                finished, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()  # a watcher's failure (an exchange ended without a swap) ends the run
        finally:
            cycles_done.cancel()  # (a watcher failed: the cycles waiting on it end too, their outcome retrieved)
            for task in watchers:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BenchError):
                await asyncio.gather(cycles_done, *watchers)
    return times


def _rates(times: list[tuple[float, float]], start: float, windows: int, window_s: float) -> list[float]:
    """Completions per second in each of ``windows`` consecutive windows from ``start``."""
    ends = [end for _, end in times]
    return [sum(1 for t in ends if start + i * window_s <= t < start + (i + 1) * window_s) / window_s
            for i in range(windows)]  # fmt: skip


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
        cards = {"a": net.uids["a"], "b": net.uids["b"]}
        pairs = list(zip(mine["a"], mine["b"], strict=True))
        progress("warming up (opens the sessions)")
        await _flow(w, cards, pairs[:1], cycles=2)
        progress(f"{samples_idle} exchanges one at a time (idle)")
        one = pairs[:1]
        latencies = [1e3 * (end - start) for start, end in await _flow(w, cards, one, cycles=samples_idle)]
        pairs[0] = one[0]
        progress(f"{in_flight} exchanges always under way: a warm-up second, then {rounds} windows of {WINDOW_S} s")
        t0 = time.perf_counter()
        times = await _flow(w, cards, pairs, seconds=(rounds + 1) * WINDOW_S)
        rates_live = _rates(times, t0 + WINDOW_S, rounds, WINDOW_S)
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
