"""A host whose listening port is full of connections that sent a message and then only wait makes room for a newcomer.

A real host process ``b`` with small caps from its config. An attacker from four loopback addresses opens
``MAX_CONNECTIONS`` connections, sends one message on each (so each counts as a cardnet peer past its handshake) and
then holds it, silent. Before, every newcomer was refused (reset at once) until the holders' ``idle_timeout_s``
(600 s by default) ran out: a flood from ``max_connections / max_per_peer`` addresses shut the host off from its
other hosts for ten minutes. Now a newcomer to a full server closes the remote connection idle the longest, if it
has been idle at least ``handshake_timeout_s``: the newcomer is served (here: a real echo between ``a``'s card and
``b``'s) while the holders still hold everything else, and the host says in its log that it made room.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from hostprocs import make_hosts

from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Uid

MAX_CONNECTIONS = 40
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
HANDSHAKE_S = 0.5
LIMITS = f"""
[limits]
max_connections = {MAX_CONNECTIONS}
max_per_peer = {MAX_CONNECTIONS // len(SOURCES)}
handshake_timeout_s = {HANDSHAKE_S}
idle_timeout_s = 600
"""


def _hold(port: int) -> list[socket.socket]:
    """``MAX_CONNECTIONS`` connections that each send one message (for a card nobody has) and then wait."""
    frame = encode_frame(REQUEST.make(Uid(os.urandom(12), 7), Uid(os.urandom(12), 0), rid=1, body=b"x"))
    held = []
    for i in range(MAX_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(SOURCES[i % len(SOURCES)], 0))
        s.sendall(frame)
        held.append(s)
    return held


def _closed_by_host(s: socket.socket) -> bool:
    """Whether the host closed ``s`` (its answers to the holder's message read and dropped first)."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
    except BlockingIOError:
        return False  # open, nothing more to read
    except OSError:
        return True  # reset
    return True  # end of stream


def test_a_full_port_of_idle_holders_makes_room_for_a_newcomer(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    b.config.write_text(b.config.read_text() + LIMITS)
    held: list[socket.socket] = []
    b.start()
    try:
        held = _hold(b.port)
        time.sleep(2 * HANDSHAKE_S + 0.5)  # every holder is past its handshake and idle since
        assert b.running
        a.start()  # (after: its link to b is a newcomer to b's full port)

        async def echo() -> None:
            async with await AppClient.connect(a.socket) as app:
                await app.send(b.card, REQUEST, rid=7, body=b"through")
                got = await app.recv_type(REPLY, timeout_s=30)
                assert got["body"] == b"through", got

        asyncio.run(echo())  # a's link to b is a newcomer to b's full port
        time.sleep(0.5)
        closed = sum(_closed_by_host(s) for s in held)
        assert 1 <= closed < MAX_CONNECTIONS, closed  # room was made, and only as much as needed
    finally:
        for s in held:
            s.close()
        b.stop()
        a.stop()
