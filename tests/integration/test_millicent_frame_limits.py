"""The Millicent vendor and broker processes take no request frame above their largest request (with margin).

Before, both read request frames of up to 16 MiB (the transport's default): a 10 MB frame was taken whole, buffered
and decoded, whatever its mtype. Now a frame above the server's receive limit (``mc.VENDOR_RECV_LIMIT``,
``mc.BROKER_RECV_LIMIT``, a redemption ``mc.BROKER_REDEEM_RECV_LIMIT``: docs/millicent.md, "Receive limits") is
refused at its 34-byte header, its body never read, with an answer in words, and its connection closed; the largest
legitimate request (a redemption batch of 10,000 items) is still read and answered, and the server goes on serving.
"""

from __future__ import annotations

import json
import socket
import struct

from hostprocs import Service, cardnet
from test_millicent_processes import VID, customer, world  # noqa: F401 (world: the fixture)

from cardnet.protocols import millicent as mc
from cardnet.wire import Message, Uid

SRC, DST = Uid(b"\x00" * 12, 9), Uid(b"\x00" * 12, 0)


def big_frame_answer(at: str, mtype: int, size: int, sent: int = 4096) -> tuple[Message, bool]:
    """Begin a ``size``-byte message of ``mtype`` at ``at`` and send only ``sent`` bytes of its body: the answer the
    server gives before the rest comes (within 10 s), and whether it then closed the connection."""
    host, port = at.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack(">I", size) + bytes(SRC) + bytes(DST) + struct.pack(">H", mtype) + bytes(sent))
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, f"the server closed without an answer after {data!r}"
            data += chunk
        n = struct.unpack(">I", data[:4])[0]
        answer = Message.decode(data[4 : 4 + n])
        try:
            closed = s.recv(65536) == b""
        except ConnectionResetError:
            closed = True
    return answer, closed


def whole_frame_answer(at: str, mtype: int, param: bytes) -> Message:
    host, port = at.rsplit(":", 1)
    raw = Message(SRC, DST, mtype, param).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack(">I", len(raw)) + raw)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, "the server closed without an answer"
            data += chunk
    return Message.decode(data[4 : 4 + struct.unpack(">I", data[:4])[0]])


def test_the_vendor_refuses_a_10_mb_request_unread_in_words_and_goes_on(world: dict[str, object]) -> None:  # noqa: F811
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    for mtype in (mc.REQUEST.code, mc.SEALED_REQUEST.code, 0x7777):
        answer, closed = big_frame_answer(at, mtype, 10_000_000)
        assert answer.mtype == mc.REPLY.code, answer
        f = mc.REPLY_SCHEMA.decode(answer.param)
        assert f["status"] == mc.Status.MALFORMED and f["detail"] == (
            f"the request (mtype 0x{mtype:04x}) is 10000000 bytes, above this vendor's limit of 4096: it was not "
            "read and the connection is closed; no Millicent request is that large"
        ), f
        assert closed
    assert mc.VENDOR_MAX_REQUEST <= mc.VENDOR_RECV_LIMIT  # the largest request the vendor takes is read
    # The vendor goes on: a customer buys and spends.
    alice = customer(world, "alice")
    cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json")
    args = ("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello")
    r = json.loads(cardnet(*args, "--price", "3", "--json").stdout)
    assert r == {"status": "ok", "change": 17, "content": "hello, world"}, r
    assert "above the receive limit of 4096: refused unread" in vendor.log.read_text()


def test_the_broker_refuses_a_10_mb_request_unread_and_still_reads_the_largest_redemption(
    world: dict[str, object],  # noqa: F811
) -> None:
    broker = world["broker"]
    assert isinstance(broker, Service)
    at = broker.address
    cases = (
        (mc.OPEN.code, mc.OPENED_SCHEMA, mc.BROKER_RECV_LIMIT),
        (mc.PURCHASE.code, mc.PURCHASED_SCHEMA, mc.BROKER_RECV_LIMIT),
        (mc.REDEEM.code, mc.REDEEMED_SCHEMA, mc.BROKER_REDEEM_RECV_LIMIT),
    )
    for mtype, schema, limit in cases:
        answer, closed = big_frame_answer(at, mtype, 10_000_000)
        f = schema.decode(answer.param)
        assert f["status"] == mc.PURCHASE_REFUSED and f["detail"] == (
            f"the request (mtype 0x{mtype:04x}) is 10000000 bytes, above this broker's limit of {limit}: it was not "
            "read and the connection is closed; no Millicent request is that large"
        ), f
        assert closed
    # The largest redemption a vendor sends (10,000 items) is read and answered (here: its MAC does not check).
    items = [i.to_bytes(8, "big") + (1).to_bytes(8, "big") for i in range(mc.REDEEM_MAX_ITEMS)]
    batch = mc.REDEEM_SCHEMA.encode({"vendor": bytes.fromhex(VID), "batch": b"b" * 16, "items": items,
                                     "mac": bytes(16)})  # fmt: skip
    assert len(batch) + 34 == mc.BROKER_MAX_REDEEM <= mc.BROKER_REDEEM_RECV_LIMIT
    got = mc.REDEEMED_SCHEMA.decode(whole_frame_answer(at, mc.REDEEM.code, batch).param)
    assert (got["status"], got["detail"]) == (mc.PURCHASE_REFUSED, "bad MAC"), got
    # The broker goes on: a customer opens an account and buys.
    alice = customer(world, "alice")
    r = json.loads(cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json").stdout)
    assert r["value"] == 20, r
    assert "above the receive limit of 4096: refused unread" in broker.log.read_text()
