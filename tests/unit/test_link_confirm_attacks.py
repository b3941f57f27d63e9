"""``ReconnectingLink`` confirmations against a peer that abuses them: real TCP connections on 127.0.0.1, the peer
a test connection writing the confirmation frames an attacker would (a malicious authenticated host, or a man in
the middle of a link without TLS).

A peer that confirms once and then never again keeps every message written to it in flight: they count against the
link's byte bound as queued ones do (before, only their number was bounded: ``max_queue`` times ``max_frame``
bytes). A confirmation frame of numbers that are not in flight (replayed, never written, far behind) costs the link
at most one look at each message in flight, not one per number it names (before: 2048 runs of up to every number
written on the connection, each looked up, per frame: minutes of CPU for a few frames). Every wait is bounded by an
asyncio timeout that only guards against hangs.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

import pytest
from linkpeer import CONFIRM, Peer, confirming_link

from cardnet.transport import TcpConnection, TransportError
from cardnet.transport.link import HOLD_DOWN_SWEEPS, HOLD_LIVE_SWEEPS
from cardnet.wire import Message, Uid

GUARD_S = 20.0
A, B = Uid(bytes([1]) * 12, 0), Uid(bytes([2]) * 12, 0)


def m(i: int, size: int = 4) -> Message:
    return Message(A, B, 0x7F01, i.to_bytes(4, "big") + bytes(size - 4))


def confirm(*runs: int) -> Message:  # runs [first, count, ...] as big-endian 32-bit numbers in the param
    return Message(B, A, CONFIRM, struct.pack(f">{len(runs)}I", *runs))


def parse(msg: Message) -> Sequence[int]:
    return list(struct.unpack(f">{len(msg.param) // 4}I", msg.param))


async def read(conn: TcpConnection, n: int) -> list[int]:
    got: list[int] = []
    while len(got) < n:
        got += [int.from_bytes(msg.param[:4], "big") for msg in await conn.recv_many()]
    return got


def test_a_peer_that_stops_confirming_holds_no_more_than_the_links_byte_bound() -> None:
    async def main() -> None:
        async with Peer() as peer:
            link = confirming_link(peer.port, 1, parse, lambda _: None, max_queue=1000, max_queue_bytes=10_000)
            async with link:
                link.send_nowait(m(0, 1000), "t0")
                conn = await peer.accepted.get()
                assert await read(conn, 1) == [0]
                await conn.send(confirm())  # "I confirm" ... and then never does
                sent = 1
                with pytest.raises(TransportError) as refused:
                    for i in range(1, 50):  # 50 KB in all, one at a time, each written before the next
                        link.send_nowait(m(i, 1000), f"t{i}")
                        sent += 1
                        assert await read(conn, 1) == [i]
                assert refused.value.reason == "queue_full" and "not confirmed" in str(refused.value)
                assert sent <= 10 and link.in_flight == sent  # 10 000 bytes: written, unconfirmed, all kept
                peer.hold.set()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_confirmations_of_numbers_not_in_flight_cost_no_work_per_number_named() -> None:
    async def main() -> None:
        taken: list[object] = []
        n = 20_000
        async with Peer() as peer:
            link = confirming_link(peer.port, 2, parse, taken.extend, max_queue=n)
            async with link:
                assert link.send_many_nowait([m(i) for i in range(n)], list(range(n))) == n
                conn = await peer.accepted.get()
                assert await read(conn, n) == list(range(n))
                await conn.send(confirm(1, n - 1))  # all but number 0, kept in flight
                while len(taken) < n - 1:
                    await asyncio.sleep(0.01)
                assert link.in_flight == 1
                # the flood: 2048 runs a frame, each naming the 19 999 numbers already confirmed (replays)
                flood = confirm(*([1, n - 1] * 2048))
                for _ in range(30):
                    await conn.send(flood)
                await conn.send(confirm(0, 1))  # read after the flood, on the same connection
                while 0 not in taken:
                    await asyncio.sleep(0.01)
                assert link.in_flight == 0 and sorted(taken) == list(range(n))  # each released once
                peer.hold.set()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_after_a_long_outage_the_messages_that_were_in_flight_count_once_against_the_byte_bound() -> None:
    async def main() -> None:
        peer = await Peer().start()
        port = peer.port
        link = confirming_link(port, 3, parse, lambda _: None, max_queue=1000, max_queue_bytes=10_000)
        async with link:
            assert link.send_many_nowait([m(i, 1000) for i in range(5)], [f"t{i}" for i in range(5)]) == 5
            conn = await peer.accepted.get()
            assert await read(conn, 5) == list(range(5))
            await conn.send(confirm())  # confirms, but not these: 5 of them in flight
            while link.in_flight != 5 or link.queued:
                await asyncio.sleep(0.01)
            peer.hold.set()
            await peer.aclose()  # the peer is gone for good (nothing listens on its port)
            while link.connected:
                await asyncio.sleep(0.01)
            for _ in range(HOLD_DOWN_SWEEPS + 1):
                link.sweep()
            size = m(0, 1000).size  # (1 034 bytes: with its header)
            assert link.in_flight == 0 and link.queued == 5 and link.queued_bytes == 5 * size
            # the same bytes, now queued: room for 4 more of them in 10 000, not (counted twice) none
            assert link.send_many_nowait([m(i, 1000) for i in range(5, 11)]) == 4

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_a_peer_that_confirms_once_and_then_withholds_gets_the_tokens_released_after_a_bound() -> None:
    """The owner (a host's card) holds a message's token until the peer confirms it: a peer that said it confirms and
    then confirmed nothing kept a card's answers to it in the card's outbox for ever, on a live connection (the
    outbox fills the card's store: out_of_memory for everyone). Now after ``HOLD_LIVE_SWEEPS`` sweeps with such a
    peer connected the tokens are released, and the messages written once more."""

    async def main() -> None:
        taken: list[object] = []
        async with Peer() as peer:
            link = confirming_link(peer.port, 4, parse, taken.extend)
            async with link:
                link.send_many_nowait([m(1), m(2)], ["t1", "t2"])
                conn = await peer.accepted.get()
                assert await read(conn, 2) == [1, 2]
                await conn.send(confirm())  # "I confirm" ... and then never does
                reader = asyncio.create_task(read(conn, 10**9))  # it reads everything, confirms nothing
                sweeps = 0
                while not taken:
                    while link.in_flight != 2:  # (written, or written again)
                        await asyncio.sleep(0.01)
                    link.sweep()
                    sweeps += 1
                    await asyncio.sleep(0.02)
                    assert sweeps <= HOLD_LIVE_SWEEPS + 2
                assert sorted(map(str, taken)) == ["t1", "t2"] and link.tokens() == []
                while link.in_flight or link.queued:  # written once more, unconfirmed, and no longer held
                    await asyncio.sleep(0.01)
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                peer.hold.set()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))
