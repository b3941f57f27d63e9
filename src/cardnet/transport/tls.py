"""Mutual TLS for the TCP transport, with the standard library's :mod:`ssl`.

Both ends present a certificate and both require one from the other
(``CERT_REQUIRED`` on the server and on the client), checked against the
project CA given as ``ca_pem``. TLS 1.3 only: both ends are cardnet.

Hostname checking is **off by default** (``check_hostname=False``): a cardnet
host is known by its certificate — a device certificate binds a Uid — not by
the address in the routing table, and the project's certificates need not
name addresses. The chain is still verified against the CA on both sides, so
a peer without a certificate from that CA cannot connect; deciding *which*
CA-certified identity is acceptable is the caller's job: map
``conn.peer.cert_der`` to an identity and compare it with the one expected.
Turn ``check_hostname`` on when the certificates carry the server's DNS name
or IP address as a subjectAltName.

Certificates must either have no ExtendedKeyUsage extension or list both
serverAuth and clientAuth, because the same certificate serves both roles.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from cardnet.transport.errors import TransportError


def tls_contexts(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    *,
    check_hostname: bool = False,
    key_password: bytes | None = None,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server_ctx, client_ctx)`` for mutual TLS with one identity (``cert_pem`` + ``key_pem``).

    ``cert_pem`` may hold the leaf followed by intermediates; ``ca_pem`` the
    CA certificate(s) trusted for peers. Raises :class:`TransportError`
    (reason ``tls``) if ``ssl`` refuses the material.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = check_hostname
    for ctx in (server, client):
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
            _load_cert_chain(ctx, cert_pem, key_pem, key_password)
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise TransportError(
                "tls", f"could not load the TLS certificate, key or CA: {exc}; pass PEM-encoded material"
            ) from exc
    return server, client


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, password: bytes | None) -> None:
    # ssl can only load a certificate chain from files: write them to a private
    # temporary directory (mode 0700, files 0600) and remove it at once.
    with tempfile.TemporaryDirectory(prefix="cardnet-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(cert_path, key_path, password=password)
