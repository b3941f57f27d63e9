"""The host layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class HostError(CardnetError):
    """The host could not do what was asked; ``reason``: ``no_card``, ``busy``,
    ``closed``, ``forged_src``, ``bad_config``, ``no_port``."""
