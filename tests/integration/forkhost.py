"""Host processes forked from a process that imported cardnet already, for the tests that restart hosts hundreds
of times (the SIGKILL loops).

A host's start is mostly Python importing cardnet and ``cryptography``: on the 2-core CI machine about 0.4 s of
the 0.45 to 0.55 s from ``python -m cardnet.cli.main host run`` to its ``ready`` line, and the SIGKILL tests wait
for some 600 restarts. A :class:`Forker` is a process of its own that imports the modules a host imports and then
waits; :class:`ForkedHost` (a :class:`~cardnet.bench.procs.HostProc`) asks it for each start, and the fork runs
the same command line through the same entry point as ``python -m cardnet.cli.main`` (``cardnet.cli.main.run``),
its stdin on /dev/null, its stdout on a pipe to the test, its stderr on the host's log, ``PYTHONUNBUFFERED`` as
:class:`HostProc` sets it. The host is a process of its own all the same: its own pid, its stores, sockets and
event loop opened by itself after the fork, killed with a real SIGKILL (through a pidfd, so a pid the system gave
to another process since cannot be hit). What it shares with the forker is the imported code and nothing that
runs: the forker starts no thread and no event loop and opens no store or socket but its request socket, which the
fork closes first. The fork's own ``random`` is reseeded by Python at the fork.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import IO, Any

from cardnet.bench.procs import READY, HostProc, ProcError, readline

# What `cardnet host run`, `authority run` and `ttp run` import before they serve, with the applets of the hosts
# the SIGKILL tests run (anything else a fork imports itself, as a host would).
HOST_MODULES = (
    "cardnet.cli.main",
    "cardnet.cli.output",
    "cardnet.cli.host",
    "cardnet.cli.authority",
    "cardnet.cli.fairx",
    "cardnet.host.config",
    "cardnet.host.server",
    "cardnet.applets.trn",
    "cardnet.applets.authority",
    "cardnet.applets.fairx",
    "cardnet.store",
)
START_TIMEOUT_S = 60.0  # the forker's own imports, on a loaded machine
STOP_S = 10.0
REQUEST_BYTES = 1 << 16


class Forked:
    """A forked host as :func:`~cardnet.bench.procs.stop_process` and :class:`HostProc` use a ``Popen``: ``poll``,
    ``wait``, ``kill``, ``terminate``, ``stdin`` (None) and ``stdout``. It is the forker's child, not the test's:
    its exit is seen through a pidfd, and its exit status is the forker's (``returncode`` is -1 once it ended)."""

    def __init__(self, pid: int, stdout: IO[str]) -> None:
        self.pid = pid
        self.stdin: IO[str] | None = None
        self.stdout: IO[str] | None = stdout
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        return self._ended(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._ended(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"forked host {self.pid}", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _ended(self, timeout_s: float | None) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], timeout_s)[0]:
            self.returncode = -1
            os.close(self._pidfd)
        return self.returncode


