"""Millicent scrip micropayments (Glassman et al. 1995; Coulouris et al. pp. 303-306), sans-I/O.

Theory of operation
-------------------
*Scrip* is vendor-specific cash: ``vendor, value, scrip id, customer id,
expiry, properties, certificate`` (the paper's fields, in that order). The
certificate is HMAC-SHA256 over the other fields, truncated to 128 bits,
keyed with one of the vendor's 256-bit *master scrip secrets*; the secret is
chosen by the first byte of the scrip id (the 8-bit master secret index), so
secrets can be rotated (new scrip under a new index, old scrip still valid
until it expires, then the old secret is dropped).

A customer proves ownership with her *customer secret*
``HMAC(customer master secret, customer id)``, the customer master secret
chosen by the first byte of the customer id. Three protection levels:

1. validation only: scrip in the clear, nothing MACed (theft possible);
2. theft protection: request and reply MACed with the customer secret; the
   vendor checks the MAC with the secret of the scrip's customer id, so
   someone else's scrip is refused as ``stolen``;
3. confidentiality: request and reply sealed (AES-256-GCM) under a key
   derived from the customer secret and the request id.

The vendor validates (certificate, vendor, expiry, customer binding, price)
in :meth:`Vendor.prepare`, which needs no state; the *spent* check is the
service's first-wins insert of the scrip (keyed ``expiry || scrip id`` so the
spent list can be pruned in key order); :meth:`Vendor.accept` then makes the
change scrip and the reply, which the service stores with the spent record
and sends only after that record is durable. A request whose scrip is
already spent gets the stored reply back when it is the very same request
(a customer re-fetching a lost reply), else ``spent``.

A broker gets scrip under a vendor's *licence* (it holds one master scrip
secret and mints) or buys it in *bulk*: ``millicent.bulk_buy`` (value,
pieces, the agreed discount), MACed with an order key the two share, answered
by ``millicent.bulk_sold`` with scrip bound to the broker's own customer id;
the broker then pays with that scrip (``Op.ISSUE``) for scrip bound to a
customer, and never holds a master secret.

The hot path (request decode, accepting reply) has hand-written encoders and
decoders that give exactly the schemas' bytes and fields, or step aside for
the schemas (:func:`decode_request_fast`, :class:`FlatCodec`, ``_buy_reply``).

Nothing here reads a clock or draws randomness: ``now`` (Unix seconds), new
serial numbers and request ids come in as arguments.

One module an idea: ``scrip`` (the scrip, secrets, levels), ``messages`` (schemas, codes, codecs, MAC inputs),
``broker`` (bulk orders, scrip sold to customers), ``customer`` (requests, replies), ``vendor`` (validation,
acceptance, refusals). Everything is re-exported here, so ``from cardnet.protocols import millicent as mc`` and
``mc.<name>`` read as before.
"""

