"""Peers that trickle large frames cannot make a listening port hold one large frame per connection.

A host's port takes frames up to 16 MiB, and a frame begun may take its time (``frame_timeout_s`` plus a second per
``min_recv_bytes_per_s`` of it). Before, every connection read its frame as it came, so 40 connections from one
address, each sending the first 8 MiB of a 16 MiB frame, made ``cardnet host run`` hold 320 MiB (up to
``max_connections`` x 16 MiB, 8 GiB, from enough addresses). Now a frame above ``large_frame_bytes`` is read only
in one of the socket's ``max_large_frames`` places (``max_large_frames_per_peer`` from one address); the others are
read no further, their senders held back by the kernel, and the host still answers its applications and peers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

from hostprocs import make_hosts
from procstatus import proc_status

from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport.base import DEFAULT_SERVER_LIMITS

CONNECTIONS = 40  # below the per-address connection cap (64): each is a connection the host accepts
ANNOUNCED = 16 * 1024 * 1024 - 1  # each frame's announced size: within the host's frame limit
SENT = 8 * 1024 * 1024  # bytes of each frame the attacker tries to send
CHUNK = 64 * 1024
STALL_S = 3.0  # the attacker stops once no connection took a byte for this long
SLACK = 48 * 1024 * 1024  # the host's peak memory may grow by its places' frames, read buffers and this much
GUARD_S = 120.0  # a test that waits longer than this has failed (no assertion on time)


def _flood(port: int, domain: bytes) -> int:
    """Open the connections, begin a large frame on each and push its bytes while the host reads them."""
    head = struct.pack(">I", ANNOUNCED) + os.urandom(16) + domain + (0).to_bytes(4, "big") + (0x0101).to_bytes(2, "big")
    socks = []
    for _ in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
        s.sendall(head)
        s.setblocking(False)
        socks.append(s)
    sent = [0] * CONNECTIONS
    body = bytes(CHUNK)
    last_progress = time.monotonic()
    deadline = last_progress + GUARD_S
    try:
        while time.monotonic() - last_progress < STALL_S and time.monotonic() < deadline:
            moved = False
            for i, s in enumerate(socks):
                if sent[i] >= SENT:
                    continue
                try:
                    n = s.send(body[: min(CHUNK, SENT - sent[i])])
                except BlockingIOError:
                    continue
                sent[i] += n
                moved = True
            if moved:
                last_progress = time.monotonic()
            else:
                time.sleep(0.01)
    finally:
        for s in socks:
            s.close()
    return sum(sent)


def test_connections_trickling_large_frames_hold_at_most_the_places_frames(tmp_path: Path) -> None:
    [b] = make_hosts(tmp_path, ["b"], ["echo"])
    limits = DEFAULT_SERVER_LIMITS
    try:
        b.start()
        assert b.proc is not None
        pid = b.proc.pid
        before = proc_status(pid, "VmRSS")
        sent = _flood(b.port, b.domain)
        grown = proc_status(pid, "VmHWM") - before
        bound = limits.max_large_frames_per_peer * ANNOUNCED + CONNECTIONS * limits.large_frame_bytes + SLACK
        assert sent > CONNECTIONS * 1024 * 1024, f"the attacker sent only {sent} bytes: no flood"
        assert grown < bound, f"b's peak memory grew by {grown >> 20} MiB for {sent >> 20} MiB sent"

        async def echo() -> None:
            async with await AppClient.connect(b.socket) as app:
                await app.send(b.card, REQUEST, rid=1, body=b"still here")
                assert (await app.recv_type(REPLY, timeout_s=60))["body"] == b"still here"

        asyncio.run(echo())
        assert b.running
    finally:
        b.stop()
