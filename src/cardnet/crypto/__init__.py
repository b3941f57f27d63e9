"""Trust layer: the crypto profile (``profile``) and the PKI (``pki``)."""

from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.crypto.pki import (
    Blocklist,
    CertificateAuthority,
    Role,
    VerifiedPeer,
    cert_from_der,
    cert_from_pem,
    cert_to_der,
    chain_from_pem,
    chain_to_pem,
    role_of,
    uid_of,
    verify_chain,
)

__all__ = [
    "Blocklist",
    "CertificateAuthority",
    "CryptoError",
    "PkiError",
    "Role",
    "VerifiedPeer",
    "cert_from_der",
    "cert_from_pem",
    "cert_to_der",
    "chain_from_pem",
    "chain_to_pem",
    "role_of",
    "uid_of",
    "verify_chain",
]
