"""The protocol layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class ProtocolError(CardnetError):
    """A protocol message was refused; ``reason`` names the check that failed
    (e.g. ``bad_signature``, ``bad_confirm``, ``replay``, ``no_session``,
    ``wrong_peer``, ``blocked``, ``stale_blocklist``, ``unknown_ca``, ``expired``,
    ``illegal_move``, ``bad_token``)."""
