"""A host's application socket: a second host cannot take it over (two real host processes); an application that
stops reading is told what it missed (a real HostServer and a real application connection)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest
from hostprocs import HostProc, make_hosts

from cardnet.bench.procs import ProcError
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.config import load_config
from cardnet.host.server import HostServer
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from conftest import NOW


def _share_socket(b: HostProc, a: HostProc) -> None:
    """Point b's config at a's application socket."""
    text = b.config.read_text().replace(f'app_socket = "{b.name}.sock"', f'app_socket = "{a.name}.sock"')
    assert f'app_socket = "{a.name}.sock"' in text
    b.config.write_text(text)


async def _granted_domain(path: str) -> bytes:
    async with await AppClient.connect(path) as app:
        return app.uid.domain


def test_a_second_host_cannot_take_over_a_live_app_socket(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    _share_socket(b, a)
    try:
        a.start()
        inode = os.stat(a.socket).st_ino
        with pytest.raises(ProcError):
            b.start()  # exits instead of printing ready
        assert b.proc is None or not b.running
        errors = [line for line in b.log().splitlines() if a.socket in line]
        assert errors, b.log()
        assert "running host" in errors[0] and "another app_socket" in errors[0], errors[0]
        assert "Traceback" not in b.log()
        # a's socket is still there, still the one a bound, and still reaches a's card
        assert os.stat(a.socket).st_ino == inode
        assert asyncio.run(_granted_domain(a.socket)) == a.domain
    finally:
        b.stop()
        a.stop()
    assert not os.path.exists(a.socket)  # a removed its own socket when it stopped


def test_a_stale_app_socket_left_by_a_killed_host_is_replaced(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    _share_socket(b, a)
    try:
        a.start()
        a.kill()  # SIGKILL: the socket file stays, nobody listens on it
        assert stat.S_ISSOCK(os.lstat(a.socket).st_mode)
        b.start()
        assert asyncio.run(_granted_domain(a.socket)) == b.domain
        b.stop()
        assert not os.path.exists(a.socket)
    finally:
        b.stop()
        a.stop()


FLOOD_BODY = b"x" * 900  # echo requests this big fill the socket's buffers in a few hundred replies
FLOOD_CHUNK = 256
MAX_FLOOD = 40_000  # requests at most (the host's queue holds 4,096 replies, the buffers a few hundred more)
WAIT_S = 30.0


def _echo_host(tmp_path: Path, ca: pki.CertificateAuthority) -> tuple[Path, Uid]:
    """A host config (``h.toml``, socket ``h.sock``) with one personalised echo card; the card's Uid."""
    card = Card(SqliteStore(str(tmp_path / "c.card.db")))
    try:
        uid = personalise(card, ca, pin="1357", now=NOW)
    finally:
        card.close()
    (tmp_path / "h.toml").write_text(
        'name = "h"\napp_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n'
        "capacity_bytes = 16777216\n"  # a group of 256 big replies is one outbox row: more than a smart card holds
    )
    return tmp_path / "h.toml", uid


