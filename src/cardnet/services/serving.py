"""A service core over TCP with group commit: the shape the SPEED vendor and broker share.

Theory of operation
-------------------
Each connection reads its requests in turn: a request is queued, and the connection waits for its answer
before it reads the next one. A batcher takes every request waiting at that moment, from all connections (at
most :data:`MAX_GROUP`), and answers them one after another, in arrival order, in one worker-thread call,
inside one ``group()`` of the core's store (:meth:`~cardnet.store.sqlite.SqliteStore.group`): each request's
transactions are savepoints of one transaction that commits once, with one fsync for the whole group. Only
after that commit are the answers handed back, and each connection sends its request's frames, in order.
So nothing leaves before the write that decided it is durable, as when every request committed alone, and
the core still sees one request at a time (one thread, one after another): its in-memory state needs no lock.

* A request whose ``answer`` raises does not take the others down: its transactions rolled back alone
  (savepoints), and its exception goes to its own connection, which fails as it would have alone (the TCP
  server logs it and closes that connection).
* If the group's commit fails, nothing of it was kept: every request of the group gets the error, and no
  frame of any of them is sent.
* A request that fails because the store cannot be written (a :class:`~cardnet.store.StoreError` ``io``: a full
  disk, a file-size limit, a failing disk; the group's commit or the request's own write) is answered with
  ``refused(request, "store_failed", words)`` (the protocol's refusal; :func:`store_failed_words`: nothing of
  that request was kept, try it again later) and the connection goes on: the client is told at once, in words,
  instead of seeing its connection closed without a reason, and may send the same request again. The store's
  own error goes to the log alone (it names the server's files). Without ``refused`` (or when it gives None)
  the connection fails as for any other error.
* A frame of an answer above the connection's frame limit costs only itself
  (:func:`~cardnet.transport.send_batch`): the answer's other frames are sent, in order, with ``oversize(request,
  frame)`` in its place (the protocol's refusal; nothing when there is no ``oversize`` or it gives None), it is
  logged, and the connection goes on.
* A request above the server's receive limit (``recv_limit``: the largest request the service takes, by mtype)
  is refused at its 34-byte header, its body never read (:class:`~cardnet.transport.TooLarge`): the answers to
  the requests before it are sent, then ``too_large(frame)`` (the protocol's refusal, saying the limit), and the
  connection is closed; the others go on. The send limit stays the connection's ``max_frame``.
* :attr:`GroupCommitServer.lock` is held while a group runs; subclasses take it for core calls of their own
  (the broker's settlement), which then never run inside or beside a group.
* :meth:`GroupCommitServer.call` lets the service's owner run other store work in the next group (the
  ticketing server's pages and receipts): its result comes back after that group's commit.

With one customer at a time a group holds one request, and the cost is one thread hand-off as before; with
many, the fsync (and the hand-off) is shared by everything that waited while the last group ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from cardnet.store import StoreError
from cardnet.transport import (
    DEFAULT_LIMITS,
    DEFAULT_SERVER_LIMITS,
    BrokenError,
    ClosedError,
    Instead,
    Limits,
    RecvLimit,
    ServerLimits,
    SkippedFrame,
    TcpConnection,
    TcpServer,
    TooLarge,
    send_batch,
)
from cardnet.wire import Message

log = logging.getLogger("cardnet.services.serving")

T = TypeVar("T")
MAX_GROUP = 64  # requests answered in one group (one transaction, one fsync)
MAX_WAITING = 1024  # requests queued for the next groups (a connection queues one at a time)

Group = Callable[[], AbstractContextManager[None]]
"""``store.group``: one transaction, committed once at the end of the block, for everything done inside."""

_Work = tuple[Callable[[], Any], "asyncio.Future[Any]"]

Oversize = Callable[[Message, Message], Message | None]
"""``oversize(request, frame)``: what to send instead of a frame of the request's answer that is above the
connection's frame limit (the protocol's refusal), or None to leave it out."""

Refuse = Callable[[SkippedFrame], Message | None]
"""``too_large(frame)``: what to send the peer that began ``frame`` (its header and size), a request above the
server's receive limit, before the connection is closed (the protocol's refusal), or None to send nothing."""

Refused = Callable[[Message, str, str], Message | None]
"""``refused(request, reason, detail)``: the protocol's refusal of ``request`` (its reason code and its words), or
None to send nothing and close the connection."""

STORE_FAILED = "store_failed"
"""The reason code of a request refused because the service's store cannot be written (as the host's)."""


def store_failed_words() -> str:
    """What a client is told when its request failed because the service cannot write its store."""
    return ("the service cannot write its store (its disk may be full): nothing of this request was kept; send it "
            "again later, once the service's operator has freed space on its disk")  # fmt: skip


class GroupCommitServer:
    """``answer`` served over TCP, requests waiting at once answered in one group commit (see the module)."""

    def __init__(
        self,
        answer: Callable[[Message], list[Message]],
        *,
        group: Group,
        server_limits: ServerLimits = DEFAULT_SERVER_LIMITS,
        max_group: int = MAX_GROUP,
        limits: Limits = DEFAULT_LIMITS,
        oversize: Oversize | None = None,
        recv_limit: RecvLimit | None = None,
        too_large: Refuse | None = None,
        refused: Refused | None = None,
    ) -> None:
        """``limits``: each connection's bounds (its frame limit among them); ``oversize``, ``recv_limit`` (replaces
        ``limits.recv_limit``), ``too_large`` and ``refused``: see the module."""
        if max_group < 1:
            raise ValueError(f"max_group is at least 1, got {max_group}")
        if recv_limit is not None:
            limits = dataclasses.replace(limits, recv_limit=recv_limit)
        self._too_large = too_large
        self._refused = refused
        self._answer = answer
        self._group = group
        self._max_group = max_group
        self._oversize = oversize
        self._server = TcpServer(limits=limits, server_limits=server_limits)  # caps and timeouts on the port
        self._waiting: asyncio.Queue[_Work] = asyncio.Queue(maxsize=MAX_WAITING)
        self._batcher: asyncio.Task[None] | None = None
        self._taken: list[_Work] = []  # what the batcher took from the queue for the group it forms or runs
        self.lock = asyncio.Lock()  # held while a group runs (subclasses take it for their own core calls)
        self.groups = 0  # groups committed
        self.grouped = 0  # requests (and calls) answered in them

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        if self._batcher is None:
            self._batcher = asyncio.get_running_loop().create_task(self._batching())
        try:
            await self._server.start(host, port, self._serve)
        except BaseException:
            await self.aclose()
            raise
        return self._server.address

    async def aclose(self) -> None:
        await self._server.aclose()
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        left = self._taken
        while not self._waiting.empty():
            left.append(self._waiting.get_nowait())
        for _, fut in left:  # taken or queued, and not run: they will not run now
            if not fut.done():
                fut.set_exception(ClosedError("the service closed before this request was answered; try again"))
        self._taken = []

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker thread inside the next group; its result (or exception) once that group
        has committed."""
        if self._batcher is None:
            raise ClosedError("the service is not running: start() it first")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._waiting.put((functools.partial(fn, *args), fut))
        return await fut  # type: ignore[no-any-return]

    async def _serve(self, conn: TcpConnection) -> None:
        with contextlib.suppress(BrokenError, ClosedError):
            while True:
                try:
                    msg = await conn.recv()
                except TooLarge as exc:  # refused at its header, unread: tell the peer, then close
                    refusal = None if self._too_large is None else self._too_large(exc.frame)
                    if refusal is not None:
                        await send_batch(conn, [refusal])
                    return
                try:
                    frames = await self.call(self._answer, msg)  # raises the request's error, or the group's
                except StoreError as exc:  # the store cannot be written: nothing of it was kept; say so, go on
                    if exc.reason != "io":  # (a damaged or closed store: not a write that failed)
                        raise
                    refusal = None if self._refused is None else self._refused(msg, STORE_FAILED, store_failed_words())
                    if refusal is None:
                        raise
                    log.error("refused a request (mtype 0x%04x) from %s: the store cannot be written (%s); free "
                              "space on its disk", msg.mtype, conn.peer.label, exc)  # fmt: skip
                    await send_batch(conn, [refusal])
                    continue
                # frames of one request: in order, after its group committed; one above the frame limit costs itself
                await send_batch(conn, frames, self._instead(msg))

    def _instead(self, request: Message) -> Instead | None:
        oversize = self._oversize
        if oversize is None:
            return None
        return lambda _i, frame, _err: oversize(request, frame)

    async def _batching(self) -> None:
        """Take what waits (up to ``max_group``), answer it in one group under the lock, hand the results back."""
        q = self._waiting
        loop = asyncio.get_running_loop()
        while True:
            work = self._taken = [await q.get()]
            async with self.lock:  # what arrives while the lock is busy (a group, settlement) joins this group
                while len(work) < self._max_group and not q.empty():
                    work.append(q.get_nowait())
                work[:] = [(fn, fut) for fn, fut in work if not fut.done()]  # callers that went away
                if not work:
                    continue
                running = loop.run_in_executor(None, self._run_group, [fn for fn, _ in work])
                try:
                    results = await asyncio.shield(running)
                except asyncio.CancelledError:
                    # closing: let the group finish (its commit) before the store may be closed under it
                    with contextlib.suppress(Exception):
                        self._deliver(work, await running)
                    raise
                except Exception as exc:  # the group's commit failed: nothing of it was kept, nothing is sent
                    log.error("a group of %d request(s) failed to commit: %s", len(work), exc)
                    for _, fut in work:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
            self._deliver(work, results)
            # let the connections write these answers before the next group's thread competes for the interpreter
            await asyncio.sleep(0)

    def _deliver(self, work: list[_Work], results: list[tuple[bool, Any]]) -> None:
        """Hand a committed group's results to their callers."""
        self.groups += 1
        self.grouped += len(work)
        for (_, fut), (ok, value) in zip(work, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_group(self, fns: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """In the worker thread: each of ``fns`` in turn inside one group; (True, result) or (False, exception)
        for each. Raises when the group's commit fails."""
        out: list[tuple[bool, Any]] = []
        with self._group():
            for fn in fns:
                try:
                    out.append((True, fn()))
                except Exception as exc:  # its own savepoints rolled back; the others go on
                    out.append((False, exc))
        return out
