"""Fuzzing what a customer reads out of a vendor's refusal: any detail text gets a price or None, never an
exception (the vendor is not trusted: a detail is its words).

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from cardnet.protocols import millicent as mc

FUZZ = fuzz_settings(300)
PRODUCT = "song-7"


@FUZZ
@given(st.text(max_size=12) | st.sampled_from(["²", "٣", "12²", "-1", " 5", "5 "]))
def test_asked_price_reads_digits_or_nothing(tail: str) -> None:
    detail = mc.price_detail(PRODUCT, 1)[: -len("1")] + tail
    asked = mc.asked_price(detail, PRODUCT)
    if tail.isascii() and tail.isdigit():
        assert asked == int(tail)
    else:
        assert asked is None


@pytest.mark.parametrize("tail", ["²", "٣", "¹²"])
def test_a_vendor_writing_odd_digits_names_no_price(tail: str) -> None:
    assert mc.asked_price(f"the price of {PRODUCT!r} is {tail}", PRODUCT) is None


def test_the_vendors_own_detail_reads_back() -> None:
    assert mc.asked_price(mc.price_detail(PRODUCT, 250), PRODUCT) == 250
