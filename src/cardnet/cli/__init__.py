"""The ``cardnet`` command line: one module per command group."""
