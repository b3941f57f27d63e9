"""The eTP benchmark applet: card-to-card round trips and one-way streams.

* ``bench.ping_start {peer, count, window, notify}`` (from an app): the card
  keeps ``window`` pings in flight to ``peer`` until ``count`` pongs came back,
  then tells ``notify`` ``bench.ping_done {count}``.
* ``bench.ping {i}`` -> ``bench.pong {i}`` (card to card).
* ``bench.blast {peer, count, notify}`` (from an app): the card sends ``count``
  ``bench.stream`` messages to ``peer`` in one step; the one marked ``last``
  makes the peer answer ``notify`` with ``bench.blast_done``.
"""

from __future__ import annotations

import struct
from typing import Any

from cardnet.card import Applet, StepContext
from cardnet.wire import Bool, Field, Message, Schema, Uid, UidType, UInt, register

MAX_BLAST = 512

PING_START = register(
    0x0F40,
    "bench.ping_start",
    "bench",
    Schema(
        "bench.ping_start",
        [
            Field(0, "peer", UidType()),
            Field(1, "count", UInt(10**9)),
            Field(2, "window", UInt(1024)),
            Field(3, "notify", UidType()),
        ],
    ),
)
PING = register(0x0F41, "bench.ping", "bench", Schema("bench.ping", [Field(0, "i", UInt())]))
PONG = register(0x0F42, "bench.pong", "bench", Schema("bench.pong", [Field(0, "i", UInt())]))
PING_DONE = register(0x0F43, "bench.ping_done", "bench", Schema("bench.ping_done", [Field(0, "count", UInt())]))
BLAST = register(
    0x0F44,
    "bench.blast",
    "bench",
    Schema(
        "bench.blast",
        [Field(0, "peer", UidType()), Field(1, "count", UInt(MAX_BLAST)), Field(2, "notify", UidType())],
    ),
)
STREAM = register(
    0x0F45,
    "bench.stream",
    "bench",
    Schema("bench.stream", [Field(0, "i", UInt()), Field(1, "last", Bool()), Field(2, "notify", UidType())]),
)
BLAST_DONE = register(0x0F46, "bench.blast_done", "bench", Schema("bench.blast_done", [Field(0, "received", UInt())]))


def _int(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


def _b(n: int) -> bytes:
    return n.to_bytes(8, "big")


_RUN = struct.Struct(">QQQ")  # a ping run's state, one record: pings sent, pongs received, pings to send in all


class PingPongApplet(Applet):
    name = "pingpong"
    handles = (PING_START, PING, PONG, BLAST, STREAM)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code == PING.code:
            ctx.reply(PONG, i=params["i"])
        elif code == PONG.code:
            raw = ctx.get(b"run")
            if raw is None:
                return  # a pong of no run (a late duplicate): nothing to count
            sent, received, total = _RUN.unpack(raw)
            received += 1
            if sent < total:
                ctx.emit(PING, msg.src, i=sent)
                sent += 1
            ctx.put(b"run", _RUN.pack(sent, received, total))
            if received == total:
                notify = ctx.get(b"notify")
                assert notify is not None
                ctx.emit(PING_DONE, Uid.from_bytes(notify), count=received)
        elif code == PING_START.code:
            window = min(params["window"], params["count"])
            ctx.put(b"run", _RUN.pack(window, 0, params["count"]))
            ctx.put(b"notify", bytes(params["notify"]))
            for i in range(window):
                ctx.emit(PING, params["peer"], i=i)
        elif code == BLAST.code:
            base = _int(ctx.get(b"blasted"))
            ctx.put(b"blasted", _b(base + params["count"]))
            for i in range(params["count"]):
                last = i == params["count"] - 1
                ctx.emit(STREAM, params["peer"], i=base + i, last=last, notify=params["notify"])
        else:  # STREAM
            got = _int(ctx.get(b"streamed")) + 1
            ctx.put(b"streamed", _b(got))
            if params["last"]:
                ctx.emit(BLAST_DONE, params["notify"], received=got)
