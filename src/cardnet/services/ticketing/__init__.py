"""The ticketing server (TRN paper 5.1): events and seats over HTTP, paid through SPEED, delivered with TRN over
the same connection upgraded (``Upgrade: TRN``). See docs/ticketing.md."""
