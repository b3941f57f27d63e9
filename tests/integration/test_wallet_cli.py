"""``cardnet wallet`` for people, through its real entry point (``cardnet.cli.main.run``, in this process, and one
``cardnet`` process) against real host processes and real cards.

One network for the module: the authority's host (authority, agent, TTP: :class:`~cardnet.bench.trnnet.TrnNet`),
a SPEED broker and vendor (processes, set up with ``cardnet speed``), and three people whose cards, host configs and
wallet configs are made by ``cardnet wallet init`` and run by ``cardnet host run``. Alice's host neither resends nor
ticks by itself (``resend_after_s = 0``, ``ticks = {}``), so an interrupted transfer of hers is finished by
``cardnet wallet recover`` or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostprocs import Service, cardnet, free_port

from cardnet.applets.trn import MINT, SEND
from cardnet.bench.procs import HostProc
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli.main import run
from cardnet.host import mtypes as hm
from cardnet.transport.framing import encode_frame
from cardnet.wire import Uid

SONG = "song-1 Blue in Green"
WAIT_S = 30.0


def call(*args: object) -> tuple[int, str, str]:
    """``cardnet ARGS`` through its entry point, in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run([str(a) for a in args])
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def ok(*args: object) -> Any:
    code, out, err = call(*args, "--json")
    assert code == 0, (out, err)
    return json.loads(out)


def refused(*args: object) -> dict[str, Any]:
    code, out, _ = call(*args, "--json")
    assert code != 0, out
    obj = json.loads(out)
    assert set(obj) == {"error"} and obj["error"]["message"] and obj["error"]["hint"], obj
    error: dict[str, Any] = obj["error"]
    return error


def human(*args: object) -> str:
    code, out, err = call(*args)
    assert code == 0, (out, err)
    return out


@dataclass
class Person:
    name: str
    config: Path
    host: HostProc
    uid: Uid

    def cmd(self, *args: object) -> tuple[object, ...]:
        """``wallet ARGS --config`` this person's wallet config."""
        return ("wallet", *args, "--config", self.config)

    def tickets(self) -> dict[str, str]:
        return {t["oid"]: t["status"] for t in ok(*self.cmd("list"))["tickets"]}

    def until(self, oid: str, status: str | None) -> None:
        deadline = time.monotonic() + WAIT_S
        while (now := self.tickets().get(oid)) != status:
            assert time.monotonic() < deadline, (self.name, oid, now, status)
            time.sleep(0.1)


