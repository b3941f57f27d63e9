"""The ``trn`` scenario: TRN tokens moving among wallets under every fault kind.

An agent mints tokens and issues them to wallets; during the safety phase
owners order random transfers between wallets on different hosts; every
host ticks its TRN cards with ``trn.recover`` on its timer (``Host.tick``, on
the virtual clock: ``World.add_timers``) and re-emits card outputs it lost
track of (``Host.resend_unacked``), as the host process does; no application
sends ``trn.recover``. The authority traces every movement.

Beyond the happy path the workload draws, per seed: owners **cancelling**
transfers (right after ordering them: a race with the copy, or any pending
one later), and a **rolled-back wallet** (a thief restores an old image of one
wallet's EEPROM: the card's key and Uid with old tokens enabled again, which
its owner then spends: a branch the authority must refuse and block). The
simulated authority service signs a new blocklist epoch whenever the blocked
set grows and hands it to the authority's card, which spreads it in
handshakes. ``world.exercised`` counts cancels, refused traces, blocks,
blocklist epochs and rollbacks.

Invariants: for every oid, at most one *usable* (enabled or trustless) copy on
all cards at every instant, and the object itself is always on some card (no
loss). At the end, after healing and recovery: exactly one enabled copy, no
transfer left half-done, and the authority's chain is consistent (it starts at
the agent, every movement leaves the previous holder) and ends at that holder.
A token the rolled-back wallet held or receives is *tainted*: the rollback
is a physical attack, so only what the authority promises holds for it: at
most one enabled copy on the honest cards. Always: no honest wallet (nor the
agent) is ever blocked, and the authority never records a movement to a
device after it blocked that device.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cardnet.applets import authority_chain
from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.trn import BLOCKLIST, CANCEL, MINT, RECOVER, RESULT, SEND, SET_AUTHORITY, TrnApplet
from cardnet.card import Applet, Card
from cardnet.crypto import pki
from cardnet.host import Host
from cardnet.host.core import _Entry
from cardnet.protocols import session as sess
from cardnet.protocols.trn import trace
from cardnet.protocols.trn import transfer as tr
from cardnet.sim.world import RESEND, SIM_EPOCH, SimHost, Tick, World
from cardnet.store import SqliteStore
from cardnet.wire import Message, MType, Uid

SETUP_S = 0.5
_AUTH = "a.authority"  # the authority applet's table on its card
RECOVER_EVERY_S = 0.25  # the hosts' trn.recover tick (a host process defaults to 2 s; the simulator hurries)
RESEND_EVERY_S = 1.0  # the hosts' resend_after_s
SIGNER_EVERY_S = 0.25  # the authority service's blocklist signer looks at the blocked set this often
CANCEL_P = 0.25  # an owner's transfer order is followed by a cancel (the sender aborts) this often
ROLLBACK_P = 0.35  # seeds in which a thief restores an old image of one wallet's store
EXPIRE_P = 0.35  # seeds in which one wallet's certificate expires during the run (1 or 2 s after the epoch)
DRIFT_P = 0.5  # seeds in which every host's clock drifts (a rate and an offset of its own)
LIE_P = 0.5  # of the expiry seeds: another host sets its clock back around the expiry (its cards may be fooled)


class CountingAuthorityApplet(AuthorityApplet):
    """The authority applet, counting its refused traces into the world (for the summary: ``exercised``)."""

    world: World | None = None

    def send_inner(self, ctx: Any, peer: Uid, raw: bytes) -> None:
        if self.world is not None:
            try:
                code, p = tr.decode_inner(raw)
            except Exception:
                code, p = -1, {}
            if code == tr.SEEKED and not p.get("ok", True):
                self.world.exercised["refused_trace"] += 1
        super().send_inner(ctx, peer, raw)


class IgnoresBlocklistAuthority(CountingAuthorityApplet):
    """Broken on purpose (``trn-blocking-broken``): judges traces as if no device were blocked."""

    def _blocked(self, ctx: Any) -> set[Uid]:
        return set()


class BlamesReceiverAuthority(CountingAuthorityApplet):
    """Broken on purpose (``trn-blame-broken``): on a branch it blocks the receiver who traced it too."""

    def _judge(self, ctx: Any, peer: Uid, p: dict[str, Any]) -> tuple[trace.Verdict, bytes | None]:
        verdict, cert = super()._judge(ctx, peer, p)
        if verdict.block:
            verdict = dataclasses.replace(verdict, block=(*verdict.block, peer))
        return verdict, cert


class EnablesBlockedAuthority(CountingAuthorityApplet):
    """Broken on purpose (``trn-enable-blocked-broken``): answers a blocked device's trace ok, unrecorded."""

    def _judge(self, ctx: Any, peer: Uid, p: dict[str, Any]) -> tuple[trace.Verdict, bytes | None]:
        verdict, cert = super()._judge(ctx, peer, p)
        blocked = self._blocked(ctx)
        if not verdict.ok and (peer in blocked or peer.card_uid() in blocked) and cert is not None:
            verdict = dataclasses.replace(verdict, ok=True, reason="ok")
        return verdict, cert


