"""A ticketing world on 127.0.0.1: the authority's host, buyers' hosts, a gate, the SPEED broker and the ticketing
server (docs/ticketing.md, docs/gate.md), run as processes or, for counting operations, inside this process.

Made in a directory (a :class:`~cardnet.bench.trnnet.TrnNet` and beside it):

* the buyers' cards carry the ``trn``, ``purse`` and ``speed`` applets (a buyer pays with SPEED and receives the
  ticket with TRN), each on a host of its own; one gate card per name in ``gates`` (``cardnet gate run``);
* the ticketing server's device (an agent card, ``device.card.db``, its own host config ``device.toml`` routing
  only to the authority: no buyer's host has a route to it, a ticket can only travel over the upgraded HTTP
  connection), the vendor's store ``tickets.db`` and the server's config ``tickets.toml`` (one event,
  :data:`EVENT`, with ``seats``);
* the broker's store ``broker.db`` (every buyer a customer with a large credit) and its SAM card ``sam.db``.

As processes (:meth:`TicketNet.start`, :meth:`start_broker`): ``cardnet authority run``, ``cardnet host run``
per buyer, ``cardnet gate run --json``, ``cardnet ticketing run`` and ``cardnet speed broker run``. In this
process (:meth:`TicketNet.in_process`): the same configs and stores served by :class:`HostServer`,
:class:`TicketingServer` and :class:`BrokerServer` on one event loop (no blocklist signer, no gate service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.applets.authority import ADD_AGENT
from cardnet.applets.gate import SETUP, STATE
from cardnet.applets.registry import make_applets
from cardnet.applets.speed import sam as sa
from cardnet.applets.trn import RESULT as TRN_RESULT
from cardnet.applets.trn import SET_AUTHORITY
from cardnet.bench.procs import HostProc, free_port
from cardnet.bench.speed import PIN as SAM_PIN
from cardnet.bench.speed import ServiceProc
from cardnet.bench.trnnet import PIN, TrnNet, TrnNetError
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.host.config import load_config as load_host_config
from cardnet.host.local import LocalCard
from cardnet.host.server import HostServer
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import install_key, load
from cardnet.services.ticketing.config import load_config as load_ticketing_config
from cardnet.services.ticketing.server import TicketingServer
from cardnet.services.wallet import Wallet
from cardnet.store import SqliteStore, open_store
from cardnet.wire import Uid

EVENT = "bench"
PRICE = "1.00 EUR"
CREDIT = sm.Price("EUR", 10**12)  # each buyer's credit at the broker
PURSE = sm.Price("EUR", 10**9)  # loaded into each buyer's purse: ten million tickets at 1.00 EUR
GATE_WAIT_MS = 1500  # the gate's default wait for the authority's answer
# A gate card keeps every ticket it admitted (consumed, with its admission record): a few hundred bytes each, so
# the host default of 256 KiB fills after some 800 admissions, which a quiet machine's benchmark round passes.
# Every card of this world gets room for a stadium's event (a card's capacity is a bound, not an allocation).
CARD_CAPACITY_BYTES = 16 * 1024 * 1024


def _service(ca: pki.CertificateAuthority, name: str, now: datetime) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key()
    cert = ca.issue(pki.Role.SERVICE, Uid(os.urandom(12), 0), key.public_key(), now=now, name=name)
    return key, pki.cert_to_der(cert)


@dataclass(frozen=True)
class TicketingFiles:
    """What :func:`make_ticketing` made: the server's device card and the SPEED parties' certificates."""

    device: Uid
    device_cert: bytes
    broker_cert: bytes
    vendor_cert: bytes
    roots: list[bytes]


def make_ticketing(net: TrnNet, credits: dict[str, sm.Price], *, sam_pin: str) -> TicketingFiles:
    """In ``net.tmp``, under its CA: the ticketing server's device (an agent card in ``device.card.db``, its
    authority set, and ``device.toml``, the host config the server runs it with), the SPEED broker's store
    (``broker.db``: vendor ``V-1`` and an account ``C-<name>`` with ``credits[name]`` for each buyer's card) with its
    SAM card (``sam.db``, PIN ``sam_pin``), and the vendor's store (``tickets.db``), which the server sells from."""
    tmp, now = net.tmp, datetime.now(UTC)
    ca = pki.CertificateAuthority.load(tmp / "ca.cnca")
    roots = [pki.cert_to_der(ca.certificate)]
    card = Card(SqliteStore(str(tmp / "device.card.db")), applets=make_applets(["trn"]))
    device = personalise(card, ca, pin=PIN, now=now, role=pki.Role.AGENT, name="tickets")
    device_cert = card.certificate_der
    local = LocalCard(card, PIN)
    try:
        if not local.ask(SET_AUTHORITY, TRN_RESULT, authority=net.uids["authority"])["ok"]:
            raise TrnNetError("refused", "the ticketing device refused trn.set_authority")
    finally:
        local.close()
    (tmp / "device.toml").write_text(
        f'name = "device"\napp_socket = "device.sock"\n\n[[cards]]\nstore = "sqlite:///device.card.db"\n'
        f'applets = ["trn"]\n\n[routes]\n"{net.uids["authority"].domain.hex()}" = "127.0.0.1:{net.ports["auth"]}"\n'
    )
    bkey, broker_cert = _service(ca, "broker", now)
    vkey, vendor_cert = _service(ca, "tickets", now)
    sam = Card(SqliteStore(str(tmp / "sam.db")), applets=[sa.SamApplet()])
    personalise(sam, ca, pin=sam_pin, now=now, role=pki.Role.SERVICE, name="sam")
    sam.close()
    bstore = open_store("sqlite:///" + str(tmp / "broker.db"), kind="speed-broker", create=True)
    sb_accounts.init_broker(bstore, bkey, broker_cert, roots)
    sb_accounts.add_vendor(bstore, "V-1", vendor_cert)
    for name, credit in credits.items():
        sb_accounts.add_customer(bstore, f"C-{name}", net.uids[name], credit)
    bstore.close()
    vstore = open_store("sqlite:///" + str(tmp / "tickets.db"), kind="speed-vendor", create=True)
    sv.init_vendor(vstore, vkey, vendor_cert, roots, account="V-1", broker_cert=broker_cert)
    vstore.close()
    return TicketingFiles(device, device_cert, broker_cert, vendor_cert, roots)


class TicketNet(TrnNet):
    """See the module. ``buyers`` name the buyers' hosts, ``seats`` the event's seats."""

    def __init__(self, tmp: Path, buyers: tuple[str, ...], seats: list[str], *, gates: tuple[str, ...] = ("gate",),
                 gate_refresh_s: float = 10.0, transfer_timeout_s: float = 60.0) -> None:  # fmt: skip
        super().__init__(tmp, buyers, gates=gates, gate_refresh_s=gate_refresh_s, capacity_bytes=CARD_CAPACITY_BYTES)
        for b in buyers:  # the buyers' cards pay with SPEED too
            hp = self.hosts[b]
            hp.config.write_text(
                hp.config.read_text().replace('applets = ["trn"]', 'applets = ["trn", "purse", "speed"]')
            )
        made = make_ticketing(self, {b: CREDIT for b in buyers}, sam_pin=SAM_PIN)
        self.roots, self.device_cert = made.roots, made.device_cert
        self.broker_cert, self.vendor_cert = made.broker_cert, made.vendor_cert
        device = self.uids["device"] = made.device
        http_port, speed_port, self.broker_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{http_port}"
        tickets = HostProc("tickets", tmp, http_port, device.domain, ("ticketing", "run"), {"CARDNET_PIN": PIN})
        tickets.start_timeout_s = 120.0  # its first start signs every seat into the catalogue
        listed = ", ".join(f'"{s}"' for s in seats)
        tickets.config.write_text(
            f'name = "bench tickets"\nlisten = "127.0.0.1:{http_port}"\nspeed_listen = "127.0.0.1:{speed_port}"\n'
            f'store = "tickets.db"\nhost = "device.toml"\ntransfer_timeout_s = {transfer_timeout_s}\n'
            f'broker = "127.0.0.1:{self.broker_port}"\n\n'
            f"[limits]\nmax_per_peer = 256\n\n"
            f'[[events]]\nid = "{EVENT}"\nname = "Benchmark"\ndate = "2027-05-01 20:00"\nprice = "{PRICE}"\n'
            f"seats = [{listed}]\n"
        )
        self.hosts["tickets"] = tickets
        self.broker: ServiceProc | None = None
        self.broker_addr = ""

    def start_broker(self) -> None:
        """``cardnet speed broker run`` (its SAM card in it), on the port the ticketing server's config names."""
        self.broker = ServiceProc("speed", "broker", "run", "--store", str(self.tmp / "broker.db"), "--sam-store",
                                  str(self.tmp / "sam.db"), port=self.broker_port)  # fmt: skip
        self.broker_addr = self.broker.address

    def stop(self) -> None:
        super().stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.stop()
            self.broker = None

    async def wallet(self, buyer: str) -> Wallet:
        """A wallet application on ``buyer``'s host, logged in (the caller closes it)."""
        return await Wallet.open(self.hosts[buyer].socket, pin=PIN, card=self.uids[buyer].domain)

    async def setup(self) -> None:
        """Trace with the authority (the device is an agent it knows), the gates admit the device's tickets, every
        buyer's purse keyed by the broker's SAM and loaded."""
        await self.setup_trace()
        if not (await self.ask("authority", ADD_AGENT, cert=self.device_cert))["ok"]:
            raise TrnNetError("refused", f"the authority refused the ticketing device; logs:\n{self.logs()}")
        for g in self.gates:
            if not (await self.ask(g, SET_AUTHORITY, authority=self.uids["authority"]))["ok"]:
                raise TrnNetError("refused", f"gate {g} refused trn.set_authority; logs:\n{self.logs()}")
            await self.ask(g, SETUP, STATE, issuers=[self.device_cert], wait_ms=GATE_WAIT_MS)

        async def purse(b: str) -> None:
            async with await self.wallet(b) as w:
                if not await install_key(w, self.broker_addr) or await load(w, self.broker_addr, PURSE, f"C-{b}") != 1:
                    raise TrnNetError("refused", f"buyer {b}'s purse could not be keyed and loaded")

        await asyncio.gather(*(purse(b) for b in self.wallets))

    async def gate_state(self, gate: str) -> dict[str, Any]:
        return await self.ask(gate, SETUP, STATE)

    @contextlib.asynccontextmanager
    async def in_process(self) -> AsyncIterator[TicketingServer]:
        """Every host (not the gate service, not the blocklist signer), the broker and the ticketing server, in
        this process on this event loop, until the block ends."""
        hosts = [HostServer(load_host_config(self.hosts[h].config)) for h in ("auth", *self.wallets, *self.gates)]
        sam = Card.open("sqlite:///" + str(self.tmp / "sam.db"), create=False, applets=[sa.SamApplet()])
        bstore = open_store("sqlite:///" + str(self.tmp / "broker.db"), kind="speed-broker", create=False)
        broker = sb_server.BrokerServer(sb.BrokerCore(bstore, LocalCard(sam, SAM_PIN), clock=time.time))
        server = TicketingServer(load_ticketing_config(self.hosts["tickets"].config), pin=PIN)
        started: list[Any] = []
        try:
            for h in hosts:
                await h.start()
                started.append(h)
            self.broker_addr = "{}:{}".format(*await broker.start("127.0.0.1", self.broker_port))
            started.append(broker)
            await server.start()
            started.append(server)
            yield server
        finally:
            for s in reversed(started):
                if isinstance(s, HostServer):
                    s.stop()
                with contextlib.suppress(Exception):
                    await s.aclose()
            bstore.close()
            sam.close()
