"""Card applets: the on-card side of each protocol (adapters from card state to protocol state machines)."""
