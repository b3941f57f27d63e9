"""The SPEED vendor: catalogue, negotiation, encrypted delivery and the signed bill, served over TCP.

Theory of operation
-------------------
:class:`VendorCore` holds the vendor's certified key, its account number at the broker, the broker's
certificate and the catalogue (each entry signed: product id, list price, floor, content hash), in a
:class:`~cardnet.store.Store`. It answers one request frame with the frames to send back:

* ``speed.catalogue`` -> ``speed.items`` (the vendor's certificate and the signed entries); this and
  ``speed.request`` first read the catalogue again if a product was added since (``add_product`` bumps a version
  in the store, also from another process while this one serves: one record read a purchase);
* ``speed.request`` (normal): opens the NegotiationRequest (HPKE), checks the customer's signature and
  certificate (role device, the vendor's CA), refuses a request meant for another vendor (VendorID, paper
  5.4) and an NID it has delivered under or is negotiating under, then answers the first
  NegotiationStep (:class:`~cardnet.protocols.speed.negotiation.VendorNegotiation`, strategy
  :class:`~cardnet.protocols.speed.negotiation.PriceList`);
* ``speed.step``: the next step (negotiations live in memory: a vendor restart ends them, and the customer
  starts again with a new NID; nothing was paid);
* ``speed.handshake_msg``: checks the Handshake (the customer's signature, this vendor's last offer), draws K
  and RecKey, records the delivery under the NID durably, first wins (so a PaymentOrderID names one delivery
  and a replayed Handshake gets none, paper 5.3) with the sale, and only then delivers:
  ``speed.delivery`` (layout), ``speed.chunk`` for every ciphertext chunk of every product, and
  ``speed.bill_msg`` (the signed bill under EnKey);
* ``speed.request`` (aggressive): the ProductRequest at the list price, the same checks, and the delivery at
  once with the bill sealed to the customer's card.

The sale (K, RecKey, price) is kept so the vendor can open the broker's receipts (:meth:`take_receipt`).

:class:`VendorServer` takes no request above :data:`RECV_LIMIT` (the largest a vendor answers): a larger one is
refused unread (``speed.refused`` ``too_large``) and its connection closed. It answers the requests waiting at
once in one transaction of the store (group commit,
:mod:`cardnet.services.serving`): a delivery's record is a savepoint of it, seen by the later requests of the
group (a replayed Handshake in the same group gets no second delivery) and durable when the group commits,
before any frame of the delivery leaves. A vendor killed before that commit delivered nothing of the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.errors import CardnetError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.negotiation import Ended, PriceList, Sent, VendorNegotiation
from cardnet.services.serving import MAX_GROUP, GroupCommitServer
from cardnet.services.speed.stored import Identity, get, put, required, save_identity, scan
from cardnet.store import Store, Txn
from cardnet.transport import DEFAULT_SERVER_LIMITS, RecvLimit, ServerLimits, TransportError, dial
from cardnet.wire import Bytes, DecodeError, Field, ListOf, Message, Nested, Schema, Text, Uid, UInt

log = logging.getLogger("cardnet.speed.vendor")

CFG, CATALOGUE, REGISTER, SALES = "sv.cfg", "sv.cat", "sv.nid", "sv.sale"
CATALOGUE_VERSION = b"catalogue_version"  # in CFG: 8 bytes, bumped with every product added
MAX_NEGOTIATIONS = 10_000  # open negotiations held in memory; the oldest is dropped past this

_PRODUCT = Schema(
    "sv.product",
    [
        Field(0, "price", Nested(sm.PRICE)),
        Field(1, "floor", Nested(sm.PRICE)),
        Field(2, "content", Bytes(sm.MAX_PRODUCT_BYTES)),
        Field(3, "entry", Bytes(sm.MAX_SIGNED, 1)),
    ],
)
_SALE = Schema(
    "sv.sale",
    [
        Field(0, "k", Bytes(32, 32)),
        Field(1, "rec_key", Bytes(32, 32)),
        Field(2, "price", Nested(sm.PRICE)),
        Field(3, "paid", Bytes(sm.MAX_SIGNED + 64), optional=True),  # the broker's sealed receipt, once taken
        Field(4, "pay_by", UInt(sm.MAX_PAY_BY), optional=True),  # the bill's deadline (Unix seconds), if it has one
        Field(5, "made", UInt(sm.MAX_PAY_BY), optional=True),  # the vendor's clock when it made the bill (Unix s)
    ],
)
_NID_REC = Schema(
    "sv.nid_rec", [Field(0, "state", Text(16)), Field(1, "products", ListOf(Text(sm.MAX_PRODUCT_ID), sm.MAX_PRODUCTS))]
)


OnSale = Callable[[Txn, bytes, list[str], bytes, "int | None"], None]
"""``on_sale(txn, poid, products, customer_cert, pay_by)``: runs inside the transaction that records a delivery,
before anything of it is sent (e.g. the ticketing server claims the seats, first wins, until the bill's deadline
``pay_by``, Unix seconds, or None: no deadline); raising a :class:`~cardnet.protocols.errors.ProtocolError` refuses
the purchase with its reason and records nothing."""


class VendorError(CardnetError):
    """The vendor cannot be set up or run as asked (``reason`` says why)."""


_NOT_A_VENDOR = VendorError("not_initialised", "this store holds no vendor: run `cardnet speed vendor init` first")


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def init_vendor(store: Store, key: profile.PrivateKey, cert_der: bytes, roots_der: list[bytes], *,
                account: str, broker_cert: bytes) -> None:  # fmt: skip
    """Make ``store`` a vendor's: its key and certificate (role service), the CA roots it trusts, its account
    number at the broker and the broker's certificate."""
    with store.transaction() as txn:
        if not save_identity(txn, CFG, key, cert_der, roots_der):
            raise VendorError("exists", "this store already holds a vendor")
        txn.put(CFG, b"account", account.encode())
        txn.put(CFG, b"broker", broker_cert)