class Forker:
    """The process hosts are forked from (see the module docstring); :meth:`close` ends it."""

    def __init__(self, modules: tuple[str, ...] = HOST_MODULES) -> None:
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()  # (hosts start from several threads at once)
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(theirs.fileno()), *modules],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # (the forks' stdout and stderr, as HostProc's)
            )
        self._sock.settimeout(START_TIMEOUT_S)
        if self._sock.recv(16) != b"ready":
            self.close()
            raise ProcError("not_started", "the forker did not start (its error is above)")

    def spawn(self, args: list[str], env: dict[str, str], stdout_fd: int, stderr_fd: int, *,
              cwd: str | None = None, whole_env: bool = False, status_fd: int | None = None) -> int:  # fmt: skip
        """Fork ``cardnet ARGS`` with ``env`` added to the environment (``whole_env``: as the environment), in ``cwd``
        (default: this process's); its pid. With ``status_fd`` the fork writes its exit status there as it exits."""
        request = {"args": args, "env": env, "whole_env": whole_env, "cwd": cwd or os.getcwd()}
        fds = [stdout_fd, stderr_fd, *([] if status_fd is None else [status_fd])]
        with self._lock:
            socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
            return int(self._sock.recv(64))

    def run(self, args: list[str], env: dict[str, str], cwd: str, timeout_s: float) -> tuple[int, str, str]:
        """Fork ``cardnet ARGS`` in ``cwd`` with the environment ``env`` and wait for it to exit, as
        ``subprocess.run(..., capture_output=True, text=True)`` would run ``python -m cardnet.cli.main ARGS``:
        (exit status, stdout, stderr). Killed (-9) after ``timeout_s``."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        try:
            pid = self.spawn(args, env, out_w, err_w, cwd=cwd, whole_env=True, status_fd=st_w)
        finally:
            for fd in (out_w, err_w, st_w):
                os.close(fd)
        proc = Forked(pid, open(os.devnull))  # noqa: SIM115 (closed below)
        got: dict[int, bytes] = {out_r: b"", err_r: b"", st_r: b""}
        deadline = time.monotonic() + timeout_s
        try:
            with selectors.DefaultSelector() as sel:
                for fd in got:
                    sel.register(fd, selectors.EVENT_READ)
                while sel.get_map() and (left := deadline - time.monotonic()) > 0:
                    for key, _ in sel.select(left):
                        chunk = os.read(key.fd, 65536)
                        got[key.fd] += chunk
                        if not chunk:
                            sel.unregister(key.fd)
                timed_out = bool(sel.get_map())
            if timed_out:
                proc.kill()
            proc.wait(STOP_S)
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
            for fd in got:
                os.close(fd)
        code = -9 if timed_out or not got[st_r] else int(got[st_r])
        return code, got[out_r].decode(errors="replace"), got[err_r].decode(errors="replace")

    def close(self) -> None:
        self._sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ... and what the walkthroughs' other commands import (tests/integration/walkthrough.py)
CLI_MODULES = (*HOST_MODULES, "cardnet.cli.admin", "cardnet.cli.trn", "cardnet.cli.millicent", "cardnet.cli.wallet")


@contextlib.contextmanager
def forker(modules: tuple[str, ...] = HOST_MODULES) -> Iterator[Forker]:
    f = Forker(modules)
    try:
        yield f
    finally:
        f.close()


@dataclass
class ForkedHost(HostProc):
    """A :class:`HostProc` whose starts are forks of ``forker`` (restarts: kill(), then restart(), as before), but
    for every ``fresh_every``-th start, from the first on, which is a new ``python -m cardnet.cli.main`` process as
    :class:`HostProc` starts it: the loop still restarts the very command a person runs, imports and all."""

    forker: Forker | None = None
    fresh_every: int = 10
    starts: int = 0

    @classmethod
    def of(cls, hp: HostProc, forker: Forker) -> ForkedHost:
        return cls(**{f.name: getattr(hp, f.name) for f in fields(hp)}, forker=forker)

    def start(self) -> None:
        """Fork the process and wait for its ``ready`` line (as :meth:`HostProc.start` does for a new one)."""
        assert self.forker is not None
        self.starts += 1
        if (self.starts - 1) % self.fresh_every == 0:
            super().start()
            return
        if self.running:
            raise ProcError("running", f"host {self.name} is already running: stop or kill it first")
        r, w = os.pipe()
        try:
            with open(self.log_path, "a") as log_file:
                pid = self.forker.spawn([*self.command, "--config", str(self.config)], self.env, w, log_file.fileno())
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.proc = Forked(pid, open(r))  # type: ignore[assignment]  # noqa: SIM115 (stop() closes it, as a Popen's)
        deadline = time.monotonic() + self.start_timeout_s
        line = ""
        while (left := deadline - time.monotonic()) > 0:
            line = readline(self.proc, left)  # type: ignore[arg-type]
            if line.startswith(READY) or not line:
                break
        self.ready_line = line.strip()
        if not line.startswith(READY):
            self.stop()
            raise ProcError(
                "not_started",
                f"forked host {self.name} did not print 'ready' within {self.start_timeout_s:g} s; "
                f"see {self.log_path}, which ends:\n{self.log_tail()}",
            )


def forked(hosts: dict[str, HostProc], forker: Forker) -> None:
    """Make every host of ``hosts`` (none running yet) start as a fork of ``forker``."""
    for name, hp in hosts.items():
        assert not hp.running, f"host {name} runs already"
        hosts[name] = ForkedHost.of(hp, forker)


# -- the forker process ------------------------------------------------------------------------------------------


def _run_fork(sock: socket.socket, request: dict[str, Any], out_fd: int, err_fd: int, status_fd: int = -1) -> None:
    """In the fork: become ``cardnet ARGS`` (never returns)."""
    code = 1
    try:
        sock.close()
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, to in ((null, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, to)
            os.close(fd)
        if request["whole_env"]:
            os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from cardnet.cli.main import run

        code = run(request["args"])
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        if status_fd >= 0:
            with contextlib.suppress(BaseException):
                os.write(status_fd, str(code).encode())
        os._exit(code)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve(sock: socket.socket, modules: list[str]) -> None:
    """The forker: import ``modules``, say ready, then fork one host per request until the test closes the socket."""
    for m in modules:
        importlib.import_module(m)
    gc.collect()
    gc.freeze()  # (what the imports made is kept for good, as a host's settle_heap keeps it: its collection skips it)
    sock.send(b"ready")
    while True:
        ready = select.select([sock], [], [], 0.5)[0]
        _reap()  # (an ended fork stays a zombie until then: its pid is not reused under the test's pidfd)
        if not ready:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, REQUEST_BYTES, 3)
        if not msg:
            return
        pid = os.fork()
        if pid == 0:
            _run_fork(sock, json.loads(msg), *fds)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # (as under `python -m`: not this directory of test modules)
    serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[2:])
