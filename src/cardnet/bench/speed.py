"""``cardnet bench speed``: SPEED purchases between customer cards, a vendor process and a broker process.

Setup: one CA; a broker process (``cardnet speed broker run``, its SAM a durable card) and a vendor process
(``cardnet speed vendor run``) on 127.0.0.1; customers in this process, each with its own durable card
(purse and conductor, :class:`~cardnet.host.local.LocalCard`), its purse keyed by the SAM and loaded. Every
store is a durable SQLite file.

Figures (all measured in one run):

* ``purchases_per_s``: complete purchases (the product deciphered with the key of a valid receipt) of a 16-byte
  product, for 5 and for 64 customers buying at once, in normal mode (negotiation accepting the first price,
  as in the paper's experiment) and in aggressive mode; purse payment;
* ``p50_ms``: one normal-mode purchase at a time on an idle system;
* ``delivery_mb_per_s``: one normal-mode purchase of a 1, 3 and 5 MB product, product bytes / purchase time;
  beside it ``aes_gcm_mb_per_s``, AES-256-GCM sealing 256 KiB chunks on one core here;
* ``crypto_bound_purchases_per_s``: the CPU time of every signature, verification, certificate check, HPKE seal
  and open and AES-GCM record one normal-mode purchase needs (counted by running one purchase in this process,
  each operation timed here), spread over the machine's cores; ``serial_bound_purchases_per_s``: the same on one
  core plus one durable commit per write.

Targets: ``purchases_per_s >= 500`` (100 x the paper's 4-5 per second) and ``>= 0.4 x
crypto_bound_purchases_per_s``; ``delivery_mb_per_s >= 0.5 x aes_gcm_mb_per_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.bench.card import sqlite_commit_rate
from cardnet.bench.crypto_ops import bounds, counting, op_rates
from cardnet.bench.procs import readline, stop_process
from cardnet.bench.timing import rate
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.errors import CardnetError
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Customer, install_key, load
from cardnet.store import SqliteStore
from cardnet.wire import Uid

PIN = "2468"
SMALL = "ticket-16 a 16-byte key"
SIZES_MB = (1, 3, 5)
PAPER_PURCHASES_PER_S = 5
LIMIT = sm.Price("EUR", 10**9)
PRICES = {SMALL: sm.Price("EUR", 1)}
Progress = Callable[[str], None]


class BenchError(CardnetError):
    """The benchmark could not run (a service did not start, a purchase failed)."""


def _service(ca: pki.CertificateAuthority, name: str, now: datetime) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key()
    cert = ca.issue(pki.Role.SERVICE, Uid(os.urandom(12), 0), key.public_key(), now=now, name=name)
    return key, pki.cert_to_der(cert)


class Net:
    """The stores of a broker, a vendor and ``customers`` customer cards under one CA, in ``tmp``."""

    def __init__(self, tmp: Path, customers: int) -> None:
        self.tmp = tmp
        now = datetime.now(UTC)
        self.ca = pki.CertificateAuthority.create("bench speed CA", now=now)
        self.roots = [pki.cert_to_der(self.ca.certificate)]
        bkey, self.broker_cert = _service(self.ca, "broker", now)
        vkey, self.vendor_cert = _service(self.ca, "vendor", now)
        sam = Card(SqliteStore(str(tmp / "sam.db")), applets=[sa.SamApplet()])
        personalise(sam, self.ca, pin=PIN, now=now, role=pki.Role.SERVICE, name="sam")
        LocalCard(sam, PIN).ask(sa.INIT, sa.READY)
        self.sam_card = sam
        bstore = SqliteStore(str(tmp / "broker.db"))
        sb_accounts.init_broker(bstore, bkey, self.broker_cert, self.roots)
        sb_accounts.add_vendor(bstore, "V-1", self.vendor_cert)
        vstore = SqliteStore(str(tmp / "vendor.db"))
        sv.init_vendor(vstore, vkey, self.vendor_cert, self.roots, account="V-1", broker_cert=self.broker_cert)
        sv.add_product(vstore, SMALL, sm.Price("EUR", 1), os.urandom(16))
        for mb in SIZES_MB:
            sv.add_product(vstore, f"film-{mb} {mb} MB", sm.Price("EUR", 100), os.urandom(mb * 1_000_000))
        self.cards: list[LocalCard] = []
        for i in range(customers):
            card = Card(SqliteStore(str(tmp / f"c{i}.db")), applets=[pa.PurseApplet(), co.ConductorApplet()])
            uid = personalise(card, self.ca, pin=PIN, now=now, name=f"c{i}")
            sb_accounts.add_customer(bstore, f"C-{i}", uid, sm.Price("EUR", 10**12))
            self.cards.append(LocalCard(card, PIN))
        self.stores = (bstore, vstore)
        self._customers: dict[int, Customer] = {}
        self.broker_addr = self.vendor_addr = ""

    def customer(self, i: int) -> Customer:
        """Customer ``i``, who keeps its connections to the vendor and the broker between purchases."""
        c = self._customers.get(i)
        if c is None:
            c = self._customers[i] = Customer(AsyncLocalCard(self.cards[i]), b"", self.roots, keep_links=True)
        return c

    async def forget_links(self) -> None:
        for c in self._customers.values():
            await c.close()
        self._customers.clear()

    async def key_and_load(self, i: int) -> None:
        card = AsyncLocalCard(self.cards[i])
        await install_key(card, self.broker_addr)
        await load(card, self.broker_addr, sm.Price("EUR", 10**10), f"C-{i}")

    async def buy(self, i: int, product: str, mode: str = "normal") -> Any:
        return await self.customer(i).buy(self.vendor_addr, self.broker_addr, [product], broker_cert=self.broker_cert,
                                          limit=LIMIT, mode=mode, vendor_cert=self.vendor_cert,
                                          price=PRICES.get(product))  # fmt: skip

    def close(self) -> None:
        for c in self.cards:
            c.close()
        for s in self.stores:
            s.close()


class ServiceProc:
    """``cardnet ARGS --listen 127.0.0.1:PORT`` (a SPEED broker or vendor; ``port`` 0: the OS picks one), ready once
    it prints its address."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardnet.cli.main", *args, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "CARDNET_PIN": PIN},
        )  # fmt: skip
        line = readline(self.proc, 30.0)
        if not line.startswith("ready"):
            stop_process(self.proc, kill=True)
            raise BenchError("no_start", f"`cardnet {' '.join(args)}` did not start: {line!r}")
        self.address = line.split()[-1]

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.asynccontextmanager
async def purchase_rig(net: Net, mode: str) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Vendor and broker in this process (over loopback TCP), customer 0 keyed, loaded and warm (certificates
    checked once, connections open): yields ``buy()``, one purchase of the small product in ``mode``."""
    vs = sv.VendorServer(sv.VendorCore(net.stores[1], clock=time.time))
    sam = LocalCard(net.sam_card, PIN)
    bs = sb_server.BrokerServer(sb.BrokerCore(net.stores[0], sam, clock=time.time))
    vh, vp = await vs.start()
    bh, bp = await bs.start()
    net.vendor_addr, net.broker_addr = f"{vh}:{vp}", f"{bh}:{bp}"
    try:
        await net.key_and_load(0)
        await net.buy(0, SMALL, mode)
        yield lambda: net.buy(0, SMALL, mode)
    finally:
        await net.forget_links()
        await vs.aclose()
        await bs.aclose()


def ops_per_purchase(net: Net, mode: str) -> dict[str, int]:
    """Count one purchase's operations: vendor and broker in this process (over loopback TCP), one customer."""

    async def go() -> dict[str, int]:
        async with purchase_rig(net, mode) as buy:
            with counting() as counts:
                await buy()
            return dict(counts)

    return asyncio.run(go())


