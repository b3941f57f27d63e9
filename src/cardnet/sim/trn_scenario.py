"""The ``transfer`` scenario: TRN tokens moving among wallets under every fault kind.

An agent mints tokens and issues them to wallets; during the safety phase
owners order random transfers between wallets on different hosts; every
host ticks its TRN cards with ``trn.recover`` on its timer (``Host.tick``, on
the virtual clock: ``World.add_timers``) and re-emits card outputs it lost
track of (``Host.resend_unacked``), as the host process does; no application
sends ``trn.recover``. The authority traces every movement.

Invariants: for every oid, at most one *usable* (enabled or trustless) copy on
all cards at every instant, and the object itself is always on some card (no
loss). At the end, after healing and recovery: exactly one enabled copy, no
transfer left half-done, and the authority's chain is consistent (it starts at
the agent, every movement leaves the previous holder, no device was blocked)
and ends at that holder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.trn import MINT, RECOVER, SEND, SET_AUTHORITY, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import transfer as tr
from cardnet.sim.world import RESEND, SimHost, Tick, World
from cardnet.wire import MType, Uid
from cardnet.wire.cbor import loads_one

SETUP_S = 0.5
_AUTH = "a.authority"  # the authority applet's table on its card
RECOVER_EVERY_S = 0.25  # the hosts' trn.recover tick (a host process defaults to 2 s; the simulator hurries)
RESEND_EVERY_S = 1.0  # the hosts' resend_after_s


@dataclass
class TransferScenario:
    name: str = "transfer"
    hosts: int = 3
    wallets: int = 4
    tokens: int = 3
    transfers: int = 8
    oids: list[bytes] = field(default_factory=list)
    wallet_cards: list[tuple[str, bytes]] = field(default_factory=list)  # (host address, domain)
    apps: dict[bytes, tuple[str, Uid]] = field(default_factory=dict)  # domain -> (host address, app uid)
    authority: Uid | None = None
    agent_domain: bytes = b""
    issued: int = 0
    wallet_applet: type[TrnApplet] = TrnApplet

    # -- building ---------------------------------------------------------------------------
    def build(self, world: World) -> None:
        world.faults_from = SETUP_S
        hosts = [world.add_host(f"h{i}") for i in range(self.hosts)]
        auth = world.add_card(hosts[0], "authority", lambda: [AuthorityApplet()], role=pki.Role.SERVICE)
        agent = world.add_card(hosts[0], "agent", lambda: [TrnApplet()], role=pki.Role.AGENT)
        self.authority = auth.uid
        self.agent_domain = agent.uid.domain
        self._app(world, hosts[0], auth)
        self._app(world, hosts[0], agent)
        for i in range(self.wallets):
            sh = hosts[1 + i % (self.hosts - 1)]
            applet = self.wallet_applet
            card = world.add_card(sh, f"w{i}", lambda applet=applet: [applet()])  # type: ignore[misc]
            self.wallet_cards.append((sh.address, card.uid.domain))
            self._app(world, sh, card)
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
        trn_cards = {self.agent_domain, *(d for _, d in self.wallet_cards)}
        for sh in hosts:
            ticks: dict[object, float] = {Tick(d, RECOVER): RECOVER_EVERY_S for d in sh.cards if d in trn_cards}
            world.add_timers(sh, {**ticks, RESEND: RESEND_EVERY_S})

    def _app(self, world: World, sh: SimHost, card: Card) -> None:
        uid = world.attach_app(sh, lambda msg: None, card.uid.domain)  # owners read their cards' state directly
        self.apps[card.uid.domain] = (sh.address, uid)

    def _order(self, world: World, domain: bytes, mtype: MType, *, t: float, **fields: object) -> None:
        world.at(t, functools.partial(self._send_order, world, domain, mtype, fields), "order")

    def _send_order(self, world: World, domain: bytes, mtype: MType, fields: dict[str, object]) -> None:
        address, app = self.apps[domain]
        card = Uid.card(domain)
        if mtype.privileged:
            world.submit(address, cm.PIN_VERIFY.make(app, card, pin="0000"))
        world.submit(address, mtype.make_from(app, card, fields))

    def _random_transfer(self, world: World) -> None:
        holders = [
            (d, oid) for oid in self.oids for d, h in self._holdings(world, oid) if h.status is tr.Status.ENABLED
        ]
        holders = [(d, oid) for d, oid in holders if d != self.agent_domain]
        if not holders:
            return
        domain, oid = world.rng.choice(sorted(holders))
        others = [d for _, d in self.wallet_cards if d != domain]
        to = Uid.card(world.rng.choice(others))
        world.log(f"owner of {domain.hex()[:8]} sends {oid.hex()[:8]} to {to.short()}")
        self._send_order(world, domain, SEND, {"oid": oid, "to": to})

    # -- the oracle --------------------------------------------------------------------------
    def _holdings(self, world: World, oid: bytes) -> list[tuple[bytes, tr.Holding]]:
        out = []
        for sh in world.hosts.values():
            for domain, sc in sh.cards.items():
                raw = sc.card._mem.get(("a.trn", b"t:" + oid))
                if raw is not None:
                    out.append((domain, tr.Holding.decode(oid, raw)))
        return out

    def check(self, world: World, final: bool) -> list[str]:
        bad = []
        for oid in self.oids:
            held = self._holdings(world, oid)
            if not held:
                if world.now > SETUP_S and self._minted(world, oid):
                    bad.append(f"token {oid.hex()[:8]} is lost: no card holds it")
                continue
            usable = [d.hex()[:8] for d, h in held if h.usable]
            if len(usable) > 1:
                bad.append(f"token {oid.hex()[:8]} is usable on {len(usable)} cards at once: {usable}")
            if not any(h.token is not None for _, h in held):
                bad.append(f"token {oid.hex()[:8]}: no card has the object any more")
            if final:
                enabled = [d for d, h in held if h.status is tr.Status.ENABLED]
                leftovers = [h.state for _, h in held if h.status is not tr.Status.ENABLED]
                if len(enabled) != 1 or leftovers:
                    bad.append(f"token {oid.hex()[:8]} ended as {[h.state for _, h in held]}")
                else:
                    bad.extend(self._chain_problems(world, oid, Uid.card(enabled[0])))
        if final:
            blocked = [k[8:].hex()[:8] for t, k in self._authority(world)._mem if t == _AUTH and k[:8] == b"blocked:"]
            if blocked:
                bad.append(f"the authority blocked {blocked}: it saw a token branch")
        return bad

    def _authority(self, world: World) -> Card:
        assert self.authority is not None
        return world.card_of(self.authority.domain)

    def _chain_problems(self, world: World, oid: bytes, holder: Uid) -> list[str]:
        """The authority's chain for ``oid``: from the agent, each movement from the previous holder, to ``holder``."""
        raw = self._authority(world)._mem.get((_AUTH, b"chain:" + oid))
        if raw is None:
            return [f"token {oid.hex()[:8]}: the authority has no chain for it"]
        data = loads_one(raw)
        assert isinstance(data, list)
        at = Uid.from_bytes(data[0])
        if at != Uid.card(self.agent_domain):
            return [f"token {oid.hex()[:8]}: the authority records issuer {at.short()}, not the agent"]
        for frm, to, *_ in data[1:]:  # (nonce, statement)
            if Uid.from_bytes(frm) != at:
                return [f"token {oid.hex()[:8]}: the chain branches at {at.short()}"]
            at = Uid.from_bytes(to)
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
            held = self._holdings(world, oid)
            if len(held) != 1 or held[0][1].status is not tr.Status.ENABLED or held[0][0] == self.agent_domain:
                return False
        return True
