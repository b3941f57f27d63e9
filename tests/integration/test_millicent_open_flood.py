"""A flood of account openings at a running Millicent broker: its store stays bounded, honest customers are served.

Opening an account (``millicent.open``) is unauthenticated. Before, the broker stored an account for every opening
with a new key, without bound: one connection opened about 500 a second, and an attacker filled the broker's disk.
Now the broker takes at most ``--open-burst`` openings at once from one address (an IPv6 /64), then ``--open-rate``
a second, refusing the others in words before its store; and it keeps at most ``--max-unfunded`` accounts that were
never credited (the oldest dropped first; unit test ``test_accounts_never_credited_are_bounded...``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import threading
import time

from hostprocs import Service, cardnet
from test_millicent_processes import VID, customer, world  # noqa: F401 (world: the fixture)

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.wire import Message, Uid

SRC, DST = Uid(b"\x00" * 12, 9), Uid(b"\x00" * 12, 0)
FLOOD_S = 4.0


def accounts(store: str) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT count(*) FROM kv WHERE tbl = 'mb.acct'").fetchone()[0])


def flood(at: str, seconds: float, out: dict[str, object]) -> None:
    """From 127.0.0.2, one connection: openings with fresh keys, 100 in flight, for ``seconds``."""
    host, port = at.rsplit(":", 1)
    opened = refused = 0
    words: set[str] = set()
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect((host, int(port)))
    s.settimeout(10)
    buf = b""
    end = time.monotonic() + seconds
    with s:
        while time.monotonic() < end:
            frames = []
            for _ in range(100):  # (fresh keys: a key opened before is not a new account)
                pub = profile.public_bytes(profile.generate_private_key().public_key())
                raw = Message(SRC, DST, mc.OPEN.code, mc.OPEN_SCHEMA.encode({"pub": pub})).encode()
                frames.append(struct.pack(">I", len(raw)) + raw)
            s.sendall(b"".join(frames))
            got = 0
            while got < 100:
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                    chunk = s.recv(65536)
                    assert chunk, "the broker closed the flood's connection"
                    buf += chunk
                size = struct.unpack(">I", buf[:4])[0]
                f = mc.OPENED_SCHEMA.decode(Message.decode(buf[4 : 4 + size]).param)
                buf = buf[4 + size :]
                got += 1
                if f["status"] == 0:
                    opened += 1
                else:
                    refused += 1
                    words.add(f["detail"].rsplit("try again in", 1)[0])
    out.update(opened=opened, refused=refused, words=words)


def test_a_flood_of_account_openings_stores_a_bounded_number_and_honest_customers_are_served(
    world: dict[str, object],  # noqa: F811
) -> None:
    broker = world["broker"]
    assert isinstance(broker, Service)
    store = str(world["broker_store"])
    before = accounts(store)
    out: dict[str, object] = {}
    attacker = threading.Thread(target=flood, args=(broker.address, FLOOD_S, out))
    t0 = time.monotonic()
    attacker.start()
    # An honest customer (another address) opens her account during the flood, is credited and buys.
    time.sleep(1.0)
    alice = customer(world, "alice")
    r = json.loads(cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json").stdout)
    assert r["value"] == 20, r
    attacker.join()
    took = time.monotonic() - t0
    assert "opened" in out, "the flood did not finish"
    stored = accounts(store) - before
    # At most a burst and the rate over the flood's time from the attacker's address, and alice's account.
    assert stored <= 64 + took * 1.0 + 1 + 1, (stored, out)
    assert out["opened"] == stored - 1 and out["refused"] >= 200, out
    assert out["words"] == {
        "too many accounts opened from your address (at most 64 at once, then 1 a second): nothing was opened; "
    }, out
    # After the flood: another customer opens, is credited and buys.
    bob = customer(world, "bob")
    r = json.loads(cardnet("millicent", "buy", "--wallet", bob, "--vendor", VID, "--value", "20", "--json").stdout)
    assert r["value"] == 20, r


def requests_of(store: str, cid: bytes) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute("SELECT k FROM kv WHERE tbl = 'mb.req'").fetchall()
    return sum(1 for (k,) in rows if bytes(k).startswith(cid))


def test_a_flood_of_purchases_the_broker_refuses_stores_a_bounded_number(
    world: dict[str, object],  # noqa: F811
) -> None:
    """A refused purchase (say, a balance that does not cover it) is stored for ever, so that a replay is refused
    again after a deposit. Before, an account (opened for free, never credited) had each of its signed purchases
    refused and stored: 1,000 purchases, 1,000 records, and so on until the disk was full. Now an address is refused
    (and so stores) at most 64 purchases at once, then one a second; past that a purchase that would be refused is
    answered `pending`, nothing stored, and decided when it is sent again."""
    broker = world["broker"]
    assert isinstance(broker, Service)
    host, port = broker.address.rsplit(":", 1)
    store = str(world["broker_store"])
    key = profile.generate_private_key()
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect((host, int(port)))
    s.settimeout(10)
    buf = b""

    def ask(mtype: int, params: list[bytes]) -> list[Message]:
        nonlocal buf
        frames = [Message(SRC, DST, mtype, p).encode() for p in params]
        s.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
        out = []
        while len(out) < len(params):
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                chunk = s.recv(65536)
                assert chunk, "the broker closed the connection"
                buf += chunk
            n = struct.unpack(">I", buf[:4])[0]
            out.append(Message.decode(buf[4 : 4 + n]))
            buf = buf[4 + n :]
        return out

    with s:
        [opened] = ask(mc.OPEN.code, [mc.OPEN_SCHEMA.encode({"pub": profile.public_bytes(key.public_key())})])
        cid = mc.OPENED_SCHEMA.decode(opened.param)["customer_id"]
        t0 = time.monotonic()
        answers = []
        for batch in range(10):
            params = []
            for i in range(100):
                f = {"customer_id": cid, "vendor": bytes.fromhex(VID), "value": 5, "want_secret": 0,
                     "rid": b"%016d" % (batch * 100 + i)}  # fmt: skip
                f["sig"] = profile.sign(key, mc.purchase_sig_input(f))
                params.append(mc.PURCHASE_SCHEMA.encode(f))
            answers += [mc.PURCHASED_SCHEMA.decode(m.param) for m in ask(mc.PURCHASE.code, params)]
        took = time.monotonic() - t0
    stored = requests_of(store, cid)
    refused = [a for a in answers if a["status"] == mc.PURCHASE_REFUSED]
    held = [a for a in answers if a["status"] == mc.PURCHASE_PENDING]
    assert stored == len(refused) <= 64 + took * 1.0 + 1, (stored, len(refused), took)
    assert len(held) == 1000 - len(refused) and {a["detail"] for a in held} == {
        "the broker refused too many purchases from your address lately to decide this one now: nothing was "
        "debited; send the same purchase again later (`cardnet millicent retry`)"
    }
    assert {a["detail"] for a in refused} == {"balance 0 does not cover 5"}
    # An honest customer at another address is credited and buys meanwhile.
    alice = customer(world, "alice")
    r = json.loads(cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json").stdout)
    assert r["value"] == 20, r
