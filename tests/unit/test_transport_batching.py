"""Batches on real connections: ``send_many`` / ``recv_many`` and ``ReconnectingLink.send_many_nowait``.

Every TCP test runs twice, plain and mutual TLS, between two asyncio endpoints
on 127.0.0.1 (a :class:`TcpServer` and :func:`dial`, built as the conformance
suite builds them); the in-memory pair checks the defaults in
:class:`~cardnet.transport.base.ConnectionBase`. Every wait is bounded by an
asyncio timeout that only guards against hangs; no test asserts on how long
anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from test_transport_conformance import client_ctx, server_ctx

from cardnet.transport import (
    MIN_FRAME,
    PREFIX_BYTES,
    BackoffPolicy,
    BrokenError,
    ClosedError,
    Connection,
    Limits,
    ReconnectingLink,
    TcpConnection,
    TcpServer,
    TransportError,
    dial,
    dialer,
    memory_pair,
)
from cardnet.wire import Message, Uid

GUARD_S = 10.0  # only ever a guard against hangs, never asserted
LIMITS = Limits(
    max_frame=1024 * 1024,
    max_pending_sends=4,
    write_buffer_bytes=64 * 1024,
    read_chunk_bytes=16 * 1024,
    inbox_messages=8,
    linger_s=GUARD_S,  # a close flushes what a test sent while the peer is still reading it
    connect_timeout_s=5.0,
)
SRC = Uid(b"\x0a" * 12, 1)
DST = Uid(b"\x0b" * 12, 2)
HEADER = MIN_FRAME  # a message without param is just its header
KINDS = ["tcp", "tls"]


def m(i: int, size: int = 8) -> Message:
    """Message number ``i`` with ``size`` bytes of filler (its param starts with ``i``)."""
    return Message(SRC, DST, i % 65536, i.to_bytes(4, "big") + b"\x5a" * size)


def index(msg: Message) -> int:
    return int.from_bytes(msg.param[:4], "big")


def frame_bytes(msgs: list[Message]) -> int:
    return sum(PREFIX_BYTES + x.size for x in msgs)


def too_big() -> Message:
    return Message(SRC, DST, 1, b"x" * LIMITS.max_frame)  # header + param: above the frame limit


@pytest.fixture(autouse=True)
def _no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Unretrieved task exceptions and callback errors are logged by asyncio, not raised: fail on them."""
    yield
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(6 * GUARD_S):
            await main()

    asyncio.run(guarded())


@contextlib.asynccontextmanager
async def tcp_pair(kind: str) -> AsyncIterator[tuple[TcpConnection, TcpConnection]]:
    """A dialled connection and the server's end of it (TLS with the conformance suite's throwaway PKI)."""
    accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()

    async def on_connection(conn: TcpConnection) -> None:
        accepted.put_nowait(conn)
        await asyncio.Event().wait()  # keep it until the server closes (which cancels this handler)

    tls = kind == "tls"
    async with TcpServer(limits=LIMITS) as server:
        await server.start("127.0.0.1", 0, on_connection, ssl_context=server_ctx() if tls else None)
        client = await dial("127.0.0.1", server.port, client_ctx() if tls else None, limits=LIMITS)
        async with client:
            yield client, await asyncio.wait_for(accepted.get(), GUARD_S)


async def recv_batches(conn: Connection, n: int) -> list[list[Message]]:
    """``recv_many`` until ``n`` messages arrived; the batches as returned."""
    batches: list[list[Message]] = []
    got = 0
    while got < n:
        batch = await conn.recv_many()
        assert batch, "recv_many returns at least the next message"
        batches.append(batch)
        got += len(batch)
    assert got == n, "more arrived than was sent"
    return batches


async def recv_to_end(conn: Connection) -> tuple[list[Message], BrokenError]:
    """``recv_many`` until the connection ends; what arrived and how it ended."""
    got: list[Message] = []
    while True:
        try:
            got += await conn.recv_many()
        except BrokenError as end:
            return got, end


