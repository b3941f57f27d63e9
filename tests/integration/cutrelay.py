"""A buyer's program whose delivery connection drops half-way (the ticketing tests' dropped-connection cases)."""

from __future__ import annotations

import asyncio
import contextlib

from cardnet.services.ticketing.buyer import _relay, receipt_header, server_address
from cardnet.transport import BrokenError, ClosedError
from cardnet.transport.http_upgrade import dial_trn


async def cut_relay(url: str, app_socket: str, poid: bytes, receipt: bytes, frames_to_card: int) -> None:
    """Like the buyer's program (the ticketing server at ``url``, the buyer's host at ``app_socket``), but the
    connection drops once ``frames_to_card`` frames reached the card, and the card's answers to the last of them are
    lost with it. With a fresh session the frames to the card are session.hello, session.finish, the copy and the
    commit."""
    up = await dial_trn(*server_address(url), "POST", f"/tickets/{poid.hex()}", headers=[receipt_header(receipt)])
    local = await _relay(app_socket, bytes.fromhex(up.headers["trn-device"]))
    passed = 0

    async def back() -> None:
        with contextlib.suppress(BrokenError, ClosedError):
            while True:
                msgs = await local.recv_many()
                if passed < frames_to_card:
                    await up.conn.send_many(msgs)

    task = asyncio.create_task(back())
    try:
        async with asyncio.timeout(10):
            while passed < frames_to_card:
                msg = await up.conn.recv()
                passed += 1
                await local.send(msg)
            await asyncio.sleep(0.1)  # the card answers what it got (and the answer is lost)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await up.conn.aclose()
        await local.aclose()
