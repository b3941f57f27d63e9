"""The SPEED ports bound what a peer can make them hold: a receive limit per server (the largest request it takes,
from the schemas) and a time limit on a half-sent request, each attacked for real over loopback TCP against the
real vendor and broker servers while the customer's real card buys on another connection.

The attacker speaks raw bytes on a socket: a length prefix announcing a huge frame and the 34-byte header, then a
few bytes at a time. The server must answer ``speed.refused`` (``too_large``, with its limit) and close before the
body is sent (so it buffered none of it), and a purchase on another connection completes meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import speedprocs
from speedworld import EUR, World, load_purse, opened, served

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import vendor as sv
from cardnet.services.ticketing.buyer import buy_ticket
from cardnet.transport import DEFAULT_MAX_FRAME, FrameDecoder, ServerLimits, encode_frame
from cardnet.wire import Message, Uid
from cardnet.wire.mtypes import all_mtypes

NEWS = "news-1 Today's paper"
GUARD_S = 60.0  # a test that waits longer than this for the server has failed (no assertion on time)
ME, THEM = Uid(os.urandom(12), 7), Uid(os.urandom(12), 0)


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        yield w


def _head(size: int, mtype: int) -> bytes:
    """A length prefix announcing a ``size``-byte message, and that message's 34-byte header."""
    return struct.pack(">I", size) + ME.raw + THEM.raw + struct.pack(">H", mtype)


async def _answer_then_eof(reader: asyncio.StreamReader) -> tuple[list[Message], bool]:
    """Every message the server sends until it closes, and whether it closed with a clean end of stream."""
    decoder, got = FrameDecoder(), []
    async with asyncio.timeout(GUARD_S):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                return got, False
            if not data:
                return got, True
            got += decoder.feed(data)


