"""The far end of a ``ReconnectingLink`` in the link tests: a real ``TcpServer`` on 127.0.0.1 whose accepted
connections wait in ``accepted`` and stay open until ``hold`` is set (or the peer is closed)."""

from __future__ import annotations

import asyncio

from cardnet.transport import TcpConnection, TcpServer


class Peer:
    def __init__(self, port: int = 0) -> None:
        self._port = port  # where it listens (0: the OS's pick)
        self.accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()
        self.hold = asyncio.Event()
        self.server = TcpServer()

    @property
    def port(self) -> int:
        return self.server.port

    async def _on_connection(self, conn: TcpConnection) -> None:
        self.accepted.put_nowait(conn)
        await self.hold.wait()

    async def start(self) -> Peer:
        await self.server.start("127.0.0.1", self._port, self._on_connection)
        return self

    async def aclose(self) -> None:
        """Gone for good: nothing listens on its port any more."""
        self.hold.set()
        await self.server.aclose()

    async def __aenter__(self) -> Peer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
