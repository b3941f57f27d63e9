"""Fuzzing the fair exchange's decoders: arbitrary bytes get a ProtocolError (or, for a stored record, a
DecodeError or ValueError), never anything else; what decodes encodes back to the same bytes. The cards are
fuzzed with damaged messages inside genuine sessions in tests/protocol/test_fairx_damaged_messages.py.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

from fuzzing import cbor_or_bytes, check_inner_decoder, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from cardnet.protocols import fairx as fx
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import DecodeError

FUZZ = fuzz_settings(200)
raw = cbor_or_bytes()

# -- the decoders ------------------------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(sorted(fx.INNER)) | st.integers(0, 255), raw)
def test_inner_decoder(code: int, body: bytes) -> None:
    check_inner_decoder(fx.decode_inner, fx.encode_inner, bytes([code]) + body)


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