# --- order and sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_send_many_and_recv_many_keep_order_with_single_sends_in_between(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):
            sent: list[Message] = []
            for start in (0, 100, 200):
                batch = [m(start + i, 50 * i) for i in range(20)]
                await a.send_many(batch)
                await a.send(m(start + 99))
                sent += [*batch, m(start + 99)]
            await a.send_many([])  # nothing to send: nothing sent
            got = [x for batch in await recv_batches(b, len(sent)) for x in batch]
            assert got == sent
            # and the other way, the batch as one send_many, received one recv at a time
            back = [m(1000 + i, i) for i in range(30)]
            await b.send_many(back)
            assert [await a.recv() for _ in back] == back
            assert a.pending_sends == b.pending_sends == 0
            assert not a.closed and not b.closed

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_larger_than_the_write_mark_and_a_read_chunk_arrives_whole_and_in_order(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):
            batch = [m(i, (i * 137) % 3000) for i in range(400)]
            batch[150] = m(150, 200 * 1024)  # one frame alone is above the mark and the read chunk
            total = frame_bytes(batch)
            assert total > 4 * LIMITS.write_buffer_bytes and total > 4 * LIMITS.read_chunk_bytes
            _, batches = await asyncio.gather(a.send_many(batch), recv_batches(b, len(batch)))
            assert [x for got in batches for x in got] == batch
            assert a.pending_sends == 0
            # recv_many hands out what one read completed: after the first message (which may have started in
            # earlier reads), every message of a batch lies inside one read chunk.
            for got in batches:
                assert frame_bytes(got[1:]) <= LIMITS.read_chunk_bytes
            assert max(len(got) for got in batches) > 1, "small frames share a read: recv_many batches them"
            # the sender's buffer stayed within the mark plus one frame
            assert a.write_buffer_bytes <= LIMITS.write_buffer_bytes + max(PREFIX_BYTES + x.size for x in batch)

    run(main)


# --- oversize ------------------------------------------------------------------------------------


async def _oversize_in_the_middle(a: Connection, b: Connection) -> None:
    with pytest.raises(TransportError) as err:
        await a.send_many([m(0), m(1), too_big(), m(3)])
    assert err.value.reason == "oversize"
    assert not a.closed and a.pending_sends == 0
    await a.send_many([m(10), m(11)])
    got = [x for batch in await recv_batches(b, 2) for x in batch]
    assert [index(x) for x in got] == [10, 11]  # nothing of the refused batch went out


@pytest.mark.parametrize("kind", KINDS)
def test_oversize_in_the_middle_of_a_batch_sends_nothing(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):
            await _oversize_in_the_middle(a, b)
            at_limit = Message(SRC, DST, 2, b"y" * (LIMITS.max_frame - HEADER))
            _, got = await asyncio.gather(a.send_many([at_limit]), b.recv())
            assert got == at_limit

    run(main)


def test_memory_default_send_many_refuses_oversize_before_sending_anything() -> None:
    async def main() -> None:
        a, b = memory_pair(LIMITS)
        await _oversize_in_the_middle(a, b)
        assert b.inbox_size == 0
        await a.aclose()

    run(main)


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_cancelled_send_many_has_written_whole_frames_of_a_prefix(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):  # b does not read until the sender is stuck
            # ~24 MiB of large, uneven frames: far more than the socket buffers hold while nobody reads
            batch = [m(i, 256 * 1024 + (i * 104_729) % (700 * 1024)) for i in range(40)]
            task = asyncio.create_task(a.send_many(batch))
            # Wait until it is stuck waiting for room: it wrote something and the buffer stays above the
            # low-water mark (asyncio's default, a quarter of the high one) only while writing is paused.
            while a.write_buffer_bytes <= LIMITS.write_buffer_bytes // 4:
                assert not task.done(), "the socket buffers absorbed the whole batch: make it bigger"
                await asyncio.sleep(0.001)
            assert not task.done() and a.pending_sends == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert a.pending_sends == 0 and not a.closed
            reader = asyncio.create_task(recv_to_end(b))  # b starts reading: the sender gets room again
            marker = m(999_999)
            await a.send(marker)  # after the prefix: the stream must still be at a frame boundary
            a.close()  # graceful: what was written is flushed while b reads
            got, end = await reader
            await a.wait_closed()
        assert end.__cause__ is None  # a clean end at a frame boundary, not DecodeError('truncated')
        assert got[-1] == marker
        k = len(got) - 1
        assert 0 < k < len(batch)
        assert got[:k] == batch[:k]

    run(main)