class AcksBeforeStepHost(Host):
    """Broken on purpose (``trn-ack-early-broken``): acknowledges a card's output to the sending card before
    the receiving card stepped it, so a receiving card whose step fails (a torn commit) loses it."""

    def _step_card(self, card: Card, batch: list[_Entry], now: float) -> None:
        for e in batch:
            if e.ack is not None:
                e.ack[0].ack((e.ack[1],))
        super()._step_card(card, [dataclasses.replace(e, ack=None) for e in batch], now)


class IgnoresPeerExpiryApplet(TrnApplet):
    """Broken on purpose (``trn-expiry-broken``): keeps using a session after the peer's certificate expired
    (the new handshake still checks the certificate)."""

    def _due(self, ctx: Any, state: Any, slack: int) -> str | None:
        return super()._due(ctx, dataclasses.replace(state, peer_until=None), slack)


class DomainOnlyCard(Card):
    """Broken on purpose (``trn-privilege-broken``): any port of a domain that verified the PIN is trusted."""

    def _is_authenticated(self, uid: Uid) -> bool:
        return super()._is_authenticated(uid) or any(u.domain == uid.domain for u in self._authenticated)


@dataclass
class TrnScenario:
    name: str = "trn"
    hosts: int = 3
    wallets: int = 4
    tokens: int = 3
    transfers: int = 8
    forgeries: int | None = None  # orders from a port that never verified the PIN (None: 1 to 3, drawn)
    oids: list[bytes] = field(default_factory=list)
    wallet_cards: list[tuple[str, bytes]] = field(default_factory=list)  # (host address, domain)
    apps: dict[bytes, tuple[str, Uid]] = field(default_factory=dict)  # domain -> (host address, app uid)
    authority: Uid | None = None
    agent_domain: bytes = b""
    issued: int = 0
    wallet_applet: type[TrnApplet] = TrnApplet
    authority_applet: type[CountingAuthorityApplet] = CountingAuthorityApplet
    blocklist: bytes = b""  # the newest blocklist the authority service signed
    victim: bytes | None = None  # the wallet whose store is rolled back (None: no rollback this seed)
    snapshot: SqliteStore | None = None
    rolled_back: bool = False
    tainted: set[bytes] = field(default_factory=set)
    blocked_seen: dict[bytes, dict[bytes, int]] = field(default_factory=dict)  # uid -> oid -> chain length then
    epoch: int = 0
    epoch_size: int = 0
    cancelled: set[tuple[bytes, bytes]] = field(default_factory=set)  # (sender, oid) of every cancel ordered
    card_cls: type[Card] = Card
    blocked_held: dict[bytes, dict[bytes, tuple[str, bytes | None]]] = field(default_factory=dict)  # at block time
    # a blocked device's card: the transfers it remembers committing (sender, nonce) as at the last check, and per
    # oid those of the latest check that found new ones (how its newest copy of the oid arrived)
    blocked_commits: dict[bytes, set[tuple[bytes, bytes]]] = field(default_factory=dict)
    blocked_arrivals: dict[bytes, dict[bytes, set[tuple[bytes, bytes]]]] = field(default_factory=dict)
    strangers: dict[bytes, tuple[str, Uid]] = field(default_factory=dict)  # domain -> an app port that never verified
    forged_ok: list[str] = field(default_factory=list)
    host_cls: type[Host] = Host
    expiring: bytes | None = None  # the wallet whose certificate expires during the run (None: none this seed)
    expires_s: int = 0  # ... this many seconds after the epoch
    affected: set[bytes] = field(default_factory=set)  # tokens the expiring wallet held or moved around its expiry
    liars: set[str] = field(default_factory=set)  # hosts that set their clock back (their cards may be fooled)
    expiry_bad: list[str] = field(default_factory=list)
    _where: dict[bytes, str] = field(default_factory=dict)  # card domain -> host address
    _pre: tuple[bytes, Any] | None = None  # (card domain, its session with the expiring wallet) before a step

    # -- building ---------------------------------------------------------------------------
    def build(self, world: World) -> None:
        world.faults_from = SETUP_S
        world.host_cls = self.host_cls
        hosts = [world.add_host(f"h{i}") for i in range(self.hosts)]
        auth_cls = self.authority_applet

        def authority_applets() -> list[Applet]:
            applet = auth_cls()
            applet.world = world
            return [applet]

        expiring = world.rng.randrange(self.wallets) if world.rng.random() < EXPIRE_P else None
        if expiring is not None:
            self.expires_s = world.rng.choice((1, 2))
        if world.rng.random() < DRIFT_P:
            for sh in hosts:
                sh.rate, sh.offset = world.rng.uniform(0.98, 1.02), world.rng.uniform(0.0, 0.3)  # (never before
                # the epoch, when every certificate starts)
        auth = world.add_card(hosts[0], "authority", authority_applets, role=pki.Role.SERVICE)
        agent = world.add_card(hosts[0], "agent", lambda: [TrnApplet()], role=pki.Role.AGENT)
        self.authority = auth.uid
        self.agent_domain = agent.uid.domain
        self._app(world, hosts[0], auth)
        self._app(world, hosts[0], agent)
        for i in range(self.wallets):
            sh = hosts[1 + i % (self.hosts - 1)]
            applet = self.wallet_applet
            expires = self.expires_s if i == expiring else None
            card = world.add_card(
                sh, f"w{i}", functools.partial(_one, applet), card_cls=self.card_cls, expires_s=expires
            )
            self.wallet_cards.append((sh.address, card.uid.domain))
            if expires is not None:
                self.expiring = card.uid.domain
            self._app(world, sh, card)
            # another application on the same host, with a port of the same card, that never verifies the PIN
            sink = functools.partial(self._stranger_sink, world, card.uid.domain, sh.address)
            stranger = world.attach_app(sh, sink, card.uid.domain)
            self.strangers[card.uid.domain] = (sh.address, stranger)
        self.oids = [world.rng.randbytes(16) for _ in range(self.tokens)]
        # calm set-up: register the agent, tell every card its authority, mint and issue
        self._order(world, auth.uid.domain, ADD_AGENT, t=0.01, cert=agent.certificate_der)
        for domain in [self.agent_domain, *(d for _, d in self.wallet_cards)]:
            self._order(world, domain, SET_AUTHORITY, t=0.02, authority=auth.uid)
        for i, oid in enumerate(self.oids):
            to = Uid.card(self.wallet_cards[i % self.wallets][1])
            self._order(world, self.agent_domain, MINT, t=0.05, oid=oid, body=b"ticket %d" % i)
            self._order(world, self.agent_domain, SEND, t=0.06, oid=oid, to=to)
        for _ in range(self.transfers):
            world.at(SETUP_S + world.rng.uniform(0.0, 1.5), functools.partial(self._random_transfer, world), "transfer")
        if world.rng.random() < ROLLBACK_P:
            # a wallet that was issued a token: its image holds it enabled; its owner spends it after the copy
            self.victim = self.wallet_cards[world.rng.randrange(min(self.tokens, self.wallets))][1]
            t_snap = SETUP_S + world.rng.uniform(0.0, 0.3)
            world.at(t_snap, functools.partial(self._snapshot, world), "snapshot")
            world.at(t_snap + 0.01, functools.partial(self._random_transfer, world, self.victim), "transfer")
            world.at(t_snap + world.rng.uniform(0.3, 1.2), functools.partial(self._rollback, world), "rollback")
        world.at(SIGNER_EVERY_S, functools.partial(self._sign_blocklist, world), "signer")
        for _ in range(world.rng.randint(1, 3) if self.forgeries is None else self.forgeries):
            world.at(SETUP_S + world.rng.uniform(0.0, 1.5), functools.partial(self._forge_order, world), "forge")
        if self.expiring is not None:
            self._plan_expiry(world, hosts)
        trn_cards = {self.agent_domain, *(d for _, d in self.wallet_cards)}
        for sh in hosts:
            ticks: dict[object, float] = {Tick(d, RECOVER): RECOVER_EVERY_S for d in sh.cards if d in trn_cards}
            world.add_timers(sh, {**ticks, RESEND: RESEND_EVERY_S})

    def _app(self, world: World, sh: SimHost, card: Card) -> None:
        # owners read their cards' state directly; their sink only counts what their cancels did
        uid = world.attach_app(sh, functools.partial(_owner_sink, world), card.uid.domain)
        self.apps[card.uid.domain] = (sh.address, uid)

    # -- a certificate that expires during the run ----------------------------------------------------
    def _plan_expiry(self, world: World, hosts: list[SimHost]) -> None:
        """The expiring wallet's owner spends after the expiry, another owner sends it a token, and perhaps a host
        (not the expiring wallet's) sets its clock back around then. Every card on a host that did not lie must
        refuse the expired card from the first step its host time is past the expiry (:meth:`before`/`after`)."""
        assert self.expiring is not None
        world.exercised["expiry"] += 1
        self._where = {d: sh.address for sh in hosts for d in sh.cards}
        world.ledger.watchers.append(self)
        t = float(self.expires_s)
        world.at(t + world.rng.uniform(0.0, 0.3), functools.partial(self._random_transfer, world, self.expiring),
                 "transfer")  # fmt: skip
        later = functools.partial(self._random_transfer, world, None, self.expiring)
        world.at(t + world.rng.uniform(0.0, 0.3), later, "transfer")
        if world.rng.random() < LIE_P:
            liar = world.rng.choice([sh for sh in hosts if self.expiring not in sh.cards])
            world.at(t + world.rng.uniform(0.0, 0.4), functools.partial(self._lie, world, liar), "clock lie")

    def _lie(self, world: World, sh: SimHost) -> None:
        """The host sets its clock back to a little before the expiry (not before the epoch: every certificate
        would look not yet valid, and its cards would stop dealing with anyone)."""
        target = SIM_EPOCH.timestamp() + max(0.05, self.expires_s - world.rng.uniform(0.1, 0.6))
        back = sh.clock(world.now) - target
        if back <= 0:
            return
        sh.offset -= back
        self.liars.add(sh.address)
        world.exercised["clock_lie"] += 1
        world.log(f"host {sh.address} sets its clock back {back:.1f} s")

    def _session_with_expiring(self, card: Card) -> Any:
        assert self.expiring is not None
        table = _AUTH if card.uid.domain == (self.authority.domain if self.authority else b"") else "a.trn"
        raw = card._mem.get((table, b"s:" + bytes(Uid.card(self.expiring))))
        return None if raw is None else sess.Session.decode(raw)

    def _judged(self, card: Card) -> bool:
        """Whether ``card`` judges the expiring wallet on an honest clock: another card, on a host that never lied."""
        domain = card.uid.domain
        return domain != self.expiring and self._where.get(domain) not in self.liars

    def before(self, card: Card, now: float) -> None:
        self._pre = (card.uid.domain, self._session_with_expiring(card)) if self._judged(card) else None

    def after(self, card: Card, now: float) -> None:
        if self._pre is None or self._pre[0] != card.uid.domain:
            return
        pre, self._pre = self._pre[1], None
        until = (SIM_EPOCH + timedelta(seconds=self.expires_s)).timestamp()
        if now <= until:
            return
        post = self._session_with_expiring(card)
        if post is None or not post.open:
            return
        label = f"card {card.uid.domain.hex()[:8]} at host time +{now - SIM_EPOCH.timestamp():.2f} s"
        if pre is None or not pre.open or pre.nonce_a != post.nonce_a:
            self.expiry_bad.append(
                f"{label} opened a session with a card whose certificate expired at +{self.expires_s} s"
            )
        elif post.recv_ctr > pre.recv_ctr:
            self.expiry_bad.append(
                f"{label} accepted record {post.recv_ctr} from a card whose certificate expired at +{self.expires_s} s"
            )

    def _order(self, world: World, domain: bytes, mtype: MType, *, t: float, **fields: object) -> None:
        world.at(t, functools.partial(self._send_order, world, domain, mtype, fields), "order")

    def _send_order(self, world: World, domain: bytes, mtype: MType, fields: dict[str, object]) -> None:
        world.owner_order(*self.apps[domain], domain, mtype, fields)

    def _random_transfer(self, world: World, sender: bytes | None = None, to_domain: bytes | None = None) -> None:
        """An owner sends a token she holds enabled (``sender``'s if given) to another wallet (``to_domain``)."""
        holders = [
            (d, oid) for oid in self.oids for d, h in self._holdings(world, oid) if h.status is tr.Status.ENABLED
        ]
        holders = [(d, oid) for d, oid in holders if d != self.agent_domain and sender in (None, d)]
        if to_domain is not None:
            holders = [(d, oid) for d, oid in holders if d != to_domain and oid not in self.tainted]
        if not holders:
            return
        domain, oid = world.rng.choice(sorted(holders))
        if domain == self.expiring and world.now >= self.expires_s:
            world.exercised["expired_spend"] += 1
        others = [d for _, d in self.wallet_cards if d != domain]
        to = Uid.card(to_domain or world.rng.choice(others))
        world.log(f"owner of {domain.hex()[:8]} sends {oid.hex()[:8]} to {to.short()}")
        self._send_order(world, domain, SEND, {"oid": oid, "to": to})
        if to.domain == self.expiring and world.now >= self.expires_s - 0.5:  # it does not arrive: she cancels
            world.exercised["send_to_expired"] += 1
            world.at(world.now + world.rng.uniform(0.3, 1.0), functools.partial(self._cancel, world, domain, oid),
                     "cancel")  # fmt: skip
        elif world.rng.random() < CANCEL_P:  # the owner changes her mind: soon (a race with the copy) or later
            later = world.rng.choice((0.0, world.rng.uniform(0.0, 0.05), world.rng.uniform(0.05, 0.5)))
            world.at(world.now + later, functools.partial(self._cancel, world, domain, oid), "cancel")

    def _forge_order(self, world: World) -> None:
        """An application port that never verified the PIN orders a wallet's card to send, cancel or mint."""
        domain = world.rng.choice([d for _, d in self.wallet_cards])
        address, stranger = self.strangers[domain]
        held = [oid for oid in self.oids if self._held_by(world, domain, oid)] or self.oids
        oid = world.rng.choice(held)
        kind = world.rng.randrange(3)
        if kind == 0:
            to = Uid.card(world.rng.choice([d for _, d in self.wallet_cards if d != domain]))
            msg = SEND.make(stranger, Uid.card(domain), oid=oid, to=to)
        elif kind == 1:
            msg = CANCEL.make(stranger, Uid.card(domain), oid=oid)
        else:
            msg = MINT.make(stranger, Uid.card(domain), oid=world.rng.randbytes(16), body=b"forged")
        world.exercised["forged_order"] += 1
        world.log(f"a stranger's port {stranger.short()} orders {msg.mtype:#06x} from card {domain.hex()[:8]}")
        world.submit(address, msg)

    def _stranger_sink(self, world: World, domain: bytes, address: str, msg: Message) -> None:
        """The stranger's port sees an accepting result of its card: the card obeyed it. Only the card's own result
        counts, on a host that is not malicious: such a host can hand its applications anything (a result it saw
        for another port, or one it made up), and another host cannot pass a message off as from this host's card
        (its Guard drops a remote src claiming a local card)."""
        if msg.src != Uid.card(domain) or address in world.malicious:
            return
        if msg.mtype == RESULT.code:
            try:
                p = RESULT.parse(msg)
            except Exception:
                return
            if p.get("ok"):
                self.forged_ok.append(f"a card obeyed a privileged order from a port that never verified: {p}")

    def _cancel(self, world: World, domain: bytes, oid: bytes) -> None:
        world.log(f"owner of {domain.hex()[:8]} cancels {oid.hex()[:8]}")
        world.exercised["cancel"] += 1
        self.cancelled.add((domain, oid))
        self._send_order(world, domain, CANCEL, {"oid": oid})

    # -- the rolled-back wallet and the authority service's blocklist signer ---------------------------
    def _sim_card(self, world: World, domain: bytes) -> tuple[SimHost, Any]:
        for sh in world.hosts.values():
            if domain in sh.cards:
                return sh, sh.cards[domain]
        raise KeyError(domain.hex())

    def _snapshot(self, world: World) -> None:
        assert self.victim is not None
        _, sc = self._sim_card(world, self.victim)
        copy = SqliteStore(":memory:", durable=False)
        sc.store.inner._c.backup(copy._c)  # a consistent image of the EEPROM, as a thief reads it
        self.snapshot = copy
        world.log(f"thief copies the store of card {sc.label}")

    def _rollback(self, world: World) -> None:
        assert self.victim is not None and self.snapshot is not None
        sh, sc = self._sim_card(world, self.victim)
        self.tainted.update(oid for oid in self.oids if self._held_by(world, self.victim, oid))
        sc.store.inner = self.snapshot  # the thief writes the old image back: same key and Uid, old tokens
        sh.host.replace_card(sc.reopen())
        self.rolled_back = True
        self.tainted.update(oid for oid in self.oids if self._held_by(world, self.victim, oid))
        world.exercised["rollback"] += 1
        world.log(f"thief rolls card {sc.label} back to its old image")
        world.at(world.now + 0.05, functools.partial(self._spend_again, world), "spend again")

    def _spend_again(self, world: World, tries: int = 5) -> None:
        assert self.victim is not None
        enabled = [
            oid for oid in self.oids if (h := self._holding(world, self.victim, oid)) and h.status is tr.Status.ENABLED
        ]
        if not enabled:
            if tries > 1:  # (the owner's PIN, or the card, may not have been there: try again a little later)
                world.at(world.now + 0.2, functools.partial(self._spend_again, world, tries - 1), "spend again")
            return
        oid = world.rng.choice(enabled)
        to = Uid.card(world.rng.choice([d for _, d in self.wallet_cards if d != self.victim]))
        world.log(f"thief spends {oid.hex()[:8]} again, to {to.short()}")
        self._send_order(world, self.victim, SEND, {"oid": oid, "to": to})

    def _sign_blocklist(self, world: World) -> None:
        """The authority service: a new CA-signed blocklist epoch whenever the authority card's blocked set grew."""
        blocked = self._blocked(world)
        if len(blocked) > self.epoch_size:
            self.epoch += 1
            self.epoch_size = len(blocked)
            bl = world.ca.sign_blocklist(self.epoch, [Uid.from_bytes(u) for u in blocked], now=SIM_EPOCH)
            self.blocklist = bl.encode()
            world.exercised["blocklist_epoch"] += 1
            world.log(f"authority service signs blocklist epoch {self.epoch}: {len(blocked)} blocked")
        assert self.authority is not None
        if self.blocklist and self._authority(world)._mem.get((_AUTH, b"bl")) != self.blocklist:
            self._send_order(world, self.authority.domain, BLOCKLIST, {"blocklist": self.blocklist})
        world.at(world.now + SIGNER_EVERY_S, functools.partial(self._sign_blocklist, world), "signer")

    def _blocked(self, world: World) -> list[bytes]:
        return [k[8:] for t, k in self._authority(world)._mem if t == _AUTH and k[:8] == b"blocked:"]

    # -- the oracle --------------------------------------------------------------------------
    def _holdings(self, world: World, oid: bytes) -> list[tuple[bytes, tr.Holding]]:
        out = []
        for sh in world.hosts.values():
            for domain, sc in sh.cards.items():
                raw = sc.card._mem.get(("a.trn", b"t:" + oid))
                if raw is not None:
                    out.append((domain, tr.Holding.decode(oid, raw)))
        return out

    def _holding(self, world: World, domain: bytes, oid: bytes) -> tr.Holding | None:
        raw = world.card_of(domain)._mem.get(("a.trn", b"t:" + oid))
        return None if raw is None else tr.Holding.decode(oid, raw)

    def _stale_copy(self, world: World, h: tr.Holding) -> bool:
        """A receiver's copy of a transfer its sender (who was told to cancel) aborted: the abort notice was lost,
        or overtook the copy.

        It can never be enabled, and nothing tells the receiver to discard it until another transfer of the oid
        supersedes it (protocols/trn/transfer.py, ``_copy_pending``): a leftover the invariants tolerate.
        """
        if (
            h.status is not tr.Status.TRUSTLESS_DISABLED
            or h.peer is None
            or (h.peer.domain, h.oid) not in self.cancelled
        ):
            return False
        try:
            sender = self._holding(world, h.peer.domain, h.oid)
        except KeyError:
            return False
        return sender is None or sender.status is not tr.Status.DISABLED or sender.nonce != h.nonce

    def _held_by(self, world: World, domain: bytes, oid: bytes) -> bool:
        return ("a.trn", b"t:" + oid) in world.card_of(domain)._mem

    def check(self, world: World, final: bool) -> list[str]:
        bad = [*self.forged_ok, *self.expiry_bad, *self._check_blocking(world, final)]
        if self.expiring is not None and world.now >= self.expires_s - 0.6:  # (host clocks differ a little)
            for oid in self.oids:
                if any(d == self.expiring or (h.peer is not None and h.peer.domain == self.expiring)
                       for d, h in self._holdings(world, oid)):  # fmt: skip
                    self.affected.add(oid)
        if self.rolled_back:
            assert self.victim is not None
            self.tainted.update(oid for oid in self.oids if self._held_by(world, self.victim, oid))
        for oid in self.oids:
            held = self._holdings(world, oid)
            if self.rolled_back and any(h.peer is not None and h.peer.domain == self.victim for _, h in held):
                self.tainted.add(oid)  # (e.g. sent by the victim before the rollback, traced after it was blocked)
            if oid in self.tainted:  # only what the authority promises: one enabled copy on the honest cards
                honest = [d.hex()[:8] for d, h in held if d != self.victim and h.status is tr.Status.ENABLED]
                if len(honest) > 1:
                    bad.append(f"token {oid.hex()[:8]} (rolled back) is enabled on {len(honest)} honest cards {honest}")
                continue
            if not held:
                if world.now > SETUP_S and self._minted(world, oid):
                    bad.append(f"token {oid.hex()[:8]} is lost: no card holds it")
                continue
            usable = [d.hex()[:8] for d, h in held if h.usable]
            if len(usable) > 1:
                bad.append(f"token {oid.hex()[:8]} is usable on {len(usable)} cards at once: {usable}")
            if not any(h.token is not None for _, h in held):
                bad.append(f"token {oid.hex()[:8]}: no card has the object any more")
            if final and oid not in self.affected:  # (a transfer to or from an expired card may never finish)
                held = [(d, h) for d, h in held if not self._stale_copy(world, h)]
                enabled = [d for d, h in held if h.status is tr.Status.ENABLED]
                leftovers = [h.state for _, h in held if h.status is not tr.Status.ENABLED]
                if len(enabled) != 1 or leftovers:
                    bad.append(f"token {oid.hex()[:8]} ended as {[h.state for _, h in held]}")
                else:
                    bad.extend(self._chain_problems(world, oid, Uid.card(enabled[0])))
        return bad

    def _check_blocking(self, world: World, final: bool) -> list[str]:
        """No honest card is ever blocked; once blocked, a device is never recorded as receiving a token."""
        bad = []
        auth = self._authority(world)._mem
        for uid in self._blocked(world):
            if Uid.from_bytes(uid).domain != self.victim:
                bad.append(f"the authority blocked honest card {uid.hex()[:8]}")
                continue
            seen = self.blocked_seen.get(uid)
            lengths = {oid: len(self._chain(auth, oid)) for oid in self.oids}
            if seen is None:
                self.blocked_seen[uid] = lengths
                self.blocked_held[uid] = {
                    oid: (h.state, h.nonce)
                    for oid in self.oids
                    if (h := self._holding(world, Uid.from_bytes(uid).domain, oid)) is not None
                }
                self.blocked_commits[uid] = set(self._commits(world, Uid.from_bytes(uid).domain))
                self.blocked_arrivals[uid] = {}
                world.exercised["block"] += 1
                world.log(f"the authority has blocked {uid.hex()[:8]}")
                # an owner who does not know sends the blocked device a token: it must never be recorded there
                later = functools.partial(self._random_transfer, world, None, Uid.from_bytes(uid).domain)
                world.at(world.now + 0.05, later, "transfer to blocked")
                continue
            self._note_arrivals(world, uid)
            bad.extend(self._gained(world, auth, uid, seen))
            for oid in self.oids:
                for _frm, to, *_ in self._chain(auth, oid)[seen[oid] :]:
                    if Uid.from_bytes(to).domain == Uid.from_bytes(uid).domain:
                        bad.append(f"token {oid.hex()[:8]} was recorded moving to blocked device {uid.hex()[:8]}")
        return bad

    def _gained(self, world: World, auth: dict[Any, bytes], uid: bytes, seen: dict[bytes, int]) -> list[str]:
        """A blocked device never gains an enabled token after the authority blocked it.

        Allowed: what it held enabled then, or held while sending it (``disabled+O``: a refusal or a cancel gives
        the sender its copy back), and a copy that arrived by a movement the authority recorded before the block:
        the authority's ``ok`` for it is its word of then, and may reach the card later (on its way, or resent by
        a host; a rolled-back card takes that very movement again from the sender's and the authority's replayed
        messages, seed 501410). The authority answers ``ok`` only for a movement it records, and records none to
        a device it blocked, so any other enabled copy is a gain the blocklist should have prevented.
        """
        bad = []
        domain = Uid.from_bytes(uid).domain
        for oid in self.oids:
            h = self._holding(world, domain, oid)
            if h is None or h.status is not tr.Status.ENABLED:
                continue
            then = self.blocked_held[uid].get(oid)
            if then == (h.state, h.nonce) or (then is not None and then[0] == "disabled+O"):
                continue  # (what it held then, or sent and got back on a refusal or cancel: its own copy, not gained)
            # Which movement the enabled copy arrived by: an enabled holding keeps no transfer id, so it is the
            # newest transfer of the oid the card committed since the block (its memory of committed transfers),
            # else the copy it held then (trustless, waiting for the authority's answer).
            arrived = self.blocked_arrivals[uid].get(oid)
            recorded = [
                (frm, n) for frm, to, n, _ in self._chain(auth, oid)[: seen[oid]] if Uid.from_bytes(to).domain == domain
            ]
            if arrived:
                if arrived <= set(recorded):
                    continue
            elif then is not None and then[1] is not None and any(n == then[1] for _, n in recorded):
                continue
            bad.append(f"blocked device {uid.hex()[:8]} gained an enabled copy of token {oid.hex()[:8]}")
        return bad

    def _commits(self, world: World, domain: bytes) -> dict[tuple[bytes, bytes], bytes]:
        """The transfers ``domain``'s card remembers committing, (sender Uid, nonce) -> oid (the applet's ``d:``)."""
        out = {}
        for (table, key), value in world.card_of(domain)._mem.items():
            if table == "a.trn" and key[:2] == b"d:" and len(key) == 2 + 16 + tr.TRANSFER_NONCE_BYTES:
                out[(key[2:18], key[18:])] = value
        return out

    def _note_arrivals(self, world: World, uid: bytes) -> None:
        """Transfers the blocked card committed since the last check: per oid, the newest way a copy arrived.

        (Checked after every event, so these are one event's commits: one per oid, as a card commits a second
        transfer of an oid only after the first copy left it again. Should one event hold two, both must be
        recorded movements for a copy to be allowed.)
        """
        now = self._commits(world, Uid.from_bytes(uid).domain)
        new: dict[bytes, set[tuple[bytes, bytes]]] = {}
        for transfer, oid in now.items():
            if transfer not in self.blocked_commits[uid]:
                new.setdefault(oid, set()).add(transfer)
        self.blocked_arrivals[uid].update(new)
        self.blocked_commits[uid] = set(now)

    @staticmethod
    def _chain(auth: dict[Any, bytes], oid: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
        """The authority's chain for ``oid``, each movement as (from, to, nonce, statement)."""
        chain = authority_chain.load(lambda key: auth.get((_AUTH, key)), oid)
        moves = [] if chain is None else chain.span(0, len(chain))
        return [(m.frm.raw, m.to.raw, m.nonce, m.sig) for m in moves]

    def _authority(self, world: World) -> Card:
        assert self.authority is not None
        return world.card_of(self.authority.domain)

    def _chain_problems(self, world: World, oid: bytes, holder: Uid) -> list[str]:
        """The authority's chain for ``oid``: from the agent, each movement from the previous holder, to ``holder``."""
        auth = self._authority(world)._mem
        chain = authority_chain.load(lambda key: auth.get((_AUTH, key)), oid)
        if chain is None:
            return [f"token {oid.hex()[:8]}: the authority has no chain for it"]
        at = chain.issuer
        if at != Uid.card(self.agent_domain):
            return [f"token {oid.hex()[:8]}: the authority records issuer {at.short()}, not the agent"]
        for m in chain.span(0, len(chain)):
            if m.frm != at:
                return [f"token {oid.hex()[:8]}: the chain branches at {at.short()}"]
            at = m.to
        if at != holder:
            return [f"token {oid.hex()[:8]}: the chain ends at {at.short()}, the token is on {holder.short()}"]
        return []

    def _minted(self, world: World, oid: bytes) -> bool:
        agent = world.card_of(self.agent_domain)
        return (
            agent._mem.get(("a.trn", b"t:" + oid)) is not None
            or (_AUTH, b"chain:" + oid) in self._authority(world)._mem
        )

    def quiescent(self, world: World) -> bool:
        if world.now < SETUP_S + 1.6:
            return False
        for oid in self.oids:
            if oid in self.tainted or oid in self.affected:
                continue
            held = [(d, h) for d, h in self._holdings(world, oid) if not self._stale_copy(world, h)]
            if len(held) != 1 or held[0][1].status is not tr.Status.ENABLED or held[0][0] == self.agent_domain:
                return False
        return not self.victim or self.rolled_back


def _one(cls: type[TrnApplet]) -> list[Applet]:
    return [cls()]


def _owner_sink(world: World, msg: Message) -> None:
    """An owner's application: counts what its orders did (``exercised``), reads the cards' state directly."""
    if msg.mtype == RESULT.code:
        try:
            p = RESULT.parse(msg)
        except Exception:
            return
        if p.get("ok") and "abort" in str(p.get("reason", "")):
            world.exercised["sender_abort"] += 1
