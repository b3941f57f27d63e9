"""Protocols: sans-I/O state machines. No sockets, no clock, no randomness of their own:
time and randomness come in as arguments, effects go out as return values."""