@dataclass
class World:
    tmp: Path
    net: TrnNet
    people: dict[str, Person]
    broker: Service
    vendor: Service
    song: bytes

    def issue(self, oid: str, to: str, body: str) -> None:
        """The agent mints a ticket and sends it to ``to``'s card; back once it is usable there."""

        async def go() -> None:
            assert (await self.net.ask("agent", MINT, oid=bytes.fromhex(oid), body=body.encode()))["ok"]
            assert (await self.net.ask("agent", SEND, oid=bytes.fromhex(oid), to=self.people[to].uid))["ok"]

        asyncio.run(go())
        self.people[to].until(oid, "enabled")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("wallet")
    saved_pin = os.environ.get("CARDNET_PIN")
    os.environ["CARDNET_PIN"] = PIN
    net = TrnNet(tmp, wallets=(), ttp=True)
    auth = net.hosts["auth"]
    service_routes = [f"{net.uids[c].domain.hex()}=127.0.0.1:{auth.port}" for c in ("authority", "agent", "ttp")]
    people: dict[str, Person] = {}
    for name in ("alice", "bob", "carol"):
        port, config = free_port(), tmp / name / "wallet.toml"
        made = ok("wallet", "init", "--config", config, "--ca", tmp / "ca.cnca", "--name", name, "--authority",
                  net.uids["authority"], "--ttp", net.uids["ttp"], "--listen", f"127.0.0.1:{port}",
                  *(x for r in service_routes for x in ("--route", r)))  # fmt: skip
        people[name] = Person(name, config, HostProc("host", tmp / name, port, bytes.fromhex(made["domain"])),
                              Uid.parse(made["uid"]))  # fmt: skip
    for p in people.values():  # every host reaches the others' cards
        routes = [f'"{o.uid.domain.hex()}" = "127.0.0.1:{o.host.port}"\n' for o in people.values() if o is not p]
        p.host.config.write_text(p.host.config.read_text() + "".join(routes))
        auth.config.write_text(auth.config.read_text() + f'"{p.uid.domain.hex()}" = "127.0.0.1:{p.host.port}"\n')
    alice = people["alice"].host.config
    alice.write_text("resend_after_s = 0.0\n" + alice.read_text().replace("\n[[cards]]\n", "\n[[cards]]\nticks = {}\n"))
    # SPEED: a broker (with its SAM) and a vendor under the same CA, with ``cardnet speed``
    t = str(tmp)
    ok("speed", "broker", "init", "--store", f"{t}/broker.db", "--ca", f"{t}/ca.cnca", "--sam-store", f"{t}/sam.db")
    (tmp / "broker.pem").write_text(ok("speed", "broker", "cert", "--store", f"{t}/broker.db")["pem"])
    (tmp / "ca.pem").write_text(ok("ca", "cert", f"{t}/ca.cnca")["pem"])
    ok("speed", "vendor", "init", "--store", f"{t}/vendor.db", "--ca", f"{t}/ca.cnca", "--account", "V-1",
       "--broker-cert", f"{t}/broker.pem")  # fmt: skip
    (tmp / "vendor.pem").write_text(ok("speed", "vendor", "cert", "--store", f"{t}/vendor.db")["pem"])
    song = os.urandom(50_000)
    (tmp / "song.bin").write_bytes(song)
    ok("speed", "vendor", "add", "--store", f"{t}/vendor.db", "--product", SONG, "--price", "2.50 EUR", "--floor",
       "2.00 EUR", "--file", f"{t}/song.bin")  # fmt: skip
    ok("speed", "broker", "add-vendor", "--store", f"{t}/broker.db", "--account", "V-1", "--vendor-cert",
       f"{t}/vendor.pem")  # fmt: skip
    broker_at = f"127.0.0.1:{free_port()}"
    for i, p in enumerate(people.values()):
        ok("speed", "broker", "add-customer", "--store", f"{t}/broker.db", "--account", f"C-{i}", "--card",
           p.uid.domain.hex(), "--deposit", "100.00 EUR")  # fmt: skip
        ok(*p.cmd("config", "--set", f"broker={broker_at}", "--set", f"broker_cert={t}/broker.pem", "--set",
                  f"ca_cert={t}/ca.pem", "--set", f"account=C-{i}"))  # fmt: skip
    broker = Service(tmp, "speed", "broker", "run", "--store", f"{t}/broker.db", "--sam-store", f"{t}/sam.db",
                     "--pin", PIN, "--listen", broker_at)  # fmt: skip
    vendor = Service(tmp, "speed", "vendor", "run", "--store", f"{t}/vendor.db", "--listen", f"127.0.0.1:{free_port()}")
    hosts = [auth, *(p.host for p in people.values())]
    try:
        with ThreadPoolExecutor(len(hosts) + 2) as pool:
            list(pool.map(lambda start: start(), [*(h.start for h in hosts), broker.start, vendor.start]))
        asyncio.run(net.setup_trace())
        yield World(tmp, net, people, broker, vendor, song)
    finally:
        for h in hosts:
            h.stop()
        broker.stop()
        vendor.stop()
        if saved_pin is None:
            os.environ.pop("CARDNET_PIN", None)
        else:
            os.environ["CARDNET_PIN"] = saved_pin


def test_a_new_wallet_is_made_by_init_and_says_what_it_holds(world: World) -> None:
    carol = world.people["carol"]
    assert "no tickets or vouchers on this card" in human(*carol.cmd("list"))
    shown = ok(*carol.cmd("show"))
    assert shown["card"] == str(carol.uid) and shown["tickets"] == [] and shown["exchanges"] == []
    assert shown["purse"] == {"balances": {}, "keyed": False} and shown["purchases_pending"] == []
    text = human(*carol.cmd("show"))
    for words in ("no exchanges under way", "nothing is under way", str(carol.uid), "no Millicent scrip wallet yet"):
        assert words in text, text
    config = ok(*carol.cmd("config"))["values"]
    assert config["card"] == carol.uid.domain.hex() and config["socket"] == carol.host.socket
    kept = carol.config.read_text()
    assert PIN not in kept and "pin =" not in kept and oct(carol.config.stat().st_mode & 0o777) == "0o600", kept
    # --socket and --card win over the config: the agent's card (no e-purse) on the authority's host
    agent = ("wallet", "show", "--config", world.tmp / "none.toml", "--socket", world.net.hosts["auth"].socket,
             "--card", world.net.uids["agent"].domain.hex())  # fmt: skip
    assert ok(*agent)["card"] == str(world.net.uids["agent"]) and ok(*agent)["purse"] is None
    assert "this card has no e-purse" in human(*agent)
    # a second init over the same wallet is refused and changes nothing
    again = refused("wallet", "init", "--config", carol.config, "--ca", world.tmp / "ca.cnca")
    assert again["reason"] == "already_exists" and str(carol.config) in again["message"], again


