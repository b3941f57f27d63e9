"""The host layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class HostError(CardnetError):
    """The host could not do what was asked; ``reason``: ``no_card``, ``busy``,
    ``closed``, ``forged_src``, ``bad_config``, ``no_port``, ``store_failed`` (a card's store cannot be written),
    and a card store's reason when the host cannot open one: ``missing``, ``in_use``, ...); ``hint``, when given,
    says what to do."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(reason, message)
        self.hint = hint