def test_memory_default_send_many_cancelled_has_sent_a_prefix() -> None:
    async def main() -> None:
        a, b = memory_pair(LIMITS)
        batch = [m(i) for i in range(3 * LIMITS.inbox_messages)]
        task = asyncio.create_task(a.send_many(batch))
        while b.inbox_size < LIMITS.inbox_messages:  # the peer's inbox fills; the sender waits for room
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.pending_sends == 0
        got = [x for batch_ in await recv_batches(b, LIMITS.inbox_messages) for x in batch_]
        assert got == batch[: LIMITS.inbox_messages]
        await a.send(m(999))
        assert await b.recv_many() == [m(999)]  # memory's recv_many is the default: a batch of one
        await a.aclose()

    run(main)


# --- closed and broken ---------------------------------------------------------------------------


async def _send_many_after_close(a: Connection, b: Connection) -> None:
    await a.send_many([m(1), m(2)])
    await a.aclose()
    for msgs in ([m(3)], [], [too_big()]):  # "closed" wins, whatever the batch
        with pytest.raises(ClosedError) as err:
            await a.send_many(msgs)
        assert err.value.reason == "closed"
    with pytest.raises(ClosedError):
        await a.recv_many()
    got, end = await recv_to_end(b)
    assert [index(x) for x in got] == [1, 2]
    assert end.reason == "broken"


@pytest.mark.parametrize("kind", KINDS)
def test_send_many_on_a_closed_connection_raises_closed(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):
            await _send_many_after_close(a, b)

    run(main)


def test_memory_send_many_on_a_closed_connection_raises_closed() -> None:
    async def main() -> None:
        a, b = memory_pair(LIMITS)
        await _send_many_after_close(a, b)

    run(main)


async def _recv_many_after_peer_close(a: Connection, b: Connection) -> None:
    sent = [m(i, 100 * i) for i in range(6)]
    await a.send_many(sent)
    a.close()
    got, end = await recv_to_end(b)
    assert got == sent  # everything sent before the close first...
    assert end.reason == "broken" and end.__cause__ is None  # ...then the end, a clean one
    with pytest.raises(BrokenError):  # sticky
        await b.recv_many()
    with pytest.raises(BrokenError):
        await b.send_many([m(7)])
    await b.aclose()
    with pytest.raises(ClosedError):  # once we closed it, "closed" wins
        await b.recv_many()
    await a.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
def test_recv_many_after_the_peer_closed(kind: str) -> None:
    async def main() -> None:
        async with tcp_pair(kind) as (a, b):
            await _recv_many_after_peer_close(a, b)

    run(main)


def test_memory_recv_many_after_the_peer_closed() -> None:
    async def main() -> None:
        a, b = memory_pair(LIMITS)
        await _recv_many_after_peer_close(a, b)

    run(main)


# --- ReconnectingLink.send_many_nowait -----------------------------------------------------------


FAST_BACKOFF = BackoffPolicy(initial_s=0.005, max_s=0.05, max_attempts=400)


