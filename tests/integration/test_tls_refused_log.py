"""A failed TLS handshake is said in the host's log, a few times, not once per attempt.

A real host process (``cardnet host run`` with ``[tls]``) and a peer holding a host certificate from another CA:
its handshake fails, and before the operator saw nothing (the failure was logged at debug level only), so the peer
just could not connect. Now it is a warning that names the peer and says what to check; a peer that tries again and
again (or a scanner) writes at most ``BAD_FRAME_LOG_BURST`` such lines in ``BAD_FRAME_LOG_EVERY_S``, the next one
counting the rest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from hostprocs import make_hosts, write_host_tls

from cardnet.crypto import pki
from cardnet.transport.tcp import BAD_FRAME_LOG_BURST

ATTEMPTS = 120
FAILED = "TLS handshake with 127.0.0.1 failed"


def _intruder(tmp: Path) -> ssl.SSLContext:
    """A client with a valid-looking host certificate of another CA than the host's."""
    foreign = tmp / "foreign"
    foreign.mkdir()
    other = pki.CertificateAuthority.create("another CA", now=datetime.now(UTC))
    write_host_tls(foreign, other, "intruder", os.urandom(12))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # (it does not care who the host is: the host must care who it is)
    ctx.load_cert_chain(str(foreign / "intruder.pem"), str(foreign / "intruder.key"))
    return ctx


def test_a_peer_of_another_ca_is_said_in_the_log_a_few_times_with_what_to_check(tmp_path: Path) -> None:
    _, b = make_hosts(tmp_path, ["a", "b"], ["echo"], tls=True)
    ctx = _intruder(tmp_path)

    def attempt() -> None:
        """One try: connect, the handshake (the host refuses this certificate), close, whatever happened."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=None) as tls,
        ):
            tls.sendall(b"\0" * 64)
            tls.recv(1)

    b.start()
    try:
        before = len(b.log().splitlines())
        attempt()
        deadline = time.monotonic() + 10
        while FAILED not in b.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = [ln for ln in b.log().splitlines()[before:] if FAILED in ln]
        assert first and "WARNING" in first[0] and "check that peer's [tls] config" in first[0], first
        for _ in range(ATTEMPTS):
            attempt()
        time.sleep(1.0)  # the host handles the last ones
        assert b.running
        said = [ln for ln in b.log().splitlines()[before:] if FAILED in ln]
    finally:
        b.stop()
    assert len(said) <= BAD_FRAME_LOG_BURST + 1, f"{len(said)} lines, e.g. {said[:3]}"