def add_product(store: Store, product: str, price: sm.Price, content: bytes, *, floor: sm.Price | None = None,
                replace: bool = False) -> bytes:  # fmt: skip
    """Put ``product`` in the catalogue at ``price`` (negotiable down to ``floor``); the signed entry. A product
    already there is refused (``exists``, saying what it is now), unless ``replace``."""
    sm.check_products([product])
    me = Identity.load(store, CFG, _NOT_A_VENDOR)
    entry = cms.sign(cat.entry(product, price, content, sm.vendor_id(me.cert)), me.cert, me.sign)
    rec = {"price": price.fields(), "floor": (floor or price).fields(), "content": content, "entry": entry}
    with store.transaction() as txn:
        was = txn.get(CATALOGUE, product.encode())
        if was is not None and not replace:
            raise VendorError("exists", f"{product!r} is in the catalogue already: {product_words(was, content)}")
        txn.put(CATALOGUE, product.encode(), _PRODUCT.encode(rec))
        was = txn.get(CFG, CATALOGUE_VERSION)
        txn.put(CFG, CATALOGUE_VERSION, ((0 if was is None else int.from_bytes(was, "big")) + 1).to_bytes(8, "big"))
    return entry


def product_words(raw: bytes, content: bytes | None = None) -> str:
    """What a stored catalogue record is, in words: its price, floor and content (compared with ``content``)."""
    rec = _PRODUCT.decode(raw)
    price, floor = sm.Price.of(rec["price"]), sm.Price.of(rec["floor"])
    now = rec["content"]
    same = "" if content is None else (", the same as the new file's" if now == content else ", not the new file's")
    come_down = f", down to {floor} when negotiating" if floor != price else ""
    digest = profile.sha256(now).hex()[:16]
    return f"{price}{come_down}; content {len(now):,} bytes (sha256 {digest}...{same})"


def _cfg(store: Store, name: bytes) -> bytes:
    return required(store, CFG, name, _NOT_A_VENDOR)


@dataclass
class _Open:
    neg: VendorNegotiation
    products: list[str]


