"""Peers that complete mutual TLS, send a frame and close at once do not write the host's log once each.

A real host process (``cardnet host run`` with ``[tls]``) and 150 connections from a client holding a valid host
certificate: each completes the handshake, writes one message and its TLS close_notify in one go, and closes. The
server accepts plain TCP and then starts TLS (so that caps and the handshake timeout hold before any TLS work);
Python 3.11's stream protocol learns that it runs over TLS only once ``start_tls`` returns, so a close_notify
arriving in the handshake's last flight made asyncio log ``returning true from eof_received() has no effect when
using ssl`` for that connection: a peer wrote a warning into the host's log each time it connected (about 80 a
second). Now the log gains no such line.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

from hostprocs import make_hosts

from cardnet.protocols.echo import REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Uid

CONNECTIONS = 150


def test_tls_peers_that_send_and_close_at_once_leave_no_line_each_in_the_log(tmp_path: Path) -> None:
    _, b = make_hosts(tmp_path, ["a", "b"], ["echo"], tls=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # a's identity: a peer the host's TLS lets in
    ctx.check_hostname = False
    ctx.load_verify_locations(str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "a.pem"), str(tmp_path / "a.key"))
    frame = encode_frame(REQUEST.make(Uid(os.urandom(12), 7), Uid(os.urandom(12), 0), rid=1, body=b"x"))

    async def connect_send_close() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", b.port, ssl=ctx, server_hostname=None)
        writer.write(frame)
        writer.close()  # close_notify right behind the frame
        await writer.wait_closed()

    async def flood() -> None:
        for _ in range(CONNECTIONS // 10):
            await asyncio.gather(*(connect_send_close() for _ in range(10)), return_exceptions=True)

    b.start()
    try:
        before = len(b.log().splitlines())
        asyncio.run(flood())
        time.sleep(1.0)  # the host handles the last ones
        assert b.running
        added = b.log().splitlines()[before:]
    finally:
        b.stop()
    assert not [ln for ln in added if "eof_received" in ln], f"{len(added)} lines, e.g. {added[:3]}"
    assert len(added) <= 5, added[:10]
