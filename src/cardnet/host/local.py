"""A card held in this process and driven by one trusted application of its owner (the card proxy's shortest form).

A service whose card lives in its own process (the SPEED broker's SAM, a benchmark's customers) opens the card
from its store, takes a port and verifies the PIN once, then sends orders and reads the one answer each gets.
The step is the card's (atomic, durable); answers are acknowledged as soon as they are read, since nothing
else carries them. This is the trusted in-process embedding of DESIGN.md section 4: applications that are not
trusted go through a host's application socket instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cardnet.card import Applet, Card
from cardnet.card import mtypes as cm
from cardnet.host.errors import HostError
from cardnet.store import SqliteStore
from cardnet.wire import Message, MType, Uid, lookup

HOST_PORT = 2**32 - 1


class LocalCard:
    """``card`` driven by a PIN-verified application port (see the module)."""

    def __init__(self, card: Card, pin: str, *, clock: Callable[[], float] = time.time) -> None:
        self.card = card
        self._clock = clock
        self._lock = threading.Lock()  # one step at a time, whatever thread asks
        # answers a crash left unacknowledged were for an application that is gone: nobody will read them
        card.ack([o.seq for o in card.outbox() if o.seq is not None])
        grant = self._step(cm.PORT_REQUEST.make(Uid(card.uid.domain, HOST_PORT), card.uid))
        self.app = card.uid.with_port(cm.PORT_GRANT.parse(grant)["port"])
        r = cm.PIN_RESULT.parse(self._step(cm.PIN_VERIFY.make(self.app, card.uid, pin=pin)))
        if not r["ok"]:
            raise HostError("wrong_pin", f"the card refused the PIN ({r['tries_left']} tries left)")

    @classmethod
    def open(cls, path: str, applets: list[Applet], pin: str, *, clock: Callable[[], float] = time.time) -> LocalCard:
        """The card stored at ``path`` (a personalised card's SQLite file)."""
        return cls(Card(SqliteStore(path), applets=applets), pin, clock=clock)

    @property
    def uid(self) -> Uid:
        return self.card.uid

    @property
    def certificate_der(self) -> bytes:
        return self.card.certificate_der

    def _step(self, msg: Message) -> Message:
        with self._lock:
            outs = self.card.step(msg, self._clock())
            self.card.ack([o.seq for o in outs if o.seq is not None])
        if len(outs) != 1:
            raise HostError("bad_answer", f"the card answered {len(outs)} messages to one order")
        return outs[0].msg

    def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        """Send an order; the answer's fields, or :class:`HostError` with the card's reason if it refused."""
        got = self._step(mtype.make(self.app, self.card.uid, **fields))
        if got.mtype == cm.REFUSED.code:
            r = cm.REFUSED.parse(got)
            raise HostError(r["reason"], r["detail"] or r["reason"])
        if got.mtype != reply.code:
            raise HostError("bad_answer", f"the card answered {lookup(got.mtype).name}, not {reply.name}")
        return dict(reply.parse(got))

    def close(self) -> None:
        self.card.close()
