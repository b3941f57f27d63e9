"""An application process's side of the host's Unix socket.

::

    async with await AppClient.connect("/run/cardnet/alice.sock") as app:
        print(app.uid)                      # the Uid the host's card granted
        await app.send(card_uid, ECHO_REQUEST, rid=1, body=b"hi")
        reply = await app.recv()

The host fixes ``src``: this client can only send as ``app.uid``.

An application that does not read its socket fast enough loses messages (the host queues at most 4,096 for it):
the host then sends ``host.missed {count, mtype}`` in their place, which :meth:`AppClient.recv` returns like any
message and counts in :attr:`AppClient.missed`. An application that gets it should read its card's state again
(the wallet library does: ``Wallet.subscription`` gets a ``missed`` event with the card's vouchers and exchanges);
an order whose answer was among the dropped messages gets none.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

from cardnet.host import mtypes as hm
from cardnet.host.errors import HostError
from cardnet.transport import DEFAULT_LIMITS, Limits, TcpConnection
from cardnet.wire import DecodeError, Message, MType, Uid

_NOBODY = Uid(bytes(12), 0)
# What to do when the host does not let an application use a card, by the host's reason (host.refused's code).
CONNECT_HINTS = {
    "no_card": "name one of the host's cards (the message lists their domains) with --card DOMAIN",
    "store_failed": "free space on the disk that holds the card's store (the host's log names it), then try again",
}
_MISSED = hm.MISSED.code
_UNDELIVERABLE = hm.UNDELIVERABLE.code


def undeliverable(msg: Message, uid: Uid) -> None:
    """Raise :class:`HostError` ``undeliverable`` if ``msg`` is the host's notice that an order of the application
    at ``uid`` could not be given to its card (``host.undeliverable`` from that card), with the host's reason."""
    if msg.mtype != _UNDELIVERABLE or msg.src != uid.card_uid():
        return
    try:
        p = hm.UNDELIVERABLE.parse(msg)
    except DecodeError:
        return
    raise HostError("undeliverable", f"the host could not give the order (mtype 0x{p['mtype']:04x}) to the card: "
                    f"{p['reason']}")  # fmt: skip


class AppClient:
    def __init__(self, conn: TcpConnection, uid: Uid) -> None:
        self.conn = conn
        self.uid = uid
        self.missed = 0  # messages the host dropped for this connection, as its host.missed notices said

    @classmethod
    async def connect(cls, path: str, *, card: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> AppClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=limits.read_chunk_bytes)
        conn = TcpConnection(reader, writer, limits)
        fields: dict[str, Any] = {} if card is None else {"card": card}
        await conn.send(hm.ACQUIRE.make_from(_NOBODY, _NOBODY, fields))
        answer = await conn.recv()
        if answer.mtype != hm.ACQUIRED.code:
            await conn.aclose()
            refused = hm.REFUSED.parse(answer) if answer.mtype == hm.REFUSED.code else {"reason": "it did not answer"}
            code = refused.get("code") or "no_port"
            which = "a card" if card is None else f"card {card.hex()}"
            raise HostError(
                code,
                f"the host at {path} did not let this program use {which}: {refused['reason']}",
                hint=CONNECT_HINTS.get(code, "the host's log says why; try again once it is mended"),
            )
        return cls(conn, hm.ACQUIRED.parse(answer)["uid"])

    async def send(self, dst: Uid, mtype: MType, /, **fields: Any) -> Message:
        msg = mtype.make_from(self.uid, dst, fields)
        await self.conn.send(msg)
        return msg

    async def send_message(self, msg: Message) -> None:
        await self.conn.send(msg)

    async def recv(self) -> Message:
        """The next message from the host (a ``host.missed`` notice too: it is counted in :attr:`missed`)."""
        msg = await self.conn.recv()
        if msg.mtype == _MISSED and msg.src == self.uid.card_uid():
            with contextlib.suppress(DecodeError):
                self.missed += hm.MISSED.parse(msg)["count"]
        return msg

    async def recv_type(self, mtype: MType, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """The params of the next message of ``mtype`` (others are skipped). The host's ``host.undeliverable`` for
        an order of this connection (its card could not take it: its store cannot be written, say) raises
        :class:`HostError` ``undeliverable`` at once, with the host's reason, instead of waiting for the timeout."""
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await self.recv()
                if msg.mtype == mtype.code:
                    return mtype.parse(msg)
                undeliverable(msg, self.uid)

    async def aclose(self) -> None:
        await self.conn.aclose()

    async def __aenter__(self) -> AppClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
