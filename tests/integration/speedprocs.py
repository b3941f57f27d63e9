"""A SPEED network of real processes, set up with the `cardnet speed` commands alone: a CA, a broker (and its SAM
card), a vendor with a catalogue, and customers whose cards run on `cardnet host run` hosts.

Shared by the command-line walkthrough, the attack tests and the SIGKILL tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forkhost import CLI_MODULES, ForkedHost, Forker
from hostprocs import ForkedService, HostProc, Service, cardnet, free_port

from cardnet.protocols.speed import frames as fr
from cardnet.transport.framing import FrameDecoder

PIN = "2580"
SONG = "song-1 Blue in Green"
NEWS = "news-1 Today's paper"
KEY = "ppv-1 Match key"
CATALOGUE = (  # product, price, floor, file
    (SONG, "2.50 EUR", "2.00 EUR", "song.bin"),
    (NEWS, "0.80 EUR", None, "news.txt"),
    (KEY, "4.99 EUR", None, "key.bin"),
)
# what a forker imports for the SPEED commands and services (tests/integration/forkhost.py)
MODULES = (
    *CLI_MODULES,
    "cardnet.cli.speed",
    "cardnet.cli.speed_vendor",
    "cardnet.cli.speed_broker",
    "cardnet.cli.speed_purse",
    "cardnet.cli.speed_purchase",
    "cardnet.services.speed.broker",
    "cardnet.services.speed.broker_server",
    "cardnet.services.speed.vendor",
    "cardnet.services.speed.customer",
    "cardnet.applets.speed.purse",
    "cardnet.applets.speed.conductor",
    "cardnet.applets.speed.sam",
)


def run(*args: str, check: bool = True, forker: Forker | None = None) -> Any:
    """``cardnet ... --json`` with the PIN in the environment; the parsed JSON (or the error object). With a
    ``forker``, the command is a fork of it (tests/integration/forkhost.py), not a new Python process."""
    os.environ["CARDNET_PIN"] = PIN
    if forker is None:
        r = cardnet(*args, "--json", check=check)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        code, out, err = forker.run([*args, "--json"], dict(os.environ), os.getcwd(), 120.0)
        assert code == 0 or not check, f"cardnet {' '.join(args)} failed: {out}{err}"
    return json.loads(out) if out.strip() else {"stderr": err}


@dataclass
class Customer:
    name: str
    host: HostProc
    account: str

    def buy(self, net: SpeedNet, *products: str, limit: str = "10.00 EUR", aggressive: bool = False,
            account: bool = False, check: bool = True, broker: str | None = None,
            vendor: str | None = None) -> Any:  # fmt: skip
        args = ["speed", "buy", "--socket", self.host.socket, "--vendor", vendor or net.vendor.address, "--broker",
                broker or net.broker.address, "--broker-cert", str(net.tmp / "broker.pem"), "--ca-cert",
                str(net.tmp / "ca.pem"), "--limit", limit, "--out", str(net.tmp / f"{self.name}-bought")]  # fmt: skip
        for p in products:
            args += ["--product", p]
        if aggressive:
            args.append("--aggressive")
        if account:
            args += ["--account", self.account]
        return run(*args, check=check)

    def recover(self, net: SpeedNet, *extra: str, check: bool = True) -> Any:
        """``cardnet speed recover`` of the purchases :meth:`buy` left under way."""
        return run("speed", "recover", "--socket", self.host.socket, "--ca-cert", str(net.tmp / "ca.pem"), "--out",
                   str(net.tmp / f"{self.name}-bought"), *extra, check=check)  # fmt: skip

    def balance(self) -> dict[str, int]:
        return dict(run("speed", "purse", "balance", "--socket", self.host.socket)["balances"])


@dataclass
class SpeedNet:
    tmp: Path
    broker: Service
    vendor: Service
    customers: dict[str, Customer] = field(default_factory=dict)
    song: bytes = b""

    def accounts(self) -> dict[str, dict[str, int]]:
        return dict(run("speed", "broker", "accounts", "--store", str(self.tmp / "broker.db"))["accounts"])

    def stop(self) -> None:
        for c in self.customers.values():
            c.host.stop()
        self.broker.stop()
        self.vendor.stop()


def add_catalogue(tmp: Path, cmd: Any = run, *, again: bool = False) -> None:
    """Put :data:`CATALOGUE` into the vendor's store (``again``: each entry signed anew, with the vendor's
    certificate as it is now, in place of the one there: ``--replace``)."""
    for product, price, floor, path in CATALOGUE:
        extra = (["--floor", floor] if floor else []) + (["--replace"] if again else [])
        cmd("speed", "vendor", "add", "--store", f"{tmp}/vendor.db", "--product", product, "--price", price,
            "--file", f"{tmp}/{path}", *extra)  # fmt: skip


def build(tmp: Path, customers: tuple[str, ...] = ("alice",), *, song_bytes: int = 300_000, load: str = "20.00 EUR",
          deposit: str = "100.00 EUR", forker: Forker | None = None,
          vendor_args: tuple[str, ...] = ()) -> SpeedNet:  # fmt: skip
    """The network, every process started. With a ``forker`` (tests/integration/forkhost.py, with :data:`MODULES`)
    for the tests that restart the processes a hundred times: the set-up's commands are forks of it, and the
    broker, the vendor and the customers' hosts start as new processes and restart as forks of it but for every
    tenth start (:class:`~hostprocs.ForkedService`, :class:`~forkhost.ForkedHost`)."""
    t = str(tmp)

    def cmd(*args: str) -> Any:
        return run(*args, forker=forker)

    def service(*args: str) -> Service:
        return Service(tmp, *args) if forker is None else ForkedService(tmp, *args, forker=forker)

    if not (tmp / "ca.file").exists():  # (a test may bring its own: expiring.backdated_ca)
        cmd("ca", "create", f"{t}/ca.file")
    (tmp / "ca.pem").write_text(cmd("ca", "cert", f"{t}/ca.file")["pem"])
    cmd("speed", "broker", "init", "--store", f"{t}/broker.db", "--ca", f"{t}/ca.file", "--sam-store", f"{t}/sam.db")
    (tmp / "broker.pem").write_text(cmd("speed", "broker", "cert", "--store", f"{t}/broker.db")["pem"])
    cmd("speed", "vendor", "init", "--store", f"{t}/vendor.db", "--ca", f"{t}/ca.file", "--account", "V-1",
        "--broker-cert", f"{t}/broker.pem")  # fmt: skip
    (tmp / "vendor.pem").write_text(cmd("speed", "vendor", "cert", "--store", f"{t}/vendor.db")["pem"])
    song = os.urandom(song_bytes)
    (tmp / "song.bin").write_bytes(song)
    (tmp / "news.txt").write_text("the news of the day\n" * 20)
    (tmp / "key.bin").write_bytes(os.urandom(16))
    add_catalogue(tmp, cmd)
    cmd("speed", "broker", "add-vendor", "--store", f"{t}/broker.db", "--account", "V-1", "--vendor-cert",
        f"{t}/vendor.pem")  # fmt: skip
    broker = service("speed", "broker", "run", "--store", f"{t}/broker.db", "--sam-store", f"{t}/sam.db",
                     "--listen", f"127.0.0.1:{free_port()}")  # fmt: skip  # a fixed port: it restarts there
    vendor = service("speed", "vendor", "run", "--store", f"{t}/vendor.db", "--listen", f"127.0.0.1:{free_port()}",
                     *vendor_args)  # fmt: skip
    broker.start()
    vendor.start()
    net = SpeedNet(tmp, broker, vendor, song=song)
    for i, name in enumerate(customers):
        made = cmd("card", "create", "--ca", f"{t}/ca.file", "--store", f"sqlite:///{t}/{name}.card.db")
        host = HostProc(name, tmp, free_port(), bytes.fromhex(made["domain"]))
        if forker is not None:
            host = ForkedHost.of(host, forker)
        host.config.write_text(
            f'name = "{name}"\nlisten = "127.0.0.1:{host.port}"\napp_socket = "{name}.sock"\n\n'
            f'[[cards]]\nstore = "sqlite:///{name}.card.db"\napplets = ["purse", "speed"]\n'
        )
        host.start()
        account = f"C-{i + 1}"
        cmd("speed", "broker", "add-customer", "--store", f"{t}/broker.db", "--account", account, "--card",
            made["domain"], "--deposit", deposit)  # fmt: skip
        cmd("speed", "purse", "key", "--socket", host.socket, "--broker", broker.address)
        cmd("speed", "purse", "load", "--socket", host.socket, "--broker", broker.address, "--amount", load,
            "--account", account)  # fmt: skip
        net.customers[name] = Customer(name, host, account)
    return net


@contextlib.asynccontextmanager
async def relay_that_loses_s3(broker: str) -> Any:
    """A TCP relay to ``broker`` that passes every frame but the purse's S3 (``speed.purse_msg``): on it, both
    connections are closed, as when the buyer's program stops after the broker's go-ahead (its S2)."""
    host, port = broker.rsplit(":", 1)
    lost: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))

        async def down() -> None:
            while data := await up_r.read(1 << 16):
                writer.write(data)
                await writer.drain()

        back = asyncio.create_task(down())
        decoder = FrameDecoder()
        try:
            while data := await reader.read(1 << 16):
                for msg in decoder.feed(data):
                    if msg.mtype == fr.PURSE.code:
                        lost.append(fr.PURSE.parse(msg)["poid"])
                        return
                up_w.write(data)  # (a frame's bytes go on whole: the program sends one request at a time)
                await up_w.drain()
        finally:
            back.cancel()
            for w in (writer, up_w):
                w.close()

    port_here = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port_here)
    try:
        yield f"127.0.0.1:{port_here}", lost
    finally:
        server.close()


def buy_losing_s3(net: SpeedNet, customer: Customer, product: str) -> bytes:
    """``customer`` buys ``product`` (aggressive mode) through :func:`relay_that_loses_s3`: the purse debits on the
    broker's S2 and the program stops before the broker has the S3 (``unreachable``); the PaymentOrderID."""

    async def pay() -> tuple[Any, list[bytes]]:
        async with relay_that_loses_s3(net.broker.address) as (relay, lost):
            got = await asyncio.to_thread(customer.buy, net, product, aggressive=True, broker=relay, check=False)
        return got, lost

    stopped, lost = asyncio.run(pay())
    assert len(lost) == 1 and stopped["error"]["reason"] == "unreachable", stopped
    return lost[0]
