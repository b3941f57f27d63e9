"""A service core over TCP, one request at a time: the shape the SPEED vendor and broker share.

Each connection's requests are read in turn; a request is answered by ``answer(msg)`` (the core's decision,
which may write its store durably) in a worker thread, under one lock for the whole service, so the core sees
one request at a time whatever the number of connections. The frames it returns are sent in order, after it
returned: nothing leaves before the core's write has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cardnet.transport import DEFAULT_SERVER_LIMITS, BrokenError, ClosedError, ServerLimits, TcpConnection, TcpServer
from cardnet.wire import Message


class SerialServer:
    """``answer`` served over TCP, one request at a time (see the module)."""

    def __init__(
        self, answer: Callable[[Message], list[Message]], *, server_limits: ServerLimits = DEFAULT_SERVER_LIMITS
    ) -> None:
        self._answer = answer
        self._server = TcpServer(server_limits=server_limits)  # caps and timeouts on the listening port
        self.lock = asyncio.Lock()  # held while the core works (subclasses take it for their own core calls)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._server.start(host, port, self._serve)
        return self._server.address

    async def aclose(self) -> None:
        await self._server.aclose()

    async def _serve(self, conn: TcpConnection) -> None:
        with contextlib.suppress(BrokenError, ClosedError):
            while True:
                msg = await conn.recv()
                async with self.lock:
                    frames = await asyncio.to_thread(self._answer, msg)
                for frame in frames:
                    await conn.send(frame)
