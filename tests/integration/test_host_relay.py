"""``host.relay``: an application carries a remote card's traffic through its host's application socket.

A real HostServer (one card with the echo applet) in this process, its application socket, and an echo request
from a remote domain arriving over a relay: the card's reply goes back over the same connection, frames from
any other domain are dropped, a card of the host itself cannot be relayed, and the route is gone afterwards.
"""

from __future__ import annotations

import asyncio
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
from cardnet.transport import DEFAULT_LIMITS, TcpConnection
from cardnet.wire import Uid
from conftest import NOW

NOBODY = Uid(bytes(12), 0)


async def _open(sock: Path) -> TcpConnection:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    return TcpConnection(reader, writer, DEFAULT_LIMITS)


def test_a_relay_carries_one_remote_domain_both_ways_and_nothing_else(
    tmp_path: Path, ca: pki.CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    card = Card(SqliteStore(str(tmp_path / "c.card.db")))
    uid = personalise(card, ca, pin="1357", now=NOW)
    card.close()
    remote, other, routed = Uid(os.urandom(12), 0), Uid(os.urandom(12), 0), Uid(os.urandom(12), 0)
    (tmp_path / "h.toml").write_text(
        'name = "h"\napp_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.card.db"\napplets = ["echo"]\n\n'
        f'[routes]\n"{routed.domain.hex()}" = "127.0.0.1:9"\n'
    )

    async def go() -> None:
        server = HostServer(load_config(tmp_path / "h.toml"))
        await server.start()
        try:
            for refused in (uid, routed):  # a card of this host, a domain with a configured route (the authority's)
                conn = await _open(tmp_path / "h.sock")
                await conn.send(hm.RELAY.make(NOBODY, NOBODY, domain=refused.domain))
                assert (await conn.recv()).mtype == hm.REFUSED.code
                await conn.aclose()
            assert server.host.routes[routed.domain] == "127.0.0.1:9"

            relay = await _open(tmp_path / "h.sock")
            await relay.send(hm.RELAY.make(NOBODY, NOBODY, domain=remote.domain))
            assert hm.RELAYING.parse(await relay.recv())["domain"] == remote.domain
            await relay.send(REQUEST.make(other, uid, rid=1, body=b"not carried"))  # another domain: dropped
            await relay.send(REQUEST.make(remote, uid, rid=2, body=b"carried"))
            async with asyncio.timeout(5):
                answer = await relay.recv()
            assert answer.src == uid and answer.dst == remote and REPLY.parse(answer)["rid"] == 2
            assert server.host.routes.get(remote.domain, "").startswith("carrier#")
            assert "sent 1 message(s) from other domains: dropped" in caplog.text
            await relay.aclose()
            async with asyncio.timeout(5):
                while remote.domain in server.host.routes:  # the route ends with the connection
                    await asyncio.sleep(0.01)
        finally:
            await server.aclose()

    asyncio.run(go())
