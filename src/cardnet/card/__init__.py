"""Card runtime: the secure element (atomic steps, outbox, applets, PIN, ports)."""

from cardnet.card.applet import Applet, StepContext
from cardnet.card.errors import CardError, Refused
from cardnet.card.runtime import Card, Outgoing

__all__ = ["Applet", "Card", "CardError", "Outgoing", "Refused", "StepContext"]
