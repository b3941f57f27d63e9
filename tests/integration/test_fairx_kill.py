"""Fair exchange across real host processes under SIGKILL: it always ends fair after restart.

Two traced vouchers, one on wallet host a and one on wallet host b, are swapped
back and forth over TCP through the wallet library, the TTP running in a host
process of its own (``cardnet ttp run``), every card in its own SQLite file.
For each exchange one wallet offers the voucher it holds for the other's and
the other accepts as soon as the offer is listed. In some exchanges (all of
them when the TTP is the victim) both owners are also impatient, so the TTP is
asked while the exchange runs: the initiator asks to resolve as soon as it
confirmed, or gives up if it did not confirm within a few milliseconds; the
responder asks to abort a few milliseconds after it agreed. After a steered
random delay one process — wallet host a, wallet host b or the TTP host, 100
times each — is SIGKILLed and restarted (same config, same stores). The
applications of a dead wallet host die with it (the other one's stop waiting);
when the TTP dies, the wallet applications carry on.

Then the test drives the exchange to its end as an application with timeouts
would: a fresh wallet connection to the restarted host, ``recover`` on both
cards once a second (as ``Wallet.wait`` does: a card restarts a handshake
still under way at its second recovery, so recovering much faster than a
handshake takes would restart every one), a look at both cards whenever one
pushes a change (the library's events) or 0.1 s passed, an offer still
waiting answered at once (accepted or rejected; a late copy of an earlier
offer is rejected), and for a side that stays in one phase longer than its
patience the recovery order that phase allows, repeated once a second:
initiator offered, give up; confirmed or resolving, resolve; responder agreed
or aborting, abort. (An initiator that gave up is done with its part: it asks
the TTP to abort by itself, on recovery, if a late agreement reaches it.) The
next exchange starts from wherever the vouchers are.

Fair means: both records finished, and either both ``done`` with the vouchers
swapped (each enabled on the card that got it, the authority's chain for each
oid ending there) or neither ``done`` with both vouchers enabled back on their
owners (the chain unchanged); never both vouchers on one card; at no instant a
voucher usable (enabled or trustless) on two cards; and, once every host is
stopped at the end, every TTP decision the cards still have records of agrees
with them (resolved: done, aborted: not done). A card keeps only its latest
finished records (a burst of late offers answered or of late TTP answers can
push out one that has just finished, between two listings), so the test
follows this exchange's records while they are listed and judges the end on
the vouchers.

How the checks avoid false alarms. Listing two cards is two instants, not one.
During one exchange (nothing else moves a voucher meanwhile) the card that
*gets* a voucher only moves forward: none -> trustless -> enabled, and keeps
it; the card that *gives* it holds it enabled, locked (``exchanging``, not
usable), enabled again after an abort, or not at all once swapped. So the test
reads the responder, then the initiator, then the responder again: the
initiator's voucher is checked on (responder read 1, initiator read), the
responder's on (initiator read, responder read 2). The getter is always read
first, so a usable getter and then a usable giver were both usable at the
giver's read: a real double, never a false alarm. While a wallet host is dead
its store is frozen, so the dead card's store (read straight from its file)
and one listing of the live card are a consistent pair in either order:
checked right after each kill. A voucher may be on neither card for a while (a
resolved initiator drops its own before the responder learns the TTP's
decision), so a loss is judged only once no record of either card waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import forkhost
import pytest
from forkhost import Forker
from killwindow import KillWindow

from cardnet.applets import fairx as fa
from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.procs import HostProc
from cardnet.bench.trnnet import ASK_TIMEOUT_S, PIN, TrnNet
from cardnet.card import Card
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient
from cardnet.protocols import fairx as fx
from cardnet.protocols.trn import transfer as tr
from cardnet.services.wallet import RECOVER_EVERY_S, Event, Exchange, Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.wire import Uid
from cardnet.wire.cbor import loads_one

KILLS = 100
MAX_KILLS = 2 * KILLS  # a loaded machine may need more kills to see every ending (see kill_loop)
USABLE = ("enabled", "trustless")
V_A = bytes.fromhex("0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a")  # starts on a
V_B = bytes.fromhex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b")  # starts on b
OTHER = {"a": "b", "b": "a"}
PATIENCE_S = (0.0, 0.2, 0.5)  # how long an application waits in one phase before its recovery order
# the share of exchanges whose owners are impatient before the kill: all, when the TTP is the victim
IMPATIENT = {"a": 0.3, "b": 0.3, "ttp": 1.0}
IMPATIENT_S = 0.04  # ... after a delay drawn from [0, IMPATIENT_S)
ACCEPT_SHARE = 0.8  # an offer still waiting after the restart is accepted, else rejected
DRIVE_TIMEOUT_S = 60.0
ROUND_S = 0.1  # the test looks again at least this often (else on a change the cards push)
FINISHED = frozenset({"done", "aborted", "gave_up"})
WAITING_FOR_TTP = frozenset(p.value for p in fx.WAITING_FOR_TTP)


# -- stores read straight from their files (the host stopped or dead; closed at once, nothing flushed) --------


def rows(tmp: Path, card: str, table: str) -> dict[bytes, bytes]:
    c = Card(SqliteStore(str(tmp / f"{card}.card.db")))
    try:
        return {k: v for (t, k), v in c._mem.items() if t == table}
    finally:
        c._store.close()


@dataclass(frozen=True)
class Rec:
    """What the test needs of one exchange record: the card's role, its phase, the voucher it gives."""

    role: str
    phase: str
    gives: bytes

    @classmethod
    def of(cls, x: Exchange) -> Rec:
        return cls(x.role, x.phase, x.give)


