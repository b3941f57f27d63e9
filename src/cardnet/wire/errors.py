"""The wire layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class DecodeError(CardnetError, ValueError):
    """Bytes or text that do not decode to a valid wire object.

    Raised by every decoder in :mod:`cardnet.wire` (ids, CBOR params, message
    headers) and never anything else: a decoder that meets bad input raises
    this with a ``reason`` such as ``truncated``, ``trailing_bytes``,
    ``wrong_type``, ``unknown_key``, ``missing_key``, ``oversize``,
    ``undersize``, ``not_deterministic``, ``bad_cbor``, ``unknown_mtype``,
    ``wrong_mtype``, ``bad_mtype`` or ``bad_uid`` (table in docs/wire.md).
    """
