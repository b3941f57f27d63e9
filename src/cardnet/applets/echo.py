"""The echo server applet (see :mod:`cardnet.protocols.echo`).

``EchoApplet`` processes each request id once and answers duplicates with the
same reply. ``ForgetfulEchoApplet`` is deliberately broken — it forgets its
dedup and processes every delivery — so tests can show the simulator finds
the bug.
"""

from __future__ import annotations

from typing import Any

from cardnet.card import Applet, StepContext
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.wire import Message, Uid


def request_key(src: Uid, rid: int) -> bytes:
    """Where the server keeps how often it processed request ``rid`` of client ``src``."""
    return b"rid:" + bytes(src) + rid.to_bytes(8, "big")


class EchoApplet(Applet):
    name = "echo"
    handles = (REQUEST,)
    dedup = True

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        key = request_key(msg.src, params["rid"])
        raw = ctx.get(key)
        count = 0 if raw is None else int.from_bytes(raw, "big")
        if count == 0 or not self.dedup:
            count += 1
            ctx.put(key, count.to_bytes(8, "big"))
        ctx.reply(REPLY, rid=params["rid"], body=params["body"], count=count)


class ForgetfulEchoApplet(EchoApplet):
    """Broken on purpose: processes duplicates again."""

    dedup = False