@dataclass
class Frozen:
    """A card's vouchers (oid -> status) and exchange records (n1 -> record; a pending start is offered)."""

    tokens: dict[bytes, str]
    recs: dict[bytes, Rec]
    xids: dict[bytes, str]  # xid -> phase, for the records that have one


def frozen(tmp: Path, card: str) -> Frozen:
    got = Frozen({}, {}, {})
    for k, v in rows(tmp, card, "a.trn").items():
        if k.startswith(b"t:"):
            got.tokens[k[2:]] = tr.Holding.decode(k[2:], v).state
        elif k.startswith(b"xs:"):
            got.recs[k[3:]] = Rec(fx.INITIATOR, fx.Phase.OFFERED.value, fa._PENDING_START.decode(v)["give"])
        elif k.startswith(b"x:"):
            x = fx.Exchange.decode(v)
            got.recs[k[2:]] = Rec(x.role, x.phase.value, x.gives)
            if x.xid is not None:
                got.xids[x.xid] = x.phase.value
    return got


def ttp_decisions(tmp: Path) -> dict[bytes, str]:
    """The TTP's durable first-wins decisions: xid -> resolved | aborted."""
    out: dict[bytes, str] = {}
    for k, v in rows(tmp, "ttp", "a.ttp").items():
        if k.startswith(b"d:"):
            kept = loads_one(v)
            assert isinstance(kept, list)
            out[k[2:]] = str(kept[0])
    return out


def this_exchange(
    recs: dict[bytes, Rec], role: str, gives: bytes, old: set[bytes], n1: bytes | None
) -> tuple[bytes, Rec] | None:
    """(n1, record) of this iteration's exchange among a card's ``recs``: by its n1 once known, else the one record
    new to the test in which the card has ``role`` and gives ``gives`` (a late copy of an earlier offer is not)."""
    if n1 is not None:
        return (n1, recs[n1]) if n1 in recs else None
    found = [(k, r) for k, r in recs.items() if k not in old and r.role == role and r.gives == gives]
    assert len(found) <= 1, f"two new exchanges giving {gives.hex()[:8]}: {found}"
    return found[0] if found else None


# -- checks and steering --------------------------------------------------------------------------------------


def check_not_doubled(where: str, oid: bytes, getter: str, got_first: str | None, giver: str,
                      gave_later: str | None) -> None:  # fmt: skip
    """``got_first`` (the getter's status) was read no later than ``gave_later`` (see the module docstring)."""
    assert not (got_first in USABLE and gave_later in USABLE), (
        f"{where}: voucher {oid.hex()[:8]} doubled: usable on {getter} ({got_first}), then on {giver} ({gave_later})"
    )


# -- the network and its applications ---------------------------------------------------------------------------


