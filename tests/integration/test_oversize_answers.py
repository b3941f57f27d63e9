"""One answer above the frame limit costs only itself, over real TCP.

A batch of frames handed to a connection at once used to be refused whole (``send_many`` raises ``oversize``
before sending anything) when one of them was above the connection's frame limit: the group-committing server
(SPEED vendor and broker) then lost the request's other frames and closed the connection, the Millicent vendor's
sender stopped (every later reply on the connection was lost), and the ticket buyer's relay ended. Now
:func:`~cardnet.transport.send_batch` sends the others, in order, with the protocol's refusal in the oversize
one's place (or nothing, logged, where there is none), and the connection goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from cardnet.protocols import millicent as mc
from cardnet.protocols.speed import frames as fr
from cardnet.services.millicent import vendor as mv
from cardnet.services.serving import GroupCommitServer
from cardnet.services.ticketing.buyer import _pump
from cardnet.store import SqliteStore
from cardnet.transport import Limits, TcpConnection, TcpServer, TransportError, dial, fit_batch
from cardnet.wire import HEADER_BYTES, Message, Uid

LIMIT = 4096
SMALL = Limits(max_frame=LIMIT)
ME = Uid(b"\x00" * 12, 1)
ASK, ANSWER, MORE = 0x7F01, 0x7F02, 0x7F03
BIG = bytes(LIMIT)  # a param this size makes a message above LIMIT (the header comes on top)
WAIT_S = 10.0


def msg(mtype: int, param: bytes) -> Message:
    return Message(ME, ME, mtype, param)


async def recv_n(conn: TcpConnection, n: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < n:
        got.extend(await asyncio.wait_for(conn.recv_many(), WAIT_S))
    return got


def test_fit_batch_replaces_or_leaves_out_only_the_oversize_messages(caplog: pytest.LogCaptureFixture) -> None:
    batch = [msg(ANSWER, b"a"), msg(MORE, BIG), msg(ANSWER, b"b"), msg(MORE, bytes(LIMIT - HEADER_BYTES + 1))]
    seen: list[tuple[int, str]] = []

    def instead(i: int, m: Message, err: TransportError) -> Message | None:
        seen.append((i, err.reason))
        return msg(ASK, b"refused") if i == 1 else None

    with caplog.at_level(logging.WARNING, logger="cardnet.transport"):
        out = fit_batch(batch, LIMIT, instead, to="peer-x")
    assert [(m.mtype, m.param) for m in out] == [(ANSWER, b"a"), (ASK, b"refused"), (ANSWER, b"b")]
    assert seen == [(1, "oversize"), (3, "oversize")]
    assert len(caplog.records) == 2 and all("peer-x" in r.getMessage() for r in caplog.records)
    assert [m.param for m in fit_batch(batch, LIMIT)] == [b"a", b"b"]  # no refusal: left out
    fits = batch[:1] + batch[2:3]
    assert fit_batch(fits, LIMIT) == fits
    assert fit_batch(batch, LIMIT, lambda i, m, e: msg(ASK, BIG)) == fits  # a refusal over the limit: left out
    # the largest message that fits is sent as it is
    edge = msg(ANSWER, bytes(LIMIT - HEADER_BYTES))
    assert fit_batch([edge], LIMIT) == [edge]


@pytest.mark.parametrize("refusal", [fr.too_large, None], ids=["speed-refusal", "no-refusal"])
def test_the_group_commit_server_sends_an_answers_other_frames_and_goes_on(
    tmp_path: Path, refusal: Callable[[Message, Message], Message | None] | None
) -> None:
    """A request whose answer's middle frame is above the connection's frame limit gets the other frames, in
    order, with SPEED's ``speed.refused`` (``oversize``) in its place (the SPEED vendor and broker servers) or
    nothing; the connection stays open and answers the next request."""
    store = SqliteStore(str(tmp_path / "served.db"))

    def answer(m: Message) -> list[Message]:
        with store.transaction() as txn:
            txn.put("t", m.param, b"done")
        if m.param == b"big":
            return [m.reply(ANSWER, b"first"), m.reply(MORE, BIG), m.reply(ANSWER, b"last")]
        return [m.reply(ANSWER, m.param)]

    async def go() -> None:
        server = GroupCommitServer(answer, group=store.group, limits=SMALL, oversize=refusal)
        host, port = await server.start()
        try:
            conn = await dial(host, port)  # the client could take the big frame: only the server's limit refuses it
            try:
                await conn.send(msg(ASK, b"big"))
                got = await recv_n(conn, 3 if refusal else 2)
                assert (got[0].mtype, got[0].param) == (ANSWER, b"first")
                assert (got[-1].mtype, got[-1].param) == (ANSWER, b"last")
                if refusal is not None:
                    refused = fr.REFUSED.parse(got[1])
                    assert refused["reason"] == "oversize" and "frame limit" in refused["detail"]
                await conn.send(msg(ASK, b"next"))
                [after] = await recv_n(conn, 1)
                assert (after.mtype, after.param) == (ANSWER, b"next")
            finally:
                await conn.aclose()
        finally:
            await server.aclose()

    try:
        asyncio.run(go())
    finally:
        store.close()


def test_the_millicent_vendor_answers_the_other_requests_of_a_batch_and_goes_on(tmp_path: Path) -> None:
    """Three purchases pipelined on one connection, the middle one of a page above the vendor's frame limit: the
    first and last are served, the middle one is refused ``too_large`` naming the frame limit (MACed: decided
    before the transaction, its scrip not spent), and the connection serves the next purchase. (A stored reply
    above the limit, fetched again, gets a plain ``malformed`` in its place: test_millicent_oversize_product.py.)"""
    vid = bytes.fromhex("00000000000000a1")
    alice = bytes.fromhex("0100000000000001")
    now = 1_800_000_000
    store = SqliteStore(str(tmp_path / "vendor.db"))
    mv.init_vendor(store, vid, rng=random.Random(1).randbytes, validity_s=3600)
    mv.add_product(store, "page", 3, b"<p>hello</p>")
    mv.add_product(store, "big", 3, bytes(2 * LIMIT))
    core = mv.VendorCore(store)
    secret = mc.customer_secret(core.vendor.customer_masters, alice)

    def request(i: int, product: str) -> Message:
        scrip = mc.mint(core.vendor.scrip_secrets, index=0, vendor=vid, value=10, serial=100 + i, customer_id=alice,
                        expiry=now + 100)  # fmt: skip
        mt, p = mc.make_request(scrip, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret, price=3,
                                product=product)  # fmt: skip
        return msg(mt, p)

    def outcome(i: int, m: Message) -> mc.Outcome:
        return mc.open_reply(m.mtype, m.param, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret)

    async def go() -> None:
        server = mv.VendorServer(core, clock=lambda: float(now), limits=SMALL)
        host, port = await server.start("127.0.0.1", 0)
        try:
            conn = await dial(host, port)
            try:
                await conn.send_many([request(0, "page"), request(1, "big"), request(2, "page")])
                got = [outcome(i, m) for i, m in enumerate(await recv_n(conn, 3))]
                assert [o.status for o in got] == [mc.Status.OK, mc.Status.TOO_LARGE, mc.Status.OK]
                assert got[0].content == got[2].content == b"<p>hello</p>"
                assert f"frame limit of {LIMIT}" in got[1].detail and got[1].authentic
                await conn.send(request(3, "page"))
                [after] = await recv_n(conn, 1)
                assert outcome(3, after).status == mc.Status.OK
            finally:
                await conn.aclose()
        finally:
            await server.aclose()

    try:
        asyncio.run(go())
        with store.transaction() as txn:
            assert len(txn.scan(mv.SPENT)) == 3  # the three pages; the big one's scrip is unspent
    finally:
        store.close()


def test_the_ticket_relay_moves_the_other_frames_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """The buyer's relay between the ticketing server's connection and its host's socket: a frame from the server
    above the host side's frame limit is left out (logged), the frames around it and after it reach the host, in
    order, and the host's answer still reaches the server."""
    to_host: list[Message] = []
    to_server: list[Message] = []

    async def ticketing(conn: TcpConnection) -> None:
        await conn.send_many([msg(ANSWER, b"a"), msg(MORE, BIG), msg(ANSWER, b"b")])
        await conn.send(msg(ANSWER, b"c"))
        to_server.append(await asyncio.wait_for(conn.recv(), WAIT_S))  # then it closes: the relay ends

    async def host(conn: TcpConnection) -> None:
        to_host.extend(await recv_n(conn, 3))
        await conn.send(msg(ASK, b"ok"))
        await asyncio.sleep(WAIT_S)  # until the relay closes the connection

    async def go() -> list[int]:
        servers = [TcpServer(), TcpServer(limits=SMALL)]
        await servers[0].start("127.0.0.1", 0, ticketing)
        await servers[1].start("127.0.0.1", 0, host)
        try:
            server = await dial(*servers[0].address)
            local = await dial(*servers[1].address, limits=SMALL)  # the host's socket takes frames up to LIMIT
            counts = [0, 0]
            try:
                async with asyncio.timeout(WAIT_S):
                    await _pump(server, local, counts)
            finally:
                await server.aclose()
                await local.aclose()
            return counts
        finally:
            for s in servers:
                await s.aclose()

    with caplog.at_level(logging.WARNING, logger="cardnet.transport"):
        counts = asyncio.run(go())
    assert [m.param for m in to_host] == [b"a", b"b", b"c"]
    assert [m.param for m in to_server] == [b"ok"]
    assert counts == [4, 1]
    assert any("left out" in r.getMessage() for r in caplog.records)
