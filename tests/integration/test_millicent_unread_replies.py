"""A client that sends requests at full speed and never reads the replies, against the real Millicent vendor and
broker processes over loopback TCP.

The attacker's socket has a small receive buffer and is never read: the server's replies fill it, then the server's
send buffer, then the server must stop reading (so that the kernel pushes back on the attacker) and, after
``--send-timeout``, close the connection. Before, the vendor went on reading and kept every reply it could not send,
in memory, for ever (its resident memory grew by about 11 MB a second from one connection, without end), and a
server whose send waited for room held the connection for ever (its sweeper only timed connections waiting to
receive). Meanwhile a real spend on another connection succeeds.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostprocs import Service, cardnet
from procstatus import proc_status

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.wallet import SCRIP, SECRETS, Wallet
from cardnet.store import SqliteStore
from cardnet.transport import FrameDecoder, encode_frame
from cardnet.wire import Message, Uid

VID = bytes.fromhex("00000000000000a1")
ALICE = bytes.fromhex("0100000000000001")
REQUESTS = 1_500_000  # what the attacker sends at most (39 bytes each): far more than the server may hold replies for
STALL_S = 2.0  # the attacker stops once the kernel has taken none of its bytes for this long (pushed back)
GROWTH = 32 * 1024 * 1024  # what the vendor's peak resident memory may grow by under the attack (without: ~190 MB)
GUARD_S = 120.0  # a test that waits longer than this for the server has failed (no assertion on time)
TCP_ESTABLISHED = 1
CLIENTS = 8  # connections re-sending one accepted purchase, never reading (without the byte bound: 62 MB each)


@dataclass
class Flood:
    """Request frames written as fast as the kernel takes them, on a socket that is never read."""

    address: str
    frame: bytes = encode_frame(Message(Uid(bytes(12), 1), Uid(bytes(12), 0), mc.REQUEST.code, b"\xa0"))
    each: int = 2000  # frames in one sendall
    sock: socket.socket | None = None
    sent: int = 0
    pushed_back: bool = False
    reset: bool = False  # the server closed the connection under a send
    thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.address.rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the replies fill it at once
        sock.connect((host, int(port)))
        sock.settimeout(STALL_S)
        self.sock = sock
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.sock is not None
        chunk = self.frame * self.each  # by default a request with nothing in it
        try:
            while self.sent < REQUESTS:
                self.sock.sendall(chunk)
                self.sent += self.each
        except TimeoutError:
            self.pushed_back = True
        except OSError:  # the server closed the connection
            self.reset = True

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(GUARD_S)
        assert not self.thread.is_alive(), "the attacker's sends neither finished nor stalled"

    def state(self) -> int:
        """The attacker's socket's TCP state (1: established)."""
        assert self.sock is not None
        return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()


@pytest.fixture
def vendor_store(tmp_path: Path) -> Iterator[str]:
    """A vendor with a page "hello" at 3, and Alice's wallet holding 10 of its scrip."""
    v = str(tmp_path / "vendor.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID.hex())
    cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hello")
    store = SqliteStore(v)
    wallet = Wallet(SqliteStore(str(tmp_path / "alice.db")))
    try:
        vendor = mv.VendorCore(store).vendor
        with wallet.store.transaction() as txn:
            txn.put(SECRETS, VID, mc.customer_secret(vendor.customer_masters, ALICE))
            s = mc.mint(vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100, customer_id=ALICE,
                        expiry=int(time.time()) + 3600)  # fmt: skip
            txn.put(SCRIP, VID + s.scrip_id, s.encode())
    finally:
        wallet.store.close()
        store.close()
    yield v


def test_a_vendor_holds_a_bounded_number_of_replies_for_a_client_that_never_reads(
    tmp_path: Path, vendor_store: str
) -> None:
    """The vendor (no send timeout, so only the bound on unanswered requests can save it) stops reading the
    attacker's requests once it holds ``MAX_UNANSWERED`` unsent replies: the attacker's writes stall, the vendor's
    peak memory grows by little, and Alice's spend succeeds meanwhile."""
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", vendor_store, "--listen", "127.0.0.1:0",
                     "--send-timeout", "0")  # fmt: skip
    flood: Flood | None = None
    try:
        at = vendor.start()
        assert vendor.proc is not None
        pid = vendor.proc.pid
        before = proc_status(pid, "VmRSS")
        flood = Flood(at)
        flood.start()
        deadline = time.monotonic() + GUARD_S
        while flood.sent < 50_000 and not flood.pushed_back and time.monotonic() < deadline:
            time.sleep(0.05)
        spend = cardnet("millicent", "spend", "--wallet", str(tmp_path / "alice.db"), "--vendor", VID.hex(),
                        "--at", at, "--product", "hello", "--price", "3", "--json")  # fmt: skip
        assert json.loads(spend.stdout) == {"status": "ok", "change": 7, "content": "hello"}
        flood.join()
        assert flood.pushed_back, f"the vendor read all {flood.sent} requests of a client that reads nothing"
        grown = proc_status(pid, "VmHWM") - before
        assert grown < GROWTH, f"the vendor's peak memory grew by {grown >> 20} MiB"
        assert vendor.proc.poll() is None
    finally:
        if flood is not None:
            flood.close()
        vendor.stop()


