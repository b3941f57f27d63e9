"""A remote peer cannot make a host hold more than a bounded number of bytes for an application that does not read.

A remote host may send to an application's Uid (``domain|port``) on this host: the host queues it for that
application's connection. An application that does not read its socket (busy, stopped in a debugger) fills it; the
host then keeps at most ``APP_QUEUE`` messages for it and drops the rest, telling it with ``host.missed``. Before,
that bound counted messages only: an attacker sending 1 MiB messages to an application's Uid made the host hold up
to 4 GiB for it (``b``'s resident memory grew by the attacker's traffic, 800 MB for 800 messages). Now it also holds
at most ``APP_QUEUE_BYTES``; the application, once it reads again, is told how many it missed and its card answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from hostprocs import make_hosts
from procstatus import proc_status

from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.server import APP_QUEUE_BYTES
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Message, Uid

BIG = 1024 * 1024  # bytes of each message
COUNT = 600  # messages the attacker sends: 600 MiB, far above what b may hold for the application
SLACK = 96 * 1024 * 1024  # b's peak memory may grow by the queue, what its socket and buffers hold, and this much
GUARD_S = 120.0  # a test that waits longer than this for the host has failed (no assertion on time)


def test_messages_for_an_application_that_does_not_read_are_held_up_to_a_byte_bound(tmp_path: Path) -> None:
    [b] = make_hosts(tmp_path, ["b"], ["echo"])

    async def main(pid: int) -> None:
        async with await AppClient.connect(b.socket) as app:  # it reads nothing until the flood is over
            before = proc_status(pid, "VmRSS")
            frame = encode_frame(Message(Uid(os.urandom(12), 5), app.uid, REQUEST.code, bytes(BIG - 34)))
            with socket.create_connection(("127.0.0.1", b.port), timeout=GUARD_S) as sock:
                for _ in range(COUNT):
                    await asyncio.to_thread(sock.sendall, frame)
                sock.shutdown(socket.SHUT_WR)
                while await asyncio.to_thread(sock.recv, 65536):  # b read everything and closed
                    pass
            grown = proc_status(pid, "VmHWM") - before
            assert grown < APP_QUEUE_BYTES + SLACK, f"b's peak memory grew by {grown >> 20} MiB"
            async with asyncio.timeout(GUARD_S):
                while (msg := await app.recv()).mtype != hm.MISSED.code:  # what it was sent, then the notice
                    assert msg.mtype == REQUEST.code
            assert hm.MISSED.parse(msg)["count"] > 0
            await app.send(b.card, REQUEST, rid=1, body=b"still here")
            assert (await app.recv_type(REPLY, timeout_s=60))["body"] == b"still here"

    try:
        b.start()
        assert b.proc is not None
        asyncio.run(main(b.proc.pid))
        assert b.running
    finally:
        b.stop()