class FairNet:
    def __init__(self, net: TrnNet, rng: random.Random) -> None:
        self.net = net
        self.rng = rng
        self.holder = {V_A: "a", V_B: "b"}  # where each voucher is, enabled, between exchanges
        self.moves: Counter[bytes] = Counter()
        self.old: set[bytes] = set()  # the n1 of every earlier exchange
        self._wallets: dict[str, Wallet] = {}
        self._authority: AppClient | None = None  # (its host is never killed here)

    async def wallet(self, card: str) -> Wallet:
        """The application's wallet connection to ``card`` (a new one after its host died)."""
        if card not in self._wallets:
            host = self.net.host_of(card)
            self._wallets[card] = await Wallet.open(host.socket, pin=PIN, card=self.net.uids[card].domain)
        return self._wallets[card]

    async def chain(self, oid: bytes) -> list[Uid]:
        """The holders the authority recorded for ``oid``, first to last."""
        if self._authority is None:
            self._authority = await self.net.app("authority")
        await self._authority.send(self.net.uids["authority"], QUERY, oid=oid)
        holders: list[Uid] = (await self._authority.recv_type(CHAIN, timeout_s=ASK_TIMEOUT_S))["holders"]
        return holders

    async def close(self) -> None:
        await self.drop("a", "b")
        if self._authority is not None:
            await self._authority.aclose()

    async def drop(self, *cards: str) -> None:
        for card in cards:
            w = self._wallets.pop(card, None)
            if w is not None:
                with contextlib.suppress(CardnetError, OSError):
                    await w.close()

    async def setup(self) -> None:
        net = self.net
        await net.setup_trace()
        for oid, to, body in ((V_A, "a", b"Final, seat 7"), (V_B, "b", b"one coffee")):
            assert (await net.ask("agent", MINT, oid=oid, body=body))["ok"]
            assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
        for oid, to in self.holder.items():
            await net.settle(to, oid)
        for card in ("a", "b"):
            await (await self.wallet(card)).set_ttp(net.uids["ttp"])

    async def tokens(self, card: str) -> dict[bytes, str]:
        return {v.oid: v.status for v in await (await self.wallet(card)).vouchers()}

    async def records(self, card: str) -> dict[bytes, Exchange]:
        return {x.n1: x for x in await (await self.wallet(card)).exchanges()}


async def next_change(queues: list[asyncio.Queue[Event]], timeout_s: float) -> None:
    """Until one of the wallets reports a change (pushed by its card), or ``timeout_s``; the rest reported meanwhile
    is dropped (the caller lists again: every listing is a durable step of the card, so the test lists on news)."""
    getters = [asyncio.ensure_future(q.get()) for q in queues]
    try:
        await asyncio.wait(getters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for g in getters:
            g.cancel()
    for q in queues:
        while not q.empty():
            q.get_nowait()


async def initiate(fn: FairNet, card: str, give: bytes, want: bytes, to: str, impatient: bool,
                   stop: asyncio.Event, n1s: list[bytes]) -> None:  # fmt: skip
    """The initiator's application: offers; impatient, it asks to resolve as soon as it confirmed, and gives up if
    it did not confirm within a delay drawn from [0, IMPATIENT_S)."""
    w = await fn.wallet(card)
    async with w.subscription() as changes:
        deadline = time.monotonic() + fn.rng.uniform(0.0, IMPATIENT_S)
        n1 = (await w.offer(give, want, fn.net.uids[to])).n1
        n1s.append(n1)
        phase = fx.Phase.OFFERED.value
        while impatient and not stop.is_set():
            if phase == fx.Phase.CONFIRMED.value:
                await w.resolve(n1)
            elif phase == fx.Phase.OFFERED.value and time.monotonic() >= deadline:
                await w.give_up(n1)  # (refused if it moved on meanwhile)
            elif phase == fx.Phase.OFFERED.value:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - time.monotonic()):
                        e = await changes.get()
                        if e.kind == "missed":
                            phase = (await w.status(n1)).phase
                        elif e.exchange is not None and e.exchange.n1 == n1:
                            phase = e.exchange.phase
                continue
            return


async def respond(fn: FairNet, card: str, want: bytes, impatient: bool, stop: asyncio.Event) -> None:
    """The responder's application: accepts the offer for ``want`` as soon as it is listed; impatient, it then
    asks to abort after a delay drawn from [0, IMPATIENT_S) if the exchange still waits for the confirmation."""
    w = await fn.wallet(card)
    delay = fn.rng.uniform(0.0, IMPATIENT_S)
    async with w.subscription() as changes:
        offers = await w.offers()
        while not stop.is_set():
            for x in offers:
                if x.n1 in fn.old or x.give != want:
                    continue
                y = await w.accept(x.n1)
                if impatient and y.phase == fx.Phase.AGREED.value:
                    await asyncio.sleep(delay)
                    if not stop.is_set() and (await w.status(x.n1)).phase == fx.Phase.AGREED.value:
                        await w.abort(x.n1)
                return
            offers = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):  # (to see the stop)
                    e = await changes.get()
                    if e.kind == "missed":
                        offers = await w.offers()
                    elif e.kind == "offer_received" and e.exchange is not None:
                        offers = [e.exchange]


