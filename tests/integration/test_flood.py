"""Thousands of idle connections to a host's port (plain TCP and mutual TLS) stay bounded.

Two real host processes, ``a`` and ``b``; the test floods ``b``'s listening
port from many loopback source addresses (127.0.0.2, ...) with several
thousand connections that connect (and, with TLS, complete the handshake with
a valid certificate) and then send nothing; each flooder re-opens its
connection shortly after the host closes it. Small limits come from ``b``'s
config. The test checks, in ``b``'s /proc entry, that its open descriptors
never exceed the cap and its peak resident memory (VmHWM) stays below a bound
computed from the cap; that a real echo between a card on ``a`` and ``b``'s
card succeeds while a flood from a few addresses is on; and that idle
connections — silent ones and ones that sent a frame and then went quiet —
are all closed by the host.
"""

from __future__ import annotations

import asyncio
import os
import resource
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hostprocs import HostProc, make_hosts
from procstatus import proc_status

from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import DEFAULT_LIMITS, encode_frame
from cardnet.transport.tcp import ACCEPT_BACKLOG
from cardnet.wire import Uid

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 200
MAX_PER_PEER = 50
HANDSHAKE_S = 1.0
IDLE_S = 2.0
FLOOD = 3000  # connections the flooders keep trying to hold
REOPEN_S = 2.0  # a flooder waits this long after the host closed its connection
TLS_BUFFER = 256 * 1024  # asyncio's SSLProtocol allocates this per TLS connection
PER_CONNECTION = 2 * DEFAULT_LIMITS.read_chunk_bytes + TLS_BUFFER + 64 * 1024  # generous per held connection
SLACK = 48 * 1024 * 1024  # allocator and interpreter noise on top of the baseline
FD_SLACK = 16  # descriptors the host opens besides connections (links, stores, log)
# asyncio accepts up to the server's backlog per loop pass; an over-cap connection is aborted by the accept
# callback a pass or two later and its descriptor closed in the pass after, while new batches are accepted:
# up to four batches may be open at once (tcp.ACCEPT_BACKLOG).
ACCEPT_BATCHES = 4 * ACCEPT_BACKLOG