from cardnet.protocols.millicent.broker import (
    PURCHASE_OK as PURCHASE_OK,
)
from cardnet.protocols.millicent.broker import (
    PURCHASE_PENDING as PURCHASE_PENDING,
)
from cardnet.protocols.millicent.broker import (
    PURCHASE_REFUSED as PURCHASE_REFUSED,
)
from cardnet.protocols.millicent.broker import (
    REPLY_KEY_BYTES as REPLY_KEY_BYTES,
)
from cardnet.protocols.millicent.broker import (
    REPLY_KEY_INFO as REPLY_KEY_INFO,
)
from cardnet.protocols.millicent.broker import (
    BulkSale as BulkSale,
)
from cardnet.protocols.millicent.broker import (
    Purchased as Purchased,
)
from cardnet.protocols.millicent.broker import (
    bulk_buy_mac_input as bulk_buy_mac_input,
)
from cardnet.protocols.millicent.broker import (
    bulk_price as bulk_price,
)
from cardnet.protocols.millicent.broker import (
    bulk_sold_mac_input as bulk_sold_mac_input,
)
from cardnet.protocols.millicent.broker import (
    denominations as denominations,
)
from cardnet.protocols.millicent.broker import (
    make_bulk_order as make_bulk_order,
)
from cardnet.protocols.millicent.broker import (
    make_purchased as make_purchased,
)
from cardnet.protocols.millicent.broker import (
    max_bulk_sold_bytes as max_bulk_sold_bytes,
)
from cardnet.protocols.millicent.broker import (
    open_bulk_sold as open_bulk_sold,
)
from cardnet.protocols.millicent.broker import (
    open_purchased as open_purchased,
)
from cardnet.protocols.millicent.broker import (
    purchase_sig_input as purchase_sig_input,
)
from cardnet.protocols.millicent.broker import (
    purchased_mac_input as purchased_mac_input,
)
from cardnet.protocols.millicent.customer import (
    Outcome as Outcome,
)
from cardnet.protocols.millicent.customer import (
    make_request as make_request,
)
from cardnet.protocols.millicent.customer import (
    open_reply as open_reply,
)
from cardnet.protocols.millicent.messages import (
    BROKER_MAX_REDEEM as BROKER_MAX_REDEEM,
)
from cardnet.protocols.millicent.messages import (
    BROKER_MAX_REQUEST as BROKER_MAX_REQUEST,
)
from cardnet.protocols.millicent.messages import (
    BROKER_RECV_LIMIT as BROKER_RECV_LIMIT,
)
from cardnet.protocols.millicent.messages import (
    BROKER_REDEEM_RECV_LIMIT as BROKER_REDEEM_RECV_LIMIT,
)
from cardnet.protocols.millicent.messages import (
    BULK_BUY as BULK_BUY,
)
from cardnet.protocols.millicent.messages import (
    BULK_BUY_SCHEMA as BULK_BUY_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    BULK_KEY_BYTES as BULK_KEY_BYTES,
)
from cardnet.protocols.millicent.messages import (
    BULK_SOLD as BULK_SOLD,
)
from cardnet.protocols.millicent.messages import (
    BULK_SOLD_SCHEMA as BULK_SOLD_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE as CATALOGUE,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE_ASK as CATALOGUE_ASK,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE_ASK_SCHEMA as CATALOGUE_ASK_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE_ENTRY_SCHEMA as CATALOGUE_ENTRY_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE_PAGE as CATALOGUE_PAGE,
)
from cardnet.protocols.millicent.messages import (
    CATALOGUE_SCHEMA as CATALOGUE_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    MAX_PIECES as MAX_PIECES,
)
from cardnet.protocols.millicent.messages import (
    OPEN as OPEN,
)
from cardnet.protocols.millicent.messages import (
    OPEN_SCHEMA as OPEN_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    OPENED as OPENED,
)
from cardnet.protocols.millicent.messages import (
    OPENED_SCHEMA as OPENED_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    PRODUCT_NAME_MAX_BYTES as PRODUCT_NAME_MAX_BYTES,
)
from cardnet.protocols.millicent.messages import (
    PURCHASE as PURCHASE,
)
from cardnet.protocols.millicent.messages import (
    PURCHASE_SCHEMA as PURCHASE_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    PURCHASED as PURCHASED,
)
from cardnet.protocols.millicent.messages import (
    PURCHASED_SCHEMA as PURCHASED_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    REDEEM as REDEEM,
)
from cardnet.protocols.millicent.messages import (
    REDEEM_MAX_ITEMS as REDEEM_MAX_ITEMS,
)
from cardnet.protocols.millicent.messages import (
    REDEEM_SCHEMA as REDEEM_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    REDEEMED as REDEEMED,
)
from cardnet.protocols.millicent.messages import (
    REDEEMED_SCHEMA as REDEEMED_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    REPLY as REPLY,
)
from cardnet.protocols.millicent.messages import (
    REPLY_CODEC as REPLY_CODEC,
)
from cardnet.protocols.millicent.messages import (
    REPLY_SCHEMA as REPLY_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    REQUEST as REQUEST,
)
from cardnet.protocols.millicent.messages import (
    REQUEST_CODEC as REQUEST_CODEC,
)
from cardnet.protocols.millicent.messages import (
    REQUEST_SCHEMA as REQUEST_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    SEALED_CODEC as SEALED_CODEC,
)
from cardnet.protocols.millicent.messages import (
    SEALED_REPLY as SEALED_REPLY,
)
from cardnet.protocols.millicent.messages import (
    SEALED_REQUEST as SEALED_REQUEST,
)
from cardnet.protocols.millicent.messages import (
    SEALED_SCHEMA as SEALED_SCHEMA,
)
from cardnet.protocols.millicent.messages import (
    VENDOR_MAX_REQUEST as VENDOR_MAX_REQUEST,
)
from cardnet.protocols.millicent.messages import (
    VENDOR_RECV_LIMIT as VENDOR_RECV_LIMIT,
)
from cardnet.protocols.millicent.messages import (
    FlatCodec as FlatCodec,
)
from cardnet.protocols.millicent.messages import (
    P as P,
)
from cardnet.protocols.millicent.messages import (
    box_key as box_key,
)
from cardnet.protocols.millicent.messages import (
    broker_macd as broker_macd,
)
from cardnet.protocols.millicent.messages import (
    cbor_head as cbor_head,
)
from cardnet.protocols.millicent.messages import (
    decode_request_fast as decode_request_fast,
)
from cardnet.protocols.millicent.messages import (
    length_prefixed as length_prefixed,
)
from cardnet.protocols.millicent.messages import (
    open_catalogue as open_catalogue,
)
from cardnet.protocols.millicent.messages import (
    open_redeemed as open_redeemed,
)
from cardnet.protocols.millicent.messages import (
    redeem_mac_input as redeem_mac_input,
)
from cardnet.protocols.millicent.messages import (
    redeemed_mac_input as redeemed_mac_input,
)
from cardnet.protocols.millicent.messages import (
    reply_mac_input as reply_mac_input,
)
from cardnet.protocols.millicent.messages import (
    request_mac_input as request_mac_input,
)
from cardnet.protocols.millicent.messages import (
    request_too_large as request_too_large,
)
from cardnet.protocols.millicent.scrip import (
    CERT_BYTES as CERT_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    CONTENT_MAX_BYTES as CONTENT_MAX_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    CUSTOMER_ID_BYTES as CUSTOMER_ID_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    MAC_BYTES as MAC_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    MASTER_SECRET_BYTES as MASTER_SECRET_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    MAX_PROPERTIES as MAX_PROPERTIES,
)
from cardnet.protocols.millicent.scrip import (
    MAX_SERIAL as MAX_SERIAL,
)
from cardnet.protocols.millicent.scrip import (
    MAX_VALUE as MAX_VALUE,
)
from cardnet.protocols.millicent.scrip import (
    OPS as OPS,
)
from cardnet.protocols.millicent.scrip import (
    RID_BYTES as RID_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    SCRIP_HEAD as SCRIP_HEAD,
)
from cardnet.protocols.millicent.scrip import (
    SCRIP_ID_BYTES as SCRIP_ID_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    SCRIP_MAX_BYTES as SCRIP_MAX_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    SCRIP_MIN_BYTES as SCRIP_MIN_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    UNSPENT as UNSPENT,
)
from cardnet.protocols.millicent.scrip import (
    VENDOR_BYTES as VENDOR_BYTES,
)
from cardnet.protocols.millicent.scrip import (
    VERSION as VERSION,
)
from cardnet.protocols.millicent.scrip import (
    Level as Level,
)
from cardnet.protocols.millicent.scrip import (
    MillicentError as MillicentError,
)
from cardnet.protocols.millicent.scrip import (
    Op as Op,
)
from cardnet.protocols.millicent.scrip import (
    Scrip as Scrip,
)
from cardnet.protocols.millicent.scrip import (
    Status as Status,
)
from cardnet.protocols.millicent.scrip import (
    certify as certify,
)
from cardnet.protocols.millicent.scrip import (
    customer_secret as customer_secret,
)
from cardnet.protocols.millicent.scrip import (
    mint as mint,
)
from cardnet.protocols.millicent.scrip import (
    scrip_id as scrip_id,
)
from cardnet.protocols.millicent.vendor import (
    NOT_AN_ISSUER as NOT_AN_ISSUER,
)
from cardnet.protocols.millicent.vendor import (
    Candidate as Candidate,
)
from cardnet.protocols.millicent.vendor import (
    Product as Product,
)
from cardnet.protocols.millicent.vendor import (
    Vendor as Vendor,
)
from cardnet.protocols.millicent.vendor import (
    asked_price as asked_price,
)
from cardnet.protocols.millicent.vendor import (
    expiry_of_key as expiry_of_key,
)
from cardnet.protocols.millicent.vendor import (
    fit as fit,
)
from cardnet.protocols.millicent.vendor import (
    max_buy_reply_bytes as max_buy_reply_bytes,
)
from cardnet.protocols.millicent.vendor import (
    not_decided as not_decided,
)
from cardnet.protocols.millicent.vendor import (
    price_detail as price_detail,
)
from cardnet.protocols.millicent.vendor import (
    refusal as refusal,
)
from cardnet.protocols.millicent.vendor import (
    too_large_detail as too_large_detail,
)