async def finish(task: asyncio.Task[None]) -> bool:
    """Let an application task end its current order (a dead host's connection fails it at once); False if it
    hung and was cancelled (its connection may then hold a late answer: the caller drops it)."""
    try:
        async with asyncio.timeout(10):
            await task
    except (CardnetError, OSError):
        pass
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False
    return True


async def order(w: Wallet, x: Exchange, accept: bool) -> None:
    """The answer or recovery order ``x``'s phase allows (a refusal: it moved on meanwhile, the next round sees)."""
    with contextlib.suppress(WalletError):
        if x.role == fx.INITIATOR and x.phase == fx.Phase.OFFERED.value:
            await w.give_up(x.n1)
        elif x.role == fx.INITIATOR and x.phase in (fx.Phase.CONFIRMED.value, fx.Phase.RESOLVING.value):
            await w.resolve(x.n1)
        elif x.role == fx.RESPONDER and x.phase in (fx.Phase.AGREED.value, fx.Phase.ABORTING.value):
            await w.abort(x.n1)
        elif x.role == fx.RESPONDER and x.phase == fx.Phase.PROPOSED.value:
            await (w.accept(x.n1) if accept else w.reject(x.n1))


async def chain_ends_at(fn: FairNet, at: dict[bytes, str]) -> bool:
    for oid, holder in at.items():
        if (await fn.chain(oid))[-1] != fn.net.uids[holder]:
            return False
    return True


async def drive(fn: FairNet, where: str, ini: str, give: bytes, want: bytes, patience_s: float,
                n1: bytes | None) -> str:  # fmt: skip
    """Drive this exchange (and any late copy of an earlier offer) to its end, checking at every round; returns
    "swapped", "aborted" or "none" (never offered: the start was lost or given up before the offer went out).

    A card keeps its latest finished records only, and a burst of them (late copies of earlier offers, answered;
    the TTP's answers to earlier exchanges) can push a record out between two listings, even one just finished:
    this exchange's records are followed while listed, and how they ended is judged on the vouchers.
    """
    res = OTHER[ini]
    role = {ini: fx.INITIATOR, res: fx.RESPONDER}
    gives = {ini: give, res: want}
    seen: dict[str, Exchange] = {}  # card -> its record of this exchange, as last listed
    since: dict[tuple[str, bytes], tuple[str, float]] = {}  # (card, n1) -> (phase, when first seen in it)
    accept = fn.rng.random() < ACCEPT_SHARE
    recovered = -RECOVER_EVERY_S
    try:
        async with asyncio.timeout(DRIVE_TIMEOUT_S), contextlib.AsyncExitStack() as stack:
            queues = [await stack.enter_async_context((await fn.wallet(c)).subscription()) for c in ("a", "b")]
            while True:
                if time.monotonic() - recovered >= RECOVER_EVERY_S:
                    for c in ("a", "b"):
                        await (await fn.wallet(c)).recover()
                    recovered = time.monotonic()
                xs = {c: await fn.records(c) for c in ("a", "b")}
                r1, i1, r2 = await fn.tokens(res), await fn.tokens(ini), await fn.tokens(res)  # (the docstring)
                check_not_doubled(where, give, res, r1.get(give), ini, i1.get(give))
                check_not_doubled(where, want, ini, i1.get(want), res, r2.get(want))
                for c in (ini, res):
                    if n1 is None:
                        hit = this_exchange({k: Rec.of(x) for k, x in xs[c].items()}, role[c], gives[c], fn.old, None)
                        n1 = None if hit is None else hit[0]
                    if n1 is not None and n1 in xs[c]:
                        assert xs[c][n1].role == role[c], f"{where}: {c} is {xs[c][n1].role} of the exchange"
                        seen[c] = xs[c][n1]
                now = time.monotonic()
                unfinished = [(c, x) for c in ("a", "b") for x in xs[c].values() if not x.finished]
                for c, x in unfinished:
                    if x.phase != fx.Phase.PROPOSED.value:  # (an offer is answered at once, not on a timeout)
                        phase, t = since.setdefault((c, x.n1), (x.phase, now))
                        if phase != x.phase:
                            since[(c, x.n1)] = (x.phase, now)
                        if phase != x.phase or now - t < patience_s:
                            continue
                    await order(await fn.wallet(c), x, accept and x.n1 == n1)  # (a late copy: rejected)
                    # (an order repeated, on no news, once a recovery period later)
                    since[(c, x.n1)] = (x.phase, time.monotonic() + RECOVER_EVERY_S - patience_s)
                if unfinished:
                    await next_change(queues, ROUND_S)
                    continue
                # Nothing waits any more: only tracing (trustless -> enabled) may still change what the cards hold.
                held = {ini: {o for o in (give, want) if o in i1}, res: {o for o in (give, want) if o in r2}}
                for c in (ini, res):
                    assert held[c] != {give, want}, f"{where}: {c} ends with both vouchers: {i1}, {r2}"
                at = {give: res, want: ini} if held == {ini: {want}, res: {give}} else None
                at = {give: ini, want: res} if held == {ini: {give}, res: {want}} else at
                if at is not None:
                    swapped = at[give] == res
                    for c, x in seen.items():  # (a record gone meanwhile finished: the vouchers say how)
                        assert not x.finished or x.swapped == swapped, f"{where}: {c} {x.phase}, vouchers at {at}"
                    enabled = all((i1 if h == ini else r2).get(o) == "enabled" for o, h in at.items())
                    if enabled and await chain_ends_at(fn, at):
                        fn.old.update(*xs.values())
                        if n1 is not None:
                            fn.old.add(n1)
                        if not swapped:
                            return "none" if n1 is None else "aborted"
                        fn.holder.update(at)
                        fn.moves.update((give, want))
                        return "swapped"
                await next_change(queues, ROUND_S)
    except TimeoutError:
        raise AssertionError(
            f"{where}: did not end fair within {DRIVE_TIMEOUT_S:g} s of recovery orders; this exchange: {seen}; "
            f"a: {await fn.records('a')}, {await fn.tokens('a')}; "
            f"b: {await fn.records('b')}, {await fn.tokens('b')}\n{fn.net.logs()}"
        ) from None


