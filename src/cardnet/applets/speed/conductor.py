"""The customer's trusted conductor of SPEED purchases (issue 12, item 3): signs, remembers, pays once.

The customer's key never leaves the card, so everything the customer signs in SPEED is signed here, and the
card signs a PaymentOrder only for the bill it agreed to. Owner orders (privileged: only an application that
verified the PIN):

* ``speed.sign_request {mode, content}``: the NegotiationRequest (normal mode) or ProductRequest (aggressive)
  content the wallet built; the card checks it, remembers the negotiation (NID, VendorID, H(ProductIDs), the
  product count; in aggressive mode the price too: that request *is* the agreement) and answers its CMS
  signature with the card's certificate (``speed.signed {cms}``).
* ``speed.certificate`` (not privileged) -> ``speed.cert {cert}``: the card's certificate, which the broker's
  SAM needs to seal the purse key to this card.
* ``speed.handshake {nid, vendor_id, price}``: the customer accepts the vendor's offer; the card records the
  price as agreed and answers the signed Handshake content ``{NID, Price, VendorID, H(ProductIDs)}``.
* ``speed.open_bill {sealed}`` -> ``speed.bill {bill}``: an aggressive-mode bill opened (it is sealed to this
  card), so that the wallet can check the delivery against it before it asks the card to pay.
* ``speed.pay {bill, vendor_cert, kind, benc?, bsign?, account?}``: ``bill`` is the vendor's signed bill
  (normal mode: the wallet took it out of its EnKey envelope) or the envelope sealed to this card (aggressive
  mode: only the card opens it). The card checks the vendor's signature and certificate (role service, this
  card's CA), that the VendorID is the vendor's key, and that PaymentOrderID, product hash, price and product
  count are what it agreed (paper 5.6); then it marks the PaymentOrderID paid, begins the purse debit (S1,
  purse mode) in the same step, and answers the signed PaymentOrder (``speed.order``). A second ``speed.pay``
  of the same bill gets the same PaymentOrder back (a crash lost the answer; the same S1, so the SAM debits
  once), without a look at the certificate's time: the card checked it when it made that order, and a purchase
  paid must be finished after the vendor's certificate expired; any other bill for a PaymentOrderID already paid
  is refused ``already_paid`` (paper 5.3).

The S2/S3 exchange itself is the purse's (``purse.debit``). Records (table ``a.speed``): ``g:<poid>`` a
negotiation or agreement (at most :data:`MAX_OPEN`; ``h:<seq>`` their order, oldest first), ``p:<poid>`` the
register of paid orders (never deleted), ``f:<poid>`` the whole PaymentOrder of the newest :data:`MAX_KEPT` paid
orders and ``q:<seq>`` their order: an older paid order asked again is refused ``already_paid`` (its receipt
comes from the broker's register).
"""

from __future__ import annotations

from typing import Any

from cardnet.applets.speed import purse as pa
from cardnet.card import Applet, Refused, StepContext
from cardnet.crypto import cms, pki
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.protocols.speed.purse import MAX_MESSAGE_BYTES
from cardnet.protocols.trn.transfer import MAX_CERT
from cardnet.wire import Bytes, DecodeError, Field, Message, Nested, Schema, Text, UInt, register

P = "speed"
TABLE = "a.speed"
_KEY = Bytes(sm.KEY_BYTES, sm.KEY_BYTES)
_PRICE = Schema("speed.c.price", [Field(0, "currency", Text(3)), Field(1, "amount", UInt(pp.MAX_AMOUNT))])

