"""The card layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class CardError(CardnetError):
    """A card refused or could not do something; ``reason`` says which:

    ``out_of_memory`` (the step would exceed the card's capacity),
    ``not_personalised``, ``already_personalised``, ``not_for_this_card``,
    ``privileged`` (a privileged mtype from a sender outside the authenticated
    set), ``no_applet``, ``bad_param``, ``pin_locked``, ``bad_pin``,
    ``ports_exhausted``, ``refused`` (an applet's own refusal), ``applet_error``.
    """


class Refused(CardError):
    """Raised by an applet to refuse a message: its effects are rolled back and
    the sender gets a ``card.refused`` notice carrying ``reason``."""