def test_a_ticket_goes_from_one_wallet_to_another(world: World) -> None:
    alice, bob = world.people["alice"], world.people["bob"]
    oid = "5e1d000000000000000000000000000a"
    world.issue(oid, "alice", "Final, block [B] seat 7")
    listed = human(*alice.cmd("list"))
    assert oid in listed and "Final, block [B] seat 7" in listed and "yours: usable and movable" in listed, listed
    sent = ok(*alice.cmd("send", oid, "--to", bob.uid))
    assert sent["delivered"] and sent["to"] == str(bob.uid), sent
    assert oid not in alice.tickets()
    bob.until(oid, "enabled")
    one = ok(*bob.cmd("show", oid))["ticket"]
    assert one["body"] == "Final, block [B] seat 7" and one["status"] == "enabled", one
    # sending it again from alice: said in her words, nothing moves
    gone = refused(*alice.cmd("send", oid, "--to", bob.uid))
    assert gone["reason"] == "not_held" and gone["message"] == f"this card does not hold ticket {oid}", gone
    assert "cardnet wallet list" in gone["hint"]
    missing = refused(*alice.cmd("show", oid))
    assert missing["reason"] == "not_found", missing
    assert "32 hex digits" in refused(*alice.cmd("send", "1234", "--to", bob.uid))["message"]


def test_enter_says_what_is_wrong_before_the_ticket_moves(world: World) -> None:
    """`cardnet wallet enter` (the gate itself: docs/walkthrough-ticketing.md and its test) refuses a ticket this
    card does not hold and a gate its host cannot reach, in words, and the ticket stays usable."""
    alice = world.people["alice"]
    oid, gate = "9a7e000000000000000000000000000a", "9a7e009a7e009a7e009a7e00:00000000"
    world.issue(oid, "alice", "Final, seat 9")
    gone = refused(*alice.cmd("enter", "9a7e000000000000000000000000000b", "--gate", gate))
    assert gone["reason"] == "not_held" and "cardnet wallet list" in gone["hint"], gone
    nowhere = refused(*alice.cmd("enter", oid, "--gate", gate))
    assert nowhere["reason"] == "no_route" and "9a7e009a7e009a7e009a7e00" in nowhere["hint"], nowhere
    assert nowhere["hint"].startswith("check the gate's Uid"), nowhere  # (a typo is likelier than a missing route)
    assert alice.tickets()[oid] == "enabled"


def test_an_exchange_offered_and_accepted(world: World) -> None:
    alice, bob = world.people["alice"], world.people["bob"]
    ticket, coffee = "e0c1000000000000000000000000000a", "e0c1000000000000000000000000000b"
    world.issue(ticket, "alice", "Final, seat 9")
    world.issue(coffee, "bob", "one coffee")
    offered = ok(*alice.cmd("exchange", "offer", "--give", ticket, "--want", coffee, "--to", bob.uid))
    assert offered["phase"] == "offered" and offered["role"] == "initiator", offered
    xid = offered["id"]
    deadline = time.monotonic() + WAIT_S
    while not any(x["id"] == xid and x["phase"] == "proposed" for x in ok(*bob.cmd("show"))["exchanges"]):
        assert time.monotonic() < deadline, "bob never saw the offer"
        time.sleep(0.1)
    text = human(*bob.cmd("show"))
    assert xid in text and "offered to you: accept or reject it" in text, text
    listed = human(*bob.cmd("exchange", "list"))  # what is offered, in the voucher's words; who made it, in words
    assert "Final, seat 9" in listed and "offered" in listed and "made to you" in listed, listed
    assert "responder" not in listed, listed
    assert_wallet_exchange_speaks_to_the_owner(alice, bob, xid)
    done = ok(*bob.cmd("exchange", "accept", xid, "--wait", WAIT_S))
    assert done["phase"] == "done", done
    bob.until(ticket, "enabled")
    alice.until(coffee, "enabled")
    assert ticket not in alice.tickets() and coffee not in bob.tickets()
    status = human(*alice.cmd("exchange", "status", xid))
    assert "swapped: you have the other voucher" in status, status
    assert f"An exchange you offered to {bob.uid}." in status and "initiator" not in status, status
    # an answered offer accepted again: what happened, and where to look, in cardnet exchange's words
    again = refused(*bob.cmd("exchange", "accept", xid))
    assert again["reason"] == "refused", again
    assert again["message"] == "there is nothing left to accept: this exchange ended in the swap, you have the " \
        "other voucher", again  # fmt: skip
    assert again["hint"] == f"`cardnet wallet exchange status {xid}` shows how it ended, `cardnet wallet list` what " \
        "this card holds now", again  # fmt: skip
    code, _, err = call(*bob.cmd("exchange", "accept", xid))
    assert code != 0 and "error: there is nothing left to accept" in err and "the card refused" not in err, err


