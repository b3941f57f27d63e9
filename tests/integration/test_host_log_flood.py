"""A remote peer cannot make a host write its log at the peer's speed.

Two real host processes; an attacker connects to host b's port (plain TCP) and sends, as fast as b takes them,
messages the default Guard drops (their src is b's own card's domain) and ``host.undeliverable`` notices to b's
card, each naming another destination and reason. Before, b wrote one warning line per message: 20 MB of such
traffic became 65 MB of log in ten seconds, without bound, until its disk (and with it its cards' stores) was
full. Now each of those warnings is logged at most ``REMOTE_LOG_BURST`` times every ``REMOTE_LOG_EVERY_S``, with the
count of those left out, and an echo between a card on a and b's card succeeds after the flood.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from hostprocs import make_hosts

from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Message, Uid

FORGED = 100_000  # messages of each kind
MAX_LINES = 50  # warning lines of each kind the flood may cause (REMOTE_LOG_BURST per REMOTE_LOG_EVERY_S it lasts)
GUARD_S = 120.0  # a test that waits longer than this for the host has failed (no assertion on time)


def _flood(port: int, frames: bytes) -> None:
    """Send ``frames`` on a new connection, then end it and wait until the host has read everything and closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as sock:
        sock.sendall(frames)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


async def _echo(app_socket: str, to: Uid) -> None:
    async with await AppClient.connect(app_socket) as app:
        await app.send(to, REQUEST, rid=1, body=b"after the flood")
        assert (await app.recv_type(REPLY, timeout_s=60))["body"] == b"after the flood"


def test_a_flood_of_forged_messages_and_notices_is_logged_a_few_times_with_counts(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    try:
        a.start()
        b.start()
        forged = Message(Uid(b.domain, 5), b.card, REQUEST.code, REQUEST.schema.encode({"rid": 1, "body": b""}))
        notices = [
            hm.UNDELIVERABLE.make_from(Uid(os.urandom(12), 0), b.card,
                                       {"mtype": REQUEST.code, "dst": Uid(os.urandom(12), 0), "reason": f"gone {i}"})
            for i in range(FORGED)
        ]  # fmt: skip
        _flood(b.port, encode_frame(forged) * FORGED + b"".join(encode_frame(n) for n in notices))
        asyncio.run(_echo(a.socket, b.card))
        log = b.log()
        dropped = [line for line in log.splitlines() if "guard forged-local-domain dropped" in line]
        unreachable = [line for line in log.splitlines() if "cannot reach" in line]
        assert 1 <= len(dropped) <= MAX_LINES and 1 <= len(unreachable) <= MAX_LINES, (len(dropped), len(unreachable))
        assert len(log) < 64 * 1024, f"the host wrote {len(log)} bytes of log"
        assert b.running
    finally:
        a.stop()
        b.stop()


def test_answers_a_peer_makes_toward_a_route_that_is_down_are_logged_a_few_times_with_counts(tmp_path: Path) -> None:
    """The attacker sends b's card echo requests in the name of a card of a (its route is down): b's card answers each
    toward a, the link to a fills (LINK_QUEUE), and each pump that found it full warned 'cannot send N message(s)':
    a line per pump, at the peer's speed (209 lines for 400,000 requests, most of them dropped for a full table;
    6,500 in 10 s of a continuous flood). Now that warning too is logged at most ``REMOTE_LOG_BURST`` times every
    ``REMOTE_LOG_EVERY_S``, with the count of those left out."""
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    try:
        b.start()  # (a is not)
        request = encode_frame(REQUEST.make(Uid(a.domain, 5), b.card, rid=1, body=b"x"))
        with socket.create_connection(("127.0.0.1", b.port), timeout=GUARD_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # a few at a time: each read is a pump of its own. (b steps every one: it reads its remote connections
            # only while its dispatch table has room, docs/host.md "Remote traffic takes turns"; 100,000 take it
            # about 10 s, against a line per pump before)
            for _ in range(FORGED // 4):
                sock.sendall(request * 4)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # b read everything and closed
                pass
        log = b.log()
        full = [line for line in log.splitlines() if "cannot send" in line]
        assert 1 <= len(full) <= MAX_LINES, len(full)
        assert b.running
    finally:
        b.stop()