SIGN_REQUEST = register(
    0x0601,
    "speed.sign_request",
    P,
    Schema("speed.sign_request", [Field(0, "mode", Text(16)), Field(1, "content", Bytes(sm.MAX_SIGNED, 1))]),
    privileged=True,
)
SIGNED = register(0x0602, "speed.signed", P, Schema("speed.signed", [Field(0, "cms", Bytes(sm.MAX_SIGNED, 1))]))
HANDSHAKE = register(
    0x0603,
    "speed.handshake",
    P,
    Schema(
        "speed.handshake_order",
        [
            Field(0, "nid", Bytes(sm.NID_BYTES, sm.NID_BYTES)),
            Field(1, "vendor_id", Bytes(sm.VENDOR_ID_BYTES, sm.VENDOR_ID_BYTES)),
            Field(2, "price", Nested(_PRICE)),
        ],
    ),
    privileged=True,
)
PAY = register(
    0x0604,
    "speed.pay",
    P,
    Schema(
        "speed.pay",
        [
            Field(0, "bill", Bytes(sm.MAX_SEALED_SIGNED, 1)),
            Field(1, "vendor_cert", Bytes(MAX_CERT, 1)),
            Field(2, "kind", Text(8)),
            Field(3, "benc", _KEY, optional=True),
            Field(4, "bsign", _KEY, optional=True),
            Field(5, "account", Text(sm.MAX_ACCOUNT), optional=True),
        ],
    ),
    privileged=True,
)
ORDER = register(
    0x0605,
    "speed.order",
    P,
    Schema(
        "speed.order",
        [
            Field(0, "po", Bytes(sm.MAX_SIGNED * 2, 1)),
            Field(1, "poid", Bytes(sm.POID_BYTES, sm.POID_BYTES)),
            Field(2, "price", Nested(_PRICE)),
            Field(3, "bill", Bytes(sm.MAX_SIGNED, 1)),  # the signed bill (aggressive mode: opened by the card)
            Field(4, "s1", Bytes(MAX_MESSAGE_BYTES, 1), optional=True),
        ],
    ),
)
CERTIFICATE = register(0x0606, "speed.certificate", P, Schema("speed.certificate", []))
CERT = register(0x0607, "speed.cert", P, Schema("speed.cert", [Field(0, "cert", Bytes(MAX_CERT, 1))]))
OPEN_BILL = register(
    0x0608,
    "speed.open_bill",
    P,
    Schema("speed.open_bill", [Field(0, "sealed", Bytes(sm.MAX_SEALED_SIGNED, 1))]),
    privileged=True,
)
BILL = register(0x0609, "speed.bill", P, Schema("speed.bill", [Field(0, "bill", Bytes(sm.MAX_SIGNED, 1))]))
ORDERS = (SIGN_REQUEST, HANDSHAKE, PAY, CERTIFICATE, OPEN_BILL)

MAX_OPEN = 32  # negotiations signed and not yet paid; a 33rd drops the oldest of them
MAX_KEPT = 16  # whole payment orders kept for recovery; older paid orders keep only their register entry

_AGREEMENT = Schema(
    "speed.c.agreement",
    [
        Field(0, "hp", Bytes(32, 32)),
        Field(1, "count", UInt(sm.MAX_PRODUCTS)),
        Field(2, "mode", Text(16)),
        Field(3, "price", Nested(_PRICE), optional=True),
        Field(4, "seq", UInt(2**32 - 1)),  # its place in the order negotiations were opened (``h:<seq>``)
    ],
)
_PAID = Schema(
    "speed.c.paid",
    [
        Field(0, "bill", Bytes(sm.MAX_SIGNED, 1)),
        Field(1, "po", Bytes(sm.MAX_SIGNED * 2, 1)),
        Field(2, "s1", Bytes(MAX_MESSAGE_BYTES, 1), optional=True),
    ],
)


def _next_seq(rows: list[tuple[bytes, bytes]]) -> int:
    """After the last of ``rows`` (keys ``x:<seq, 4 bytes>``, in order); a full counter starts again at 0."""
    return (int.from_bytes(rows[-1][0][2:], "big") + 1) % 2**32 if rows else 0


def _refused(exc: ProtocolError | DecodeError | CryptoError | PkiError) -> Refused:
    return Refused(getattr(exc, "reason", "refused"), str(exc))


def _sign(ctx: StepContext, content: bytes) -> bytes:
    return cms.sign(content, ctx.certificate_der, ctx.sign, with_cert=True)


