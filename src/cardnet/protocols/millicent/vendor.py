"""Millicent's vendor side: validating scrip, accepting a request (change, reply), refusals, the spent list's keys.

See the package's docstring (``cardnet.protocols.millicent``) and docs/millicent.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.millicent.messages import (
    CATALOGUE,
    CATALOGUE_ASK,
    CATALOGUE_ASK_SCHEMA,
    CATALOGUE_PAGE,
    CATALOGUE_SCHEMA,
    PRODUCT_NAME_MAX_BYTES,
    REPLY,
    REPLY_CODEC,
    REPLY_SCHEMA,
    REQUEST,
    REQUEST_CODEC,
    SEALED_CODEC,
    SEALED_REPLY,
    SEALED_REQUEST,
    box_key,
    cbor_head,
    decode_request_fast,
    reply_mac_input,
    request_mac_input,
)
from cardnet.protocols.millicent.scrip import (
    _U32,
    CERT_BYTES,
    CONTENT_MAX_BYTES,
    CUSTOMER_ID_BYTES,
    MAC_BYTES,
    MASTER_SECRET_BYTES,
    MAX_PROPERTIES,
    MAX_SERIAL,
    OPS,
    RID_BYTES,
    SCRIP_HEAD,
    SCRIP_ID_BYTES,
    SCRIP_MIN_BYTES,
    VENDOR_BYTES,
    VERSION,
    Level,
    MillicentError,
    Op,
    Scrip,
    Status,
    customer_secret,
    mint,
)
from cardnet.wire import DecodeError

# --- vendor side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Product:
    price: int
    content: bytes


@dataclass(slots=True)
class Candidate:
    """A request that passed every check but the spent list (the service does that one).

    ``raw`` is the scrip as sent (checked by :meth:`Vendor.check_raw`); its
    fields are read at their fixed offsets, :attr:`scrip` decodes it whole.
    """

    raw: bytes
    rid: bytes
    op: Op
    price: int
    product: str
    level: Level
    secret: bytes | None
    customer_id: bytes  # owner of the scrip
    digest: bytes  # identifies the exact request (a re-fetch sends the same one)
    for_customer: bytes | None = None
    refusal: tuple[Status, str] | None = None  # refused unless it is a re-fetch of a stored reply

    @property
    def scrip(self) -> Scrip:
        return Scrip.decode(self.raw)

    @property
    def scrip_id(self) -> bytes:
        return self.raw[17:25]

    @property
    def secret_index(self) -> int:
        return self.raw[17]

    @property
    def value(self) -> int:
        return int.from_bytes(self.raw[9:17], "big")

    @property
    def spent_key(self) -> bytes:
        """Spent-list key: ``expiry(4) || scrip id(8)``, so key order is expiry order (pruning)."""
        raw = self.raw
        return raw[33:37] + raw[17:25]

    @property
    def change_value(self) -> int:
        return self.value - self.price


@dataclass
class Vendor:
    """The vendor's validation and reply logic (no state but secrets and configuration).

    ``scrip_secrets``: index -> 32-byte master scrip secret (the vendor's own
    and those it licensed to brokers); ``mint_index``: the index new change
    scrip is made under (rotation = pick a new one; keep the old secret until
    the last scrip under it has expired). ``customer_masters``: index ->
    customer master secret. ``min_level``: the lowest level accepted.
    ``issuers``: the customer ids of the vendor's bulk brokers, the only
    customers whose scrip may pay for scrip issued to another customer
    (``Op.ISSUE``): its answer carries that customer's secret.
    """

    vendor_id: bytes
    scrip_secrets: dict[int, bytes]
    mint_index: int
    customer_masters: dict[int, bytes]
    catalogue: dict[str, Product] = field(default_factory=dict)
    validity_s: int = 7 * 24 * 3600
    min_level: Level = Level.THEFT
    refetch_grace_s: int = 24 * 3600  # spent records (and replies) are kept this long after the scrip expires
    issuers: frozenset[bytes] = frozenset()  # customer ids of the bulk brokers (Op.ISSUE)
    _secrets_cache: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    _macs: profile.HmacKeys = field(default_factory=profile.HmacKeys, repr=False)

    def secret_of(self, customer_id: bytes) -> bytes:
        s = self._secrets_cache.get(customer_id)
        if s is None:
            s = customer_secret(self.customer_masters, customer_id)
            if len(self._secrets_cache) >= 65536:
                self._secrets_cache.clear()
            self._secrets_cache[customer_id] = s
        return s

    def check_raw(self, raw: bytes, now: int, pruned_through: int = 0) -> Status:
        """Certificate, vendor and expiry of encoded scrip (not the spent list); the hot path.

        Works on the bytes at their fixed offsets (see :data:`SCRIP_HEAD`) without
        building a :class:`Scrip`; the same checks as :meth:`Scrip.decode` plus
        the certificate. ``pruned_through``: scrip expiring at or before it is
        refused whatever ``now`` says (the spent list no longer knows it).
        """
        n = len(raw)
        if n < SCRIP_MIN_BYTES or raw[0] != VERSION or n != SCRIP_MIN_BYTES + raw[37] or raw[9] & 0x80:
            return Status.MALFORMED
        if raw[1:9] != self.vendor_id:
            return Status.WRONG_VENDOR
        secret = self.scrip_secrets.get(raw[17])
        if secret is None or not self._macs.check(secret, raw[:-CERT_BYTES], raw[-CERT_BYTES:]):
            return Status.FORGED
        expiry = int.from_bytes(raw[33:37], "big")
        if expiry <= now or expiry <= pruned_through:
            return Status.EXPIRED
        return Status.OK

    def check_scrip(self, raw: bytes, now: int, pruned_through: int = 0) -> tuple[Status, Scrip | None]:
        """Certificate, vendor and expiry (not the spent list): ``(status, scrip)``."""
        status = self.check_raw(raw, now, pruned_through)
        if status == Status.MALFORMED:
            return status, None
        return status, Scrip.decode(raw)

    def binding_ok(self, customer_id: bytes, mac_input: bytes, mac: bytes) -> bool:
        """Level 2: is ``mac`` the MAC of ``mac_input`` under the secret of ``customer_id``?"""
        try:
            secret = self.secret_of(customer_id)
        except MillicentError:
            return False
        return self._macs.check(secret, mac_input, mac)

    def prepare(self, mtype: int, param: bytes, now: int, pruned_through: int = 0) -> Candidate | tuple[bytes, bytes]:
        """Every check but the spent list. A refusal comes back as ``(rid, reply param)``."""
        level = Level.VALIDATION
        secret: bytes | None = None
        outer_cid: bytes | None = None
        try:
            if mtype == SEALED_REQUEST.code:
                outer = SEALED_CODEC.decode(param)
                outer_cid, rid = outer["customer_id"], outer["rid"]
                try:
                    secret = self.secret_of(outer_cid)
                    param = box_key(secret, rid, outer_cid).open(0, outer["box"], outer_cid + rid)
                except (MillicentError, CryptoError):
                    return self._plain_reply(rid, Status.STOLEN, "cannot open the request with that customer's secret")
                level = Level.PRIVATE
            f = decode_request_fast(param) or REQUEST_CODEC.decode(param)
        except DecodeError as exc:
            return self._plain_reply(b"\x00" * RID_BYTES, Status.MALFORMED, f"malformed request: {exc.reason}")
        rid = f["rid"]
        if level != Level.PRIVATE and "mac" in f:
            level = Level.THEFT
        raw = f["scrip"]
        status = self.check_raw(raw, now, pruned_through)
        expired = status == Status.EXPIRED and int.from_bytes(raw[33:37], "big") > pruned_through
        if status != Status.OK and not expired:
            return self._plain_reply(rid, status, _DETAIL[status])
        cid = raw[25:33]
        if level == Level.PRIVATE:
            if cid != outer_cid:
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        elif level == Level.THEFT:
            try:
                secret = self.secret_of(cid)
            except MillicentError:
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
            if not self._macs.check(secret, request_mac_input(f), f["mac"]):
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        op = OPS[f["op"]]  # the schema bounds op to the three values
        price = f["price"]
        product = f["product"]
        c = Candidate(raw, rid, op, price, product, level, secret, cid, profile.sha256(param), f.get("for_customer"))
        # Refusals that depend on the clock or the vendor's configuration are decided after the spent
        # list was read: an earlier, identical request may have been accepted (then it gets its reply).
        if expired:
            c.refusal = (Status.EXPIRED, _DETAIL[Status.EXPIRED])
        elif level < self.min_level:
            c.refusal = (Status.LEVEL_TOO_LOW, f"this vendor requires level {int(self.min_level)}")
        elif op == Op.BUY:
            item = self.catalogue.get(product)
            if item is None:
                c.refusal = (Status.UNKNOWN_PRODUCT, f"no product {product!r}")
            elif price != item.price:
                c.refusal = (Status.WRONG_PRICE, price_detail(product, item.price))
            elif len(item.content) > CONTENT_MAX_BYTES:
                c.refusal = (
                    Status.TOO_LARGE,
                    too_large_detail(len(item.content), f"{CONTENT_MAX_BYTES} a reply carries"),
                )
        elif op == Op.RENEW:
            if price != 0:
                c.refusal = (Status.MALFORMED, "renewal is free: price 0")
        elif "for_customer" not in f or price == 0 or secret is None:
            c.refusal = (Status.MALFORMED, "issue needs for_customer, a price and level 2 or 3")
        elif cid not in self.issuers:  # (else any customer could buy another's secret, and so spend her scrip)
            c.refusal = (Status.NOT_ALLOWED, NOT_AN_ISSUER)
        if c.refusal is None:
            value = int.from_bytes(raw[9:17], "big")
            if value < price:
                c.refusal = (Status.INSUFFICIENT, f"scrip value {value} < price {price}")
        return c

    def accept(self, c: Candidate, serials: list[int] | int, now: int) -> tuple[int, bytes]:
        """The reply that accepts ``c`` (its spent record is being written with it).

        ``serials``: fresh serial numbers, or the first of two consecutive ones
        (at most two are used: change and issued scrip).
        """
        first, second = (serials, serials + 1) if isinstance(serials, int) else (serials[0], serials[1])
        expiry = now + self.validity_s
        raw = c.raw
        out: dict[str, Any] = {"rid": c.rid, "status": 0, "scrip_id": raw[17:25]}
        change_value = c.value - c.price
        if c.op == Op.RENEW or change_value > 0:
            if not 0 <= first <= MAX_SERIAL:
                raise MillicentError("bad_scrip_id", f"serial 0..{MAX_SERIAL}, got {first}")
            index = self.mint_index
            props = raw[SCRIP_HEAD.size : -CERT_BYTES]
            body = (
                SCRIP_HEAD.pack(
                    VERSION,
                    self.vendor_id,
                    change_value,
                    (index << 56 | first).to_bytes(8, "big"),
                    c.customer_id,
                    expiry,
                    len(props),
                )
                + props
            )
            out["change"] = body + self._macs.mac(self.scrip_secrets[index], body, CERT_BYTES)
        if c.op == Op.BUY:
            content = self.catalogue[c.product].content
            if c.level == Level.THEFT and "change" in out and c.secret is not None:
                return REPLY.code, _buy_reply(self._macs, c.secret, c.rid, out["scrip_id"], out["change"], content)
            out["content"] = content
        elif c.op == Op.ISSUE:
            assert c.for_customer is not None and c.secret is not None
            issued = mint(
                self.scrip_secrets,
                index=self.mint_index,
                vendor=self.vendor_id,
                value=c.price,
                serial=second,
                customer_id=c.for_customer,
                expiry=expiry,
            )
            out["issued"] = issued.encode()
            out["issued_secret"] = box_key(c.secret, c.rid, b"issue\x00\x00\x00").seal(
                2, self.secret_of(c.for_customer), c.for_customer
            )
        return self._finish(out, c.level, c.secret, c.customer_id)

    def catalogue_page(self, param: bytes) -> tuple[int, bytes]:
        """The answer to ``millicent.catalogue_ask``: up to ``CATALOGUE_PAGE`` products named after ``after``, in
        name order, with their prices; ``more`` if others follow. Neither MACed nor signed: see
        :func:`open_catalogue`. A name a request could not carry (above ``PRODUCT_NAME_MAX_BYTES``) is left out."""
        out: dict[str, Any] = {"vendor": self.vendor_id, "status": int(Status.OK), "products": [], "more": False}
        try:
            after = CATALOGUE_ASK_SCHEMA.decode(param).get("after")
        except DecodeError as exc:
            out.update(status=int(Status.MALFORMED), detail=f"malformed catalogue request: {exc.reason}")
            return CATALOGUE.code, CATALOGUE_SCHEMA.encode(out)
        names = sorted(n for n in self.catalogue if len(n.encode("utf-8", "surrogatepass")) <= PRODUCT_NAME_MAX_BYTES)
        if after is not None:
            names = [n for n in names if n > after]
        out["products"] = [{"name": n, "price": self.catalogue[n].price} for n in names[:CATALOGUE_PAGE]]
        out["more"] = len(names) > CATALOGUE_PAGE
        return CATALOGUE.code, CATALOGUE_SCHEMA.encode(out)

    def refuse(self, c: Candidate, status: Status, detail: str) -> tuple[int, bytes]:
        """A MACed (or sealed) refusal for a request that proved its owner (e.g. ``spent``)."""
        out: dict[str, Any] = {"rid": c.rid, "status": int(status), "scrip_id": c.scrip_id, "detail": fit(detail)}
        return self._finish(out, c.level, c.secret, c.customer_id)

    def _finish(self, out: dict[str, Any], level: Level, secret: bytes | None, cid: bytes) -> tuple[int, bytes]:
        if level >= Level.THEFT and secret is not None:
            out["mac"] = profile.hmac_sha256(secret, reply_mac_input(out), MAC_BYTES)
        param = REPLY_CODEC.encode(out)
        if level == Level.PRIVATE and secret is not None:
            box = box_key(secret, out["rid"], cid).seal(1, param, cid + out["rid"])
            return SEALED_REPLY.code, SEALED_CODEC.encode({"customer_id": cid, "rid": out["rid"], "box": box})
        return REPLY.code, param

    @staticmethod
    def _plain_reply(rid: bytes, status: Status, detail: str) -> tuple[bytes, bytes]:
        return rid, REPLY_CODEC.encode({"rid": rid, "status": int(status), "detail": fit(detail)})


DETAIL_MAX_BYTES = 200  # a reply's detail, in UTF-8


def fit(detail: str) -> str:
    """A refusal's ``detail`` within :data:`DETAIL_MAX_BYTES` of UTF-8, cut (with "...") if longer: a product name
    it quotes (``no product '\\x01...'``) can be four times the 128 bytes a request may name. Before, such a
    refusal could not be encoded, and the request's batch failed (its connection closed, unanswered)."""
    raw = detail.encode("utf-8", "surrogatepass")
    if len(raw) <= DETAIL_MAX_BYTES:
        return detail
    return raw[: DETAIL_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."


NOT_AN_ISSUER = (
    "only this vendor's bulk brokers may pay for scrip issued to another customer (its answer carries that "
    "customer's secret): nothing was spent"
)


def _buy_reply(macs: profile.HmacKeys, secret: bytes, rid: bytes, sid: bytes, change: bytes, content: bytes) -> bytes:
    """The level-2 reply accepting a purchase with change, MACed: the hot reply, built in one join.

    The same bytes as ``REPLY_SCHEMA.encode`` of ``{rid, status 0, scrip_id,
    change, content, mac}`` with ``mac`` over :func:`reply_mac_input` (a test
    checks both against the generic path).
    """
    mac = macs.mac(
        secret,
        b"".join(
            (
                b"MCRP",
                _U32(len(rid)),
                rid,
                b"\x00\x00\x00\x01\x00",  # status OK, length-prefixed
                _U32(len(sid)),
                sid,
                _U32(len(change)),
                change,
                _U32(len(content)),
                content,
                b"\x00" * 12,  # no issued scrip, no issued secret, no detail
            )
        ),
        MAC_BYTES,
    )
    if len(rid) != RID_BYTES or len(sid) != SCRIP_ID_BYTES or len(content) > CONTENT_MAX_BYTES:
        return REPLY_SCHEMA.encode(
            {"rid": rid, "status": 0, "scrip_id": sid, "change": change, "content": content, "mac": mac}
        )
    return b"".join(
        (
            b"\xa6\x00\x50",  # map(6), key 0: bytes(16)
            rid,
            b"\x01\x00\x02\x48",  # key 1: status 0, key 2: bytes(8)
            sid,
            b"\x03",
            cbor_head(2, len(change)),
            change,
            b"\x04",
            cbor_head(2, len(content)),
            content,
            b"\x08\x50",  # key 8: bytes(16)
            mac,
        )
    )


def price_detail(product: str, price: int) -> str:
    """The detail of a ``wrong_price`` refusal: the price the vendor asks (read back by :func:`asked_price`)."""
    return f"the price of {product!r} is {price}"


def asked_price(detail: str, product: str) -> int | None:
    """The price a ``wrong_price`` refusal's detail names for ``product`` (:func:`price_detail`), if it names one."""
    head = f"the price of {product!r} is "
    tail = detail[len(head) :]
    return int(tail) if detail.startswith(head) and tail.isascii() and tail.isdigit() else None


def too_large_detail(size: int, limit: str) -> str:
    """The detail of a ``too_large`` refusal (at most 200 characters, the reply's bound)."""
    return f"the product is too large to deliver ({size} bytes, above the {limit}): the scrip was not spent"


def max_buy_reply_bytes(content_bytes: int) -> int:
    """The largest reply (param bytes) accepting a purchase of a product of ``content_bytes`` (at most
    :data:`CONTENT_MAX_BYTES`): at level 3 (sealed), with change carrying the most properties scrip can have.

    Built for real by :meth:`Vendor.accept` with throwaway keys, so it is the very size a vendor's reply has.
    """
    key, cid = bytes(MASTER_SECRET_BYTES), bytes(CUSTOMER_ID_BYTES)
    vendor = Vendor(bytes(VENDOR_BYTES), {0: key}, 0, {0: key}, {"p": Product(1, bytes(content_bytes))})
    raw = mint(vendor.scrip_secrets, index=0, vendor=vendor.vendor_id, value=2, serial=0, customer_id=cid,
               expiry=1, properties=bytes(MAX_PROPERTIES)).encode()  # fmt: skip
    c = Candidate(raw, bytes(RID_BYTES), Op.BUY, 1, "p", Level.PRIVATE, key, cid, bytes(32))
    return len(vendor.accept(c, 0, 0)[1])


_DETAIL = {
    Status.FORGED: "the certificate does not verify: forged or altered scrip",
    Status.STOLEN: "the request is not signed by the scrip's customer: stolen scrip",
    Status.SPENT: "this scrip was already spent",
    Status.EXPIRED: "this scrip has expired: renew scrip before its expiry date",
    Status.WRONG_VENDOR: "this scrip is for another vendor",
    Status.MALFORMED: "the scrip is malformed",
}


def not_decided(mtype: int, param: bytes, detail: str) -> tuple[int, bytes]:
    """``(mtype, param)`` of the answer to a request the vendor could not decide (its store cannot be written):
    status ``unavailable``, plain (the vendor keeps no secret it could not read), for the request's ``rid`` (in
    the clear in a sealed request too). A catalogue request gets a catalogue page with that status and nothing
    in it. Nothing was spent: the customer keeps the request and sends it again."""
    if mtype == CATALOGUE_ASK.code:
        return CATALOGUE.code, CATALOGUE_SCHEMA.encode({"vendor": bytes(VENDOR_BYTES), "status": int(
            Status.UNAVAILABLE), "products": [], "more": False, "detail": detail[:200]})  # fmt: skip
    rid = bytes(RID_BYTES)
    try:
        if mtype == SEALED_REQUEST.code:
            rid = SEALED_CODEC.decode(param)["rid"]
        elif mtype == REQUEST.code:
            rid = REQUEST_CODEC.decode(param)["rid"]
    except DecodeError:
        pass  # a malformed request: answered for no rid (it would be refused as malformed anyway)
    return REPLY.code, REPLY_CODEC.encode({"rid": rid, "status": int(Status.UNAVAILABLE), "detail": detail[:200]})


def refusal(prepared: tuple[bytes, bytes]) -> tuple[int, bytes]:
    """``(mtype, param)`` of a refusal returned by :meth:`Vendor.prepare`."""
    return REPLY.code, prepared[1]


# --- spent list keys ----------------------------------------------------------------------


def expiry_of_key(key: bytes) -> int:
    return int.from_bytes(key[:4], "big")
