"""The ``fairx`` scenario: fair exchanges of traced vouchers among wallets under every fault kind.

An agent mints one voucher per wallet and issues it; the authority traces every
movement; a TTP card sits on the first host. During the safety phase owners
start exchanges between wallets on different hosts (each gives a voucher it
holds enabled for the other's); the other owner accepts (most of the time) or
rejects. Owners are impatient: a while after each order, one whose exchange is
still waiting gives the recovery order its phase allows (give up before m3,
resolve after m3, abort after m2), as the wallet library's timeouts do; and
from healing on, every owner keeps doing so until its exchanges end. Hosts
tick their cards with ``trn.recover`` (resends) and re-emit lost outputs.

Invariants, after every event: every voucher is usable (enabled or trustless)
on at most one card, and kept by at least one (a holding, or an exchange
record that will store it); the TTP never changes a decision (so never both
resolves and aborts one exchange). At the end: every voucher is enabled on
exactly one card and locked nowhere, and every exchange ended fair: both of
its cards done (swapped), or neither (both vouchers home).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from cardnet.applets import fairx as fa
from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.trn import MINT, RECOVER, SEND, SET_AUTHORITY, TrnApplet
from cardnet.card import Card, StepContext
from cardnet.crypto import pki
from cardnet.protocols import fairx as fx
from cardnet.protocols.trn import transfer as tr
from cardnet.sim.scenarios import register
from cardnet.sim.world import RESEND, SimHost, Tick, World
from cardnet.wire import Message, MType, Uid
from cardnet.wire.cbor import loads_one

SETUP_S = 0.5
RECOVER_EVERY_S = 0.25
RESEND_EVERY_S = 1.0
ACCEPT_P = 0.8  # an offer's owner accepts (else rejects)
PATIENCE_S = (0.1, 0.8)  # how long an owner waits before giving a recovery order
OWNER_EVERY_S = 0.4  # after healing: each owner looks at its exchanges this often
WALLET, TTP = "a.trn", "a.ttp"


class ImpatientResponderApplet(TrnApplet):
    """Broken on purpose (``fairx-broken``): a responder that does not wait for the TTP: asking to abort, it
    takes its voucher back at once (the TTP may still resolve the exchange and give that voucher away)."""

    def fairx_order(self, ctx: StepContext, code: int, params: dict[str, Any]) -> None:
        super().fairx_order(ctx, code, params)
        if code == fa.ABORT.code:
            raw = ctx.get(b"x:" + params["n1"])
            if raw is not None:
                self._unlock(ctx, fx.Exchange.decode(raw).gives)


@dataclass
class FairxScenario:
    name: str = "fairx"
    hosts: int = 3
    wallets: int = 4
    exchanges: int = 5
    wallet_applet: type[TrnApplet] = TrnApplet
    oids: list[bytes] = field(default_factory=list)
    wallet_domains: list[bytes] = field(default_factory=list)
    apps: dict[bytes, tuple[str, Uid]] = field(default_factory=dict)  # domain -> (host address, app uid)
    ttp_domain: bytes = b""
    agent_domain: bytes = b""
    decisions: dict[bytes, bytes] = field(default_factory=dict)  # xid -> the TTP's decision as first seen
    bad: list[str] = field(default_factory=list)

    # -- building ---------------------------------------------------------------------------------
    def build(self, world: World) -> None:
        world.faults_from = SETUP_S
        hosts = [world.add_host(f"h{i}") for i in range(self.hosts)]
        auth = world.add_card(hosts[0], "authority", lambda: [AuthorityApplet()], role=pki.Role.SERVICE)
        agent = world.add_card(hosts[0], "agent", lambda: [TrnApplet()], role=pki.Role.AGENT)
        ttp = world.add_card(hosts[0], "ttp", lambda: [fa.TtpApplet()], role=pki.Role.SERVICE)
        self.agent_domain, self.ttp_domain = agent.uid.domain, ttp.uid.domain
        self._app(world, hosts[0], auth)
        self._app(world, hosts[0], agent)
        cls = self.wallet_applet
        for i in range(self.wallets):
            sh = hosts[1 + i % (self.hosts - 1)]
            card = world.add_card(sh, f"w{i}", lambda: [cls()])
            self.wallet_domains.append(card.uid.domain)
            self._app(world, sh, card)
        self.oids = [world.rng.randbytes(16) for _ in range(self.wallets)]
        self._order(world, auth.uid.domain, ADD_AGENT, t=0.01, cert=agent.certificate_der)
        for domain in [self.agent_domain, *self.wallet_domains]:
            self._order(world, domain, SET_AUTHORITY, t=0.02, authority=auth.uid)
        for domain in self.wallet_domains:
            self._order(world, domain, fa.SET_TTP, t=0.02, ttp=ttp.uid)
        for oid, domain in zip(self.oids, self.wallet_domains, strict=True):
            self._order(world, self.agent_domain, MINT, t=0.05, oid=oid, body=b"voucher " + oid[:4].hex().encode())
            self._order(world, self.agent_domain, SEND, t=0.06, oid=oid, to=Uid.card(domain))
        for _ in range(self.exchanges):
            world.at(SETUP_S + world.rng.uniform(0.0, 1.4), functools.partial(self._start, world), "exchange")
        world.at(SETUP_S, functools.partial(self._owners, world), "owners")
        wallets = {self.agent_domain, *self.wallet_domains}
        for sh in hosts:
            ticks: dict[object, float] = {Tick(d, RECOVER): RECOVER_EVERY_S for d in sh.cards if d in wallets}
            world.add_timers(sh, {**ticks, RESEND: RESEND_EVERY_S})

    def _app(self, world: World, sh: SimHost, card: Card) -> None:
        uid = world.attach_app(sh, functools.partial(self._sink, world), card.uid.domain)
        self.apps[card.uid.domain] = (sh.address, uid)

    def _sink(self, world: World, msg: Message) -> None:
        if msg.mtype == fa.STATE.code:
            world.exercised["order_answered"] += 1

    def _order(self, world: World, domain: bytes, mtype: MType, *, t: float, **fields: object) -> None:
        world.at(t, functools.partial(self._send_order, world, domain, mtype, fields), "order")

    def _send_order(self, world: World, domain: bytes, mtype: MType, fields: dict[str, object]) -> None:
        world.owner_order(*self.apps[domain], domain, mtype, fields)

    # -- the owners -------------------------------------------------------------------------------------
    def _start(self, world: World) -> None:
        """An owner offers a voucher she holds enabled for one another wallet (on another host) holds enabled."""
        have = [(d, oid) for oid in self.oids for d, h in self._holdings(world, oid) if h.status is tr.Status.ENABLED]
        have = [(d, oid) for d, oid in have if d != self.agent_domain]
        pairs = [
            (a, give, b, want) for a, give in have for b, want in have if a != b and self.apps[a][0] != self.apps[b][0]
        ]
        if not pairs:
            return
        a, give, b, want = world.rng.choice(pairs)
        world.exercised["start"] += 1
        self._send_order(world, a, fa.START, {"give": give, "want": want, "to": Uid.card(b)})
        t = world.now + world.rng.uniform(*PATIENCE_S)
        world.at(t, functools.partial(self._impatient, world, a), "impatient")
        world.at(world.now + world.rng.uniform(0.05, 0.5), functools.partial(self._answer, world, b), "answer")

    def _answer(self, world: World, domain: bytes) -> None:
        """The other owner looks at the offers waiting for her and answers each."""
        for x in self._records(world, domain):
            if x.role == fx.RESPONDER and x.phase is fx.Phase.PROPOSED:
                accept = world.rng.random() < ACCEPT_P
                world.exercised["accept" if accept else "reject"] += 1
                self._send_order(world, domain, fa.ACCEPT if accept else fa.REJECT, {"n1": x.n1})
                t = world.now + world.rng.uniform(*PATIENCE_S)
                world.at(t, functools.partial(self._impatient, world, domain), "impatient")

    def _impatient(self, world: World, domain: bytes) -> None:
        """An owner whose exchanges still wait gives the recovery order each one's phase allows."""
        for x in self._records(world, domain):
            order = {
                fx.Phase.OFFERED: fa.GIVE_UP, fx.Phase.CONFIRMED: fa.RESOLVE, fx.Phase.RESOLVING: fa.RESOLVE,
                fx.Phase.AGREED: fa.ABORT, fx.Phase.ABORTING: fa.ABORT,
            }.get(x.phase)  # fmt: skip
            if x.phase is fx.Phase.PROPOSED and world.healed:
                order = fa.REJECT
            if order is not None:
                world.exercised[order.name.split(".")[1]] += 1
                self._send_order(world, domain, order, {"n1": x.n1})
        for key, _ in world.card_of(domain)._mem.items():
            if key[0] == WALLET and key[1].startswith(b"xs:") and world.healed:
                self._send_order(world, domain, fa.GIVE_UP, {"n1": key[1][3:]})

    def _owners(self, world: World) -> None:
        """From healing on, every owner keeps following the protocol to the end of each exchange."""
        if world.healed:
            for domain in self.wallet_domains:
                if not self._settled(world, domain):
                    self._impatient(world, domain)
        world.at(world.now + OWNER_EVERY_S, functools.partial(self._owners, world), "owners")

    def _settled(self, world: World, domain: bytes) -> bool:
        """Every exchange of this wallet ended (or was given up), none waits to be offered."""
        if any(t == WALLET and k.startswith(b"xs:") for t, k in list(world.card_of(domain)._mem)):
            return False
        return all(x.phase in fx.FINISHED or x.phase is fx.Phase.GAVE_UP for x in self._records(world, domain))

    # -- reading the cards --------------------------------------------------------------------------------
    def _records(self, world: World, domain: bytes) -> list[fx.Exchange]:
        mem = world.card_of(domain)._mem
        return [fx.Exchange.decode(v) for (t, k), v in list(mem.items()) if t == WALLET and k.startswith(b"x:")]

    def _holdings(self, world: World, oid: bytes) -> list[tuple[bytes, tr.Holding]]:
        out = []
        for sh in world.hosts.values():
            for domain, sc in sh.cards.items():
                raw = sc.card._mem.get((WALLET, b"t:" + oid))
                if raw is not None:
                    out.append((domain, tr.Holding.decode(oid, raw)))
        return out

    # -- invariants -------------------------------------------------------------------------------------
    def check(self, world: World, final: bool) -> list[str]:
        bad = list(self.bad)
        pending: dict[bytes, list[str]] = {oid: [] for oid in self.oids}  # exchange records that will store it
        records: dict[bytes, dict[bytes, fx.Exchange]] = {}  # n1 -> card -> record
        for domain in self.wallet_domains:
            for x in self._records(world, domain):
                records.setdefault(x.n1, {})[domain] = x
                if x.token_in is not None and x.phase not in fx.FINISHED and x.gets in pending:
                    pending[x.gets].append(domain.hex()[:8])
        for oid in self.oids:
            held = self._holdings(world, oid)
            usable = [d.hex()[:8] for d, h in held if h.usable]
            if len(usable) > 1:
                bad.append(f"voucher {oid.hex()[:8]} is usable on {len(usable)} cards at once: {usable}")
            kept = [d for d, h in held if h.token is not None]
            if not kept and not pending[oid] and world.now > SETUP_S:
                bad.append(f"voucher {oid.hex()[:8]} is lost: no card keeps it")
            if final:
                states = [(d.hex()[:8], h.state) for d, h in held]
                if len([s for _, s in states if s == "enabled"]) != 1 or any(s != "enabled" for _, s in states):
                    bad.append(f"voucher {oid.hex()[:8]} ended as {states}")
        bad.extend(self._check_ttp(world))
        if final:
            self._count(world)
            for n1, by_card in records.items():
                phases = {x.role: x.phase for x in by_card.values()}
                a, b = phases.get(fx.INITIATOR), phases.get(fx.RESPONDER)
                done = [p is fx.Phase.DONE for p in (a, b) if p is not None]
                unfinished = [p for p in (a, b) if p is not None and p not in fx.FINISHED and p is not fx.Phase.GAVE_UP]
                if unfinished or (any(done) and not all(done)) or (a is fx.Phase.DONE and b is None):
                    bad.append(f"exchange {n1.hex()[:8]} ended unfair: initiator {a}, responder {b}")
        return bad

    def _check_ttp(self, world: World) -> list[str]:
        bad = []
        mem = world.card_of(self.ttp_domain)._mem
        for (t, k), v in list(mem.items()):
            if t != TTP or not k.startswith(b"d:"):
                continue
            kept = loads_one(v)
            assert isinstance(kept, list)
            decision = str(kept[0]).encode()
            first = self.decisions.setdefault(k[2:], decision)
            if first != decision:
                bad.append(f"the TTP changed its decision on {k[2:].hex()[:8]} from {first!r} to {decision!r}")
        return bad

    def quiescent(self, world: World) -> bool:
        if not world.healed:
            return False
        if not all(self._settled(world, domain) for domain in self.wallet_domains):
            return False
        for oid in self.oids:
            held = self._holdings(world, oid)
            if len(held) != 1 or held[0][1].status is not tr.Status.ENABLED or held[0][0] == self.agent_domain:
                return False
        return True

    def _count(self, world: World) -> None:
        for domain in self.wallet_domains:
            for x in self._records(world, domain):
                if x.role == fx.INITIATOR:
                    world.exercised[f"ended_{x.phase.value}"] += 1
        for decision in self.decisions.values():
            world.exercised[f"ttp_{decision.decode()}"] += 1


register("fairx", FairxScenario)
register("fairx-broken", lambda: FairxScenario(name="fairx-broken", wallet_applet=ImpatientResponderApplet))
