"""A host's writers: one message above the connection's frame limit costs only itself, and is not silent.

A real HostServer (one card with the echo applet) carries a remote domain's traffic over a real TCP connection
accepted with a small frame limit (as :meth:`HostServer.carry` does for the ticketing server's upgraded HTTP
connections and ``host.relay``). A request of exactly the frame limit gets a reply a few bytes above it: that
reply is left out, and the replies before and after it still go out on the same connection. The writer used
``send_many``, whose ``oversize`` ended it: every later message for the carried domain was lost while the
connection stayed open. The writer to an application on the host's socket (frame limit: the host's
``max_frame``) likewise used ``send``, whose ``oversize`` ended it.

The card that sent the oversize reply gets a ``host.undeliverable`` notice ("too large for the link"), as for
any other message its host cannot deliver (it used to be logged and dropped over a carried connection, and over
a link to a remote host left unacknowledged and re-emitted for ever), so ``host.route`` shows it; an
application whose reply is too large for its connection gets ``host.missed`` in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.config import load_config
from cardnet.host.core import HOST_PORT
from cardnet.host.server import HostServer
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.store import SqliteStore
from cardnet.transport import DEFAULT_LIMITS, BrokenError, ClosedError, Limits, TcpConnection, TcpServer, dial
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


async def replies(conn: TcpConnection, n: int, others: list[Message] | None = None) -> list[int]:
    """The rids of the next ``n`` echo replies on ``conn``; other messages go to ``others`` (or must not come)."""
    got: list[int] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < n:
            for m in await conn.recv_many():
                if m.mtype == REPLY.code:
                    got.append(REPLY.parse(m)["rid"])
                else:
                    assert others is not None, m
                    others.append(m)
    return got


async def last_undeliverable(sock: Path, domain: bytes) -> str | None:
    """What the host answers an application asking about ``domain`` (``host.route``): its last notice's reason."""
    async with await AppClient.connect(str(sock)) as app:
        await app.send(Uid(app.uid.domain, HOST_PORT), hm.ROUTE, domain=domain)
        got = await app.recv_type(hm.ROUTE_IS, timeout_s=WAIT_S)
    return got.get("undeliverable")


async def assert_told_too_large(server: HostServer, sock: Path, remote: Uid, others: list[Message]) -> None:
    """The echo card was told that its oversize reply to ``remote`` cannot be delivered, and it is not re-emitted."""
    reason = await last_undeliverable(sock, remote.domain)
    assert reason is not None and "too large for the link" in reason and f"the frame limit is {LIMIT}" in reason
    # the oversize reply was acknowledged: not re-emitted (a stand-in remote host that confirms nothing, host.taken,
    # leaves the replies the link wrote to it in flight until a sweep finds that out: they are not the question)
    assert all(out.msg.mtype != REPLY.code or out.msg.size <= LIMIT for out in server.cards[0].outbox())
    # the card refuses the notice (no applet handles it: see test_host_core); that refusal is all the peer sees
    assert [cm.REFUSED.parse(m)["mtype"] for m in others] == [hm.UNDELIVERABLE.code]


@contextlib.asynccontextmanager
async def carrying_host(
    tmp: Path, remote: Uid, limits: Limits = DEFAULT_LIMITS
) -> AsyncIterator[tuple[HostServer, TcpServer]]:
    """The echo card's host (no route, no listener) and a server whose every connection (``limits``) the host
    carries for ``remote``'s domain."""
    (tmp / "h.toml").write_text(
        'name = "h"\napp_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n'
    )
    server = HostServer(load_config(tmp / "h.toml"))
    await server.start()
    carried = TcpServer(limits=limits)

    async def carry(conn: TcpConnection) -> None:
        await server.carry(conn, [remote.domain], label="test carrier")

    try:
        await carried.start("127.0.0.1", 0, carry)
        yield server, carried
    finally:
        await carried.aclose()
        await server.aclose()


@contextlib.asynccontextmanager
async def routed_host(
    tmp: Path, remote: Uid
) -> AsyncIterator[tuple[HostServer, TcpConnection, asyncio.Queue[Message]]]:
    """The echo card's host (frame limit ``LIMIT``, listening), routing ``remote`` to a stand-in remote host whose
    listener puts what the host's link writes on the queue; and a connection to the host as that remote host (default
    limits)."""
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def collect(conn: TcpConnection) -> None:
        with contextlib.suppress(ClosedError, BrokenError):
            async for msg in conn:
                got.put_nowait(msg)

    far = TcpServer()
    await far.start("127.0.0.1", 0, collect)
    (tmp / "h.toml").write_text(
        f'name = "h"\napp_socket = "h.sock"\nlisten = "127.0.0.1:0"\nmax_frame = {LIMIT}\n'
        'resend_after_s = 0.05\n\n[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n\n'
        f'[routes]\n"{remote.domain.hex()}" = "127.0.0.1:{far.address[1]}"\n'
    )
    server = HostServer(load_config(tmp / "h.toml"))
    await server.start()
    try:
        assert server.listen_address is not None
        peer = await dial(*server.listen_address)
        try:
            yield server, peer, got
        finally:
            await peer.aclose()
    finally:
        await server.aclose()
        await far.aclose()


def echo_card(tmp: Path, ca: pki.CertificateAuthority) -> Uid:
    """A personalised card in ``tmp/c.card.db`` for a host running the echo applet; its Uid."""
    card = Card(SqliteStore(str(tmp / "c.card.db")))
    try:
        return personalise(card, ca, pin="1357", now=NOW)
    finally:
        card.close()


