"""smc (TrustedPals): secure multiparty computation as F(Uniform Interactive Consistency) among security modules.

One module an idea: ``uic`` (the sans-I/O UIC state machine: t + 1 synchronous rounds under general omission,
t < n/2), ``uic_wire`` (its one payload, canonical CBOR and strict decoder). See docs/uic.md.
"""
