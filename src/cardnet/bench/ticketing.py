"""``cardnet bench ticketing``: tickets sold end to end by a ticketing server process, and admitted at a gate.

Setup (:class:`~cardnet.bench.ticketnet.TicketNet`): the authority's host (``cardnet authority run``), one host
process per buyer (``cardnet host run``; each buyer's card durable, with the trn, purse and speed applets), the
SPEED broker (``cardnet speed broker run``), the ticketing server (``cardnet ticketing run``: its device host,
its SPEED vendor, its HTTP port) and a gate (``cardnet gate run --json``), over TCP on 127.0.0.1, every store a
durable SQLite file. This process runs the buyers' programs: each buys with the buyer's library
(:func:`~cardnet.services.ticketing.buyer.buy_ticket`: the server's pages, SPEED at the list price, the broker's
receipt on ``POST /tickets/{poid}`` with ``Upgrade: TRN``, and the relay between the upgraded connection and its
own host), over its own wallet connection to its own host.

Figures (all measured in one run):

* ``tickets_per_s``: ``buyers`` buyers buying back to back for ``seconds``; a ticket counts once it is enabled
  on its buyer's card (paid, delivered over the upgraded connection, traced by the authority: the card pushes
  the change). Rate = tickets / (last one's time - the round's start).
* ``p50_ms``, ``p99_ms``: one purchase at a time on an otherwise idle system, from the first page to enabled.
* ``admissions_per_s``: every buyer presents the tickets it holds at the gate, one after another
  (``Wallet.redeem``), all buyers at once, for ``seconds``; an admission counts at the gate's verdict (the
  operator's ``admitted`` line: the authority traced it). Rate = verdicts / (last one's time - the start).
* ``ops_per_ticket``, ``ops_per_admission``: every crypto operation and durable commit one sale and one
  admission make, **counted** by running them in this process (the same hosts, server and broker, served by
  their classes on one event loop) with the crypto functions and the stores' writes wrapped
  (:func:`cardnet.bench.crypto_ops.counting`), after a first sale and a first admission opened the sessions.
* ``crypto_bound_*_per_s``: cores / the CPU time of those crypto operations, each timed in the same run;
  ``serial_bound_*_per_s``: 1 / (the same on one core + one durable SQLite commit per counted commit, the cards'
  and the services').
* ``cpu_ms_per_ticket``, ``cpu_ms_per_admission``: CPU (``/proc``) of each process over the busy rounds, per unit:
  where the time goes, this process (``driver``: the buyers' programs) included.

Targets: ``tickets_per_s >= 0.4 x crypto_bound_tickets_per_s`` and the same for admissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardnet.bench.card import sqlite_commit_rate
from cardnet.bench.crypto_ops import OPS, bounds, counting, op_rates
from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.bench.trn import cpu_s
from cardnet.errors import CardnetError
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import buy_ticket, get_json
from cardnet.services.wallet import Event, Wallet
from cardnet.store import SqliteStore

Progress = Callable[[str], None]
COUNTED = (*OPS, "commit", "service_commit")
WAIT_S = 60.0  # for one ticket to be enabled, one verdict at the gate


class BenchError(CardnetError):
    """The benchmark could not finish (the processes' logs say why)."""


@dataclass
class Buyer:
    """One buyer's program: its wallet on its own host, the card's pushed changes, its seats and tickets."""

    name: str
    wallet: Wallet
    changes: asyncio.Queue[Event]
    seats: list[str]
    tickets: list[bytes] = field(default_factory=list)  # oids enabled on the card, oldest first


async def _enabled(b: Buyer, oid: bytes) -> None:
    """Until ticket ``oid`` is enabled on the buyer's card (traced), as the card pushes it."""
    async with asyncio.timeout(WAIT_S):
        while True:
            e = await b.changes.get()
            if e.kind == "missed":
                v = await b.wallet.voucher(oid)
                if v is not None and v.status == "enabled":
                    return
            elif e.kind == "token_arrived" and e.voucher is not None and e.voucher.oid == oid:
                return


async def _purchase(net: TicketNet, b: Buyer) -> float:
    """Buy the buyer's next seat and wait until the ticket is enabled on its card; milliseconds."""
    t0 = time.perf_counter()
    got = await buy_ticket(net.url, EVENT, b.seats.pop(0), card=b.wallet, app_socket=net.hosts[b.name].socket,
                           broker=net.broker_addr, broker_cert=net.broker_cert, roots=net.roots)  # fmt: skip
    await _enabled(b, got.oid)
    b.tickets.append(got.oid)
    return 1e3 * (time.perf_counter() - t0)


async def _gate_admitted(net: TicketNet, before: int) -> None:
    """Until the gate card counts more than ``before`` admissions and waits for no answer or report."""
    async with asyncio.timeout(WAIT_S):
        while True:
            s = await net.gate_state("gate")
            if s["admitted"] > before and s["pending"] == 0 and s["reports_waiting"] == 0:
                return
            await asyncio.sleep(0.02)


async def _present(net: TicketNet, b: Buyer) -> None:
    oid = b.tickets.pop(0)
    got = await b.wallet.redeem(oid, net.uids["gate"], timeout_s=WAIT_S)
    if not got.taken:
        raise BenchError("refused", f"the gate refused ticket {oid.hex()} of {b.name}: {got.reason}")


# -- counting one sale's and one admission's operations, in process -------------------------------------------


def count_ops(tmp: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Run sales and admissions in this process (one buyer); count the second of each."""
    net = TicketNet(tmp, ("b0",), [f"s{i}" for i in range(4)])

    async def go() -> tuple[dict[str, int], dict[str, int]]:
        async with net.in_process():
            await net.setup()
            async with await net.wallet("b0") as w, w.subscription() as changes:
                b = Buyer("b0", w, changes, [f"s{i}" for i in range(4)])
                await _purchase(net, b)  # opens the sessions: device-card, card-authority
                with counting() as sale:
                    await _purchase(net, b)
                await _present(net, b)  # opens the sessions: card-gate, gate-authority
                await _gate_admitted(net, 0)
                with counting() as admission:
                    await _present(net, b)
                    await _gate_admitted(net, 1)
        return {k: sale[k] for k in COUNTED}, {k: admission[k] for k in COUNTED}

    return asyncio.run(go())


# -- the processes -----------------------------------------------------------------------------------------------


class GateScreen:
    """What the gate's operator sees: the JSON lines of ``cardnet gate run --json`` (read by a thread, which also
    keeps the pipe drained), each final verdict with the time it was read."""

    def __init__(self, net: TicketNet) -> None:
        proc = net.hosts["gate"].proc
        if proc is None or proc.stdout is None:
            raise BenchError("failed", "the gate is not running")
        self.verdicts: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        out = proc.stdout

        def read() -> None:
            with contextlib.suppress(ValueError, OSError):
                for line in out:
                    e = json.loads(line).get("event", {})
                    if e.get("kind") == "verdict" and e.get("verdict") != "pending":
                        self.verdicts.put((time.perf_counter(), e))

        threading.Thread(target=read, daemon=True).start()

    async def take(self, n: int) -> list[tuple[float, dict[str, Any]]]:
        """The next ``n`` verdicts (BenchError if they do not come within WAIT_S)."""
        got: list[tuple[float, dict[str, Any]]] = []
        deadline = time.perf_counter() + WAIT_S
        while len(got) < n:
            if time.perf_counter() > deadline:
                raise BenchError("failed", f"the gate gave {len(got)} of {n} verdicts within {WAIT_S:g} s")
            with contextlib.suppress(queue.Empty):
                got.append(await asyncio.to_thread(self.verdicts.get, True, 0.2))
        return got


def _cpu(net: TicketNet) -> dict[str, float]:
    """CPU seconds so far of every process of the world, the buyers' hosts summed, and of this one."""
    procs = {name: hp.proc.pid for name, hp in net.hosts.items() if hp.proc is not None}
    if net.broker is not None:
        procs["broker"] = net.broker.proc.pid
    cpu = {"buyer_hosts": sum(cpu_s(pid) for name, pid in procs.items() if name in net.wallets)}
    cpu |= {name: cpu_s(pid) for name, pid in procs.items() if name not in net.wallets}
    cpu["driver"] = time.process_time()
    return cpu


def _per_unit(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    out = {k: round(1e3 * (after[k] - before[k]) / max(1, units), 2) for k in after}
    out["total"] = round(sum(out.values()), 2)
    return out


async def _sell(net: TicketNet, buyers: list[Buyer], seconds: float) -> tuple[int, float]:
    """Every buyer buys back to back for ``seconds`` (or until it has no seat left); (tickets, seconds taken)."""
    stop_at = time.perf_counter() + seconds
    done = 0
    last = t0 = time.perf_counter()

    async def loop(b: Buyer) -> None:
        nonlocal done, last
        while b.seats and time.perf_counter() < stop_at:
            await _purchase(net, b)
            done += 1
            last = time.perf_counter()

    await asyncio.gather(*(loop(b) for b in buyers))
    return done, last - t0


async def _admit(net: TicketNet, screen: GateScreen, holders: list[Buyer], seconds: float, per_holder: int | None
                 ) -> tuple[int, float, dict[str, int]]:  # fmt: skip
    """Every holder presents its tickets one after another (at most ``per_holder``), all at once, for ``seconds``;
    (verdicts, seconds from the start to the last one, verdicts by kind)."""
    stop_at = time.perf_counter() + seconds
    presented = 0
    t0 = time.perf_counter()

    async def loop(b: Buyer) -> None:
        nonlocal presented
        n = 0
        while b.tickets and time.perf_counter() < stop_at and (per_holder is None or n < per_holder):
            await _present(net, b)
            presented += 1
            n += 1

    await asyncio.gather(*(loop(b) for b in holders))
    got = await screen.take(presented)
    kinds: dict[str, int] = {}
    for _, e in got:
        kinds[e["verdict"]] = kinds.get(e["verdict"], 0) + 1
    return presented, max(t for t, _ in got) - t0, kinds


async def _server_books(net: TicketNet) -> dict[str, Any]:
    """What the server recorded (its store, read beside it), and which cards hold which tickets (trn.list)."""
    store = SqliteStore(str(net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            seats = txn.scan(sales.SEATS, f"{EVENT}/".encode())
            tickets = [sales.Ticket.decode(k, v) for k, v in txn.scan(sales.TICKETS)]
    finally:
        store.close()
    held: dict[bytes, list[str]] = {}
    for b in net.wallets:
        for oid, status in (await net.tokens(b)).items():
            if status == "enabled":
                held.setdefault(oid, []).append(b)
    oids = {t.oid for t in tickets}
    return {
        "sales_recorded": len(seats),
        "tickets_delivered": sum(1 for t in tickets if t.state == "delivered"),
        "tickets_on_cards": sum(1 for oid in held if oid in oids),
        "tickets_on_two_cards": sum(1 for oid, cards in held.items() if oid in oids and len(cards) > 1),
    }


async def _run(tmp: Path, buyers: int, seconds: float, idle: int, per_buyer: int, say: Progress) -> dict[str, Any]:
    names = tuple(f"b{i:02d}" for i in range(buyers))
    seats = {b: [f"{b}-{k}" for k in range(per_buyer)] for b in names}
    say(f"making the stores: {buyers} buyers' cards, the device, a gate, the broker, {buyers * per_buyer} seats")
    net = TicketNet(tmp, names, [s for b in names for s in seats[b]])
    say(f"starting {len(net.hosts) + 1} processes (hosts, ticketing server, gate, broker)")
    out: dict[str, Any] = {}
    stack = contextlib.AsyncExitStack()
    try:
        net.start_broker()
        net.start()
        screen = GateScreen(net)
        say("the authority knows the device, the gate its issuer; keying and loading the buyers' purses")
        await net.setup()
        bs: list[Buyer] = []
        for b in names:
            w = await stack.enter_async_context(await net.wallet(b))
            bs.append(Buyer(b, w, await stack.enter_async_context(w.subscription()), seats[b]))
        say(f"warming up: one ticket each for {buyers} buyers (opens the sessions)")
        await asyncio.gather(*(_purchase(net, b) for b in bs))
        latencies = []
        for i in range(idle):
            say(f"one purchase at a time (idle) {i + 1}/{idle}")
            latencies.append(await _purchase(net, bs[i % len(bs)]))
        t0 = time.perf_counter()
        page = await get_json(net.url, f"/events/{EVENT}")
        out["event_page_ms"] = round(1e3 * (time.perf_counter() - t0), 2)
        out["event_page_bytes"] = len(json.dumps(page))
        say(f"{buyers} buyers buying at once for {seconds:g} s")
        cpu0 = _cpu(net)
        sold, took = await _sell(net, bs, seconds)
        out["cpu_ms_per_ticket"] = _per_unit(cpu0, _cpu(net), sold)
        out["tickets_per_s"] = round(sold / took, 1)
        out["tickets_sold_busy"] = sold
        out["tickets_bought"] = sum(len(b.tickets) for b in bs)
        latencies.sort()
        out["p50_ms"] = round(statistics.median(latencies), 1)
        out["p99_ms"] = round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
        out["idle_samples"] = len(latencies)
        say("checking the server's books against the cards")
        out |= await _server_books(net)
        say(f"warming up the gate: one ticket from each of {buyers} holders")
        await _admit(net, screen, bs, WAIT_S, 1)
        say(f"{buyers} holders presenting their tickets at the gate for {seconds:g} s")
        cpu0 = _cpu(net)
        admitted, took, kinds = await _admit(net, screen, bs, seconds, None)
        out["cpu_ms_per_admission"] = _per_unit(cpu0, _cpu(net), admitted)
        out["admissions_per_s"] = round(admitted / took, 1)
        out["admissions_busy"] = admitted
        out["verdicts_busy"] = kinds
        state = await net.gate_state("gate")
        out["gate_admitted"] = state["admitted"]
        out["gate_refused"] = state["refused"]
        left = {oid for b in bs for oid in b.tickets}
        still = 0
        for b in names:
            still += sum(1 for oid, s in (await net.tokens(b)).items() if s == "enabled" and oid in left)
        out["tickets_left_on_cards"] = still
        out["tickets_presented"] = out["tickets_bought"] - len(left)
    except (TimeoutError, CardnetError) as exc:
        raise BenchError("failed", f"{exc or type(exc).__name__}; logs:\n{net.logs()}") from None
    finally:
        await stack.aclose()
        net.stop()
    return out


def run(
    *, buyers: int = 32, seconds: float = 15.0, idle: int = 20, per_buyer: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:  # fmt: skip
    say = progress or (lambda _: None)
    load_before = os.getloadavg()[0]
    seats = per_buyer or max(4, int(seconds * 4)) + 1 + idle // buyers + 1
    with tempfile.TemporaryDirectory(prefix="cardnet-bench-ticketing-") as d:
        tmp = Path(d)
        say("counting one sale's and one admission's operations (in process)")
        (tmp / "count").mkdir()
        ops_ticket, ops_admission = count_ops(tmp / "count")
        say("timing those operations and a durable commit on this disk")
        rates = op_rates(0.25)
        commit_rate = sqlite_commit_rate(str(tmp), 0.5)
        (tmp / "net").mkdir()
        live = asyncio.run(_run(tmp / "net", buyers, seconds, idle, seats, say))
    cpus = os.cpu_count() or 1
    commits = ("commit", "service_commit")
    t_crypto, t_serial = bounds(ops_ticket, rates, commit_rate, cpus, commits=commits)
    a_crypto, a_serial = bounds(ops_admission, rates, commit_rate, cpus, commits=commits)
    result: dict[str, Any] = {
        "tickets_per_s": live["tickets_per_s"],
        "crypto_bound_tickets_per_s": round(t_crypto, 1),
        "serial_bound_tickets_per_s": round(t_serial, 1),
        "tickets_vs_crypto_bound": round(live["tickets_per_s"] / t_crypto, 3),
        "p50_ms": live["p50_ms"],
        "p99_ms": live["p99_ms"],
        "crypto_bound_ticket_ms": round(1e3 * cpus / t_crypto, 2),
        "admissions_per_s": live["admissions_per_s"],
        "crypto_bound_admissions_per_s": round(a_crypto, 1),
        "serial_bound_admissions_per_s": round(a_serial, 1),
        "admissions_vs_crypto_bound": round(live["admissions_per_s"] / a_crypto, 3),
        **{k: v for k, v in live.items() if k not in ("tickets_per_s", "p50_ms", "p99_ms", "admissions_per_s")},
        "ops_per_ticket": {k: v for k, v in ops_ticket.items() if v},
        "ops_per_admission": {k: v for k, v in ops_admission.items() if v},
        "op_rates_per_s": {k: round(v) for k, v in rates.items()},
        "sqlite_commit_per_s": round(commit_rate),
        "buyers": buyers,
        "seats_per_buyer": seats,
        "seconds": seconds,
        "cpus": cpus,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    result["targets"] = {
        "tickets_per_s >= 0.4 x crypto_bound_tickets_per_s": live["tickets_per_s"] >= 0.4 * t_crypto,
        "admissions_per_s >= 0.4 x crypto_bound_admissions_per_s": live["admissions_per_s"] >= 0.4 * a_crypto,
    }
    return result
