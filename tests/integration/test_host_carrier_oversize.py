"""A host's writers: one message above the connection's frame limit costs only itself.

A real HostServer (one card with the echo applet) carries a remote domain's traffic over a real TCP connection
accepted with a small frame limit (as :meth:`HostServer.carry` does for the ticketing server's upgraded HTTP
connections and ``host.relay``). A request of exactly the frame limit gets a reply a few bytes above it: that
reply is left out (logged), and the replies before and after it still go out on the same connection. The
writer used ``send_many``, whose ``oversize`` ended it: every later message for the carried domain was lost
while the connection stayed open. The writer to an application on the host's socket (frame limit: the host's
``max_frame``) likewise used ``send``, whose ``oversize`` ended it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import mtypes as hm
from cardnet.host.config import load_config
from cardnet.host.server import HostServer
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.store import SqliteStore
from cardnet.transport import DEFAULT_LIMITS, Limits, TcpConnection, TcpServer, dial
from cardnet.wire import Message, Uid
from conftest import NOW

LIMIT = 1024  # the carried connection's frame limit (an echo body is at most 1024 bytes)
WAIT_S = 5.0
NOBODY = Uid(bytes(12), 0)


def at_limit(src: Uid, dst: Uid, rid: int) -> Message:
    """An echo request of exactly ``LIMIT`` bytes: it arrives, but its reply (one field more) is above it."""
    body = b"x" * (LIMIT - REQUEST.make(src, dst, rid=rid, body=b"").size)
    while REQUEST.make(src, dst, rid=rid, body=body).size > LIMIT:  # the length's own encoding grows
        body = body[:-1]
    msg = REQUEST.make(src, dst, rid=rid, body=body)
    assert msg.size == LIMIT and REPLY.make(dst, src, rid=rid, body=body, count=1).size > LIMIT
    return msg


async def replies(conn: TcpConnection, n: int) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < n:
            got.extend(REPLY.parse(m)["rid"] for m in await conn.recv_many())
    return got


def echo_card(tmp: Path, ca: pki.CertificateAuthority) -> Uid:
    """A personalised card in ``tmp/c.card.db`` for a host running the echo applet; its Uid."""
    card = Card(SqliteStore(str(tmp / "c.card.db")))
    try:
        return personalise(card, ca, pin="1357", now=NOW)
    finally:
        card.close()


def assert_left_out_once(caplog: pytest.LogCaptureFixture) -> None:
    """The transport said once that it left out the oversize echo reply, and why."""
    [left_out] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert f"mtype 0x{REPLY.code:04x}" in left_out and f"the frame limit is {LIMIT}" in left_out


def test_a_carried_connection_leaves_out_an_oversize_message_and_carries_the_rest(
    tmp_path: Path, ca: pki.CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    uid = echo_card(tmp_path, ca)
    remote = Uid(os.urandom(12), 0)
    (tmp_path / "h.toml").write_text(
        'name = "h"\napp_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n'
    )

    async def go() -> None:
        server = HostServer(load_config(tmp_path / "h.toml"))
        await server.start()
        carried = TcpServer(limits=Limits(max_frame=LIMIT))  # the connection the host carries: small frames

        async def carry(conn: TcpConnection) -> None:
            await server.carry(conn, [remote.domain], label="test carrier")

        await carried.start("127.0.0.1", 0, carry)
        try:
            peer = await dial(*carried.address)  # the peer could take the big reply: only the carrier's limit refuses
            try:
                await peer.send(REQUEST.make(remote, uid, rid=1, body=b"before"))
                assert await replies(peer, 1) == [1]
                # the oversize reply and one after it, handed to the writer together or one after the other
                await peer.send_many([at_limit(remote, uid, 2), REQUEST.make(remote, uid, rid=3, body=b"after")])
                assert await replies(peer, 1) == [3]
                await peer.send(REQUEST.make(remote, uid, rid=4, body=b"later"))  # the writer went on
                assert await replies(peer, 1) == [4]
            finally:
                await peer.aclose()
        finally:
            await carried.aclose()
            await server.aclose()

    with caplog.at_level(logging.WARNING, logger="cardnet.transport"):
        asyncio.run(go())
    assert_left_out_once(caplog)


def test_an_applications_connection_leaves_out_an_oversize_message_and_sends_the_rest(
    tmp_path: Path, ca: pki.CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    uid = echo_card(tmp_path, ca)
    (tmp_path / "h.toml").write_text(
        f'name = "h"\napp_socket = "h.sock"\nmax_frame = {LIMIT}\n\n'
        '[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n'
    )

    async def go() -> None:
        server = HostServer(load_config(tmp_path / "h.toml"))
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "h.sock"))
            app = TcpConnection(reader, writer, DEFAULT_LIMITS)  # the application could take the big reply
            try:
                await app.send(hm.ACQUIRE.make(NOBODY, NOBODY))
                me = hm.ACQUIRED.parse(await asyncio.wait_for(app.recv(), WAIT_S))["uid"]
                await app.send_many([at_limit(me, uid, 1), REQUEST.make(me, uid, rid=2, body=b"after")])
                assert await replies(app, 1) == [2]
                await app.send(REQUEST.make(me, uid, rid=3, body=b"later"))  # the writer went on
                assert await replies(app, 1) == [3]
            finally:
                await app.aclose()
        finally:
            await server.aclose()

    with caplog.at_level(logging.WARNING, logger="cardnet.transport"):
        asyncio.run(go())
    assert_left_out_once(caplog)
