"""Remote peers (or local applications) that send faster than a host's card can step do not crowd out a
well-behaved host.

Two real host processes, ``a`` and ``b``. An attacker (a process of its own) opens 300 connections to ``b``'s port
from ten loopback addresses (within ``b``'s caps) and sends on each, as fast as ``b`` reads, small messages for ``b``'s
card (privileged ones from a domain with no route: each costs ``b`` a card step and is refused). Meanwhile an
application on ``a`` sends echo requests to ``b``'s card, one after the other. Before, ``b`` read everything and
dropped what did not fit its dispatch table: the table stayed full, ``a``'s requests were dropped with the rest
(no echo came back within 10 s) and ``b``'s own applications were refused ``busy``. Now ``b`` reads its remote
connections only while its table has room, a slice of each connection's read at a time (server.REMOTE_PAUSE,
REMOTE_SLICE): the attacker waits in its sockets and every connection gets its turn, ``a``'s too. So do ``b``'s
application connections: 200 of them flooding the card starved ``a``'s requests just the same.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostprocs import make_hosts
from procstatus import proc_status

from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST

FLOOD_S = 10.0
ATTACKER = """
import asyncio, sys
from cardnet.applets.notes import READ_NOTES
from cardnet.transport import encode_frame
from cardnet.wire import Uid
port, domain, until = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), float(sys.argv[3])
frame = encode_frame(READ_NOTES.make(Uid(bytes(11) + b"\\x07", 5), Uid(domain, 0))) * 100
async def one(i):
    loop = asyncio.get_running_loop()
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 10}", 0))
        while loop.time() < until:
            w.write(frame)
            await asyncio.wait_for(w.drain(), max(until - loop.time(), 0.01))
        w.transport.abort()
    except (OSError, TimeoutError):
        pass
async def main():
    global until
    until += asyncio.get_running_loop().time()
    await asyncio.gather(*(one(i) for i in range(300)))
asyncio.run(main())
"""
APPS = """
import asyncio, sys
from cardnet.applets.notes import READ_NOTES
from cardnet.host.client import AppClient
from cardnet.wire import Uid
path, domain, until = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
async def one():
    loop = asyncio.get_running_loop()
    async with await AppClient.connect(path) as app:
        batch = [READ_NOTES.make(app.uid, Uid(domain, 0))] * 50
        while loop.time() < until:
            await asyncio.wait_for(app.conn.send_many(batch), max(until - loop.time(), 0.01))
async def main():
    global until
    until += asyncio.get_running_loop().time()
    await asyncio.gather(*(one() for _ in range(200)), return_exceptions=True)
asyncio.run(main())
"""


@pytest.mark.parametrize("flood", ["remote", "apps"])
def test_a_flood_of_connections_leaves_a_turn_for_a_well_behaved_host(tmp_path: Path, flood: str) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo", "notes"])
    a.start()
    b.start()
    attacker = None
    try:

        async def echo(rid: int) -> float:
            t = time.monotonic()
            async with await AppClient.connect(a.socket) as app:
                await app.send(b.card, REQUEST, rid=rid, body=b"still served?")
                assert (await app.recv_type(REPLY, timeout_s=10))["body"] == b"still served?"
            return time.monotonic() - t

        asyncio.run(echo(1))  # the link from a to b is up
        script, where = (ATTACKER, str(b.port)) if flood == "remote" else (APPS, b.socket)
        attacker = subprocess.Popen([sys.executable, "-c", script, where, b.domain.hex(), str(FLOOD_S)])
        time.sleep(1.5)  # the flood is on
        took = [asyncio.run(echo(rid)) for rid in (2, 3)]  # each within 10 s, or recv_type raises TimeoutError
        assert attacker.poll() is None, f"the flood ended before the echoes did ({took} s): no test"
        assert b.running and proc_status(b.proc.pid, "VmHWM") < 600 * 1024 * 1024  # type: ignore[union-attr]
        attacker.wait(30)
        assert asyncio.run(echo(5)) < 5.0  # once the flood is over, served at once
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        a.stop()
        b.stop()
    assert "dispatch table full" not in b.log(), b.log_tail()
    assert max(took) < 10.0, took
