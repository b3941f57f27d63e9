"""The bench applet: each ``bench.count`` adds to a durable counter and answers.

The smallest applet that does what every real applet does in a step (read
state, write state, emit a reply), so ``cardnet bench card`` measures the
runtime, not a protocol.
"""

from __future__ import annotations

from typing import Any

from cardnet.card import Applet, StepContext
from cardnet.wire import Field, Message, Schema, UInt, register

COUNT = register(0x0F10, "bench.count", "bench", Schema("bench.count", [Field(0, "n", UInt())]))
COUNTED = register(
    0x0F11, "bench.counted", "bench", Schema("bench.counted", [Field(0, "n", UInt()), Field(1, "total", UInt())])
)


class CounterApplet(Applet):
    name = "counter"
    handles = (COUNT,)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        raw = ctx.get(b"total")
        total = (0 if raw is None else int.from_bytes(raw, "big")) + 1
        ctx.put(b"total", total.to_bytes(8, "big"))
        ctx.reply(COUNTED, n=params["n"], total=total)