class VendorCore:
    """The vendor's decisions over its store (see the module). Not thread-safe: one request at a time (the server
    answers a group's requests one after another in one thread)."""

    def __init__(
        self,
        store: Store,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float],
        on_sale: OnSale | None = None,
        pay_within_s: float | None = None,
    ) -> None:
        self.store = store
        self.on_sale = on_sale
        self.pay_within_s = pay_within_s  # each bill's deadline, from when it is made (None: bills carry none)
        self._customer = b""  # the certificate of the card buying in the request being answered (for on_sale)
        self.rng = rng
        self.clock = clock
        me = Identity.load(store, CFG, _NOT_A_VENDOR)
        self.key, self.cert, self.roots = me.key, me.cert, me.roots
        self.account = _cfg(store, b"account").decode()
        self.broker_cert = _cfg(store, b"broker")
        self.vendor_id = sm.vendor_id(self.cert)
        self._open: OrderedDict[bytes, _Open] = OrderedDict()
        self.catalogue: dict[str, dict[str, Any]] = {}
        self._catalogue_version: bytes | None = b""  # none read yet
        self._refresh()

    def _refresh(self) -> None:
        """Read the catalogue again if a product was added since it was read (``add_product`` bumps its version, in
        the vendor's store: also from another process while this one serves). One record read a purchase."""
        version = get(self.store, CFG, CATALOGUE_VERSION)
        if version != self._catalogue_version:
            self.catalogue = {k.decode(): dict(_PRODUCT.decode(v)) for k, v in scan(self.store, CATALOGUE)}
            self._catalogue_version = version

    def _sign(self, content: bytes) -> bytes:
        return cms.sign(content, self.cert, lambda d: profile.sign(self.key, d))

    def receipts_request(self, after: int) -> Message:
        """``speed.vendor_receipts`` from log position ``after``, signed by this vendor for its broker now: the broker
        answers this vendor's receipts alone (:func:`vendor_receipts`)."""
        ask = {"after": after, "broker": sm.vendor_id(self.broker_cert), "at": int(self.clock())}
        return fr.RECEIPT_FOR_VENDOR.make(_ANYONE, _ANYONE, after=after, signed=self._sign(sm.RECEIPTS_ASK.encode(ask)))

    # -- requests ----------------------------------------------------------------------------------------------
    def handle(self, msg: Message) -> Iterator[Message]:
        """The frames that answer ``msg`` (a refusal is one ``speed.refused``)."""
        try:
            yield from self._handle(msg)
        except _Refusal as r:
            yield fr.refused(msg, r.reason, r.detail)
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            yield fr.refused(msg, getattr(exc, "reason", "refused"), str(exc))

    def frames(self, msg: Message) -> list[Message]:
        return list(self.handle(msg))

    def _handle(self, msg: Message) -> Iterator[Message]:
        code = msg.mtype
        if code in (fr.CATALOGUE.code, fr.REQUEST.code):  # a purchase starts: the products added since are sold
            self._refresh()
        if code == fr.CATALOGUE.code:
            entries = [rec["entry"] for rec in self.catalogue.values()]
            yield fr.reply(msg, fr.ITEMS, cert=self.cert, entries=entries)
        elif code == fr.REQUEST.code:
            p = fr.REQUEST.parse(msg)
            if p["mode"] == "normal":
                yield self._request(msg, p["sealed"])
            elif p["mode"] == "aggressive":
                yield from self._product_request(msg, p["sealed"])
            else:
                raise _Refusal("bad_mode", f"a purchase is normal or aggressive, not {p['mode']!r}")
        elif code == fr.STEP.code:
            p = fr.STEP.parse(msg)
            o = self._negotiation(p["nid"])
            yield self._sent(msg, p["nid"], o.neg.on_step(p["sealed"]))
        elif code == fr.HANDSHAKE.code:
            p = fr.HANDSHAKE.parse(msg)
            o = self._negotiation(p["nid"])
            price = o.neg.on_handshake(p["sealed"])
            self._open.pop(p["nid"], None)
            self._customer = o.neg.customer_cert
            yield from self._deliver(msg, p["nid"], o.products, price, o.neg.seal_bill, "normal")
        else:
            raise _Refusal("bad_request", f"a SPEED vendor does not take mtype 0x{code:04x}")

    def _negotiation(self, nid: bytes) -> _Open:
        o = self._open.get(nid)
        if o is None:
            seen = get(self.store, REGISTER, nid)
            if seen is not None:
                raise _Refusal("handshake_seen", "that negotiation ended in a delivery already: no second one (5.3)")
            raise _Refusal("no_negotiation", "no negotiation open under that NID (over, or the vendor restarted)")
        return o

    def _signed_request(self, sealed: bytes, info: bytes, schema: Schema, what: str) -> tuple[dict[str, Any], bytes]:
        raw = sm.open_with(lambda s, i: profile.hpke_open(self.key, s, i), sealed, info, what)
        signed = sm.signed(raw, what)
        pki.verified(signed.signer_cert_der, self.roots, now=self.clock(), role=pki.Role.DEVICE)
        f = sm.decode(schema, signed.content, what)
        if f["vendor_id"] != self.vendor_id:
            raise _Refusal("not_for_me", f"the {what} names another vendor (VendorID): forwarded? (paper 5.4)")
        return f, signed.signer_cert_der

    def _prices(self, products: list[str]) -> tuple[sm.Price, sm.Price]:
        total, floor, currency = 0, 0, None
        for name in products:
            rec = self.catalogue.get(name)
            if rec is None:
                raise _Refusal("unknown_product", f"this vendor sells no {name!r}: ask for its catalogue")
            price, fl = sm.Price.of(rec["price"]), sm.Price.of(rec["floor"])
            if currency not in (None, price.currency):
                raise _Refusal("mixed_currencies", "those products are priced in different currencies: buy them apart")
            currency = price.currency
            total += price.amount
            floor += fl.amount
        assert currency is not None
        return sm.Price(currency, total), sm.Price(currency, floor)

    def _fresh_nid(self, nid: bytes) -> None:
        """Refuse an NID this vendor has delivered under (the durable register) or is negotiating under now."""
        if nid in self._open or get(self.store, REGISTER, nid) is not None:
            raise _Refusal("nid_used", "this vendor has seen that NID: draw another (PaymentOrderIDs are unique)")

    def _delivered(self, nid: bytes, products: list[str], sale: tuple[bytes, bytes], pay_by: int | None) -> None:
        """Record the delivery under ``nid`` and its sale (PaymentOrderID, record) durably, first wins, before
        anything of it is sent: a PaymentOrderID names one delivery, and a replayed Handshake gets none. The
        ``on_sale`` hook runs in the same transaction (its refusal undoes the delivery)."""
        with self.store.transaction() as txn:
            if not txn.insert(REGISTER, nid, _NID_REC.encode({"state": "delivered", "products": products})):
                raise _Refusal("handshake_seen", "that NID has had its delivery already: no second one (paper 5.3)")
            txn.put(SALES, *sale)
            if self.on_sale is not None:
                self.on_sale(txn, sale[0], products, self._customer, pay_by)

    def _request(self, msg: Message, sealed: bytes) -> Message:
        f, customer = self._signed_request(sealed, sm.INFO_REQUEST, sm.NEGOTIATION_REQUEST, "NegotiationRequest")
        products = sm.check_products(f["products"])
        list_price, floor = self._prices(products)
        self._fresh_nid(f["nid"])
        neg = VendorNegotiation(
            nid=f["nid"], enkey=f["enkey"], signkey=f["signkey"], strategy=PriceList(list_price, floor),
            products=products, customer_cert=customer, vendor_id=self.vendor_id,
        )  # fmt: skip
        self._open[f["nid"]] = _Open(neg, products)
        while len(self._open) > MAX_NEGOTIATIONS:
            self._open.popitem(last=False)
        proposal = sm.Price.of(f["price"]) if "price" in f else None
        return self._sent(msg, f["nid"], neg.first(proposal, f["last"]))

    def _sent(self, msg: Message, nid: bytes, out: Sent | Ended) -> Message:
        if isinstance(out, Sent):
            return fr.reply(msg, fr.STEP, nid=nid, sealed=out.sealed)
        self._open.pop(nid, None)
        fields: dict[str, Any] = {"nid": nid}
        if out.sealed is not None:
            fields["sealed"] = out.sealed
        return fr.reply(msg, fr.ENDED, **fields)

    def _product_request(self, msg: Message, sealed: bytes) -> Iterator[Message]:
        f, customer = self._signed_request(sealed, sm.INFO_PRODUCT_REQUEST, sm.PRODUCT_REQUEST, "ProductRequest")
        products = sm.check_products(f["products"])
        list_price, _ = self._prices(products)
        if sm.Price.of(f["price"]) != list_price:
            raise _Refusal(
                "wrong_price", f"the price of that purchase is {list_price} (aggressive mode: no bargaining)"
            )
        self._fresh_nid(f["nid"])

        def seal(signed_bill: bytes) -> bytes:
            return sm.seal_to(customer, signed_bill, sm.INFO_BILL)

        self._customer = customer
        yield from self._deliver(msg, f["nid"], products, list_price, seal, "aggressive")

    def _deliver(self, msg: Message, nid: bytes, products: list[str], price: sm.Price,
                 seal: Callable[[bytes], bytes], mode: str) -> Iterator[Message]:  # fmt: skip
        k, rec_key = self.rng(sm.KEY_BYTES), self.rng(sm.KEY_BYTES)
        contents = [self.catalogue[p]["content"] for p in products]
        sizes = [len(c) for c in contents]
        poid = sm.make_poid(self.vendor_id, nid)
        now = self.clock()
        pay_by = None if self.pay_within_s is None else sm.pay_by(now, self.pay_within_s)
        made = min(sm.MAX_PAY_BY, max(0, int(now)))  # take_receipt checks the broker's certificate at this time
        sale_rec: dict[str, Any] = {"k": k, "rec_key": rec_key, "price": price.fields(), "made": made}
        if pay_by is not None:
            sale_rec["pay_by"] = pay_by
        sale = (poid, _SALE.encode(sale_rec))
        self._delivered(nid, products, sale, pay_by)
        yield fr.reply(msg, fr.DELIVERY, nid=nid, sizes=sizes, chunk=sm.CHUNK_BYTES)
        h = sm.DeliveryHash()
        for i, content in enumerate(contents):
            for j, c in enumerate(sm.encrypt_chunks(k, i, content)):
                h.update(c)
                yield fr.reply(msg, fr.CHUNK, nid=nid, product=i, index=j, data=c)
        secret = sm.seal_to(self.broker_cert, sm.BILL_SECRET.encode({"account": self.account, "k": k}),
                            sm.INFO_BILL_SECRET)  # fmt: skip
        fields = {
            "secret": secret, "hc": h.digest(), "hp": sm.products_hash(products), "poid": poid,
            "price": price.fields(), "rec_key": rec_key, "sizes": sizes, "chunk": sm.CHUNK_BYTES, "mode": mode,
        }  # fmt: skip
        if pay_by is not None:
            fields["pay_by"] = pay_by
        bill = sm.BILL.encode(fields)
        yield fr.reply(msg, fr.BILL, nid=nid, sealed=seal(self._sign(bill)))

    # -- receipts ----------------------------------------------------------------------------------------------
    def take_receipt(self, poid: bytes, sealed: bytes) -> sm.Price:
        """Record the broker's receipt for one of this vendor's sales; the price paid.

        The receipt recorded is trusted for that sale from then on: the same bytes again are the payment checked
        when they were recorded, whatever has happened to the broker's certificate since (it may have expired: a
        buyer who was paid must still get what was paid for). A receipt not recorded yet is checked with the
        broker's certificate as it was when this vendor made the sale's bill (``made``, its clock then; now if
        earlier), as the broker checks an order at the time it took it: a buyer who paid and shows the receipt for
        the first time after the certificate expired, before the bill's deadline, is paid for. A certificate not
        valid then, or from another CA, is refused. A sale recorded without that time (before it was kept) is
        checked now, or at the bill's deadline if that is earlier (the broker pays no bill after it)."""
        raw = get(self.store, SALES, poid)
        if raw is None:
            raise ProtocolError("unknown_sale", "no sale of this vendor has that PaymentOrderID")
        sale = dict(_SALE.decode(raw))
        if sale.get("paid") == sealed:
            return sm.Price.of(sale["price"])
        now = self.clock()
        at = min(now, float(sale.get("made", sale.get("pay_by", now))))
        receipt = open_receipt(sale["rec_key"], sealed, self.broker_cert, self.roots, at)
        if receipt["poid"] != poid or receipt["k"] != sale["k"]:
            raise ProtocolError("bad_receipt", "the receipt is for another sale")
        sale["paid"] = sealed
        put(self.store, SALES, poid, _SALE.encode(sale))
        return sm.Price.of(receipt["price"])

    def paid_sales(self) -> int:
        return sum(1 for _, v in scan(self.store, SALES) if "paid" in _SALE.decode(v))

    def is_paid(self, poid: bytes) -> bool:
        """Whether this vendor took the broker's receipt for the sale ``poid`` (:meth:`take_receipt`)."""
        raw = get(self.store, SALES, poid)
        return raw is not None and "paid" in _SALE.decode(raw)