class ConductorApplet(Applet):
    """The SPEED conductor on the customer's card (see the module's docstring)."""

    name = "speed"
    handles = ORDERS

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        try:
            if msg.mtype == SIGN_REQUEST.code:
                self._sign_request(ctx, params["mode"], params["content"])
            elif msg.mtype == CERTIFICATE.code:  # public: what the broker's SAM needs to seal the purse key
                ctx.reply(CERT, cert=ctx.certificate_der)
            elif msg.mtype == OPEN_BILL.code:
                ctx.reply(BILL, bill=sm.open_with(ctx.hpke_open, params["sealed"], sm.INFO_BILL, "bill"))
            elif msg.mtype == HANDSHAKE.code:
                self._handshake(ctx, params["nid"], params["vendor_id"], sm.Price.of(params["price"]))
            else:
                self._pay(ctx, params)
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            raise _refused(exc) from None

    def _sign_request(self, ctx: StepContext, mode: str, content: bytes) -> None:
        if mode == "normal":
            f = sm.decode(sm.NEGOTIATION_REQUEST, content, "NegotiationRequest")
            if f["seqn"] != 0:
                raise Refused("bad_request", "a NegotiationRequest opens with SeqN 0")
            price = None
        elif mode == "aggressive":
            f = sm.decode(sm.PRODUCT_REQUEST, content, "ProductRequest")
            price = f["price"]
        else:
            raise Refused("bad_mode", f"a SPEED purchase is normal or aggressive, not {mode!r}")
        if "price" in f:
            sm.Price.of(f["price"])  # a well-formed currency and amount
        poid = sm.make_poid(f["vendor_id"], f["nid"])
        if ctx.get(b"p:" + poid, table=TABLE) is not None or ctx.get(b"g:" + poid, table=TABLE) is not None:
            raise Refused("nid_used", "this card has used that NID with that vendor already: draw another")
        rec: dict[str, Any] = {"hp": sm.products_hash(f["products"]), "count": len(f["products"]), "mode": mode}
        if price is not None:
            rec["price"] = price
        opened = ctx.scan(b"h:", table=TABLE)  # oldest first
        if len(opened) >= MAX_OPEN:  # the oldest abandoned negotiation (its vendor never delivered) makes room
            key, old = opened[0]
            ctx.delete(key, table=TABLE)
            ctx.delete(b"g:" + old, table=TABLE)
        rec["seq"] = seq = _next_seq(opened)
        ctx.put(b"h:" + seq.to_bytes(4, "big"), poid, table=TABLE)
        ctx.put(b"g:" + poid, _AGREEMENT.encode(rec), table=TABLE)
        ctx.reply(SIGNED, cms=_sign(ctx, content))

    def _agreement(self, ctx: StepContext, poid: bytes) -> dict[str, Any]:
        raw = ctx.get(b"g:" + poid, table=TABLE)
        if raw is None:
            raise Refused("no_negotiation", "this card signed no request for that NID and vendor")
        return dict(_AGREEMENT.decode(raw))

    def _handshake(self, ctx: StepContext, nid: bytes, vid: bytes, price: sm.Price) -> None:
        poid = sm.make_poid(vid, nid)
        if ctx.get(b"p:" + poid, table=TABLE) is not None:
            raise Refused("already_paid", "that purchase is paid already")
        rec = self._agreement(ctx, poid)
        if rec["mode"] != "normal":
            raise Refused("bad_mode", "an aggressive-mode purchase has no Handshake: its request is the agreement")
        if "price" in rec and sm.Price.of(rec["price"]) != price:
            raise Refused("agreed", f"this card agreed {sm.Price.of(rec['price'])} for that purchase already")
        rec["price"] = price.fields()
        ctx.put(b"g:" + poid, _AGREEMENT.encode(rec), table=TABLE)
        content = sm.HANDSHAKE.encode({"nid": nid, "price": price.fields(), "vendor_id": vid, "hp": rec["hp"]})
        ctx.reply(SIGNED, cms=_sign(ctx, content))

    def _pay(self, ctx: StepContext, p: dict[str, Any]) -> None:
        vendor_cert = p["vendor_cert"]
        signed_bill = p["bill"]
        if signed_bill[:1] != b"\x30":  # not DER: the aggressive mode's envelope, sealed to this card
            signed_bill = sm.open_with(ctx.hpke_open, signed_bill, sm.INFO_BILL, "bill")
        bill = sm.decode(sm.BILL, sm.signed(signed_bill, "bill", cert_der=vendor_cert).content, "bill")
        vid, nid = sm.split_poid(bill["poid"])
        if vid != sm.vendor_id(vendor_cert):
            raise Refused("wrong_vendor", "the bill's VendorID is not the key of the certificate that signed it")
        poid = bill["poid"]
        if ctx.get(b"p:" + poid, table=TABLE) is not None:
            paid = ctx.get(b"f:" + poid, table=TABLE)
            if paid is None:
                raise Refused("already_paid", "this card paid that PaymentOrderID long ago: ask the broker for its "
                              "receipt again (speed.resend)")  # fmt: skip
            rec = dict(_PAID.decode(paid))
            if rec["bill"] != signed_bill:
                raise Refused("already_paid", "this card paid that PaymentOrderID already: a bill is paid once")
            self._answer(ctx, rec, bill)  # the order this card made (the certificate checked then, whatever its
            return  # time now: a vendor's certificate that expired since must not leave a paid purchase unfinished)
        pki.verified(vendor_cert, ctx.roots_der, now=ctx.now, role=pki.Role.SERVICE)
        g = self._agreement(ctx, poid)
        if "price" not in g:
            raise Refused("not_agreed", "the customer has not shaken hands on a price for that purchase")
        agreement = sm.Agreement(nid, vid, g["hp"], sm.Price.of(g["price"]), g["mode"], g["count"])
        sm.check_bill(bill, agreement)
        mode: dict[str, Any] = {"kind": p["kind"]}
        rec = {"bill": signed_bill}
        if p["kind"] == "purse":
            if "benc" not in p or "bsign" not in p:
                raise Refused("bad_mode", "purse payment needs BEncKey and BSignKey for the S2/S3 exchange")
            s1 = pa.begin_debit(ctx, poid, agreement.price.currency, agreement.price.amount)
            mode.update(benc=p["benc"], bsign=p["bsign"], s1=s1)
            rec["s1"] = s1
        elif p["kind"] == "account":
            if "account" not in p:
                raise Refused("bad_mode", "account payment names the customer's account at the broker")
            mode["account"] = p["account"]
        else:
            raise Refused("bad_mode", f"payment is by purse or account, not {p['kind']!r}")
        rec["po"] = _sign(ctx, sm.PAYMENT_ORDER.encode({"bill": signed_bill, "mode": mode}))
        self._remember(ctx, poid, rec)
        ctx.delete(b"g:" + poid, table=TABLE)
        ctx.delete(b"h:" + g["seq"].to_bytes(4, "big"), table=TABLE)
        self._answer(ctx, rec, bill)

    @staticmethod
    def _remember(ctx: StepContext, poid: bytes, rec: dict[str, Any]) -> None:
        """Register ``poid`` as paid for good (``p:``, a few bytes) and keep its whole payment order for the
        newest :data:`MAX_KEPT` (``f:``, ~3 KB each, ordered by ``q:<seq>``): what a crash-recovery asks again.
        The order of a purse debit still pending is never the one dropped (its purchase is finished only by that
        order's S1 sent again): the oldest order whose debit is not pending goes instead. There is always one, as a
        purse has at most :data:`~cardnet.protocols.speed.purse.MAX_PENDING` (= MAX_KEPT) debits pending."""
        ctx.put(b"p:" + poid, b"", table=TABLE)
        ctx.put(b"f:" + poid, _PAID.encode(rec), table=TABLE)
        queue = ctx.scan(b"q:", table=TABLE)
        seq = _next_seq(queue)
        ctx.put(b"q:" + seq.to_bytes(4, "big"), poid, table=TABLE)
        excess = len(queue) + 1 - MAX_KEPT
        for key, old in queue:
            if excess <= 0:
                break
            if ctx.get(b"pd:" + old, table=pa.TABLE) is not None:
                continue  # its debit is under way: its order is what finishes it
            ctx.delete(key, table=TABLE)
            ctx.delete(b"f:" + old, table=TABLE)
            excess -= 1

    def _answer(self, ctx: StepContext, rec: dict[str, Any], bill: dict[str, Any]) -> None:
        out: dict[str, Any] = {"po": rec["po"], "poid": bill["poid"], "price": bill["price"], "bill": rec["bill"]}
        if "s1" in rec:
            out["s1"] = rec["s1"]
        ctx.reply(ORDER, **out)
