"""``cardnet bench etp``: eTP messages card to card between two host processes over TCP.

Setup, made and removed by the benchmark in a temporary directory: a CA, two
cards personalised under it with the ``pingpong`` applet, each in a durable
SQLite store (the default: WAL, ``synchronous=FULL``: every group of steps is
fsynced before its outputs leave the card), and two host processes
(``python -m cardnet.cli.main host run --config …``) that route each other's
domain over TCP on 127.0.0.1. This process is an application on host A (its
Unix socket).

Figures (each the median of interleaved rounds, all measured in one run):

* ``header_bytes``: the eTP header, ``cardnet.wire.HEADER_BYTES``, checked
  against an encoded message with an empty param: 34.
* ``msgs_per_s``: one-way messages card A -> card B. The application keeps
  ``blasts_in_flight`` ``bench.blast {count: blast}`` requests outstanding at
  card A; for each, card A emits ``blast`` ``bench.stream`` messages to card B
  in one step; card B steps them and answers the last one of each blast with
  ``bench.blast_done {received}``, its own durable count. Rate = messages card
  B stepped / time from the first blast sent to the last ``blast_done`` received.
* ``rtt_per_s``: round trips card A -> card B -> card A. ``bench.ping_start
  {count, window}`` makes card A keep ``window`` ``bench.ping`` in flight to
  card B, which answers each with a ``bench.pong``; every pong that comes back
  lets card A send the next ping, until ``count`` pongs came back and card A
  sends ``bench.ping_done``. Rate = ``count`` / time from ``ping_start`` sent
  to ``ping_done`` received (``count`` is sized to last about one round). The
  default window is two host groups (``2 * MAX_GROUP``), enough to keep both
  hosts busy at once.
* ``tcp_bound_rtt_per_s``, the bound: plain asyncio ping-pong between two OS
  processes on 127.0.0.1 (a ponger subprocess and this process), with frames
  of the real encoded ``bench.ping`` / ``bench.pong`` sizes (4-byte length
  prefix + message) and ``window`` pings in flight, each pong answered by the
  next ping: the same traffic without cards, hosts or storage.

Target: ``rtt_per_s >= 0.5 * tcp_bound_rtt_per_s``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.applets.pingpong import BLAST, BLAST_DONE, MAX_BLAST, PING, PING_DONE, PING_START, PONG, STREAM
from cardnet.bench.procs import HostProc, free_port, readline, stop_process
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.client import AppClient
from cardnet.host.server import MAX_GROUP
from cardnet.store import SqliteStore
from cardnet.transport import PREFIX_BYTES
from cardnet.wire import HEADER_BYTES, Message, Uid

FIGURES = ("msgs_per_s", "rtt_per_s", "tcp_bound_rtt_per_s")
# Two of the hosts' groups in flight each way: while one host steps (and fsyncs) a
# group, the other host steps the other one, and neither waits for work.
DEFAULT_WINDOW = 2 * MAX_GROUP
MAX_WINDOW = 1024  # what bench.ping_start accepts
DEFAULT_BLASTS_IN_FLIGHT = 4
CARD_CAPACITY_BYTES = 16 << 20  # room in card A's outbox for every blast in flight
START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 60.0  # for one ping run or one blast to finish
TYPICAL_I = 1000  # a ping counter of the size most pings carry (a 3-byte CBOR uint)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class BenchError(RuntimeError):
    """The benchmark could not run (a process did not start, or messages went missing)."""


# -- sizes ---------------------------------------------------------------------------------------


def header_bytes() -> int:
    """``HEADER_BYTES``, checked against an encoded message with an empty param."""
    encoded = len(Message(Uid(bytes(range(12)), 1), Uid(bytes(12)), PING.code, b"").encode())
    if encoded != HEADER_BYTES:
        raise BenchError(f"an encoded message with an empty param is {encoded} bytes, HEADER_BYTES is {HEADER_BYTES}")
    return HEADER_BYTES


def message_sizes(a: Uid, b: Uid) -> dict[str, int]:
    """Bytes of a typical encoded ping, pong and stream message (header + param, without framing)."""
    return {
        "ping_bytes": PING.make(a, b, i=TYPICAL_I).size,
        "pong_bytes": PONG.make(b, a, i=TYPICAL_I).size,
        "stream_bytes": STREAM.make(a, b, i=TYPICAL_I, last=False, notify=Uid(a.domain, 1)).size,
    }


# -- the two host processes -------------------------------------------------------------------------


def make_hosts(directory: Path) -> tuple[HostProc, HostProc]:
    """A CA, two personalised cards (durable SQLite) and two host configs routing to each other."""
    now = datetime.now(UTC)
    authority = pki.CertificateAuthority.create("cardnet bench etp CA", now=now)
    hosts = []
    for name, pin in (("a", "1111"), ("b", "2222")):
        card = Card(SqliteStore(str(directory / f"{name}.card.db")))
        uid = personalise(card, authority, pin=pin, now=now)
        card.close()
        hosts.append(HostProc(name, directory, free_port(), uid.domain, start_timeout_s=START_TIMEOUT_S))
    a, b = hosts
    for h, other in ((a, b), (b, a)):
        h.config.write_text(
            f'name = "{h.name}"\n'
            f'listen = "127.0.0.1:{h.port}"\n'
            f'app_socket = "{h.name}.sock"\n\n'
            "[[cards]]\n"
            f'store = "sqlite:///{h.name}.card.db"\n'
            'applets = ["pingpong"]\n'
            f"capacity_bytes = {CARD_CAPACITY_BYTES}\n\n"
            "[routes]\n"
            f'"{other.domain.hex()}" = "127.0.0.1:{other.port}"\n'
        )
    return a, b


# -- card to card -----------------------------------------------------------------------------------


async def blast_rate(app: AppClient, a: Uid, b: Uid, seconds: float, blast: int, in_flight: int) -> float:
    """One-way messages per second card A -> card B, for about ``seconds`` (see the module docstring)."""
    start = time.perf_counter()
    for _ in range(in_flight):
        await app.send(a, BLAST, peer=b, count=blast, notify=app.uid)
    outstanding = in_flight
    first: int | None = None
    received = 0
    last = start
    while outstanding:
        received = int((await app.recv_type(BLAST_DONE, timeout_s=WAIT_TIMEOUT_S))["received"])
        last = time.perf_counter()
        outstanding -= 1
        if first is None:
            first = received - blast  # card B's count before this run (blasts arrive whole and in order)
        if last - start < seconds:
            await app.send(a, BLAST, peer=b, count=blast, notify=app.uid)
            outstanding += 1
    assert first is not None
    return (received - first) / (last - start)


async def ping_rate(app: AppClient, a: Uid, b: Uid, count: int, window: int) -> float:
    """Round trips per second for one ``bench.ping_start`` of ``count`` pings, ``window`` in flight."""
    start = time.perf_counter()
    await app.send(a, PING_START, peer=b, count=count, window=window, notify=app.uid)
    done = await app.recv_type(PING_DONE, timeout_s=WAIT_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if done["count"] != count:
        raise BenchError(f"card A reported {done['count']} round trips, {count} were asked for")
    return count / elapsed


# -- the bound: plain asyncio ping-pong between two processes -----------------------------------------

PONGER = """
import asyncio, struct, sys

