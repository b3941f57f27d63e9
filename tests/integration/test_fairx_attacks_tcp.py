"""Attacks on fair exchanges performed for real (issue 11 item 6): wallet hosts ``a`` and ``b``, the authority's
host and the TTP's host (``cardnet ttp run``) as OS processes over TCP, each card in its own durable store, and
the attacker on the wire: a man in the middle on the hosts' TCP links (``fairx_mitm.Tap``) that drops, holds,
alters, replays or injects frames, or a host that stops (SIGKILL), with an owner who orders what they like.

Every fairx message travels as a record of the two cards' session (AEAD under the session keys, a counter per
direction): on the wire the attacker can delay, drop, replay or damage a record, not make up one. Forged
messages *inside* a session (a false m2, m3, m4, an admission signed by another key) need a card whose code was
changed: ``tests/protocol/test_fairx_forgeries.py`` feeds those to real cards in process.

Each test ends by checking what matters: every voucher usable on exactly one card, each party with the other's
voucher or its own back, and the authority's record of who held what.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fairx_mitm import Rule, Tap, altered, failures, is_record, passes, record_bytes, tapped_net
from waiting import wait_for

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Wallet, WalletError
from cardnet.wire import Message, Uid

T1, T2, T3, T4 = (bytes([i]) * 16 for i in (1, 2, 3, 4))
WAIT_S = 30.0
# The fairx messages' record sizes (ciphertext bytes; about: m1 1,460, m2 960, m3 187, m4 71): a tap tells them
# apart by size and direction, as any eavesdropper could.
OFFER_MIN = 600  # a -> b: the offer m1 (it carries a's certificate and v1 sealed); the confirmation m3 is smaller
AGREE_MIN = 300  # b -> a: the agreement m2 (v2 sealed); the commitment m4 is smaller


def offer_record(m: Message) -> bool:
    return is_record(m) and record_bytes(m) >= OFFER_MIN


def confirm_record(m: Message) -> bool:
    return is_record(m) and record_bytes(m) < OFFER_MIN


def agree_record(m: Message) -> bool:
    return is_record(m) and record_bytes(m) >= AGREE_MIN


def commit_record(m: Message) -> bool:
    return is_record(m) and record_bytes(m) < AGREE_MIN


@dataclass
class Scene:
    net: TrnNet
    taps: dict[str, Tap]
    a: Wallet
    b: Wallet

    def uid(self, card: str) -> Uid:
        return self.net.uids[card]

    async def phase(self, card: str, n1: bytes) -> str:
        return (await (self.a if card == "a" else self.b).status(n1)).phase

    async def usable(self, oid: bytes) -> list[str]:
        """The cards on which voucher ``oid`` is usable (``enabled``)."""
        on = []
        for card, w in (("a", self.a), ("b", self.b)):
            if any(v.oid == oid and v.status == "enabled" for v in await w.vouchers()):
                on.append(card)
        if (await self.net.tokens("agent")).get(oid) == "enabled":
            on.append("agent")
        return on

    async def holds(self, card: str, oid: bytes) -> bool:
        """Whether ``oid`` is on ``card`` at all (in any status)."""
        return any(v.oid == oid for v in await (self.a if card == "a" else self.b).vouchers())

    async def holders(self, oid: bytes) -> list[str]:
        """Who held ``oid``, as the authority recorded it (on the givers' signed movement statements)."""
        names = {uid: name for name, uid in self.net.uids.items()}
        return [names[u] for u in (await self.net.ask("authority", QUERY, CHAIN, oid=oid))["holders"]]

    async def ends(self, swapped: dict[bytes, str]) -> None:
        """Each voucher usable on exactly the one card named, recorded there by the authority (traces are async)."""
        await wait_for("every voucher usable on its one card", lambda: self._settled(swapped))
        for oid, card in swapped.items():
            first = "a" if oid in (T1, T3) else "b"
            assert await self.holders(oid) == ([first] if card == first else [first, card]), oid.hex()

    async def _settled(self, swapped: dict[bytes, str]) -> bool:
        for oid, card in swapped.items():
            if await self.usable(oid) != [card]:
                return False
            other = "b" if card == "a" else "a"
            if await self.holds(other, oid):
                return False
        return True


async def wallet(net: TrnNet, card: str) -> Wallet:
    """``card``'s owner's wallet application: logged in, the TTP set."""
    w = await Wallet.open(net.host_of(card).socket, pin=PIN, card=net.uids[card].domain)
    await w.set_ttp(net.uids["ttp"])
    return w


@contextlib.asynccontextmanager
async def scene(tmp: Path, vouchers: dict[bytes, str]) -> AsyncIterator[Scene]:
    """The hosts started behind their taps, ``vouchers`` (oid -> wallet) minted and traced, both wallets open
    (logged in, the TTP set)."""
    net, taps = tapped_net(tmp)
    for tap in taps.values():
        await tap.start()
    opened: list[Wallet] = []
    s: Scene | None = None
    try:
        await asyncio.to_thread(net.start)
        await net.setup_trace()
        for oid, to in vouchers.items():
            assert (await net.ask("agent", MINT, oid=oid, body=b"voucher " + oid[:1].hex().encode()))["ok"]
            assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
        for oid, to in vouchers.items():
            await net.settle(to, oid)
        for card in ("a", "b"):
            opened.append(await wallet(net, card))
        s = Scene(net, taps, *opened)
        yield s
    finally:
        for w in opened if s is None else (s.a, s.b):
            with contextlib.suppress(Exception):
                await w.close()
        await asyncio.to_thread(net.stop)
        for tap in taps.values():
            await tap.close()


def run(tmp: Path, vouchers: dict[bytes, str], body: Callable[[Scene], Awaitable[None]]) -> None:
    async def go() -> None:
        async with scene(tmp, vouchers) as s:
            try:
                await body(s)
            except BaseException:
                print(s.net.logs(3000))  # (shown by pytest on a failure)
                raise

    asyncio.run(go())


async def offered(s: Scene, give: bytes, want: bytes) -> bytes:
    """a offers ``give`` for ``want``; returns n1 once b's card holds the offer for its owner."""
    x = await s.a.offer(give, want, s.uid("b"))
    await wait_for("the offer reaches b", lambda: _proposed(s, x.n1))
    return x.n1


async def _proposed(s: Scene, n1: bytes) -> bool:
    return any(o.n1 == n1 for o in await s.b.offers())


class ChangeFirst:
    """A rule: ``change`` the first message of each kind, pass everything else (``left``: the kinds not met yet)."""

    def __init__(self, *kinds: Callable[[Message], bool], change: Callable[[Message], Message] = altered) -> None:
        self.left = list(kinds)
        self.change = change

    def __call__(self, m: Message) -> list[Message]:
        for kind in self.left:
            if kind(m):
                self.left.remove(kind)
                return [self.change(m)]
        return [m]


def holding(tap: Tap, kind: Callable[[Message], bool]) -> Rule:
    """A rule: hold every message of ``kind``, pass the others."""
    return lambda m: tap.hold(m) if kind(m) else [m]


# -- (a) the appendix's attack ---------------------------------------------------------------------------------


def test_a_replayed_offer_and_an_abort_cannot_undo_an_exchange_the_responder_completed(tmp_path: Path) -> None:
    """The TENeT appendix's attack: "the (malicious) user of S_B can force S_A to abort the exchange that S_B has
    already completed, by replaying m1 followed by an abort request".

    b's card completes (it stores v1 on m3); b's host withholds every commitment m4 and, from then on, whatever a
    sends; then it replays everything a's host sent b (m1 and m3 among it) on a new connection, and the offer
    again on the live one, and b's owner orders an abort, and an accept of the replayed offer. b's card drops the
    replayed records quietly (their counters were seen: no answer to the replayed m3 either), keeps its one
    exchange, refuses the abort (it stored v1: abort is for an agreed exchange only) and the accept, and never
    asks the TTP anything; a, timed out, resolves and gets v2.

    Fails if b's card let the abort through after storing v1 (the TTP would abort first: a gets T1 back while b
    holds it, T1 usable on two cards), or took a replayed record (it would answer the replayed m3 with an m4).
    """

    async def body(s: Scene) -> None:
        ab, ba = s.taps["a->b"], s.taps["b->a"]
        ba.rule = lambda m: [] if commit_record(m) else [m]  # b's host eats every m4
        n1 = await offered(s, T1, T2)
        assert (await s.b.accept(n1)).phase == "agreed"
        await wait_for("a confirmed, b stored v1", lambda: _phases(s, n1, "confirmed", "done"))
        await wait_for("v1 usable on b (traced)", lambda: _usable_on(s, T1, "b"))
        ab.rule = lambda m: []  # b's host takes nothing more from a (a's resends of m3 would get m4 answers)
        # the attack
        sent = list(ab.seen)
        kinds = [offer_record(m) for m in sent if is_record(m)]
        assert kinds[0] and len(kinds) >= 2 and not any(kinds[1:])  # m1, then m3 (and a's resends of it)
        before = len(ba.seen)
        await ab.inject(sent, fresh=True)  # the whole conversation again, as a new connection
        await ab.inject([m for m in sent if offer_record(m)])  # and the offer on the live connection
        for order in (s.b.abort, s.b.accept):
            with pytest.raises(WalletError) as refused:
                await order(n1)
            assert refused.value.reason == "refused", refused.value
        assert [(x.n1, x.phase) for x in await s.b.exchanges()] == [(n1, "done")]
        assert await s.b.offers() == []
        await asyncio.sleep(0.3)
        assert ba.seen[before:] == []  # b's card answered none of the replays (no m4, no session.failed)
        assert s.taps["b->ttp"].seen == []  # and never turned to the TTP
        # a never got m4: its owner asks the TTP
        assert (await s.a.resolve(n1)).phase == "resolving"
        assert (await s.a.wait(n1, timeout_s=WAIT_S)).phase == "done"
        await s.ends({T1: "b", T2: "a"})

    run(tmp_path, {T1: "a", T2: "b"}, body)


async def _phases(s: Scene, n1: bytes, a: str, b: str) -> bool:
    return (await s.phase("a", n1), await s.phase("b", n1)) == (a, b)


async def _all_phases(s: Scene, n1s: list[bytes], a: str, b: str) -> bool:
    return all([await _phases(s, n1, a, b) for n1 in n1s])


async def _usable_on(s: Scene, oid: bytes, card: str) -> bool:
    return card in await s.usable(oid)


# -- (b) altered m2, m3, m4 and admissions on the wire -------------------------------------------------------


def test_altered_agreement_confirmation_and_commitment_records_are_refused_and_the_exchange_completes(
    tmp_path: Path,
) -> None:
    """A man in the middle flips one bit of the first m2 and m4 (b -> a) and of the first m3 (a -> b). The card
    each was for refuses it (``session.failed bad_record``: the record does not authenticate) and acts on
    nothing in it; recovery resends the genuine message in a new session, and the exchange completes.

    Fails if a card acted on an altered record (it would then hold an m2, m3 or m4 the other card never sent:
    the exchange would not end swapped with the authority's record of both movements), or refused it without
    telling the sender (no bad_record answer seen).
    """

    async def body(s: Scene) -> None:
        ab, ba = s.taps["a->b"], s.taps["b->a"]
        ba.rule = m2_m4 = ChangeFirst(agree_record, commit_record)
        ab.rule = m3 = ChangeFirst(confirm_record)
        n1 = await offered(s, T1, T2)
        await s.b.accept(n1)
        done = await asyncio.gather(s.a.wait(n1, timeout_s=WAIT_S), s.b.wait(n1, timeout_s=WAIT_S))
        assert [x.phase for x in done] == ["done", "done"]
        assert m2_m4.left == m3.left == []  # every alteration was made
        # a refused the altered m2 and m4: each with bad_record, or, when the first refusal had already closed the
        # session, with no_session (the record reached a session that was gone: refused all the same)
        refused_by_a = failures(ab.seen, s.uid("a"))
        assert "bad_record" in refused_by_a and sum(r in ("bad_record", "no_session") for r in refused_by_a) >= 2
        assert failures(ba.seen, s.uid("b")).count("bad_record") >= 1  # b refused the altered m3
        await s.ends({T1: "b", T2: "a"})

    run(tmp_path, {T1: "a", T2: "b"}, body)


# -- (c) a responder that deletes nothing and stops ---------------------------------------------------------


def test_a_responder_that_takes_the_offer_and_stops_leaves_the_initiator_its_voucher(tmp_path: Path) -> None:
    """b's card holds the offer (v1 sealed to it, inside its record), b locks nothing, and b's host dies
    (SIGKILL). a's owner gives up: T1 is usable on a at once. b's host comes back; the attacker on the wire drops
    a's word that it gave up (the withdrawal a's host delivers to b once b is up: hosts confirm what they took,
    host.taken), and b's owner accepts the stale offer: a refuses the late m2 (no m3 ever leaves a) and asks the
    TTP to abort; b, waiting for m3 in vain, aborts too and gets T2 back. v1 was never usable on b, and the
    authority recorded no movement.

    Fails if a confirmed a late m2 after giving up (b would store T1 while a has it back: T1 usable on two
    cards), or if the voucher an offer carries were usable by the responder before m3.
    """

    async def body(s: Scene) -> None:
        n1 = await offered(s, T1, T2)
        await s.b.close()
        await asyncio.to_thread(s.net.hosts["b"].kill)
        ab = s.taps["a->b"]
        before = len(ab.seen)
        ab.rule = lambda m: [] if is_record(m) else [m]  # drops a's withdrawal
        assert (await s.a.give_up(n1)).phase == "gave_up"
        assert {v.oid: v.status for v in await s.a.vouchers()}[T1] == "enabled"  # at once, b's host still down
        await asyncio.to_thread(s.net.hosts["b"].restart)

        async def withdrawal_dropped() -> bool:
            return any(is_record(m) for m in ab.seen[before:])

        await wait_for("a's host sends the withdrawal to b once b is up (the tap drops it)", withdrawal_dropped)
        ab.rule = passes
        after = len(ab.seen)  # (the withdrawal is a small record, as m3 is: looked for after it)
        s.b = await wallet(s.net, "b")
        assert not await s.holds("b", T1)
        assert (await s.b.status(n1)).phase == "proposed"  # (the offer survived the crash)
        assert (await s.b.accept(n1)).phase == "agreed"
        await wait_for("a refuses the late m2 and the TTP aborts", lambda: _phase_is(s, "a", n1, "aborted"))
        assert not any(confirm_record(m) for m in ab.seen[after:])  # a never confirmed
        assert (await s.b.status(n1)).phase == "agreed"
        assert (await s.b.abort(n1)).phase == "aborting"
        assert (await s.b.wait(n1, timeout_s=WAIT_S)).phase == "aborted"
        await s.ends({T1: "a", T2: "b"})

    run(tmp_path, {T1: "a", T2: "b"}, body)


async def _phase_is(s: Scene, card: str, n1: bytes, phase: str) -> bool:
    return await s.phase(card, n1) == phase


# -- (d) an initiator that never sends m3 ------------------------------------------------------------------------


def test_an_initiator_whose_m3_never_comes_cannot_get_the_swap_after_the_responder_aborted(tmp_path: Path) -> None:
    """a's host withholds every record a's card sends b once the offer is in (so m3 never arrives), holding v2
    (opened from m2) in its card. b's owner times out and aborts; the TTP decides `aborted` (its admission is
    held on the way to b). Then the withheld records, m3 among them, reach b: b asked the TTP to abort, so it
    ignores them. The admission reaches b altered first (refused: bad_record), then genuine (b's recovery asks
    again): b has T2 back. a's owner resolves: the TTP's first decision stands, a gets T1 back and never T2.

    Fails if b acted on m3 after asking to abort (b would store T1 while the TTP aborted: a gets T1 back, T1
    usable on two cards), if the TTP answered a's later resolve with a resolve (T2 on a and back on b), or if b
    acted on an altered admission.
    """

    async def body(s: Scene) -> None:
        ab, tb = s.taps["a->b"], s.taps["ttp->b"]
        n1 = await offered(s, T1, T2)
        ab.rule = holding(ab, is_record)
        tb.rule = holding(tb, is_record)
        assert (await s.b.accept(n1)).phase == "agreed"
        await wait_for("a has m2 and confirms", lambda: _phase_is(s, "a", n1, "confirmed"))
        await wait_for("m3 is withheld", lambda: _any(ab.held, confirm_record))
        assert (await s.b.abort(n1)).phase == "aborting"
        await wait_for("the TTP decided (its admission is held)", lambda: _any(tb.held, is_record))
        late = await ab.release()
        ab.rule = passes
        assert any(confirm_record(m) for m in late)
        await asyncio.sleep(0.5)  # (b's host reads and steps them)
        assert await s.phase("b", n1) == "aborting" and not await s.holds("b", T1)
        assert failures(s.taps["b->a"].seen, s.uid("b")) == []  # b's card took the late records, then ignored m3
        await tb.release(lambda held: [altered(held[0])])
        tb.rule = passes
        await wait_for("b refuses the altered admission", lambda: _any(s.taps["b->ttp"].seen, _failed_bad_record))
        assert await s.phase("b", n1) == "aborting"
        assert (await s.b.wait(n1, timeout_s=WAIT_S)).phase == "aborted"
        assert (await s.a.resolve(n1)).phase == "resolving"
        assert (await s.a.wait(n1, timeout_s=WAIT_S)).phase == "aborted"
        await s.ends({T1: "a", T2: "b"})

    run(tmp_path, {T1: "a", T2: "b"}, body)


async def _any(msgs: list[Message], kind: Callable[[Message], bool]) -> bool:
    return any(kind(m) for m in msgs)


def _failed_bad_record(m: Message) -> bool:
    return "bad_record" in failures([m], m.src)


# -- (e) resolve and abort at once ----------------------------------------------------------------------------------


def test_resolve_and_abort_reaching_the_ttp_at_once_get_one_decision_on_both_sides(tmp_path: Path) -> None:
    """Two exchanges stuck after m2 (every m3 withheld). For each, a's owner resolves and b's owner aborts at
    once; the requests are held at the TTP's door until all four are there, then let in together. The TTP
    decides one thing per exchange and both sides act on it: both swapped, or both vouchers back home.

    Fails if the TTP's decision were not first-wins per exchange (a resolve and an abort of one exchange both
    granted: a gets v2 and b gets v2 back, v2 usable on two cards).
    """

    async def body(s: Scene) -> None:
        ab, at, bt = s.taps["a->b"], s.taps["a->ttp"], s.taps["b->ttp"]
        pairs = [(await offered(s, T1, T2), T1, T2), (await offered(s, T3, T4), T3, T4)]
        ab.rule = holding(ab, is_record)
        for n1, _, _ in pairs:
            assert (await s.b.accept(n1)).phase == "agreed"
        await wait_for("a confirmed, no m3", lambda: _all_phases(s, [n1 for n1, _, _ in pairs], "confirmed", "agreed"))
        at.rule = holding(at, is_record)
        bt.rule = holding(bt, is_record)
        asked = await asyncio.gather(*(o(n1) for n1, _, _ in pairs for o in (s.a.resolve, s.b.abort)))
        assert [x.phase for x in asked] == ["resolving", "aborting"] * 2
        await wait_for("both sides' requests at the TTP's door", lambda: _both_held(at, bt))
        at.rule = bt.rule = passes
        await asyncio.gather(at.release(), bt.release())
        ends: dict[bytes, str] = {}
        for n1, give, want in pairs:
            got = await asyncio.gather(s.a.wait(n1, timeout_s=WAIT_S), s.b.wait(n1, timeout_s=WAIT_S))
            phases = {x.phase for x in got}
            assert len(phases) == 1 and phases <= {"done", "aborted"}, (n1.hex(), [x.phase for x in got])
            swapped = phases == {"done"}
            ends |= {give: "b" if swapped else "a", want: "a" if swapped else "b"}
        await s.ends(ends)

    run(tmp_path, {T1: "a", T2: "b", T3: "a", T4: "b"}, body)


async def _both_held(at: Tap, bt: Tap) -> bool:
    return sum(map(is_record, at.held)) >= 2 and sum(map(is_record, bt.held)) >= 2
