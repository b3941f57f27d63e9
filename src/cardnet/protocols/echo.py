"""Echo: the smallest request/response protocol, used to test hosts and the simulator.

Theory of operation
-------------------
A client sends ``echo.request {rid, body}`` to a server card and resends it
on a timer until it sees ``echo.reply {rid, body, count}``. The server
processes each request id exactly once (it remembers ids it has processed)
and answers duplicates with the same reply. Invariant: every request the
client saw acknowledged was processed exactly once by the server (``count``
is 1 and stays 1).

The client here is a sans-I/O state machine: ``request(body, now)`` and
``on_timer(now)`` return messages to send; ``receive(msg, now)`` takes replies;
``timer()`` says when to call ``on_timer`` next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cardnet.wire import Bytes, DecodeError, Field, Message, Schema, Uid, UInt, register

MAX_BODY = 1024

REQUEST = register(
    0x0F20, "echo.request", "echo", Schema("echo.request", [Field(0, "rid", UInt()), Field(1, "body", Bytes(MAX_BODY))])
)
REPLY = register(
    0x0F21,
    "echo.reply",
    "echo",
    Schema("echo.reply", [Field(0, "rid", UInt()), Field(1, "body", Bytes(MAX_BODY)), Field(2, "count", UInt())]),
)


@dataclass
class EchoClient:
    """Client side: numbered requests, resent every ``retry_s`` until answered (at most ``max_tries``)."""

    src: Uid
    dst: Uid
    retry_s: float = 0.5
    max_tries: int = 50
    next_rid: int = 1
    pending: dict[int, tuple[bytes, float, int]] = field(default_factory=dict)  # rid -> (body, due, tries)
    acked: dict[int, int] = field(default_factory=dict)  # rid -> count the server reported

    def request(self, body: bytes, now: float) -> Message:
        rid = self.next_rid
        self.next_rid += 1
        self.pending[rid] = (body, now + self.retry_s, 1)
        return REQUEST.make(self.src, self.dst, rid=rid, body=body)

    def receive(self, msg: Message, now: float) -> None:
        if msg.mtype != REPLY.code or msg.src != self.dst:
            return
        try:
            p = REPLY.parse(msg)
        except DecodeError:
            return  # garbled on the way (a host may tamper with what it carries): the timer resends the request
        rid = p["rid"]
        if rid in self.pending and self.pending[rid][0] == p["body"]:
            del self.pending[rid]
            self.acked[rid] = p["count"]
        elif rid in self.acked:
            self.acked[rid] = max(self.acked[rid], p["count"])

    def timer(self) -> float | None:
        return min((due for _, due, _ in self.pending.values()), default=None)

    def on_timer(self, now: float) -> list[Message]:
        out = []
        for rid, (body, due, tries) in list(self.pending.items()):
            if due <= now and tries < self.max_tries:
                self.pending[rid] = (body, now + self.retry_s, tries + 1)
                out.append(REQUEST.make(self.src, self.dst, rid=rid, body=body))
            elif due <= now:
                self.pending[rid] = (body, float("inf"), tries)  # gave up; stays unacknowledged
        return out
