"""A ``cardnet`` command that waits at a barrier before it runs, for the tests that start several services at one
instant (tests/integration/test_claim_race.py).

``python barrierstart.py ARGS``: imports what ``cardnet ARGS`` would (so the starts do not spread over the imports'
half second), prints ``armed`` on stderr, then waits for a line on stdin and runs ``cardnet ARGS`` through the
same entry point as ``python -m cardnet.cli.main`` (``cardnet.cli.main.run``), exiting with its status. A test
arms several, then writes their lines one after the other: the commands start within some microseconds.
"""

from __future__ import annotations

import importlib
import signal
import sys

MODULES = ("cardnet.cli.main", "cardnet.cli.output", "cardnet.cli.millicent", "cardnet.store.owner",
           "cardnet.services.millicent.vendor", "cardnet.services.millicent.broker")  # fmt: skip

if __name__ == "__main__":
    for name in MODULES:
        importlib.import_module(name)
    from cardnet.cli.main import run

    sys.stderr.write("armed\n")
    sys.stderr.flush()
    if sys.stdin.readline() != "go\n":
        sys.exit(2)
    code = run(sys.argv[1:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