@pytest.mark.parametrize("kind", KINDS)
def test_link_send_many_nowait_queues_up_to_the_first_refusal_and_says_how_many(kind: str) -> None:
    async def main() -> None:
        accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()

        async def on_connection(conn: TcpConnection) -> None:
            accepted.put_nowait(conn)
            await asyncio.Event().wait()

        tls = kind == "tls"
        async with TcpServer(limits=LIMITS) as server:
            await server.start("127.0.0.1", 0, on_connection, ssl_context=server_ctx() if tls else None)
            link = ReconnectingLink(
                dialer("127.0.0.1", server.port, client_ctx() if tls else None, limits=LIMITS),
                rng=random.Random(3),
                policy=FAST_BACKOFF,
                max_queue=4,
                max_frame=LIMITS.max_frame,
                label="batch link",
            )
            # not started yet: everything waits in the bounded queue
            assert link.send_many_nowait([m(i) for i in range(6)]) == 4  # room for 4
            assert link.queued == 4
            assert link.send_many_nowait([m(6)]) == 0  # full: nothing queued, nothing raised
            with pytest.raises(TransportError) as err:
                link.send_nowait(m(6))  # what send_nowait refuses is where send_many_nowait stops
            assert err.value.reason == "queue_full"
            assert link.send_many_nowait([]) == 0
            async with link:
                srv = await asyncio.wait_for(accepted.get(), GUARD_S)
                got = [x for batch in await recv_batches(srv, 4) for x in batch]
                assert [index(x) for x in got] == [0, 1, 2, 3]
                assert link.queued == 0  # taken off the queue once the connection accepted them
                # an oversize message stops the batch: the ones before it are queued, it and the rest are not
                assert link.send_many_nowait([m(10), m(11), too_big(), m(13)]) == 2
                with pytest.raises(TransportError) as err:
                    link.send_nowait(too_big())
                assert err.value.reason == "oversize"
                link.send_nowait(m(14))
                got = [x for batch in await recv_batches(srv, 3) for x in batch]
                assert [index(x) for x in got] == [10, 11, 14]
            with pytest.raises(ClosedError) as closed:  # closed: raises like send, queues nothing
                link.send_many_nowait([m(20)])
            assert closed.value.reason == "closed"
            assert link.queued == 0

    run(main)


def test_link_send_many_nowait_raises_once_the_link_gave_up() -> None:
    async def main() -> None:
        server = TcpServer(limits=LIMITS)
        await server.start("127.0.0.1", 0, lambda conn: asyncio.sleep(0))
        port = server.port
        await server.aclose()  # nothing listens there any more: every dial is refused
        link = ReconnectingLink(
            dialer("127.0.0.1", port, limits=LIMITS),
            rng=random.Random(5),
            policy=BackoffPolicy(initial_s=0.001, max_s=0.002, max_attempts=2),
            max_queue=8,
            label="doomed link",
        )
        assert link.send_many_nowait([m(1), m(2)]) == 2
        async with link:
            with pytest.raises(BrokenError):
                await link.wait_connected()
            assert link.failed is not None
            with pytest.raises(BrokenError) as err:
                link.send_many_nowait([m(3), m(4)])
            assert err.value.reason == "broken" and "gave up" in str(err.value)
            assert isinstance(err.value.__cause__, BrokenError)  # the last dial failure
            assert [index(x) for x in link.unsent()] == [1, 2]  # nothing more was queued

    run(main)


def test_a_link_queue_is_bounded_in_bytes_as_well_as_in_messages() -> None:
    """``max_queue_bytes``: a link whose peer is down holds at most that many bytes of messages (one message of any
    size in an empty queue), whatever the message count allows: what does not fit is refused ``queue_full``."""

    async def main() -> None:
        link = ReconnectingLink(dialer("127.0.0.1", 9, limits=LIMITS), rng=random.Random(5), max_queue=100,
                                max_queue_bytes=1000, label="bytes link")  # fmt: skip
        big = m(1, 400)  # 438 bytes
        assert link.send_many_nowait([big, m(2, 400), m(3, 400), m(4)]) == 2  # 876 bytes: the third would pass 1000
        assert link.queued == 2 and link.queued_bytes == 2 * big.size
        with pytest.raises(TransportError) as err:
            link.send_nowait(m(3, 400))
        assert err.value.reason == "queue_full" and f"{2 * big.size} bytes" in str(err.value)
        link.send_nowait(m(4, 50))  # what still fits is taken
        assert link.queued_bytes == 2 * big.size + m(4, 50).size
        assert [index(x) for x in link.unsent()] == [1, 2, 4] and link.queued_bytes == 0
        assert link.send_many_nowait([m(5, 5000), m(6)]) == 1  # alone in an empty queue, a message of any size
        assert link.queued_bytes == m(5, 5000).size

    run(main)