async def _attack(addr: str, size: int, mtype: int, limit: int) -> None:
    """Announce a ``size``-byte ``mtype`` request, send its header and a few bytes of it: the server refuses it,
    naming ``limit``, and closes, before the rest of the body (``size`` bytes) was sent."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(_head(size, mtype) + b"\xa1")  # the header and the first byte of a param
        await writer.drain()
        sent = 35
        answers, clean = await _answer_then_eof(reader)
        assert sent < size  # the server answered and closed without the body
        assert [m.mtype for m in answers] == [fr.REFUSED.code]
        refusal = fr.REFUSED.parse(answers[0])
        assert refusal["reason"] == "too_large"
        assert f"is {size} bytes" in refusal["detail"] and f"receive limit of {limit} bytes" in refusal["detail"]
        assert answers[0].dst == ME and answers[0].src == THEM
        assert clean  # a FIN after the refusal, not a reset that could have dropped it
    finally:
        writer.close()


async def _not_cardnet(addr: str, size: int) -> None:
    """A length above what any cardnet peer sends (an HTTP request's first bytes read as one) is closed at once,
    without an answer, as before the receive limits."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(_head(size, fr.CATALOGUE.code))
        answers, _ = await _answer_then_eof(reader)
        assert answers == []
    finally:
        writer.close()


def test_the_limits_are_the_largest_requests_the_schemas_allow() -> None:
    # a request at its schema's maximum is at the limit; one byte more is not a valid request of any kind
    nid, sealed = b"n" * sm.NID_BYTES, b"s" * (sm.MAX_SEALED_SIGNED + 2 * sm.MAX_SIGNED)  # fr._SEALED at its most
    biggest = fr.REQUEST.make(ME, THEM, mode="a" * 16, sealed=sealed)
    assert biggest.size == fr.VENDOR_MAX_REQUEST == sv.RECV_LIMIT.largest == 24_714
    assert fr.HANDSHAKE.make(ME, THEM, nid=nid, sealed=sealed).size < fr.VENDOR_MAX_REQUEST
    order = fr.ORDER.make(ME, THEM, sealed=sealed)
    assert order.size == fr.BROKER_MAX_REQUEST == sb_server.RECV_LIMIT.max_frame == 24_696
    # a complaint at MAX_PRODUCTS entries and contents of MAX_COMPLAINT_BYTES in all
    per = sm.MAX_COMPLAINT_BYTES // sm.MAX_PRODUCTS
    complaint = fr.COMPLAINT.make(
        ME, THEM, poid=b"p" * sm.POID_BYTES, products=["\U0001f3b5" * (sm.MAX_PRODUCT_ID // 4)] * sm.MAX_PRODUCTS,
        entries=[b"e" * sm.MAX_SIGNED] * sm.MAX_PRODUCTS, contents=[b"c" * per] * sm.MAX_PRODUCTS,
        refund_to="\U0001f3b5" * (sm.MAX_ACCOUNT // 4),
    )  # fmt: skip
    assert complaint.size <= fr.BROKER_MAX_COMPLAINT == sb_server.RECV_LIMIT.for_mtype(fr.COMPLAINT.code) == 12_718_407
    assert fr.BROKER_MAX_COMPLAINT < DEFAULT_MAX_FRAME


@pytest.mark.parametrize("role", ["vendor", "broker"])
def test_every_request_a_service_answers_fits_its_limit(world: World, role: str) -> None:
    # every registered mtype a service does not refuse as not its own (bad_request) fits its receive limit whole
    answer = world.vendor.frames if role == "vendor" else (lambda m: [world.broker.handle(m)])
    limit = sv.RECV_LIMIT if role == "vendor" else sb_server.RECV_LIMIT
    takes = fr.VENDOR_REQUESTS if role == "vendor" else fr.BROKER_REQUESTS
    answered = []
    for mtype in all_mtypes():
        got = answer(Message(ME, THEM, mtype.code, b"\xa0"))
        if got[0].mtype == fr.REFUSED.code and fr.REFUSED.parse(got[0])["reason"] == "bad_request":
            continue
        answered.append(mtype.code)
        bound = fr.max_request_bytes(mtype) if mtype is not fr.COMPLAINT else fr.BROKER_MAX_COMPLAINT
        assert bound <= limit.for_mtype(mtype.code), f"the {role} answers {mtype.name}, above its receive limit"
    assert {m.code for m in takes} <= set(answered)


def test_a_huge_request_is_refused_unread_by_the_vendor_and_the_broker_and_a_purchase_goes_on(world: World) -> None:
    w = world

    async def go() -> None:
        async with served(w):
            await load_purse(w, 1000)
            attacks = [
                _attack(w.vendor_addr, DEFAULT_MAX_FRAME, fr.REQUEST.code, fr.VENDOR_MAX_REQUEST),
                _attack(w.vendor_addr, fr.VENDOR_MAX_REQUEST + 1, fr.HANDSHAKE.code, fr.VENDOR_MAX_REQUEST),
                _not_cardnet(w.vendor_addr, 2**32 - 1),
                _attack(w.broker_addr, DEFAULT_MAX_FRAME, fr.ORDER.code, fr.BROKER_MAX_REQUEST),
                _attack(w.broker_addr, fr.BROKER_MAX_REQUEST + 1, fr.PURSE.code, fr.BROKER_MAX_REQUEST),
                _attack(w.broker_addr, DEFAULT_MAX_FRAME, fr.COMPLAINT.code, fr.BROKER_MAX_COMPLAINT),
            ] * 8  # fmt: skip
            buying = w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                    limit=sm.Price(EUR, 100))  # fmt: skip
            *_, got = await asyncio.gather(*attacks, buying)
            assert got.contents == [b"the news of the day" * 10]
            assert w.balance() == 1000 - 80

    asyncio.run(go())


def test_a_request_after_good_ones_on_one_connection_is_refused_after_their_answers(world: World) -> None:
    w = world

    async def go() -> None:
        async with served(w):
            host, port = w.vendor_addr.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            catalogue = encode_frame(fr.CATALOGUE.make(ME, THEM))
            writer.write(catalogue + catalogue + _head(DEFAULT_MAX_FRAME, fr.STEP.code))  # in one write
            answers, clean = await _answer_then_eof(reader)
            writer.close()
            assert [m.mtype for m in answers] == [fr.ITEMS.code, fr.ITEMS.code, fr.REFUSED.code]
            assert fr.REFUSED.parse(answers[2])["reason"] == "too_large" and clean

    asyncio.run(go())


def test_a_half_sent_request_trickled_a_byte_at_a_time_is_cut_off_even_without_an_idle_timeout(world: World) -> None:
    w = world
    # as `cardnet speed vendor run --idle-timeout 0`: before, a begun request could then be trickled for ever
    bounds = ServerLimits(idle_timeout_s=None, frame_timeout_s=0.5)

    async def go() -> None:
        async with served(w):
            vs = sv.VendorServer(w.vendor, server_limits=bounds)
            vh, vp = await vs.start()
            try:
                reader, writer = await asyncio.open_connection(vh, vp)
                writer.write(encode_frame(fr.CATALOGUE.make(ME, THEM)))  # a whole request: past the handshake
                decoder = FrameDecoder()
                while not decoder.feed(await reader.read(65536)):
                    pass
                writer.write(_head(20_000, fr.REQUEST.code))  # within the limit, then a byte at a time
                trickled = 0

                async def trickle() -> None:
                    nonlocal trickled
                    while True:
                        await asyncio.sleep(0.05)
                        writer.write(b"\x00")
                        await writer.drain()
                        trickled += 1

                trickler = asyncio.get_running_loop().create_task(trickle())
                # meanwhile a purchase on another connection of the same server completes
                await load_purse(w, 500)
                got = await w.customer.buy(f"{vh}:{vp}", w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                           limit=sm.Price(EUR, 100))  # fmt: skip
                assert got.contents == [b"the news of the day" * 10]
                answers, _ = await _answer_then_eof(reader)  # the server closed the trickling connection
                trickler.cancel()
                await asyncio.gather(trickler, return_exceptions=True)
                writer.close()
                assert answers == [] and trickled < 20_000 - 34
                assert vs._server.expired >= 1
            finally:
                await vs.aclose()

    asyncio.run(go())


def test_the_cli_vendor_and_broker_processes_refuse_a_huge_request_unread_and_sell_on(tmp_path: Path) -> None:
    """`cardnet speed vendor run` and `cardnet speed broker run` as processes: eight connections to each announce
    16 MiB requests and stop after their header; each is refused and closed, and alice buys meanwhile."""
    net = speedprocs.build(tmp_path)
    try:
        alice = net.customers["alice"]

        async def go() -> None:
            attacks = [
                _attack(net.vendor.address, DEFAULT_MAX_FRAME, fr.REQUEST.code, fr.VENDOR_MAX_REQUEST),
                _attack(net.broker.address, DEFAULT_MAX_FRAME, fr.ORDER.code, fr.BROKER_MAX_REQUEST),
            ] * 8
            buying = asyncio.to_thread(alice.buy, net, speedprocs.NEWS, limit="1.00 EUR")
            *_, got = await asyncio.gather(*attacks, buying)
            assert got["price"] == "0.80 EUR", got

        asyncio.run(go())
        assert alice.balance() == {"EUR": 2000 - 80}
    finally:
        net.stop()


def test_the_ticketing_servers_speed_port_refuses_a_huge_request_unread_and_sells_on(tmp_path: Path) -> None:
    """The ticketing server's SPEED port (`speed_listen`, a vendor): a request announcing 16 MiB is refused unread
    and its connection closed, while bob buys a seat (SPEED purchase and ticket) on others."""
    net = TicketNet(tmp_path, ("bob",), ["A1"])

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            async with httpx.AsyncClient(base_url=net.url) as c:
                info = (await c.get("/")).json()
            attacks = [_attack(str(info["speed"]), DEFAULT_MAX_FRAME, fr.REQUEST.code, fr.VENDOR_MAX_REQUEST)] * 8
            async with await net.wallet("bob") as w:
                how = {"card": w, "app_socket": net.hosts["bob"].socket, "broker": net.broker_addr,
                       "broker_cert": net.broker_cert, "roots": net.roots}  # fmt: skip
                *_, ticket = await asyncio.gather(*attacks, buy_ticket(net.url, EVENT, "A1", **how))
            assert (ticket.event, ticket.seat) == (EVENT, "A1") and ticket.oid

    asyncio.run(go())
