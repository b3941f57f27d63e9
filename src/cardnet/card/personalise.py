"""Personalisation: a blank card gets a domain, a certificate for its own key and a PIN.

The key pair is generated on the card when it is manufactured (first open);
only the public key leaves it. The CA (the authority's issuing key) assigns
the domain and certifies ``Uid(domain, 0)`` with the card's public key.
"""

from __future__ import annotations

from datetime import datetime

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