@pytest.mark.parametrize("service", ["vendor", "broker"])
def test_a_client_that_never_reads_is_disconnected_after_the_send_timeout(
    tmp_path: Path, vendor_store: str, service: str
) -> None:
    """The server's send waits for room for ``--send-timeout`` seconds, then the server closes the connection
    (a reset: the attacker's requests are unread); the server goes on serving."""
    store = vendor_store if service == "vendor" else str(tmp_path / "broker.db")
    server = Service(tmp_path, "millicent", service, "run", "--store", store, "--listen", "127.0.0.1:0",
                     "--send-timeout", "1")  # fmt: skip
    flood: Flood | None = None
    try:
        at = server.start()
        flood = Flood(at)
        flood.start()
        flood.join()
        assert flood.pushed_back or flood.reset, f"the {service} read all {flood.sent} requests of a silent client"
        deadline = time.monotonic() + GUARD_S
        while flood.state() == TCP_ESTABLISHED:
            assert time.monotonic() < deadline, f"the {service} kept a silent client"
            time.sleep(0.1)
        if service == "vendor":
            spend = cardnet("millicent", "spend", "--wallet", str(tmp_path / "alice.db"), "--vendor", VID.hex(),
                            "--at", at, "--product", "hello", "--price", "3", "--json")  # fmt: skip
            assert json.loads(spend.stdout) == {"status": "ok", "change": 7, "content": "hello"}
        assert server.proc is not None and server.proc.poll() is None
    finally:
        if flood is not None:
            flood.close()
        server.stop()


def _flood_with_a_resent_request(
    tmp_path: Path, vendor_store: str, frame: bytes, check_reply: Callable[[Message], None]
) -> None:
    """A real vendor (no send timeout) answers ``frame`` once for real (its reply passed to ``check_reply``), then
    ``CLIENTS`` connections send that very frame again and again and never read: each is pushed back, the vendor's
    peak memory grows by less than ``GROWTH``, and a real spend on another connection succeeds."""
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", vendor_store, "--listen", "127.0.0.1:0",
                     "--send-timeout", "0")  # fmt: skip
    floods: list[Flood] = []
    try:
        at = vendor.start()
        assert vendor.proc is not None
        pid = vendor.proc.pid
        host, port = at.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=GUARD_S) as sock:  # answered once, for real
            sock.sendall(frame)
            decoder, got = FrameDecoder(), []
            while not got:
                data = sock.recv(65536)
                assert data, "the vendor closed the connection without a reply"
                got = decoder.feed(data)
        check_reply(got[0])
        before = proc_status(pid, "VmRSS")
        floods = [Flood(at, frame=frame, each=50) for _ in range(CLIENTS)]
        for flood in floods:
            flood.start()
        for flood in floods:
            flood.join()
            assert flood.pushed_back, f"the vendor read all {flood.sent} requests of a client that reads nothing"
        grown = proc_status(pid, "VmHWM") - before
        assert grown < GROWTH, f"the vendor's peak memory grew by {grown >> 20} MiB"
        spend = cardnet("millicent", "spend", "--wallet", str(tmp_path / "alice.db"), "--vendor", VID.hex(),
                        "--at", at, "--product", "hello", "--price", "3", "--json")  # fmt: skip
        assert json.loads(spend.stdout) == {"status": "ok", "change": 7, "content": "hello"}
        assert vendor.proc.poll() is None
    finally:
        for flood in floods:
            flood.close()
        vendor.stop()


