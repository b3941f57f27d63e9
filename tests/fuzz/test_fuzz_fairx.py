"""Fuzzing the fair exchange's decoders: arbitrary bytes get a ProtocolError (or, for a stored record, a
DecodeError or ValueError), never anything else; what decodes encodes back to the same bytes. The cards are
fuzzed with damaged messages inside genuine sessions in tests/protocol/test_fairx_damaged_messages.py.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import os
from datetime import timedelta

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.protocols import fairx as fx
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import DecodeError

N = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=80) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(0, 8), kids, max_size=6),
    max_leaves=14,
)
raw = st.binary(max_size=400) | cbor_values.map(cbor2.dumps)


# -- the decoders ------------------------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(sorted(fx.INNER)) | st.integers(0, 255), raw)
def test_inner_decoder(code: int, body: bytes) -> None:
    try:
        got, fields = fx.decode_inner(bytes([code]) + body)
    except ProtocolError as exc:
        assert exc.reason == "bad_record"
    else:
        assert fx.encode_inner(got, fields) == bytes([code]) + body  # strict: only canonical encodings pass


@FUZZ
@given(raw)
def test_exchange_record_decoder(body: bytes) -> None:
    """A stored exchange record that is not one is a DecodeError or a ValueError (the card's state is damaged),
    never anything else; one that decodes encodes back to the same bytes."""
    try:
        x = fx.Exchange.decode(body)
    except (DecodeError, ValueError):
        return
    assert x.encode() == body


@FUZZ
@given(raw)
def test_request_parser(body: bytes) -> None:
    """What a TTP makes of a request's fields: a Request, or a ProtocolError saying what is wrong."""
    try:
        _, fields = fx.decode_inner(bytes([fx.REQUEST]) + body)
    except ProtocolError:
        return
    try:
        req = fx.parse_request(fields)
    except ProtocolError as exc:
        assert exc.reason == "bad_request"
    else:
        assert req.kind in ("resolve", "abort") and len(req.xid) == 32
