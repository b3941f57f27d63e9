"""What the fuzz tests share: their budget, their hypothesis settings and their byte strategies.

``CARDNET_FUZZ_EXAMPLES`` sets the number of examples of every fuzz test (each has its own default, small
enough for the suite; e.g. 20000 for a long hunt).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import cbor2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from conftest import mutate


def budget(default: int) -> int:
    """The number of examples a fuzz test runs: ``CARDNET_FUZZ_EXAMPLES``, else ``default``."""
    return int(os.environ.get("CARDNET_FUZZ_EXAMPLES", str(default)))


def fuzz_settings(default: int, *, deadline_s: float | None = 5.0, large_data: bool = False) -> settings:
    """Hypothesis settings for a fuzz test: its budget, and a deadline that turns a hang (or a quadratic
    blow-up) into a failure, generous against loaded CI machines (``None``: none); ``large_data`` allows
    inputs that hypothesis finds large (certificates, signed data)."""
    checks = [HealthCheck.too_slow, HealthCheck.data_too_large] if large_data else [HealthCheck.too_slow]
    deadline = None if deadline_s is None else timedelta(seconds=deadline_s)
    return settings(max_examples=budget(default), deadline=deadline, suppress_health_check=checks)


def cbor_values(
    *, int_bits: int = 64, binary: int = 80, text: int = 20, keys: int = 6, items: int = 5, leaves: int = 12
) -> st.SearchStrategy[object]:
    """Arbitrary CBOR values: maps keyed by small integers (the shape of every cardnet schema), lists,
    integers up to ``int_bits`` bits either side, byte and text strings."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**int_bits), 2**int_bits)
        | st.binary(max_size=binary)
        | st.text(max_size=text),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(0, keys), kids, max_size=items),
        max_leaves=leaves,
    )


def cbor_or_bytes(values: st.SearchStrategy[object] | None = None) -> st.SearchStrategy[bytes]:
    """Input for a decoder: arbitrary bytes, or the CBOR of arbitrary values (to get past the CBOR parser into
    the schema checks)."""
    return st.binary(max_size=300) | (values if values is not None else cbor_values()).map(cbor2.dumps)


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with the edits :func:`conftest.mutate` makes (bit flips, truncations, insertions, CBOR edge
    values, deletions), drawn reproducibly by hypothesis."""
    return st.randoms(use_true_random=False).map(lambda r: mutate(original, r))


def check_inner_decoder(decode: Any, encode: Any, raw_inner: bytes) -> None:
    """An inner message decoder (TRN's, fairx's): ``bad_record`` or a strict round trip (only canonical
    encodings pass)."""
    try:
        got, fields = decode(raw_inner)
    except ProtocolError as exc:
        assert exc.reason == "bad_record"
    else:
        assert encode(got, fields) == raw_inner