def open_receipt(rec_key: bytes, sealed: bytes, broker_cert: bytes, roots: list[bytes], now: float) -> dict[str, Any]:
    """The receipt's content, checked: it opens under RecKey and the broker (role service) signed it."""
    raw = sm.sym_open(rec_key, sm.NONCE_RECEIPT, 0, sealed, what="receipt")
    pki.verified(broker_cert, roots, now=now, role=pki.Role.SERVICE)
    return sm.decode(sm.RECEIPT, sm.signed(raw, "receipt", cert_der=broker_cert).content, "receipt")


_ANYONE = Uid(b"\x00" * 12, 0)


async def _ask_broker(
    broker: tuple[str, int], request: Message, timeout_s: float, *, asking: str, refused: str
) -> Message:
    """The broker's one answer to ``request`` on a connection of its own. ``VendorError('unreachable')`` ("cannot
    ask the broker ... ``asking``") if it does not answer within ``timeout_s``, ``VendorError(reason)`` ("the broker
    refused ``refused``") if it refuses."""
    try:
        conn = await asyncio.wait_for(dial(*broker), timeout_s)
        try:
            await conn.send(request)
            msg = await asyncio.wait_for(conn.recv(), timeout_s)
        finally:
            await conn.aclose()
    except (OSError, TransportError, TimeoutError) as exc:
        raise VendorError("unreachable", f"cannot ask the broker at {broker[0]}:{broker[1]} {asking}: "
                          f"{exc or 'timeout'}") from None  # fmt: skip
    if msg.mtype == fr.REFUSED.code:
        p = fr.REFUSED.parse(msg)
        raise VendorError(p["reason"], f"the broker refused {refused}: {p['detail']}")
    return msg


