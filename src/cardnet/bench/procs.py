"""One launcher for cardnet host processes (``cardnet host run``, ``cardnet authority run``).

Used by the benchmarks (``cardnet bench etp``, ``cardnet bench trn``) and
by the integration tests that run real host processes on 127.0.0.1. A
:class:`HostProc` is one OS process (``python -m cardnet.cli.main <command>
--config <dir>/<name>.toml``) with its log in ``<dir>/<name>.log``; it is ready
once it prints its ``ready`` line. It can be stopped (SIGTERM, then SIGKILL),
killed (SIGKILL) and restarted with the same config, stores and log.
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from cardnet.errors import CardnetError
from cardnet.wire import Uid

START_TIMEOUT_S = 30.0
START_EACH_S = 3.0  # more time per process started beside it: they share the cores while they import and open
STOP_TIMEOUT_S = 10.0
READY = ("ready", '{"ready"')  # how a host's ready line starts (the second with --json)


class ProcError(CardnetError):
    """A host process did not start (its log says why) or was asked to start twice."""


# Ports handed to processes that bind them later: below Linux's ephemeral range (32768-60999), so that no
# outgoing connection of any process takes one as its local port meanwhile (a port the OS picked with bind(0) is
# an ephemeral one, and was seen taken by a connection before the host it was meant for could listen on it).
PORT_RANGE = (20_000, 32_000)
_handed: set[int] = set()  # ports this process handed out (never twice)
_pick = random.Random()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a process that will listen on it: a random one
    of :data:`PORT_RANGE` (never one this process handed out before) that a bind without ``SO_REUSEADDR``
    accepts (so none in use, nor in ``TIME_WAIT``)."""
    for _ in range(1000):
        port = _pick.randrange(*PORT_RANGE)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise ProcError("no_port", f"no free TCP port in {PORT_RANGE[0]}..{PORT_RANGE[1]} on 127.0.0.1")


def readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's next stdout line, or '' if it prints none within ``timeout_s`` (or exits)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return proc.stdout.readline()


def stop_process(proc: subprocess.Popen[str], *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL if ``kill``), SIGKILL after ``STOP_TIMEOUT_S``; close our ends of its pipes."""
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@dataclass
class HostProc:
    """One host process: ``command`` (e.g. ``("authority", "run", "--ca", path)``) with ``<dir>/<name>.toml``.

    ``domain`` is the domain of the host's first card (its ``card`` Uid is
    where applications usually talk to); ``env`` is added to this process's
    environment (e.g. ``CARDNET_PIN`` for the authority).
    """

    name: str
    dir: Path
    port: int
    domain: bytes
    command: tuple[str, ...] = ("host", "run")
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    start_timeout_s: float = START_TIMEOUT_S
    ready_line: str = ""  # what the last start printed once ready: the addresses it serves (port 0: the OS's pick)

    @property
    def card(self) -> Uid:
        return Uid.card(self.domain)

    @property
    def socket(self) -> str:
        return str(self.dir / f"{self.name}.sock")

    @property
    def config(self) -> Path:
        return self.dir / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the process (and its earlier runs) wrote to stderr."""
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def log_tail(self, chars: int = 2000) -> str:
        return self.log()[-chars:]

    def start(self) -> None:
        """Start the process and wait for its ``ready`` line; raise :class:`ProcError` with its log if none comes."""
        if self.running:
            raise ProcError("running", f"host {self.name} is already running: stop or kill it first")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "a") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardnet.cli.main", *self.command, "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=env,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            line = readline(self.proc, left)
            if line.startswith(READY) or not line:
                break
        else:
            line = ""
        self.ready_line = line.strip()
        if not line.startswith(READY):
            self.stop()
            raise ProcError(
                "not_started",
                f"host {self.name} did not print 'ready' within {self.start_timeout_s:g} s; "
                f"see {self.log_path}, which ends:\n{self.log_tail()}",
            )

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it hangs) and wait; a no-op if it is not running."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL and wait: the process gets no chance to clean up (a crash)."""
        if self.proc is not None:
            stop_process(self.proc, kill=True)
            self.proc = None

    def restart(self) -> None:
        """Start the process again after kill() or stop(): same config, same stores, same log."""
        if self.running:
            raise ProcError("running", f"host {self.name} is still running: stop or kill it before a restart")
        self.start()


class HostSet:
    """Host processes started and stopped together: ``with net:`` starts them all at once and stops every one on
    the way out, whatever happened. A subclass says which processes (:meth:`procs`)."""

    def procs(self) -> list[HostProc]:  # pragma: no cover
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every host at once (each waits for its own ``ready`` line, for longer the more start together:
        35 processes importing and opening their stores at once on 2 busy cores took more than 30 s)."""
        procs = self.procs()
        for hp in procs:
            hp.start_timeout_s = max(hp.start_timeout_s, START_TIMEOUT_S + START_EACH_S * len(procs))
        with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
            list(pool.map(HostProc.start, procs))

    def stop(self) -> None:
        for hp in self.procs():
            with contextlib.suppress(Exception):
                hp.stop()

    def logs(self, chars: int = 1500) -> str:
        """The end of every host's log, for an error message."""
        return "\n".join(f"--- host {hp.name}'s log:\n{hp.log_tail(chars)}" for hp in self.procs())
