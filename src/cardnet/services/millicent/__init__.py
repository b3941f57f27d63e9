"""Millicent's services: the vendor (``vendor``), the broker (``broker``) and the customer's wallet (``wallet``);
the protocol itself is ``cardnet.protocols.millicent`` (docs/millicent.md)."""