def assert_wallet_exchange_speaks_to_the_owner(alice: Person, bob: Person, xid: str) -> None:
    """Alice's offer waits for bob's answer: `cardnet wallet exchange` says what `cardnet exchange` says (who made
    it, what to do next, why an order does not apply), with the wallet's own commands in it; --json keeps the
    card's reason and the protocol's role and phase."""
    mine = human(*alice.cmd("exchange", "status", xid))
    assert f"An exchange you offered to {bob.uid}." in mine, mine
    assert f"next: the other owner accepts or rejects it (`cardnet wallet exchange status {xid}` shows which); " \
        f"until then `cardnet wallet exchange give-up {xid}` takes your voucher back" in mine, mine  # fmt: skip
    theirs = ok(*bob.cmd("exchange", "status", xid))
    assert (theirs["role"], theirs["phase"]) == ("responder", "proposed"), theirs  # (JSON: the card's names)
    cases = (  # (who, order, what it says, what to do)
        (alice, "accept", "this is your own offer: only the other owner accepts or rejects it",
         f"`cardnet wallet exchange give-up {xid}` takes your voucher back"),
        (bob, "give-up", "this offer was made to you: only the owner who made it gives it up",
         f"`cardnet wallet exchange accept {xid}` swaps, `cardnet wallet exchange reject {xid}` declines"),
    )  # fmt: skip
    for who, order, says, todo in cases:
        err = refused(*who.cmd("exchange", order, xid))
        assert err["reason"] == "refused" and err["message"].startswith(says) and todo in err["hint"], err
        code, _, words = call(*who.cmd("exchange", order, xid))
        assert code != 0 and f"error: {says}" in words and "the card refused" not in words, words
        assert "(proposed)" not in words and "(offered)" not in words, words
    own = refused(*alice.cmd("exchange", "offer", "--give", "e0c1000000000000000000000000000c", "--want",
                             "e0c1000000000000000000000000000d", "--to", alice.uid))  # fmt: skip
    assert own["reason"] == "own_card" and "--to names this very card" in own["message"], own


def test_the_purse_is_loaded_and_a_speed_purchase_paid_from_it(world: World) -> None:
    carol = world.people["carol"]
    loaded = ok(*carol.cmd("load", "--amount", "20.00 EUR"))
    assert loaded["balances"] == {"EUR": 2000} and loaded["keyed"], loaded
    bought = ok(*carol.cmd("pay", "speed", "--vendor", world.vendor.address, "--product", SONG, "--limit", "2.20 EUR"))
    assert bought["price"] == "2.20 EUR", bought
    assert Path(bought["files"][0]).read_bytes() == world.song
    assert Path(bought["files"][0]).parent == carol.config.parent / "purchases"
    assert ok(*carol.cmd("show"))["purse"]["balances"] == {"EUR": 2000 - 220}
    accounts = ok("speed", "broker", "accounts", "--store", world.tmp / "broker.db")["accounts"]
    assert accounts["V-1"] == {"EUR": 220} and accounts["C-2"] == {"EUR": 10_000 - 2000}, accounts
    poor = refused(*carol.cmd("pay", "speed", "--vendor", world.vendor.address, "--product", SONG, "--limit",
                              "1.00 EUR"))  # fmt: skip
    assert poor["reason"] == "no_agreement" and "limit" in poor["hint"], poor
    # the same as a person sees it, from a `cardnet` process
    r = cardnet("wallet", "show", "--config", str(carol.config))
    assert "17.80 EUR" in r.stdout and "Traceback" not in r.stderr, r


NOBODY = Uid(bytes(12), 0)  # src and dst of host.taken (host to host: no card's)