def _said(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    return any(words in r.getMessage() for r in caplog.records)


async def _until_said(caplog: pytest.LogCaptureFixture, words: str, server: HostServer) -> None:
    async with asyncio.timeout(WAIT_S):
        while not _said(caplog, words) or not server.host.idle:
            await asyncio.sleep(0.01)


def test_an_application_that_stops_reading_is_told_how_many_messages_it_missed(
    tmp_path: Path, ca: pki.CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    """An application sends echo requests and reads nothing until the host's queue for it overflows; the replies
    the host drops are not silent: ``host.missed`` comes in their place once the application reads again, and
    every request is accounted for, by its reply or by a notice's count. A ``host.refused`` that finds the queue
    full (a frame sent as someone else) is counted the same way: it used to raise ``QueueFull`` and end the
    connection."""
    config, card = _echo_host(tmp_path, ca)

    async def go() -> None:
        server = HostServer(load_config(config))
        await server.start()
        try:
            async with await AppClient.connect(str(tmp_path / "h.sock")) as app:
                sent = 0
                while not _said(caplog, "is not reading") and sent < MAX_FLOOD:  # the application reads nothing
                    batch = [REQUEST.make(app.uid, card, rid=sent + i, body=FLOOD_BODY) for i in range(FLOOD_CHUNK)]
                    await app.conn.send_many(batch)
                    sent += FLOOD_CHUNK
                    async with asyncio.timeout(WAIT_S):
                        while not server.host.idle:
                            await asyncio.sleep(0.01)
                assert _said(caplog, "is not reading"), f"{sent} replies did not fill the host's queue"
                # the queue is full: a frame sent as someone else is refused, and that refusal is dropped too
                await app.send_message(REQUEST.make(Uid(card.domain, 0xABCD), card, rid=0, body=b""))
                await _until_said(caplog, "tried to send as", server)
                # now the application reads again: each request has its reply or is counted in a notice
                stream: list[Message] = []
                rids: set[int] = set()
                async with asyncio.timeout(WAIT_S):
                    while len(rids) + app.missed < sent + 1:
                        msg = await app.recv()
                        stream.append(msg)
                        if msg.mtype == REPLY.code:
                            rids.add(REPLY.parse(msg)["rid"])
                notices = [hm.MISSED.parse(m) for m in stream if m.mtype == hm.MISSED.code]
                assert notices and all(m.src == card for m in stream if m.mtype == hm.MISSED.code)
                assert sum(n["count"] for n in notices) == app.missed == sent + 1 - len(rids) > 0
                assert notices[0]["mtype"] == REPLY.code
                # the first notice stands where the first dropped reply would have been
                first_dropped = min(set(range(sent)) - rids)
                at = next(i for i, m in enumerate(stream) if m.mtype == hm.MISSED.code)
                before = {REPLY.parse(m)["rid"] for m in stream[:at] if m.mtype == REPLY.code}
                assert before == set(range(first_dropped))
                # the connection still works
                await app.send(card, REQUEST, rid=sent, body=b"still there")
                assert (await app.recv_type(REPLY, timeout_s=WAIT_S))["rid"] == sent
        finally:
            await server.aclose()

    with caplog.at_level(logging.INFO, logger="cardnet.host"):
        asyncio.run(go())


def test_a_closed_application_is_logged_out_of_its_card(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """Applications that prove the PIN on a real host's socket and close (as every ``cardnet trn send`` does): once
    each connection ended, its Uid is no longer in the card's authenticated set. Before, the card kept every one
    until it was reopened (ports are never reused, so each was one more entry for the host's lifetime), and a
    closed connection's Uid stayed privileged on the card. The logout is queued after what the connection sent."""
    config, card_uid = _echo_host(tmp_path, ca)

    async def go() -> None:
        server = HostServer(load_config(config))
        await server.start()
        try:
            card = server.cards[0]
            uids = []
            for _ in range(20):
                async with await AppClient.connect(str(tmp_path / "h.sock")) as app:
                    await app.send(card_uid, cm.PIN_VERIFY, pin="1357")
                    assert (await app.recv_type(cm.PIN_RESULT))["ok"]
                    assert app.uid in card._authenticated  # (the card's volatile set: no API reads it)
                    uids.append(app.uid)
                    await app.send(card_uid, cm.PIN_VERIFY, pin="1357")  # one more, unanswered when it closes
            async with asyncio.timeout(WAIT_S):
                while not server.host.idle or set(uids) & card._authenticated:
                    await asyncio.sleep(0.01)
            assert not set(uids) & card._authenticated
            async with await AppClient.connect(str(tmp_path / "h.sock")) as app:  # the PIN still works
                await app.send(card_uid, cm.PIN_VERIFY, pin="1357")
                assert (await app.recv_type(cm.PIN_RESULT))["ok"]
        finally:
            await server.aclose()

    asyncio.run(go())
