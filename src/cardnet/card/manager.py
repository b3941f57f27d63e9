"""The card manager: the applet every card has (ports, PIN, authenticated set).

* ``card.port_request`` -> ``card.port_grant``: a fresh port of this card's
  domain from a durable counter; a port is never handed out twice, even across
  tears and restarts (the counter and the grant commit together).
* ``card.pin_verify`` -> ``card.pin_result``: an application of this card's own
  domain (a granted port) proves the PIN; on success its Uid joins the
  authenticated-ID set (TENeT section 4.4), which is volatile: a restarted card
  forgets it, as a real card does on reset. The try counter is durable and is
  decremented in the same transaction that produces the answer, so tearing the
  card to hide a failed try is impossible; at zero the card is locked.
* ``card.logout``: the sender leaves the authenticated set.
"""

from __future__ import annotations

from typing import Any

from cardnet.card import mtypes as cm
from cardnet.card.applet import Applet, StepContext
from cardnet.card.errors import Refused
from cardnet.crypto import profile
from cardnet.wire import Message

MAX_PORT = 2**32 - 1


class CardManager(Applet):
    name = "card"
    handles = (cm.PORT_REQUEST, cm.PIN_VERIFY, cm.LOGOUT)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        if msg.mtype == cm.PORT_REQUEST.code:
            self._grant_port(ctx)
        elif msg.mtype == cm.PIN_VERIFY.code:
            self._verify_pin(ctx, params["pin"])
        else:
            ctx.set_authenticated(msg.src, False)

    def _grant_port(self, ctx: StepContext) -> None:
        raw = ctx.get(b"next_port")
        port = 1 if raw is None else int.from_bytes(raw, "big")
        if port > MAX_PORT:
            raise Refused("ports_exhausted", "this card has handed out every port")
        ctx.put(b"next_port", (port + 1).to_bytes(8, "big"))
        ctx.reply(cm.PORT_GRANT, port=port)

    def _verify_pin(self, ctx: StepContext, pin: str) -> None:
        src = ctx.src
        raw_next = ctx.get(b"next_port")
        next_port = 1 if raw_next is None else int.from_bytes(raw_next, "big")
        if src.domain != ctx.card_uid.domain or not 0 < src.port < next_port:
            raise Refused("refused", "only an application holding a port of this card may verify its PIN")
        left_raw = ctx.get(b"pin_left")
        salt = ctx.get(b"pin_salt")
        mac = ctx.get(b"pin_mac")
        max_raw = ctx.get(b"pin_max")
        assert left_raw is not None and salt is not None and mac is not None and max_raw is not None
        left = left_raw[0]
        if left == 0:
            raise Refused("pin_locked", "the PIN is locked after too many wrong tries: the card must be reissued")
        if profile.hmac_sha256(salt, pin.encode()) == mac:
            ctx.put(b"pin_left", max_raw)
            ctx.set_authenticated(src, True)
            ctx.reply(cm.PIN_RESULT, ok=True, tries_left=max_raw[0])
        else:
            ctx.put(b"pin_left", bytes([left - 1]))
            ctx.reply(cm.PIN_RESULT, ok=False, tries_left=left - 1)