def test_a_carried_connection_leaves_out_an_oversize_message_tells_its_card_and_carries_the_rest(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    uid = echo_card(tmp_path, ca)
    remote = Uid(os.urandom(12), 0)

    async def go() -> None:
        # the connection the host carries has small frames
        async with carrying_host(tmp_path, remote, Limits(max_frame=LIMIT)) as (server, carried):
            peer = await dial(*carried.address)  # the peer could take the big reply: only the carrier's limit refuses
            others: list[Message] = []
            try:
                await peer.send(REQUEST.make(remote, uid, rid=1, body=b"before"))
                assert await replies(peer, 1) == [1]
                assert await last_undeliverable(tmp_path / "h.sock", remote.domain) is None
                # the oversize reply and one after it, handed to the writer together or one after the other
                await peer.send_many([at_limit(remote, uid, 2), REQUEST.make(remote, uid, rid=3, body=b"after")])
                assert await replies(peer, 1, others) == [3]
                await peer.send(REQUEST.make(remote, uid, rid=4, body=b"later"))  # the writer went on
                assert await replies(peer, 1, others) == [4]
                await assert_told_too_large(server, tmp_path / "h.sock", remote, others)
            finally:
                await peer.aclose()

    asyncio.run(go())


def test_a_link_to_a_remote_host_tells_the_card_of_an_oversize_message_instead_of_re_emitting_it(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """The host's link to a remote host (``[routes]``) refuses a card output above ``max_frame``: it used to be
    logged and left unacknowledged, so every resend period re-emitted it and it was refused again, for ever."""
    uid = echo_card(tmp_path, ca)
    remote = Uid(os.urandom(12), 0)

    async def go() -> None:
        async with routed_host(tmp_path, remote) as (server, peer, got):
            await peer.send_many([at_limit(remote, uid, 2), REQUEST.make(remote, uid, rid=3, body=b"after")])
            others: list[Message] = []
            async with asyncio.timeout(WAIT_S):
                while (msg := await got.get()).mtype != REPLY.code:
                    others.append(msg)
            assert REPLY.parse(msg)["rid"] == 3
            # several resend periods: the oversize reply, acknowledged, is not re-emitted (nor refused again)
            resent = server.host.resend_unacked() + server.host.resend_unacked()
            assert resent == 0
            await peer.send(REQUEST.make(remote, uid, rid=4, body=b"later"))
            async with asyncio.timeout(WAIT_S):
                while (msg := await got.get()).mtype != REPLY.code:
                    others.append(msg)
            assert REPLY.parse(msg)["rid"] == 4
            await assert_told_too_large(server, tmp_path / "h.sock", remote, others)

    asyncio.run(go())


def test_an_applications_connection_leaves_out_an_oversize_message_says_so_and_sends_the_rest(
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
                others: list[Message] = []
                assert await replies(app, 1, others) == [2]
                # in the oversize reply's place: the host says the application missed one message, and which
                assert [(m.mtype, m.src) for m in others] == [(hm.MISSED.code, uid)]
                assert hm.MISSED.parse(others[0]) == {"count": 1, "mtype": REPLY.code}
                await app.send(REQUEST.make(me, uid, rid=3, body=b"later"))  # the writer went on
                assert await replies(app, 1) == [3]
            finally:
                await app.aclose()
        finally:
            await server.aclose()

    with caplog.at_level(logging.WARNING, logger="cardnet.host"):
        asyncio.run(go())
    [said] = [r.getMessage() for r in caplog.records if "cannot take" in r.getMessage()]
    assert f"0x{REPLY.code:04x}" in said and f"the frame limit is {LIMIT}" in said


def test_a_remote_hosts_message_above_this_hosts_limit_is_read_past_and_its_sender_told(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """A remote host with a larger frame limit (the default) sends this host one message above its own: the
    connection reads past it and carries on, and the sender gets ``host.undeliverable`` back through its route.
    It used to break the connection: the message, acknowledged to its card when the remote host wrote it, was lost
    with everything written after it, and each resend broke the connection again."""
    uid = echo_card(tmp_path, ca)
    remote = Uid(os.urandom(12), 0)

    async def go() -> None:
        async with routed_host(tmp_path, remote) as (_, peer, got):  # the peer has the default frame limit
            big = REQUEST.make(remote, uid, rid=2, body=b"z" * 1000)
            assert big.size > LIMIT
            small = [REQUEST.make(remote, uid, rid=r, body=b"fits") for r in (1, 3)]
            await peer.send_many([small[0], big, small[1]])
            seen: dict[int, Message] = {}
            async with asyncio.timeout(WAIT_S):
                while len(seen) < 3:
                    msg = await got.get()
                    seen[REPLY.parse(msg)["rid"] if msg.mtype == REPLY.code else -msg.mtype] = msg
            assert sorted(seen) == [-hm.UNDELIVERABLE.code, 1, 3]  # the replies before and after it, the notice
            notice = seen[-hm.UNDELIVERABLE.code]
            assert (notice.src, notice.dst) == (uid, remote)
            told = hm.UNDELIVERABLE.parse(notice)
            assert told["mtype"] == REQUEST.code and told["dst"] == uid
            assert told["reason"] == f"too large for host h: message is {big.size} bytes, its frame limit is {LIMIT}"
            await peer.send(REQUEST.make(remote, uid, rid=4, body=b"later"))  # the same connection goes on
            async with asyncio.timeout(WAIT_S):
                msg = await got.get()
            assert msg.mtype == REPLY.code and REPLY.parse(msg)["rid"] == 4
            assert not peer.closed

    asyncio.run(go())
