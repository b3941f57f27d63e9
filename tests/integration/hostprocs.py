"""Two (or more) host processes on loopback, for integration and attack tests.

The launcher itself (:class:`HostProc`, :func:`free_port`) is ``cardnet.bench.procs``, shared with the
benchmarks; this module adds the test-only set-ups (cards under one CA, host configs, TLS files).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from forkhost import Forked, Forker

from cardnet.bench.procs import HostProc, free_port
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.store import SqliteStore
from cardnet.wire import Uid

__all__ = [
    "PINS",
    "ForkedCli",
    "ForkedService",
    "HostProc",
    "Service",
    "cardnet",
    "free_port",
    "make_hosts",
    "write_host_tls",
]

PINS = {"a": "1111", "b": "2222", "c": "3333"}


def write_host_tls(tmp: Path, authority: pki.CertificateAuthority, name: str, domain: bytes) -> str:
    """Host key and certificate for mutual TLS; returns the config's [tls] section."""
    key = profile.generate_private_key()
    cert = authority.issue(
        pki.Role.HOST, Uid(domain, 0xFFFFFFFF), key.public_key(), now=datetime.now(UTC), tls_names=["127.0.0.1"]
    )
    (tmp / f"{name}.pem").write_bytes(pki.chain_to_pem([cert]))
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "ca.pem").write_bytes(pki.chain_to_pem([authority.certificate]))
    return f'\n[tls]\ncert = "{name}.pem"\nkey = "{name}.key"\nca = "ca.pem"\n'


def make_hosts(tmp: Path, names: list[str], applets: list[str], *, tls: bool = False) -> list[HostProc]:
    now = datetime.now(UTC)
    authority = pki.CertificateAuthority.create("integration CA", now=now)
    hosts = []
    for name in names:
        card = Card(SqliteStore(str(tmp / f"{name}.card.db")))
        uid = personalise(card, authority, pin=PINS[name], now=now)
        card.close()
        hosts.append(HostProc(name, tmp, free_port(), uid.domain))
    for h in hosts:
        routes = "\n".join(f'"{o.domain.hex()}" = "127.0.0.1:{o.port}"' for o in hosts if o is not h)
        h.config.write_text(
            f'name = "{h.name}"\nlisten = "127.0.0.1:{h.port}"\napp_socket = "{h.name}.sock"\n\n'
            f'[[cards]]\nstore = "sqlite:///{h.name}.card.db"\napplets = {applets!r}\n\n'.replace("'", '"')
            + f"[routes]\n{routes}\n"
            + (write_host_tls(tmp, authority, h.name, h.domain) if tls else "")
        )
    return hosts


def cardnet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert r.returncode == 0, f"cardnet {' '.join(args)} failed: {r.stdout}{r.stderr}"
    return r


class ForkedCli:
    """``cardnet ARGS`` as :func:`cardnet` runs it, but as a fork of ``forker`` (tests/integration/forkhost.py,
    ``Forker.run``: the same arguments through the same entry point, in this directory and environment, a process of
    its own, its exit status and output), not a new Python process importing cardnet; every ``fresh_every``-th
    command is a new process all the same."""

    def __init__(self, forker: Forker, fresh_every: int = 4) -> None:
        self.forker = forker
        self.fresh_every = fresh_every
        self.runs = 0

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        if self.runs % self.fresh_every == 0:
            return cardnet(*args, check=check)
        code, out, err = self.forker.run(list(args), dict(os.environ), os.getcwd(), 120.0)
        if check:
            assert code == 0, f"cardnet {' '.join(args)} failed: {out}{err}"
        return subprocess.CompletedProcess(["cardnet", *args], code, out, err)


class Service:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.args = args
        self.log = tmp / f"{args[1]}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, *extra: str) -> str:
        """Start ``cardnet ARGS EXTRA`` and wait for its ``ready`` line; the address it says it serves."""
        self.proc = self.spawn(*extra)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"{self.args} did not start: {self.log.read_text()}"
        self.address = line.split()[-1]
        return self.address

    def spawn(self, *extra: str) -> subprocess.Popen[str]:
        """The new process, its stdout a pipe to this one, its stderr appended to the log."""
        with open(self.log, "a") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "cardnet.cli.main", *self.args, *extra],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class ForkedService(Service):
    """A :class:`Service` whose starts are forks of ``forker`` (tests/integration/forkhost.py: the same command line
    through the same entry point, a process of its own, its stdout a pipe to the test, killed with a real SIGKILL),
    but for every ``fresh_every``-th start, from the first on, which is a new ``python -m cardnet.cli.main`` process
    as :class:`Service` starts it. For the tests that restart a service a hundred times and more."""

    def __init__(self, tmp: Path, *args: str, forker: Forker, fresh_every: int = 10) -> None:
        super().__init__(tmp, *args)
        self.forker = forker
        self.fresh_every = fresh_every
        self.starts = 0

    def spawn(self, *extra: str) -> subprocess.Popen[str]:
        self.starts += 1
        if (self.starts - 1) % self.fresh_every == 0:
            return super().spawn(*extra)
        r, w = os.pipe()
        try:
            with open(self.log, "a") as err:
                pid = self.forker.spawn([*self.args, *extra], {**os.environ, "PYTHONUNBUFFERED": "1"}, w,
                                        err.fileno(), whole_env=True)  # fmt: skip
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        return Forked(pid, open(r))  # type: ignore[return-value]  # (stop() closes it, as a Popen's)
