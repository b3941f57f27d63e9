"""Two host processes over mutual TLS with host certificates from the PKI."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hostprocs import HostProc, make_hosts

from cardnet.applets.echo import EchoApplet, request_key
from cardnet.card import Card
from cardnet.crypto import pki, profile
from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Uid


@pytest.fixture
def tls_hosts(tmp_path: Path) -> Iterator[list[HostProc]]:
    hosts = make_hosts(tmp_path, ["a", "b"], ["echo"], tls=True)
    try:
        for h in hosts:
            h.start()
        yield hosts
    finally:
        for h in hosts:
            h.stop()


def test_cards_talk_over_mutual_tls(tls_hosts: list[HostProc]) -> None:
    a, b = tls_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            await app.send(b.card, REQUEST, rid=1, body=b"over TLS")
            p = await app.recv_type(REPLY, timeout_s=20)
            assert p["body"] == b"over TLS" and p["count"] == 1

    asyncio.run(go())


def _client_ctx(tmp: Path, authority: pki.CertificateAuthority, trust: Path) -> ssl.SSLContext:
    key = profile.generate_private_key()
    cert = authority.issue(
        pki.Role.HOST, Uid(b"\x66" * 12, 0xFFFFFFFF), key.public_key(), now=datetime.now(UTC), tls_names=["127.0.0.1"]
    )
    (tmp / "rogue.pem").write_bytes(pki.chain_to_pem([cert]))
    (tmp / "rogue.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(trust))
    ctx.load_cert_chain(str(tmp / "rogue.pem"), str(tmp / "rogue.key"))
    return ctx


def test_a_host_with_a_certificate_from_another_ca_is_refused(tls_hosts: list[HostProc], tmp_path: Path) -> None:
    _, b = tls_hosts
    rogue_ca = pki.CertificateAuthority.create("rogue CA", now=datetime.now(UTC))
    ctx = _client_ctx(tmp_path, rogue_ca, tmp_path / "ca.pem")
    rogue = Uid(b"\x66" * 12, 1)
    frame = encode_frame(REQUEST.make(rogue, b.card, rid=9, body=b"let me in"))
    data = b"?"
    with socket.create_connection(("127.0.0.1", b.port), timeout=20) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(frame)
                data = tls.recv(10)  # TLS 1.3: the server's refusal arrives after our side's handshake
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            data = b""
    assert data == b""
    time.sleep(0.5)
    b.stop()  # the host owns its card's store while it runs: look inside once it has stopped
    card = Card.open(f"sqlite:///{b.dir / 'b.card.db'}", applets=[EchoApplet()])
    try:
        assert ("a.echo", request_key(rogue, 9)) not in card._mem, "the rogue host's message reached the card"
    finally:
        card.close()


def test_plain_tcp_to_a_tls_host_gets_nothing(tls_hosts: list[HostProc]) -> None:
    _, b = tls_hosts
    with socket.create_connection(("127.0.0.1", b.port), timeout=20) as s:
        s.sendall(b"\x00\x00\x00\x22" + b"\x00" * 34)
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100)
        assert not data.startswith(b"\x00\x00\x00")  # never an eTP frame: at most a TLS alert
