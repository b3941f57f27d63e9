"""The far end of a ``ReconnectingLink`` in the link tests: a real ``TcpServer`` on 127.0.0.1 whose accepted
connections wait in ``accepted`` and stay open until ``hold`` is set (or the peer is closed)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

from cardnet.transport import BackoffPolicy, ReconnectingLink, TcpConnection, TcpServer, dialer
from cardnet.wire import Message


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


CONFIRM = 0x7FF0  # the link tests' confirmation type (each test file encodes its runs its own way: ``parse``)
FAST = BackoffPolicy(initial_s=0.005, max_s=0.05)


def confirming_link(
    port: int,
    seed: int,
    parse: Callable[[Message], Sequence[int]],
    on_taken: Callable[[list[object]], None],
    **limits: int,
) -> ReconnectingLink:
    """A link to 127.0.0.1:``port`` whose peer confirms with :data:`CONFIRM` frames (read by ``parse``), its owner
    told by ``on_taken``; ``limits`` (``max_queue``, ``max_queue_bytes``) as the test needs."""
    return ReconnectingLink(
        dialer("127.0.0.1", port), rng=random.Random(seed), policy=FAST, confirm_mtype=CONFIRM,
        parse_confirm=parse, on_taken=on_taken, **limits,
    )  # fmt: skip
