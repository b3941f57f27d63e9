"""SPEED on cards: the customer's purse and conductor, and the broker's SAM (see docs/speed.md)."""
