"""A peer that opens connection after connection with a bad frame cannot make a server write its log at its pace.

A real host process; the attacker opens 2,000 connections to its port, each sending a length prefix of 4 GiB (no
cardnet peer sends that) and closing. Each is closed by the host at once, as before; but before, each also wrote
its own warning line (``closing connection from ...: bad frame (oversize)``, 230 bytes), so the log grew as fast
as the attacker could connect. Now such lines are logged at most ``BAD_FRAME_LOG_BURST`` times every
``BAD_FRAME_LOG_EVERY_S`` (the next saying how many were left out), and a real echo succeeds after.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from hostprocs import make_hosts

from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST

CONNECTIONS = 2000
MAX_LINES = 100  # bad-frame warnings the flood may cause (BAD_FRAME_LOG_BURST per window it lasts)
GUARD_S = 120.0  # a test that waits longer than this for the host has failed (no assertion on time)


async def _flood(port: int) -> None:
    gate = asyncio.Semaphore(100)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\xff\xff\xff\xff")
            with contextlib.suppress(ConnectionError):
                await reader.read()  # the host closes it
            writer.transport.abort()

    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


async def _echo(socket: str, card: object) -> None:
    async with await AppClient.connect(socket) as app:
        await app.send(card, REQUEST, rid=1, body=b"after")  # type: ignore[arg-type]
        assert (await app.recv_type(REPLY, timeout_s=60))["body"] == b"after"


def test_connections_with_a_bad_frame_are_logged_a_few_times_a_window(tmp_path: Path) -> None:
    [b] = make_hosts(tmp_path, ["b"], ["echo"])
    try:
        b.start()
        asyncio.run(_flood(b.port))
        asyncio.run(_echo(b.socket, b.card))
        lines = [line for line in b.log().splitlines() if "bad frame" in line]
        assert 1 <= len(lines) <= MAX_LINES, len(lines)
        assert b.running
    finally:
        b.stop()


async def _http_requests(port: int, count: int) -> list[bytes]:
    """``count`` HTTP requests to a cardnet port, each on its own connection (a browser trying again); what each got."""
    answers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            answers.append(await asyncio.wait_for(reader.read(), GUARD_S))  # the host closes it
        writer.transport.abort()
    return answers


def test_an_http_request_on_a_hosts_port_is_logged_once_in_words(tmp_path: Path) -> None:
    """A person points a browser (or curl) at a host's port, again and again: the host closes each connection and logs
    one line, once for that address, saying what it was. Before: one 'bad frame (oversize): frame length 1195725856
    is above the limit ...' line per request (the length "GET " spells)."""
    [b] = make_hosts(tmp_path, ["b"], ["echo"])
    try:
        b.start()
        answers = asyncio.run(_http_requests(b.port, 5))
        assert all(a == b"" for a in answers), answers  # closed, nothing answered
        asyncio.run(_echo(b.socket, b.card))
        log = b.log()
        said = [line for line in log.splitlines() if "non-cardnet bytes" in line]
        assert len(said) == 1, said
        assert "an HTTP request (or other non-cardnet bytes) on a cardnet port from 127.0.0.1: closed" in said[0], said
        assert "1195725856" not in log and "bad frame" not in log, log[-2000:]
        assert b.running
    finally:
        b.stop()