def _accepted_purchase(vendor_store: str) -> bytes:
    """A frame buying the vendor's largest product ("big", at 3) with Alice's fresh scrip (level 2)."""
    store = SqliteStore(vendor_store)
    try:
        mv.add_product(store, "big", 3, os.urandom(mv.max_content_bytes()))
        vendor = mv.VendorCore(store).vendor
        scrip = mc.mint(vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=200, customer_id=ALICE,
                        expiry=int(time.time()) + 3600)  # fmt: skip
        secret = mc.customer_secret(vendor.customer_masters, ALICE)
    finally:
        store.close()
    mtype, param = mc.make_request(scrip, rid=os.urandom(mc.RID_BYTES), level=mc.Level.THEFT, secret=secret, price=3,
                                   product="big")  # fmt: skip
    return encode_frame(Message(Uid(os.urandom(12), 1), Uid(bytes(12), 0), mtype, param))


def test_a_vendor_holds_a_bounded_number_of_reply_bytes_for_clients_that_resend_a_large_purchase(
    tmp_path: Path, vendor_store: str
) -> None:
    """A re-fetch is answered from the stored reply: a client that bought a 60 KB product once and sends that very
    request again and again on connections it never reads gets the whole reply for each. The vendor (no send
    timeout) holds at most ``MAX_UNSENT_BYTES`` of replies a connection; before, it held ``MAX_UNANSWERED``
    replies a connection (62 MB each)."""
    frame = _accepted_purchase(vendor_store)

    def large_content(reply: Message) -> None:
        assert reply.size > mv.max_content_bytes()  # the reply carries the content

    _flood_with_a_resent_request(tmp_path, vendor_store, frame, large_content)


def _accepted_bulk_order(vendor_store: str) -> bytes:
    """A frame of a bulk order of 1000 pieces under a real bulk agreement (its answer: 56 KB of scrip)."""
    store = SqliteStore(vendor_store)
    try:
        agreement = mv.add_bulk_broker(store, "bob", discount_pct=10)
    finally:
        store.close()
    param = mc.make_bulk_order(bytes.fromhex(agreement["order_key"]), vendor=VID,
                               broker=bytes.fromhex(agreement["customer_id"]), order=os.urandom(mc.RID_BYTES),
                               value=mc.MAX_PIECES, pieces=mc.MAX_PIECES, discount_pct=10)  # fmt: skip
    return encode_frame(Message(Uid(os.urandom(12), 1), Uid(bytes(12), 0), mc.BULK_BUY.code, param))


def test_a_vendor_holds_a_bounded_number_of_reply_bytes_for_clients_that_resend_a_bulk_order(
    tmp_path: Path, vendor_store: str
) -> None:
    """A broker's bulk order of 1000 pieces is answered with 56 KB of scrip (a re-sent order gets its stored
    answer again). A client that sends it again and again on connections it never reads: the vendor (no send
    timeout) holds at most ``MAX_UNSENT_BYTES`` of answers a connection. Before, a bulk order not answered yet was
    counted at the largest *buy* reply (here under 500 bytes), so a connection took hundreds of them at once and
    the vendor held their answers (about 30 MB a connection)."""
    frame = _accepted_bulk_order(vendor_store)

    def scrip_of_a_bulk_order(reply: Message) -> None:
        assert reply.mtype == mc.BULK_SOLD.code
        assert len(mc.BULK_SOLD_SCHEMA.decode(reply.param)["scrip"]) == mc.MAX_PIECES
        assert reply.size > 50_000 > 10 * mv._buy_reply_bytes(5)  # far more than a buy reply of this vendor

    _flood_with_a_resent_request(tmp_path, vendor_store, frame, scrip_of_a_bulk_order)