PREFIX = struct.Struct(">I")
PONG = PREFIX.pack({pong_bytes}) + bytes({pong_bytes})


async def serve(reader, writer):
    try:
        while True:
            (n,) = PREFIX.unpack(await reader.readexactly(4))
            await reader.readexactly(n)
            writer.write(PONG)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


asyncio.run(main())
"""


class Ponger:
    """The far end of the bound: a subprocess answering every frame with one pong frame."""

    def __init__(self, pong_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PONGER.format(pong_bytes=pong_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = readline(self.proc, START_TIMEOUT_S).strip()
        if not line.isdigit():
            self.stop()
            raise BenchError("the TCP ponger process did not start")
        self.port = int(line)

    def stop(self) -> None:
        stop_process(self.proc)


async def tcp_rate(port: int, seconds: float, window: int, ping_bytes: int, pong_bytes: int) -> float:
    """Round trips per second of plain asyncio ping-pong with ``window`` pings in flight."""
    prefix = struct.Struct(">I")
    ping = prefix.pack(ping_bytes) + bytes(ping_bytes)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(window):
            writer.write(ping)
        await writer.drain()
        start = time.perf_counter()
        end = start + seconds
        done = 0
        in_flight = window
        sending = True
        while in_flight:
            (n,) = prefix.unpack(await reader.readexactly(PREFIX_BYTES))
            if n != pong_bytes:
                raise BenchError(f"the ponger sent a {n}-byte message, expected {pong_bytes}")
            await reader.readexactly(n)
            done += 1
            in_flight -= 1
            if sending and done % 64 == 0:
                sending = time.perf_counter() < end
            if sending:
                writer.write(ping)
                await writer.drain()
                in_flight += 1
        return done / (time.perf_counter() - start)
    finally:
        writer.close()
        await writer.wait_closed()


# -- the run ------------------------------------------------------------------------------------------


def run(
    seconds: float = 3.0,
    window: int = DEFAULT_WINDOW,
    *,
    rounds: int = 5,
    blast: int = MAX_BLAST,
    blasts_in_flight: int = DEFAULT_BLASTS_IN_FLIGHT,
    directory: str | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Measure every figure in ``rounds`` interleaved rounds (``seconds / rounds`` each); report the medians.

    Interleaving puts a passing disturbance (another process on the machine)
    into one round of every figure rather than into all rounds of one figure.
    """
    if not seconds > 0 or rounds < 1:
        raise ValueError("seconds must be > 0 and rounds >= 1")
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be 1..{MAX_WINDOW}")
    if not 1 <= blast <= MAX_BLAST or blasts_in_flight < 1:
        raise ValueError(f"blast must be 1..{MAX_BLAST} and blasts_in_flight >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="cardnet-bench-etp-", dir=directory))
    try:
        return asyncio.run(_run(tmp, seconds, window, rounds, blast, blasts_in_flight, progress))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _run(
    tmp: Path, seconds: float, window: int, rounds: int, blast: int, blasts_in_flight: int, progress: Progress
) -> dict[str, Any]:
    per = seconds / rounds
    progress("personalising two cards under a CA")
    a, b = make_hosts(tmp)
    sizes = message_sizes(a.card, b.card)
    samples: dict[str, list[float]] = {k: [] for k in FIGURES}
    ponger: Ponger | None = None
    try:
        progress("starting host processes a and b")
        a.start()
        b.start()
        ponger = Ponger(sizes["pong_bytes"])
        async with await AppClient.connect(a.socket) as app:
            progress("warming up")
            estimate = await ping_rate(app, a.card, b.card, window * 8, window)
            await blast_rate(app, a.card, b.card, 0.0, blast, 1)
            await tcp_rate(ponger.port, min(per, 0.2), window, sizes["ping_bytes"], sizes["pong_bytes"])
            for r in range(1, rounds + 1):
                progress(f"round {r}/{rounds}: one-way card A -> card B (bench.blast)")
                samples["msgs_per_s"].append(await blast_rate(app, a.card, b.card, per, blast, blasts_in_flight))
                progress(f"round {r}/{rounds}: round trips card A -> card B -> card A (window {window})")
                count = max(window * 4, round(estimate * per))
                estimate = await ping_rate(app, a.card, b.card, count, window)
                samples["rtt_per_s"].append(estimate)
                progress(f"round {r}/{rounds}: plain asyncio ping-pong between two processes (the bound)")
                samples["tcp_bound_rtt_per_s"].append(
                    await tcp_rate(ponger.port, per, window, sizes["ping_bytes"], sizes["pong_bytes"])
                )
    except TimeoutError:
        raise BenchError(
            f"messages went missing between the hosts; host a's log:\n{a.log_tail()}\nhost b's log:\n{b.log_tail()}"
        ) from None
    finally:
        progress("stopping the processes")
        if ponger is not None:
            ponger.stop()
        b.stop()
        a.stop()
    result: dict[str, Any] = {k: round(statistics.median(v)) for k, v in samples.items()}
    result.update(sizes)
    result.update(
        header_bytes=header_bytes(),
        frame_prefix_bytes=PREFIX_BYTES,
        window=window,
        host_max_group=MAX_GROUP,
        blast=blast,
        blasts_in_flight=blasts_in_flight,
        seconds_per_figure=seconds,
        rounds=rounds,
        samples={k: [round(x) for x in v] for k, v in samples.items()},
    )
    result["rtt_vs_tcp_bound"] = round(result["rtt_per_s"] / result["tcp_bound_rtt_per_s"], 3)
    result["targets"] = {
        "header_bytes == 34": result["header_bytes"] == 34,
        "rtt_per_s >= 0.5 x tcp_bound_rtt_per_s": result["rtt_vs_tcp_bound"] >= 0.5,
    }
    return result
