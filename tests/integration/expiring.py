"""A real certificate that expires seconds after it is issued: a service's key certified again by its CA, valid for a
day that began a day (less ``left_s``) ago. The CA must be valid since before then (``TrnNet``'s is valid from a day
before it is made; a test of ``speedprocs`` makes its own, backdated, before ``build``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.errors import CardnetError
from cardnet.services.speed.stored import Identity
from cardnet.store import open_store


def backdated_ca(path: Path) -> None:
    """A CA valid since a day ago, saved at ``path`` (as ``cardnet ca create`` saves one)."""
    pki.CertificateAuthority.create("cardnet CA", now=datetime.now(UTC) - timedelta(days=1)).save(path)


def recertify(ca_file: Path, db: Path, kind: str, table: str, name: str, left_s: float) -> tuple[bytes, float]:
    """Certify again the key of the service whose store is ``db`` (``kind``; its identity in ``table``), valid until
    ``left_s`` seconds from now, and write the certificate into that store (the service reads it when it starts);
    the certificate (DER) and when it expires (Unix time)."""
    ca = pki.CertificateAuthority.load(ca_file)
    store = open_store("sqlite:///" + str(db), kind=kind, create=False)
    try:
        me = Identity.load(store, table, CardnetError("missing", f"no identity in {db}"))
        old = pki.cert_from_der(me.cert)
        start = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=left_s)
        cert = ca.issue(pki.Role.SERVICE, pki.uid_of(old), me.key.public_key(), now=start, valid_days=1, name=name)
        der = pki.cert_to_der(cert)
        with store.transaction() as txn:
            txn.put(table, b"cert", der)
    finally:
        store.close()
    return der, cert.not_valid_after_utc.timestamp()


def wait_until_expired(cert: bytes, roots: list[bytes], expires: float) -> None:
    """Wait (a real wait) until a second after ``expires``, then check that ``cert`` (DER) has really expired."""
    while time.time() <= expires + 1:
        time.sleep(0.2)
    with pytest.raises(PkiError) as expired:
        pki.verified(cert, roots, now=time.time(), role=pki.Role.SERVICE)
    assert expired.value.reason == "expired"
