"""Personalisation: a blank card gets a domain, a certificate for its own key and a PIN.

The key pair is generated on the card when it is manufactured (first open);
only the public key leaves it. The CA (the authority's issuing key) assigns
the domain and certifies ``Uid(domain, 0)`` with the card's public key.
"""

from __future__ import annotations

from datetime import datetime

from cryptography.x509.oid import NameOID

from cardnet.card.runtime import Card
from cardnet.crypto import pki, profile
from cardnet.wire import Uid
from cardnet.wire.ids import DOMAIN_BYTES


def personalise(
    card: Card,
    ca: pki.CertificateAuthority,
    *,
    pin: str,
    now: datetime,
    domain: bytes | None = None,
    role: pki.Role = pki.Role.DEVICE,
    valid_days: int = 3 * 365,
    rng: profile.Rng | None = None,
    name: str | None = None,
    policy: bytes = b"",
) -> Uid:
    """Certify ``card``'s key under ``ca`` with a (fresh or given) domain; return its Uid.

    ``rng`` (default: the OS) draws the domain and, when given, the
    certificate's serial, so a seeded run personalises byte for byte alike.
    ``policy`` is the card's session freshness policy
    (``cardnet.protocols.session.Policy(...).encode()``, docs/trn.md
    "Freshness"): written once, it can later only be tightened.
    """
    uid = Uid.card(domain if domain is not None else (rng or profile.system_rng)(DOMAIN_BYTES))
    cert = ca.issue(role, uid, card.public_key, now=now, valid_days=valid_days, name=name, rng=rng)
    return card.personalise(pki.cert_to_der(cert), [pki.cert_to_der(ca.certificate)], pin, policy=policy)


def renew(
    card: Card,
    ca: pki.CertificateAuthority,
    *,
    now: datetime,
    valid_days: int = 3 * 365,
    rng: profile.Rng | None = None,
) -> tuple[datetime, datetime]:
    """Certify ``card``'s key again under ``ca``: the same Uid, role and name, valid from ``now`` for ``valid_days``;
    install it (:meth:`Card.renew_certificate` checks it). Returns (old, new) end of validity."""
    old = pki.cert_from_der(card.certificate_der)
    names = old.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    name = str(names[0].value) if names else None
    cert = ca.issue(pki.role_of(old), card.uid, card.public_key, now=now, valid_days=valid_days, name=name, rng=rng)
    card.renew_certificate(pki.cert_to_der(cert), now)
    return old.not_valid_after_utc, cert.not_valid_after_utc