# -- the loop ---------------------------------------------------------------------------------------------------


async def kill_loop(net: TrnNet, victim: str, seed: int) -> None:
    rng = random.Random(seed)
    fn = FairNet(net, rng)
    await fn.setup()
    window = KillWindow(rng, max_s=0.2)
    ends: Counter[str] = Counter()
    in_flight = 0  # kills that found this exchange's record neither absent nor finished
    ttp_asked = 0  # kills after which a card waited for the TTP's answer
    t0 = time.monotonic()

    def covered() -> bool:
        return in_flight >= KILLS // 10 and ends["swapped"] >= KILLS // 20 and ends["aborted"] >= KILLS // 20

    # KILLS kills, and more (up to MAX_KILLS) until the kills have hit exchanges in flight and seen both endings:
    # on a loaded machine the impatient applications' few milliseconds pass sooner, so fewer exchanges end swapped
    kill = -1
    while (kill := kill + 1) < KILLS or (not covered() and kill < MAX_KILLS):
        ini = "a" if kill % 2 == 0 else "b"
        res = OTHER[ini]
        give = next(o for o, h in fn.holder.items() if h == ini)
        want = next(o for o, h in fn.holder.items() if h == res)
        role = {ini: fx.INITIATOR, res: fx.RESPONDER}
        gives = {ini: give, res: want}
        where = f"kill {kill} of {victim} ({ini} offers {give.hex()[:8]} for {res}'s {want.hex()[:8]})"
        impatient = rng.random() < IMPATIENT[victim]
        for c in ("a", "b"):
            await fn.wallet(c)
        stop = asyncio.Event()
        n1s: list[bytes] = []
        tasks = [
            asyncio.create_task(respond(fn, res, want, impatient, stop)),
            asyncio.create_task(initiate(fn, ini, give, want, res, impatient, stop, n1s)),
        ]
        await asyncio.sleep(window.draw())
        net.hosts[victim].kill()
        if victim == "ttp":  # the wallet applications carry on (an order to the TTP waits in the card's outbox)
            await asyncio.wait(tasks, timeout=2.0)
        stop.set()
        if not all([await finish(task) for task in tasks]):
            await fn.drop("a", "b")
        n1 = n1s[0] if n1s else None
        found: list[Rec]
        if victim in ("a", "b"):  # the dead card's store is frozen: with one listing of the live card, one instant
            await fn.drop(victim)
            dead = frozen(net.tmp, victim)
            restarted = asyncio.create_task(asyncio.to_thread(net.hosts[victim].restart))  # (meanwhile: the checks)
            live = await fn.tokens(OTHER[victim])
            for oid in (give, want):
                assert not (dead.tokens.get(oid) in USABLE and live.get(oid) in USABLE), (
                    f"{where}: voucher {oid.hex()[:8]} usable on {victim} ({dead.tokens.get(oid)}) "
                    f"and on {OTHER[victim]} ({live.get(oid)}) at once"
                )
            hit = this_exchange(dead.recs, role[victim], gives[victim], fn.old, n1)
            found = [] if hit is None else [hit[1]]
            early, late = not found, bool(found) and found[0].phase in FINISHED
        else:  # the TTP is dead, the cards are not: the checked read order
            restarted = asyncio.create_task(asyncio.to_thread(net.hosts[victim].restart))  # (the cards do not wait)
            r1, x_ini, i1, r2 = await fn.tokens(res), await fn.records(ini), await fn.tokens(ini), await fn.tokens(res)
            x_res = await fn.records(res)
            check_not_doubled(where, give, res, r1.get(give), ini, i1.get(give))
            check_not_doubled(where, want, ini, i1.get(want), res, r2.get(want))
            hits = [
                this_exchange({k: Rec.of(x) for k, x in xs.items()}, role[c], gives[c], fn.old, n1)
                for c, xs in ((ini, x_ini), (res, x_res))
            ]
            found = [h[1] for h in hits if h is not None]
            # steered on the TTP: a card still waiting for it came before its answer, none after it
            early = any(r.phase in WAITING_FOR_TTP for r in found)
            late = bool(found) and all(r.phase in FINISHED for r in found)
        in_flight += any(r.phase not in FINISHED for r in found)
        ttp_asked += any(r.phase in WAITING_FOR_TTP for r in found)
        window.saw(early, late)
        await restarted
        ends[await drive(fn, where, ini, give, want, rng.choice(PATIENCE_S), n1)] += 1
    elapsed = time.monotonic() - t0
    for oid in (V_A, V_B):
        assert len(await fn.chain(oid)) == 1 + fn.moves[oid], "the chain does not count every swap once"
    await fn.close()
    net.stop()  # the TTP's durable decisions against the cards' records
    cards = {c: frozen(net.tmp, c) for c in ("a", "b")}
    decisions = ttp_decisions(net.tmp)
    compared = 0
    for xid, decision in decisions.items():
        got = [cards[c].xids[xid] for c in ("a", "b") if xid in cards[c].xids]
        compared += bool(got)
        if decision == fx.RESOLVED:
            assert set(got) <= {"done"}, f"the TTP resolved exchange {xid.hex()[:8]}, the cards say {got}"
        else:
            assert "done" not in got, f"the TTP aborted exchange {xid.hex()[:8]}, the cards say {got}"
    print(
        f"\nvictim {victim}: {in_flight} of {kill} kills hit an exchange in flight ({ttp_asked} left a card"
        f" waiting for the TTP); {ends['swapped']} swapped, {ends['aborted']} aborted, {ends['none']} never"
        f" offered; {len(decisions)} TTP decisions ({compared} still on the cards, agreeing);"
        f" kill window now {window.width_s * 1000:.1f} ms; {elapsed:.0f} s"
    )
    # The kills must have hit exchanges in flight, not only before or after them.
    assert in_flight >= KILLS // 10, f"only {in_flight} kills hit an exchange in flight"
    assert ends["swapped"] >= KILLS // 20, f"only {ends['swapped']} exchanges ended swapped"
    assert ends["aborted"] >= KILLS // 20, f"only {ends['aborted']} exchanges ended aborted"


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    with forkhost.forker() as f:
        yield f


@pytest.fixture
def net(tmp_path: Path, forker: Forker) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path, ("a", "b"), ttp=True, ttp_host=True)  # (cards at the hosts' default capacity)
    forkhost.forked(n.hosts, forker)  # (the loop restarts hosts 100 times and more: see forkhost)
    try:
        with ThreadPoolExecutor(len(n.hosts)) as pool:  # (the hosts start at once: each waits for its own)
            list(pool.map(HostProc.start, n.hosts.values()))
        yield n
    finally:
        n.stop()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["a", "b", "ttp"])
def test_sigkill_of_a_card_host_or_the_ttp_during_exchanges_always_ends_fair(net: TrnNet, victim: str) -> None:
    asyncio.run(kill_loop(net, victim, seed={"a": 11, "b": 12, "ttp": 13}[victim]))