class BlackHole:
    """A listener on a host's port that takes every frame sent to it, confirms it as a host does (``host.taken``,
    its number on the connection) and does nothing with it: a host that said it took the messages and lost them
    (its disk, or a bug): nothing the sender's host can see or resend, only the protocols' own recovery."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.05)
        self.frames = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conns: list[socket.socket] = []
        buffers: dict[socket.socket, bytes] = {}
        numbers: dict[socket.socket, int] = {}  # frames taken on each connection
        while not self.stopped.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.server.accept()
                conn.setblocking(False)
                conns.append(conn)
                buffers[conn] = b""
            for conn in conns:
                with contextlib.suppress(BlockingIOError):
                    buffers[conn] += conn.recv(1 << 16)
                buf = buffers[conn]
                first = numbers.get(conn, 0)
                n = first
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    buf = buf[4 + int.from_bytes(buf[:4], "big") :]
                    n += 1
                buffers[conn] = buf
                if n > first:  # confirmed: taken, as far as the sender's host can tell
                    numbers[conn] = n
                    with contextlib.suppress(OSError):
                        conn.sendall(encode_frame(hm.TAKEN.make(NOBODY, NOBODY, runs=[first, n - first])))
                    self.frames += n - first
        for conn in conns:
            conn.close()
        self.server.close()

    def swallowed(self, more_than: int) -> int:
        """Wait until more than ``more_than`` frames were swallowed; how many."""
        deadline = time.monotonic() + WAIT_S
        while self.frames <= more_than:
            assert time.monotonic() < deadline, "nothing reached the black hole"
            time.sleep(0.02)
        time.sleep(0.2)  # (and whatever came with them)
        return self.frames

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


def test_recover_pays_a_purchase_and_credits_a_load_the_broker_missed(world: World) -> None:
    bob = world.people["bob"]
    assert ok(*bob.cmd("load", "--amount", "10.00 EUR"))["balances"] == {"EUR": 1000}
    world.broker.stop()
    try:
        lost_load = refused(*bob.cmd("load", "--amount", "5.00 EUR"))
        assert lost_load["reason"] == "unreachable" and "cardnet wallet recover" in lost_load["hint"], lost_load
        unpaid = refused(*bob.cmd("pay", "speed", "--vendor", world.vendor.address, "--product", SONG, "--limit",
                                  "3.00 EUR", "--aggressive"))  # fmt: skip
        assert unpaid["reason"] == "unreachable" and "cardnet wallet recover" in unpaid["hint"], unpaid
        shown = ok(*bob.cmd("show"))
        assert shown["loads_pending"] == 1 and len(shown["purchases_pending"]) == 1, shown
        assert shown["purse"]["balances"] == {"EUR": 1000}  # nothing paid, nothing credited yet
        text = human(*bob.cmd("show"))
        assert "e-purse load" in text and "delivered, not yet paid" in text, text
    finally:
        world.broker.start()
    done = ok(*bob.cmd("recover"))
    assert done["unfinished"] == 0 and [r["what"] for r in done["recovered"]] == ["e-purse load", "purchase"], done
    assert done["recovered"][1]["outcome"].startswith("finished: paid 2.50 EUR"), done
    assert ok(*bob.cmd("show"))["purse"]["balances"] == {"EUR": 1000 + 500 - 250}
    [song] = [p for p in (bob.config.parent / "purchases").iterdir() if p.suffix == ".bin"]
    assert song.read_bytes() == world.song
    assert "nothing was left to finish" in human(*bob.cmd("recover"))


def test_recover_finishes_a_transfer_whose_messages_were_lost(world: World) -> None:
    """Bob's host is down and what alice's host sends him is lost on the way. Nothing resends it by itself (alice's
    host has no ticks and resends nothing it handed over); `cardnet wallet recover` finishes the transfer."""
    alice, bob = world.people["alice"], world.people["bob"]
    oid = "7ec0000000000000000000000000000a"
    world.issue(oid, "alice", "Opera, row 3")
    bob.host.kill()
    hole = BlackHole(bob.host.port)
    try:
        sent = ok(*alice.cmd("send", oid, "--to", bob.uid, "--wait", "0"))
        assert not sent["delivered"] and sent["status"] == "disabled+O", sent
        lost = hole.swallowed(0)
        pending = human(*alice.cmd("show"))
        assert oid in pending and "cardnet wallet recover" in pending, pending
        stuck = ok(*alice.cmd("recover", "--wait", "0.3"))
        assert stuck["unfinished"] == 1 and stuck["recovered"][0]["id"] == oid, stuck
        # which party it waits for, and where alice's host sends to it (before: "once the other side is reachable")
        waits = f": waiting for the other card {bob.uid} (your host sends to it at 127.0.0.1:{bob.host.port}"
        assert waits in stuck["recovered"][0]["outcome"], stuck
        said = " ".join(human(*alice.cmd("recover", "--wait", "0.3")).split())
        assert str(bob.uid) in said and "once the party each waits for (named above) is reachable" in said, said
        hole.swallowed(lost)
    finally:
        hole.close()
        bob.host.restart()
    time.sleep(1.0)
    assert alice.tickets()[oid] == "disabled+O"  # nothing finished it by itself
    done = ok(*alice.cmd("recover", "--wait", WAIT_S))
    assert done["unfinished"] == 0, done
    assert done["recovered"] == [{"what": "transfer", "id": oid, "before": "disabled+O",
                                  "outcome": "finished: it left this card", "finished": True}]  # fmt: skip
    bob.until(oid, "enabled")
    assert "nothing was left to finish" in human(*alice.cmd("recover"))


def test_recover_puts_an_exchange_cut_off_half_way_to_the_ttp(world: World) -> None:
    """Bob accepts alice's offer while everything sent to alice is lost: bob's voucher is locked (agreed) and no
    confirmation can come. `cardnet wallet recover` asks the TTP, which aborts: bob's voucher is his again; alice,
    back, gives her offer up and has hers."""
    alice, bob = world.people["alice"], world.people["bob"]
    mine, theirs = "ab0e000000000000000000000000000a", "ab0e000000000000000000000000000b"
    world.issue(mine, "alice", "Concert, row 1")
    world.issue(theirs, "bob", "two coffees")
    xid = ok(*alice.cmd("exchange", "offer", "--give", mine, "--want", theirs, "--to", bob.uid))["id"]
    deadline = time.monotonic() + WAIT_S
    while True:  # (until the offer reached bob's card, it has no such exchange)
        code, out, _ = call(*bob.cmd("exchange", "status", xid), "--json")
        answer = json.loads(out)
        if code == 0 and answer["phase"] == "proposed":
            break
        assert code == 0 or answer["error"]["reason"] == "no_exchange", answer
        assert time.monotonic() < deadline, "bob never saw the offer"
        time.sleep(0.1)
    alice.host.kill()
    hole = BlackHole(alice.host.port)
    try:
        agreed = ok(*bob.cmd("exchange", "accept", xid, "--wait", "0"))
        assert agreed["phase"] == "agreed", agreed
        hole.swallowed(0)
        settled = ok(*bob.cmd("recover", "--ttp-after", "0.5", "--wait", WAIT_S))
        assert settled["unfinished"] == 0, settled
        [row] = settled["recovered"]
        assert row["what"] == "exchange" and row["id"] == xid and row["before"] == "agreed", row
        assert row["outcome"] == "finished: ended without a swap: your voucher is yours again (settled by the TTP)"
        assert bob.tickets()[theirs] == "enabled"
    finally:
        hole.close()
        alice.host.restart()
    back = ok(*alice.cmd("exchange", "give-up", xid, "--wait", WAIT_S))
    assert back["phase"] in ("gave_up", "aborted"), back
    alice.until(mine, "enabled")
    assert theirs not in alice.tickets() and mine not in bob.tickets()


def test_scrip_pays_a_millicent_vendor_and_shows_in_the_wallet(world: World, tmp_path: Path) -> None:
    carol, vid = world.people["carol"], "00000000000000a1"
    v, b = tmp_path / "vendor.db", tmp_path / "broker.db"
    ok("millicent", "vendor", "init", "--store", v, "--id", vid)
    ok("millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hello, world")
    ok("millicent", "vendor", "licence", "--store", v, "--broker", "mb", "--out", tmp_path / "lic.json")
    ok("millicent", "broker", "add-licence", "--store", b, "--file", tmp_path / "lic.json")
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", str(b), "--listen", "127.0.0.1:0")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", str(v), "--listen", "127.0.0.1:0")
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Service.start, (broker, vendor)))
        none = refused(*carol.cmd("pay", "millicent", "--vendor", vid, "--at", vendor.address, "--product", "hello",
                                  "--price", "3"))  # fmt: skip
        assert none["reason"] == "no_scrip_wallet" and "cardnet millicent open" in none["hint"], none
        scrip_store = ok(*carol.cmd("config"))["values"]["millicent"]
        cid = ok("millicent", "open", "--wallet", scrip_store, "--broker", broker.address)["customer_id"]
        ok("millicent", "broker", "deposit", "--store", b, "--customer", cid, "--amount", "100")
        paid = ok(*carol.cmd("pay", "millicent", "--vendor", vid, "--at", vendor.address, "--product", "hello",
                             "--price", "3"))  # fmt: skip
        assert paid["content"] == "hello, world" and paid["status"] == "ok", paid
        held = ok(*carol.cmd("show"))["scrip"]
        assert [s["vendor"] for s in held] == [vid] and sum(s["value"] for s in held) == paid["change"], held
        assert "Millicent scrip" in human(*carol.cmd("show"))
    finally:
        broker.stop()
        vendor.stop()


def test_a_wallet_without_config_or_with_a_pin_in_it_says_what_to_do(tmp_path: Path) -> None:
    nowhere = refused("wallet", "list", "--config", tmp_path / "none.toml")
    assert nowhere["reason"] == "no_wallet" and "cardnet wallet init" in nowhere["hint"], nowhere
    (tmp_path / "pin.toml").write_text('socket = "host.sock"\npin = "1357"\n')
    pin = refused("wallet", "list", "--config", tmp_path / "pin.toml")
    assert pin["reason"] == "pin_in_config" and "remove the pin line" in pin["hint"], pin
    (tmp_path / "odd.toml").write_text('sockt = "host.sock"\n')
    assert refused("wallet", "show", "--config", tmp_path / "odd.toml")["reason"] == "bad_config"
    no_broker = refused("wallet", "load", "--amount", "1.00 EUR", "--config", tmp_path / "none.toml",
                        "--socket", tmp_path / "x.sock")  # fmt: skip
    assert no_broker["reason"] == "not_configured" and "broker=" in no_broker["hint"], no_broker
    # a value missing from a wallet config given with --config: the hint's command keeps it in that config (before:
    # `cardnet wallet config --set broker=VALUE`, which writes the default config, not the one the command read)
    mine = tmp_path / "mine" / "wallet.toml"
    mine.parent.mkdir()
    mine.write_text(f'socket = "{tmp_path / "x.sock"}"\n')
    load = ("wallet", "load", "--amount", "1.00 EUR", "--config", mine)
    e = refused(*load)
    [keep] = re.findall(r"`(cardnet wallet config [^`]*)`", e["hint"])
    assert keep == f"cardnet wallet config --config {mine} --set broker=HOST:PORT", e
    ok(*shlex.split(keep.replace("HOST:PORT", "127.0.0.1:7400"))[1:])
    e = refused(*load)  # the broker is kept there now: the next thing missing is asked for
    assert "no account at the broker" in e["message"] and f"--config {mine} --set account=ACCOUNT" in e["hint"], e
    ok("ca", "create", tmp_path / "ca.cnca")
    for bad in (("--route", "0123=127.0.0.1:7100"), ("--listen", 'x" = 1')):
        usage = refused("wallet", "init", "--config", tmp_path / "w" / "wallet.toml", "--ca", tmp_path / "ca.cnca",
                        "--pin", "1234", *bad)  # fmt: skip
        assert usage["reason"] == "usage" and bad[0] in usage["message"], usage
    assert not (tmp_path / "w").exists()  # nothing was made


def test_a_purse_full_of_payments_under_way_says_in_wallet_words_what_finishes_them(world: World) -> None:
    """Sixteen `wallet pay speed` whose payments never reached the broker (a wrong --broker) fill carol's purse's
    debits under way: the 17th is refused `debits_pending`, and the advice names `cardnet wallet recover` (this
    wallet's command, not `cardnet speed recover --out DIR`) and `cardnet speed purse end-debits`; after those the
    purse pays again."""
    carol = world.people["carol"]
    assert ok(*carol.cmd("load", "--amount", "20.00 EUR"))["balances"]["EUR"] >= 2000
    wrong = f"127.0.0.1:{free_port()}"
    pay = (*carol.cmd("pay", "speed", "--vendor", world.vendor.address, "--product", SONG, "--limit", "3.00 EUR",
                      "--aggressive"),)  # fmt: skip
    for _ in range(16):
        assert refused(*pay, "--broker", wrong)["reason"] == "unreachable"
    full = refused(*pay)
    assert full["reason"] == "debits_pending", full
    assert "cardnet wallet recover" in full["hint"] and "cardnet speed purse end-debits" in full["hint"], full
    assert "--out DIR" not in full["hint"], full
    broker = str(world.broker.address)
    ended = ok("speed", "purse", "end-debits", "--socket", carol.host.socket, "--broker", broker)
    assert len(ended["ended"]) == 16 and ended["authorised"] == 0, ended
    ok(*carol.cmd("recover"))  # drops the 16 purchases whose debits ended (nothing was paid for them)
    assert ok(*pay)["price"] == "2.50 EUR"


def test_who_could_not_be_reached_is_named_with_its_address_and_what_to_do(world: World) -> None:
    """A vendor, a broker or a gate that does not answer: each hint names which, at which address, and what to do;
    the hints' commands, followed, finish what waits. Before: a vendor not answering was told "once the broker is
    back", a broker "is the broker running?", a gate "is the gate running?", none with the address."""
    alice = world.people["alice"]
    nowhere = f"127.0.0.1:{free_port()}"
    ok(*alice.cmd("load", "--amount", "5.00 EUR"))  # (her purse keyed, to pay)
    # the vendor: nothing was paid; its address and --vendor
    e = refused(*alice.cmd("pay", "speed", "--vendor", nowhere, "--product", SONG, "--limit", "3.00 EUR"))
    assert e["reason"] == "unreachable" and e["message"].startswith(f"cannot reach the vendor at {nowhere}"), e
    assert e["hint"].startswith(f"nothing was paid: check the vendor's address {nowhere} (--vendor"), e
    assert "broker" not in e["hint"], e
    # a product the vendor does not sell: the catalogue command for that vendor, which runs as given
    vendor = world.vendor.address
    e = refused(*alice.cmd("pay", "speed", "--vendor", vendor, "--product", "nope", "--limit", "3.00 EUR"))
    assert e["reason"] == "unknown_product", e
    [catalogue] = re.findall(r"`(cardnet speed catalogue [^`]*)`", e["hint"])
    assert f"--vendor {vendor}" in catalogue, e
    assert [p["product"] for p in ok(*shlex.split(catalogue)[1:])["products"]] == [SONG]
    # the broker of a load (--broker): its address; `wallet recover` credits it through the config's broker
    e = refused(*alice.cmd("load", "--amount", "1.00 EUR", "--broker", nowhere))
    assert e["reason"] == "unreachable" and e["hint"].startswith(f"check that the broker runs at {nowhere} (--broker)")
    assert "cardnet wallet recover" in e["hint"], e
    done = ok(*alice.cmd("recover"))
    assert [r["outcome"] for r in done["recovered"]] == ["finished: 1 credited"], done
    # the broker of a purchase (--broker): its address, and how to pay through the right one
    e = refused(*alice.cmd("pay", "speed", "--vendor", world.vendor.address, "--product", SONG, "--limit", "3.00 EUR",
                           "--broker", nowhere))  # fmt: skip
    assert e["reason"] == "unreachable" and e["hint"].startswith(f"check that the broker runs at {nowhere} (--broker)")
    [recover] = re.findall(r"`(cardnet speed recover [^`]*)`", e["hint"])
    argv = shlex.split(recover.replace("HOST:PORT", world.broker.address))[1:]
    paid = ok(*argv)["finished"]
    assert [p["price"] for p in paid] == ["2.50 EUR"], paid
    assert ok(*alice.cmd("show"))["purchases_pending"] == []
    # a gate that does not answer (a card with no gate, on the authority's host): the gate, where it is sent
    oid = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"
    world.issue(oid, "alice", "Final, seat 1")
    gate = world.net.uids["authority"]
    e = refused(*alice.cmd("enter", oid, "--gate", gate, "--wait", "1"))
    assert e["reason"] == "no_answer", e
    auth = f"127.0.0.1:{world.net.hosts['auth'].port}"
    assert e["hint"].startswith(f"is the gate {gate} running (your host sends to it at {auth} ([routes]"), e
    alice.until(oid, "enabled")  # taken back


def test_a_ticket_sent_to_its_own_card_or_an_application_says_so_before_the_card(world: World) -> None:
    """`wallet send` (and `trn send`) --to this very card, or to an application's Uid: said before the card is
    asked, with what to give (before: 'the card refused: ...', no hint); the ticket stays usable."""
    alice = world.people["alice"]
    oid = "e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2"
    world.issue(oid, "alice", "Final, seat 3")
    own, app = str(alice.uid), str(alice.uid)[:-1] + "1"
    for e in (refused(*alice.cmd("send", oid, "--to", own)),
              refused("trn", "send", "--socket", alice.host.socket, "--oid", oid, "--to", own)):  # fmt: skip
        assert e["reason"] == "own_card" and e["message"] == f"{own} is this card itself: {oid} was not sent", e
        assert "give the receiving card's Uid" in e["hint"], e
    e = refused(*alice.cmd("send", oid, "--to", app))
    assert e["reason"] == "usage" and e["message"].startswith(f"{app} is an application's Uid, not a card's"), e
    assert ":00000000" in e["hint"], e
    assert alice.tickets()[oid] == "enabled"


def test_recover_of_a_ticket_waiting_for_the_authoritys_trace_does_not_blame_the_other_card(world: World) -> None:
    """The authority's host is down while alice gives bob a ticket: bob's copy waits for the trace (trustless).
    `wallet recover` on bob's side says it waits for the authority's trace, not for the other card (the row of a
    transfer names the other card only when it is that card that has not answered)."""
    alice, bob = world.people["alice"], world.people["bob"]
    oid = "e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3e3"
    world.issue(oid, "alice", "Final, seat 4")
    auth = world.net.hosts["auth"]
    auth.kill()
    try:
        ok(*alice.cmd("send", oid, "--to", bob.uid, "--wait", "0"))
        bob.until(oid, "trustless")
        stuck = ok(*bob.cmd("recover", "--wait", "0.3"))
        [row] = [r for r in stuck["recovered"] if r["id"] == oid]
        assert not row["finished"] and "waiting for the authority's trace" in row["outcome"], row
        assert "waiting for the other card" not in row["outcome"], row
    finally:
        auth.restart()
    assert ok(*bob.cmd("recover", "--wait", WAIT_S))["unfinished"] == 0
    bob.until(oid, "enabled")


def test_an_offer_to_a_card_the_host_cannot_reach_is_refused_and_locks_nothing(world: World) -> None:
    """`wallet exchange offer --to` (and `cardnet exchange offer --to`) a card of a domain the host has no route to
    (a mistyped Uid): refused before the card is asked (reason no_route), saying so and what to do, the voucher
    still usable. Before: exit 0, an offer no message could carry, the voucher locked until given up."""
    alice = world.people["alice"]
    oid = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1"
    world.issue(oid, "alice", "Final, seat 2")
    nowhere = "0badc0de0badc0de0badc0de:00000000"
    offer = ("--give", oid, "--want", "22" * 16, "--to", nowhere)
    for e in (refused(*alice.cmd("exchange", "offer", *offer)),
              refused("exchange", "offer", "--socket", alice.host.socket, *offer)):  # fmt: skip
        assert e["reason"] == "no_route", e
        assert e["message"] == (f"this host cannot reach {nowhere}: no card of domain {nowhere[:24]} here and no "
                                "route to it; nothing was offered: your voucher stays usable"), e  # fmt: skip
        assert f'"{nowhere[:24]}" = "HOST:PORT"' in e["hint"] and "[routes]" in e["hint"], e
    assert alice.tickets()[oid] == "enabled"
    assert all(x["give"] != oid for x in ok(*alice.cmd("exchange", "list"))["exchanges"])
    code, _, err = call(*alice.cmd("exchange", "offer", *offer))
    assert code == 2 and "error: this host cannot reach" in err and "the card refused" not in err, err