def aes_gcm_mb_per_s(seconds: float) -> float:
    aead = profile.CounterAead(bytes(32))
    chunk = os.urandom(sm.CHUNK_BYTES)
    ctr = [0]

    def seal() -> int:
        ctr[0] += 1
        aead.seal(ctr[0], chunk)
        return 1

    return rate(seal, seconds) * sm.CHUNK_BYTES / 1e6


async def _concurrent(net: Net, customers: int, mode: str, seconds: float) -> float:
    """Complete purchases per second with ``customers`` buying back to back for about ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await net.buy(i, SMALL, mode)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(customers)))
    return done / (time.perf_counter() - t0)


async def _live(net: Net, seconds: float, idle: int, say: Progress) -> dict[str, Any]:
    say("starting the broker and vendor processes")
    net.sam_card.close()
    broker = ServiceProc("speed", "broker", "run", "--store", str(net.tmp / "broker.db"), "--sam-store",
                         str(net.tmp / "sam.db"))  # fmt: skip
    vendor = ServiceProc("speed", "vendor", "run", "--store", str(net.tmp / "vendor.db"))
    net.broker_addr, net.vendor_addr = broker.address, vendor.address
    try:
        say(f"keying and loading {len(net.cards)} purses")
        await asyncio.gather(*(net.key_and_load(i) for i in range(len(net.cards))))
        await net.buy(0, SMALL)  # warm
        say("one purchase at a time (idle)")
        latencies = []
        for _ in range(idle):
            t0 = time.perf_counter()
            await net.buy(0, SMALL)
            latencies.append((time.perf_counter() - t0) * 1000)
        out: dict[str, Any] = {"p50_ms": round(statistics.median(latencies), 2),
                               "p99_ms": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 2)}  # fmt: skip
        for mode in ("normal", "aggressive"):
            for n in (5, len(net.cards)):
                say(f"{n} customers buying at once, {mode} mode")
                out[f"purchases_per_s_{mode}_{n}"] = round(await _concurrent(net, n, mode, seconds), 1)
        delivery = {}
        for mb in SIZES_MB:
            say(f"a {mb} MB product")
            t0 = time.perf_counter()
            got = await net.buy(0, f"film-{mb} {mb} MB")
            took = time.perf_counter() - t0
            if len(got.contents[0]) != mb * 1_000_000:
                raise BenchError("failed", "the product did not arrive whole")
            delivery[f"{mb}MB"] = round(mb / took, 1)
        out["delivery_mb_per_s"] = delivery
        return out
    finally:
        await net.forget_links()
        broker.stop()
        vendor.stop()


def run(
    *, seconds: float = 3.0, customers: int = 64, idle: int = 30, progress: Progress | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="cardnet-bench-speed-") as d:
        tmp = Path(d)
        say(f"making the stores: a broker, a vendor, {customers} customer cards")
        (tmp / "count").mkdir()
        counted = Net(tmp / "count", 1)
        try:
            say("counting one purchase's operations (in process)")
            ops = ops_per_purchase(counted, "normal")
            ops_aggressive = ops_per_purchase(counted, "aggressive")
        finally:
            counted.close()
            counted.sam_card.close()
        say("timing those operations, AES-GCM and a durable commit on this disk")
        rates = op_rates(seconds / 6)
        aes = aes_gcm_mb_per_s(seconds / 6)
        commit_rate = sqlite_commit_rate(str(tmp), seconds / 4)
        (tmp / "net").mkdir()
        net = Net(tmp / "net", customers)
        try:
            live = asyncio.run(_live(net, seconds, idle, say))
        finally:
            net.close()
    cpus = os.cpu_count() or 1
    crypto_bound, serial_bound = bounds(ops, rates, commit_rate, cpus)
    best = max(live["purchases_per_s_normal_5"], live[f"purchases_per_s_normal_{customers}"])
    result: dict[str, Any] = {
        **live,
        "purchases_per_s": best,
        "crypto_bound_purchases_per_s": round(crypto_bound, 1),
        "serial_bound_purchases_per_s": round(serial_bound, 1),
        "purchases_vs_crypto_bound": round(best / crypto_bound, 3),
        "aes_gcm_mb_per_s": round(aes, 1),
        "paper_purchases_per_s": PAPER_PURCHASES_PER_S,
        "ops_per_purchase": {k: v for k, v in ops.items() if v},
        "ops_per_purchase_aggressive": {k: v for k, v in ops_aggressive.items() if v},
        "op_rates_per_s": {k: round(v) for k, v in rates.items()},
        "sqlite_commit_per_s": round(commit_rate),
        "customers": customers,
        "cpus": cpus,
    }
    slowest_delivery = min(live["delivery_mb_per_s"].values())
    result["targets"] = {
        "purchases_per_s >= 500": best >= 500,
        "purchases_per_s >= 0.4 x crypto_bound_purchases_per_s": best >= 0.4 * crypto_bound,
        "delivery_mb_per_s >= 0.5 x aes_gcm_mb_per_s": slowest_delivery >= 0.5 * aes,
    }
    return result
