"""The messaging library (TENeT 4.3.2): capabilities, handlers with filters, observers.

``Host.acquire()`` asks a local card for a port and returns a
:class:`Capability` whose ``src`` is fixed to the acquired ``Uid``: it is the
only way to send from that Uid. In-process capabilities are for **trusted
embedding**: Python cannot keep one object from reaching another inside a
process, so untrusted applications run as separate processes and connect over
the host's local socket, where the host fixes ``src`` per connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cardnet.host import mtypes as hm
from cardnet.host.errors import HostError
from cardnet.wire import Message, MType, Uid

if TYPE_CHECKING:
    from cardnet.host.core import Host

MAX_INBOX = 10_000


@dataclass(frozen=True)
class Filter:
    """Matches messages by mtype, src, dst or src domain (None = any)."""

    mtype: int | None = None
    src: Uid | None = None
    dst: Uid | None = None
    src_domain: bytes | None = None

    def matches(self, msg: Message) -> bool:
        return (
            (self.mtype is None or msg.mtype == self.mtype)
            and (self.src is None or msg.src == self.src)
            and (self.dst is None or msg.dst == self.dst)
            and (self.src_domain is None or msg.src.domain == self.src_domain)
        )


Handler = Callable[[Message], None]


class Capability:
    """The right to send as one Uid and to receive what is addressed to it."""

    def __init__(self, host: Host, uid: Uid) -> None:
        self._host = host
        self._uid = uid
        self._inbox: deque[Message] = deque()
        self._handlers: list[tuple[Filter, Handler]] = []
        self._closed = False
        self._missed = 0  # dropped from the inbox since the last host.missed notice
        self._first_missed = 0
        self.missed_total = 0

    @property
    def uid(self) -> Uid:
        return self._uid

    def send(self, dst: Uid, mtype: MType, /, **fields: Any) -> Message:
        """Send a message of ``mtype`` from this capability's Uid."""
        return self.send_message(mtype.make_from(self._uid, dst, fields))

    def send_message(self, msg: Message) -> Message:
        """Send a prepared message; its ``src`` must be this capability's Uid."""
        if self._closed:
            raise HostError("closed", f"capability {self._uid} was closed")
        if msg.src != self._uid:
            raise HostError("forged_src", f"this capability sends as {self._uid}, not {msg.src}")
        self._host._submit_from_app(msg)
        return msg

    def on(self, handler: Handler, *, mtype: MType | int | None = None, src: Uid | None = None) -> None:
        """Call ``handler`` for matching messages instead of queueing them in the inbox."""
        code = mtype.code if isinstance(mtype, MType) else mtype
        self._handlers.append((Filter(mtype=code, src=src), handler))

    def receive(self) -> Message | None:
        """The oldest message not taken by a handler, or None (``host.missed`` first if the inbox overflowed)."""
        if self._missed:
            return self._missed_notice()
        return self._inbox.popleft() if self._inbox else None

    def receive_all(self) -> list[Message]:
        out = [self._missed_notice()] if self._missed else []
        out += self._inbox
        self._inbox.clear()
        return out

    def _deliver(self, msg: Message) -> None:
        for flt, handler in self._handlers:
            if flt.matches(msg):
                handler(msg)
                return
        inbox = self._inbox
        if len(inbox) >= MAX_INBOX:  # the oldest goes; the application is told (host.missed, in its place)
            lost = inbox.popleft()
            if not self._missed:
                self._first_missed = lost.mtype
            self._missed += 1
            self.missed_total += 1
        inbox.append(msg)

    def _missed_notice(self) -> Message:
        count, self._missed = self._missed, 0
        return hm.MISSED.make(self._uid.card_uid(), self._uid, count=min(count, 0xFFFFFFFF), mtype=self._first_missed)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._host._detach_app(self._uid)
