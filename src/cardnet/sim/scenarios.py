"""Scenarios the simulator can run, registered by name (``cardnet sim --protocol NAME``).

A scenario builds hosts, cards and applications in a :class:`World`,
schedules its workload, and says what must hold: ``check(world, final)``
returns violations (safety after every event, plus liveness-dependent checks
when ``final``), and ``quiescent(world)`` says when the work is done.
Later protocols add themselves with :func:`register`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cardnet.applets.echo import EchoApplet, ForgetfulEchoApplet, request_key
from cardnet.applets.trn import SenderKeepsTokenApplet
from cardnet.card import Applet
from cardnet.protocols.echo import EchoClient
from cardnet.sim.trn import (
    AcksBeforeStepHost,
    BlamesReceiverAuthority,
    DomainOnlyCard,
    EnablesBlockedAuthority,
    IgnoresBlocklistAuthority,
    IgnoresPeerExpiryApplet,
    TrnScenario,
)
from cardnet.sim.world import World
from cardnet.wire import Message, Uid


class Scenario(Protocol):
    name: str

    def build(self, world: World) -> None: ...

    def check(self, world: World, final: bool) -> list[str]: ...

    def quiescent(self, world: World) -> bool: ...


SCENARIOS: dict[str, Callable[[], Scenario]] = {}


def register(name: str, factory: Callable[[], Scenario]) -> None:
    if name in SCENARIOS:
        raise ValueError(f"scenario {name} is already registered")
    SCENARIOS[name] = factory


@dataclass
class EchoScenario:
    """Three hosts with one echo card each; two client apps per host send requests to random cards."""

    name: str = "echo"
    applet: type[Applet] = EchoApplet
    hosts: int = 3
    clients_per_host: int = 2
    requests_per_client: int = 6
    clients: list[tuple[str, EchoClient]] = field(default_factory=list)
    servers: list[bytes] = field(default_factory=list)

    def build(self, world: World) -> None:
        applet = self.applet
        for i in range(self.hosts):
            sh = world.add_host(f"h{i}")
            world.add_card(sh, f"card{i}", lambda: [applet()])
        self.servers = [d for sh in world.hosts.values() for d in sh.cards]
        for address, sh in world.hosts.items():
            for _ in range(self.clients_per_host):
                holder: list[EchoClient] = []

                def sink(msg: Message, holder: list[EchoClient] = holder) -> None:
                    holder[0].receive(msg, world.now)

                uid = world.attach_app(sh, sink)
                dst = Uid.card(world.rng.choice(self.servers))
                client = EchoClient(uid, dst, retry_s=0.2, max_tries=10_000)
                holder.append(client)
                self.clients.append((address, client))
        for address, client in self.clients:
            for _ in range(self.requests_per_client):
                t = world.rng.uniform(0.0, 1.0)
                body = world.rng.randbytes(world.rng.randint(0, 32))
                world.at(t, functools.partial(self._send, world, address, client, body), "request")
            world.at(0.05, functools.partial(self._retry, world, address, client), "retry")

    def _send(self, world: World, address: str, client: EchoClient, body: bytes) -> None:
        world.submit(address, client.request(body, world.now))

    def _retry(self, world: World, address: str, client: EchoClient) -> None:
        for msg in client.on_timer(world.now):
            world.submit(address, msg)
        if client.pending or client.next_rid <= self.requests_per_client:
            world.at(world.now + 0.05, lambda: self._retry(world, address, client), "retry")

    def check(self, world: World, final: bool) -> list[str]:
        bad = []
        for domain in self.servers:
            card = world.card_of(domain)
            for (table, key), raw in card._mem.items():
                if table == "a.echo" and key.startswith(b"rid:") and int.from_bytes(raw, "big") > 1:
                    src = Uid.from_bytes(key[4:20])
                    rid = int.from_bytes(key[20:], "big")
                    bad.append(f"request {rid} of {src} was processed {int.from_bytes(raw, 'big')} times")
        if world.malicious:
            # Echo has no end-to-end authentication: any host on the way can forge a reply ("count 2", or an
            # answer to a request no card processed), and its clients believe it. The card-side invariant
            # above is what the card guarantees against a malicious host; the client-side ones need honest hosts.
            return bad
        for _, client in self.clients:
            for rid, count in client.acked.items():
                if count != 1:
                    bad.append(f"client {client.src} saw request {rid} acknowledged with count {count}")
                if final and ("a.echo", request_key(client.src, rid)) not in world.card_of(client.dst.domain)._mem:
                    bad.append(f"request {rid} of {client.src} was acknowledged but never processed")
        return bad

    def quiescent(self, world: World) -> bool:
        return all(not c.pending and c.next_rid > self.requests_per_client for _, c in self.clients)


register("echo", EchoScenario)
register("echo-broken", lambda: EchoScenario(name="echo-broken", applet=ForgetfulEchoApplet))


def _trn() -> Scenario:
    return TrnScenario()


register("trn", _trn)
# the broken variants of ``trn``: each replaces one class of the scenario with a deliberately broken one
_TRN_VARIANTS: dict[str, dict[str, Any]] = {
    "trn-broken": {"wallet_applet": SenderKeepsTokenApplet},
    "trn-blocking-broken": {"authority_applet": IgnoresBlocklistAuthority},
    "trn-blame-broken": {"authority_applet": BlamesReceiverAuthority},
    "trn-enable-blocked-broken": {"authority_applet": EnablesBlockedAuthority},
    "trn-ack-early-broken": {"host_cls": AcksBeforeStepHost},
    "trn-expiry-broken": {"wallet_applet": IgnoresPeerExpiryApplet},
    "trn-privilege-broken": {"card_cls": DomainOnlyCard},
}
for _name, _classes in _TRN_VARIANTS.items():
    register(_name, functools.partial(TrnScenario, name=_name, **_classes))

# Old names that still run (``cardnet sim`` says which name to use instead): TRN's scenarios were ``transfer``
# and ``transfer-*-broken`` before every layer called the protocol ``trn`` (docs/decisions.md).
ALIASES: dict[str, str] = {"transfer": "trn"} | {"transfer" + name.removeprefix("trn"): name for name in _TRN_VARIANTS}


def resolve(name: str) -> str:
    """The registered name of scenario ``name`` (itself, or what an old name in :data:`ALIASES` now is)."""
    return ALIASES.get(name, name)


from cardnet.sim import fairx as _fairx  # noqa: E402  (registers the fairx scenarios)
from cardnet.sim import millicent as _millicent  # noqa: E402  (registers the millicent scenarios)
from cardnet.sim import smc as _smc  # noqa: E402  (registers the smc scenarios)
from cardnet.sim import speed as _speed  # noqa: E402  (registers the speed scenarios)

del _fairx, _millicent, _smc, _speed
