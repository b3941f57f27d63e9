"""A server reads large frames only in its places (``ServerLimits.max_large_frames``): real sockets, one process.

A peer that began a large frame and stopped holds its place; another peer's large frame is then read no further
until the place is free, and is whole as soon as it is. Small frames never wait for a place.
"""

from __future__ import annotations

import asyncio
import os
import socket

from cardnet.transport import TcpConnection, TcpServer, encode_frame
from cardnet.transport.base import ServerLimits
from cardnet.wire import Message, Uid

GUARD_S = 30.0
LIMITS = ServerLimits(large_frame_bytes=4096, max_large_frames=1, max_large_frames_per_peer=1)


def _frame(tag: int, size: int) -> bytes:
    return encode_frame(Message(Uid(os.urandom(12), tag), Uid(os.urandom(12), 0), 0x0101, bytes(size)))


def test_a_large_frame_waits_for_the_place_a_stalled_one_holds_and_small_frames_never_wait() -> None:
    async def main() -> None:
        got: asyncio.Queue[int] = asyncio.Queue()

        async def on_connection(conn: TcpConnection) -> None:
            while True:
                got.put_nowait((await conn.recv()).src.port)

        async with TcpServer(server_limits=LIMITS) as server:
            await server.start("127.0.0.1", 0, on_connection)
            first, second, small = _frame(1, 200_000), _frame(2, 200_000), _frame(3, 100)
            a = socket.create_connection(("127.0.0.1", server.port))
            b = socket.create_connection(("127.0.0.1", server.port))
            c = socket.create_connection(("127.0.0.1", server.port))
            try:
                a.sendall(first[:100_000])  # begun, then stalled: it holds the one place
                await asyncio.sleep(0.3)
                await asyncio.to_thread(b.sendall, second)  # the kernel takes it; the server reads no more of it
                await asyncio.to_thread(c.sendall, small)
                assert await asyncio.wait_for(got.get(), GUARD_S) == 3  # a small frame needs no place
                await asyncio.sleep(0.5)
                assert got.empty(), "the second large frame was read while the first held the only place"
                await asyncio.to_thread(a.sendall, first[100_000:])
                arrived = [await asyncio.wait_for(got.get(), GUARD_S) for _ in range(2)]
                assert arrived == [1, 2]  # the first whole, its place freed, then the second read to its end
            finally:
                for s in (a, b, c):
                    s.close()

    asyncio.run(main())


def test_server_limits_refuse_a_large_frame_bound_that_is_not_a_positive_int() -> None:
    for name in ("large_frame_bytes", "max_large_frames", "max_large_frames_per_peer"):
        for bad in (0, -1, 1.5, True):
            try:
                ServerLimits(**{name: bad})  # type: ignore[arg-type]
            except Exception as exc:
                assert name in str(exc)
            else:
                raise AssertionError(f"ServerLimits({name}={bad!r}) was taken")
