"""One MPyC party for ``cardnet bench smc``: cardnet's median and first-price auction, computed with MPyC.

Run as an OS process of its own, one per party::

    python -m cardnet.bench.mpyc_party -M n -I i -P 127.0.0.1:p0 ... -P 127.0.0.1:pn-1 --no-log --no-uvloop

(``-M``, ``-I``, ``-P``, ``-T``, ``--no-log`` and ``--no-uvloop`` are MPyC's own flags, read by MPyC when it is
imported: ``n`` parties, this one's index, every party's address, the threshold, which defaults to
``(n - 1) // 2``.) The party connects to the others (``mpc.start()``) and prints ``cardnet-mpyc ready {json}``
(how long ``mpc.start()`` took, whether gmpy2 is in use). Then, for every line ``<function> <value>`` on its
stdin, it secret-shares its value with every party (``mpc.input``: Shamir shares), computes the function on the
shares, opens the result to every party (``mpc.output``) and prints ``cardnet-mpyc result {json}``. ``quit`` or
the end of stdin shuts the runtime down (``mpc.shutdown()``, which waits for every party).

* ``median``: of the ``n`` inputs the lower middle one, as cardnet's ``median``: ``mpc.sorted`` (Batcher's
  merge-exchange network; it leaks nothing, where ``mpyc.statistics.median_low``'s quickselect leaks ties and was
  no faster here), then the middle element opened;
* ``auction``: the highest bid and the lowest index holding it, as cardnet's first-price ``auction``:
  ``mpc.argmax`` (a tie goes to the first occurrence), winner and price opened.

Inputs are secure integers of :data:`BIT_LENGTH` bits: cardnet's inputs are 64-bit integers. Nothing in cardnet
imports this module: the benchmark starts it as a program, and ``mpyc`` comes with the ``bench`` extra.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Final

from mpyc.runtime import mpc

BIT_LENGTH: Final = 64
PREFIX: Final = "cardnet-mpyc"
FUNCTIONS: Final = ("median", "auction")
MAX_LINE_BYTES: Final = 256  # an order is a function name and one integer


def _say(kind: str, fields: dict[str, Any]) -> None:
    print(PREFIX, kind, json.dumps(fields, separators=(",", ":")), flush=True)


async def compute(secint: Any, function: str, value: int) -> dict[str, int]:
    """``function`` of every party's value; this party gives ``value``."""
    shares = mpc.input(secint(value))  # one secure integer per party, this party's value among them
    if function == "median":
        middle = mpc.sorted(shares)[(len(shares) - 1) // 2]
        return {"median": int(await mpc.output(middle))}
    winner, price = mpc.argmax(shares)
    w, p = await mpc.output([winner, price])
    return {"winner": int(w), "price": int(p)}


async def main() -> None:
    secint = mpc.SecInt(BIT_LENGTH)
    t0 = time.perf_counter()
    await mpc.start()
    start_ms = round(1e3 * (time.perf_counter() - t0), 3)
    _say("ready", {"start_ms": start_ms, "gmpy2": "gmpy2" in sys.modules, "bit_length": BIT_LENGTH})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        words = line.split()
        if words == ["quit"]:
            break
        if len(words) != 2 or words[0] not in FUNCTIONS:
            raise SystemExit(f"{PREFIX}: expected '<{'|'.join(FUNCTIONS)}> <integer>' or 'quit', got {line!r}")
        _say("result", await compute(secint, words[0], int(words[1])))
    await mpc.shutdown()


if __name__ == "__main__":
    mpc.run(main())
