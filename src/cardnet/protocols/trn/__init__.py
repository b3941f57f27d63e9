"""TRN (atomic, traceable token transfer), sans-I/O: ``token`` (the token object an agent issues), ``transfer``
(the two-phase move between two cards, its messages and its table), ``trace`` (the authority's decisions on a
token's chain of movements). Sessions between cards are ``cardnet.protocols.session`` (every protocol's); the
trace view is ``cardnet.protocols.trace_view``. See docs/trn.md."""