async def order_states(
    broker: tuple[str, int], poids: list[bytes], *, timeout_s: float = 10.0
) -> dict[bytes, tuple[str, bytes | None]]:
    """What the broker says became of each payment order of ``poids`` (at most
    :data:`~cardnet.protocols.speed.frames.MAX_ORDER_STATES`; ``speed.order_states``): PaymentOrderID -> (``paid``, the
    sealed receipt: :meth:`VendorCore.take_receipt` takes it) | (``authorised``, None: the broker pays it whenever the
    customer comes back, deadline or not) | (``none``, None). ``VendorError('unreachable')`` if the broker does not
    answer, ``VendorError(reason)`` if it refuses."""
    request = fr.ORDER_STATES.make(_ANYONE, _ANYONE, poids=poids)
    msg = await _ask_broker(broker, request, timeout_s, asking="about its payment orders",
                            refused="to say what became of its payment orders")  # fmt: skip
    return {i["poid"]: (i["state"], i.get("sealed")) for i in fr.STATES.parse(msg)["items"]}


async def vendor_receipts(
    core: VendorCore, broker: tuple[str, int], after: int = 0, *, timeout_s: float = 10.0
) -> tuple[list[tuple[bytes, bytes]], int]:
    """One page of the broker's receipts for ``core``'s sales after log position ``after`` (``speed.vendor_receipts``,
    signed by the vendor): ([(PaymentOrderID, sealed receipt)], the position to ask from next; the same position
    again: none are left). :meth:`VendorCore.take_receipt` takes each. ``VendorError('unreachable')`` if the broker
    does not answer, ``VendorError(reason)`` if it refuses."""
    msg = await _ask_broker(broker, core.receipts_request(after), timeout_s,
                            asking="for its receipts", refused="this vendor's receipts")  # fmt: skip
    got = fr.RECEIPTS.parse(msg)
    items = [fr.RECEIPT.schema.decode(i) for i in got["items"]]
    return [(i["poid"], i["sealed"]) for i in items], got["last"]


class VendorServer(GroupCommitServer):
    """:class:`VendorCore` over TCP with group commit (:mod:`cardnet.services.serving`): the requests waiting at
    once are answered one after another in one transaction of the vendor's store (each delivery's record a
    savepoint of it), and every frame of an answer leaves only after that transaction committed."""

    def __init__(
        self, core: VendorCore, *, server_limits: ServerLimits = DEFAULT_SERVER_LIMITS, max_group: int = MAX_GROUP
    ) -> None:
        super().__init__(core.frames, group=core.store.group, server_limits=server_limits, max_group=max_group,
                         oversize=fr.too_large, recv_limit=RECV_LIMIT, too_large=fr.request_too_large,
                         refused=fr.refused)  # fmt: skip
        self.core = core


RECV_LIMIT = RecvLimit(fr.VENDOR_MAX_REQUEST)
"""A vendor's receive limit: its largest request (``speed.request``, 24,714 bytes); larger ones are refused unread.
Its send limit stays the transport's frame limit (delivery chunks are 256 KiB)."""
