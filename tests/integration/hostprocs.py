"""Two (or more) host processes on loopback, for integration and attack tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.store import SqliteStore
from cardnet.wire import Uid

PINS = {"a": "1111", "b": "2222", "c": "3333"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HostProc:
    name: str
    dir: Path
    port: int
    domain: bytes
    proc: subprocess.Popen[str] | None = None
    log_lines: list[str] = field(default_factory=list)
    command: tuple[str, ...] = ("host", "run")  # e.g. ("authority", "run", "--ca", path)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def card(self) -> Uid:
        return Uid.card(self.domain)

    @property
    def socket(self) -> str:
        return str(self.dir / f"{self.name}.sock")

    @property
    def config(self) -> Path:
        return self.dir / f"{self.name}.toml"

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.dir / f"{self.name}.log", "a") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardnet.cli.main", *self.command, "--config", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=env,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("ready") or not line:
                break
        assert line.startswith("ready"), f"host {self.name} did not start: {self.log()}"

    def log(self) -> str:
        return (self.dir / f"{self.name}.log").read_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> None:
        """Start the process again after kill() or stop(): same config, same stores, same log."""
        assert self.proc is None or self.proc.poll() is not None, f"host {self.name} is still running"
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


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