LIMITS = f"""
[limits]
max_connections = {MAX_CONNECTIONS}
max_per_peer = {MAX_PER_PEER}
handshake_timeout_s = {HANDSHAKE_S}
idle_timeout_s = {IDLE_S}
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Flood:
    """Flooders in a thread of their own: each holds one idle connection, re-opening it once the host closes it."""

    port: int
    sources: list[str]
    per_source: int
    ctx: ssl.SSLContext | None
    stop: threading.Event = field(default_factory=threading.Event)
    opened: int = 0
    closed_by_host: int = 0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive()

    async def _main(self) -> None:
        gate = asyncio.Semaphore(256)  # connects in progress at once (the host's accept backlog is small)
        tasks = [asyncio.create_task(self._one(src, gate)) for src in self.sources for _ in range(self.per_source)]
        await asyncio.gather(*tasks)

    async def _one(self, src: str, gate: asyncio.Semaphore) -> None:
        while not self.stop.is_set():
            writer = None
            try:
                async with gate, asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(src, 0), ssl=self.ctx, server_hostname=None
                    )
                self.opened += 1
                while not self.stop.is_set():  # idle: send nothing, notice when the host closes
                    try:
                        async with asyncio.timeout(0.5):
                            if not await reader.read(1):
                                break
                    except TimeoutError:
                        continue
                else:
                    return
                self.closed_by_host += 1
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            finally:
                if writer is not None:
                    writer.transport.abort()
            await asyncio.sleep(REOPEN_S)


@pytest.fixture
def nofile() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 1000
    assert hard >= need, f"ulimit -n hard limit {hard} is below the {need} descriptors this test needs"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _client_ctx(tmp: Path) -> ssl.SSLContext:
    """A valid client identity (host a's certificate): the flood completes mutual TLS handshakes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(tmp / "ca.pem"))
    ctx.load_cert_chain(str(tmp / "a.pem"), str(tmp / "a.key"))
    return ctx


async def _echo(a: HostProc, b: HostProc, body: bytes) -> None:
    async with await AppClient.connect(a.socket) as app:
        await app.send(b.card, REQUEST, rid=1, body=body)
        got = await app.recv_type(REPLY, timeout_s=60)
        assert got["body"] == body


def _watch(pid: int, until: threading.Event, peak: list[int]) -> threading.Thread:
    def run() -> None:
        while not until.is_set():
            peak[0] = max(peak[0], _fds(pid))
            time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(what: str, cond: object, timeout_s: float = 60.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_flood_of_idle_connections_is_bounded(tmp_path: Path, tls: bool, nofile: None) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"], tls=tls)
    b.config.write_text(b.config.read_text() + LIMITS)
    try:
        a.start()
        b.start()
        assert b.proc is not None
        pid = b.proc.pid
        asyncio.run(_echo(a, b, b"before"))  # links up both ways
        base_fds, base_rss = _fds(pid), proc_status(pid, "VmRSS")
        ctx = _client_ctx(tmp_path) if tls else None
        peak_fds = [0]
        watching = threading.Event()
        watcher = _watch(pid, watching, peak_fds)

        # 1. A flood from 3 addresses: each is held to max_per_peer, and a's card still reaches b's.
        few = Flood(b.port, [f"127.0.0.{i}" for i in range(2, 5)], FLOOD // 3, ctx)
        few.start()
        _wait_for("the first flood to fill its per-peer quotas", lambda: few.opened >= 3 * MAX_PER_PEER)
        asyncio.run(_echo(a, b, b"during the flood"))
        few.join()

        # 2. A flood from 30 addresses: the overall cap holds.
        many = Flood(b.port, [f"127.0.1.{i}" for i in range(1, 31)], FLOOD // 30, ctx)
        many.start()
        _wait_for("the second flood to be closed by the host", lambda: many.closed_by_host >= 2 * MAX_CONNECTIONS)

        # 3. Quiet connections that sent one frame are closed after the idle timeout.
        async def talk_then_idle() -> int:
            frame = encode_frame(REQUEST.make(Uid(b"\x77" * 12, 1), b.card, rid=1, body=b"then silence"))
            conns = []
            for _ in range(20):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", b.port, local_addr=("127.0.2.1", 0), ssl=ctx, server_hostname=None
                )
                writer.write(frame)
                conns.append((reader, writer))
            closed = 0
            for reader, writer in conns:
                async with asyncio.timeout(60):
                    while await reader.read(65536):
                        pass
                closed += 1
                writer.transport.abort()
            return closed

        many.join()
        assert asyncio.run(talk_then_idle()) == 20
        _wait_for("the host to hold no flood connection", lambda: _fds(pid) <= base_fds + 2)
        watching.set()
        watcher.join()

        peak_rss = proc_status(pid, "VmHWM")
        rss_bound = base_rss + MAX_CONNECTIONS * PER_CONNECTION + SLACK
        print(
            f"\n{'tls' if tls else 'tcp'}: opened {few.opened + many.opened} flood connections, "
            f"{few.closed_by_host + many.closed_by_host} closed by the host; b held at most "
            f"{peak_fds[0] - base_fds} more descriptors than at rest (cap {MAX_CONNECTIONS}); "
            f"RSS {base_rss >> 20} MiB at rest, peak {peak_rss >> 20} MiB (bound {rss_bound >> 20} MiB)"
        )
        assert peak_fds[0] <= base_fds + MAX_CONNECTIONS + ACCEPT_BATCHES + FD_SLACK
        assert peak_rss <= rss_bound
        assert b.running, b.log_tail()
        asyncio.run(_echo(a, b, b"after"))
    finally:
        b.stop()
        a.stop()
