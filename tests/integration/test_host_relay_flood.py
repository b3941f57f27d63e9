"""A remote peer cannot make a host hold, for a route that is down, more than a bounded number of bytes.

Two real host processes, ``a`` and ``b``, each with a route to the other. ``a`` is stopped; an attacker connects to
``b``'s port and sends, as fast as ``b`` takes them, 1 MiB messages addressed to ``a``'s card. ``b`` forwards a
message for a routed domain to that route's link, which queues it until ``a`` is back. Before, the link bounded its
queue by messages only (``LINK_QUEUE``, 16,384), not bytes: ``b``'s resident memory grew by the attacker's
traffic (1.3 GB after ten seconds, up to 16 GiB). Now the queue holds at most ``LINK_QUEUE_BYTES`` (plus one
message); what does not fit is dropped as a lossy network would (a card's own output stays in its outbox and is
resent). Once ``a`` is back, an echo from ``b``'s card to ``a``'s goes through the same link.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from hostprocs import HostProc, make_hosts
from procstatus import proc_status

from cardnet.host.client import AppClient
from cardnet.host.server import LINK_QUEUE_BYTES
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Message, Uid

BIG = 1024 * 1024  # bytes of each message
COUNT = 600  # messages the attacker sends: 600 MiB, far above what b may hold for a
SLACK = 96 * 1024 * 1024  # b's peak memory may grow by the queue, one message in reading and this much
GUARD_S = 120.0  # a test that waits longer than this for the host has failed (no assertion on time)


async def _echo(app_socket: str, to: Uid) -> None:
    """An echo, its request sent again every few seconds until answered (as the echo client does: a message taken
    by a link whose connection then breaks may be lost, and the protocols above resend)."""
    async with await AppClient.connect(app_socket) as app, asyncio.timeout(GUARD_S):
        while True:
            await app.send(to, REQUEST, rid=1, body=b"a is back")
            try:
                got = await app.recv_type(REPLY, timeout_s=5)
            except TimeoutError:
                continue
            assert got["body"] == b"a is back"
            return


def back_and_echo(a: HostProc, b: HostProc) -> None:
    """The stopped host ``a`` starts again; an echo from ``b``'s application to ``a``'s card goes through."""
    a.start()
    asyncio.run(_echo(b.socket, a.card))
    assert b.running


def test_messages_for_a_route_that_is_down_are_held_up_to_a_byte_bound(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    try:
        b.start()
        assert b.proc is not None
        before = proc_status(b.proc.pid, "VmRSS")
        frame = encode_frame(Message(Uid(os.urandom(12), 5), a.card, REQUEST.code, bytes(BIG - 34)))
        with socket.create_connection(("127.0.0.1", b.port), timeout=GUARD_S) as sock:
            for _ in range(COUNT):
                sock.sendall(frame)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # b read everything and closed
                pass
        grown = proc_status(b.proc.pid, "VmHWM") - before
        assert grown < LINK_QUEUE_BYTES + BIG + SLACK, f"b's peak memory grew by {grown >> 20} MiB"
        back_and_echo(a, b)
    finally:
        a.stop()
        b.stop()
