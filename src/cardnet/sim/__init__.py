"""The deterministic simulator: a whole network in one process, a virtual clock, seeded faults."""
