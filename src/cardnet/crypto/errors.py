"""The trust layer's error types."""

from __future__ import annotations

from cardnet.errors import CardnetError


class CryptoError(CardnetError):
    """A cryptographic check failed (bad signature, bad tag, wrong key, bad encoding).

    Like Fernet's ``InvalidToken``, one type for every failure; ``reason`` says
    which check failed (``bad_signature``, ``bad_tag``, ``bad_key``,
    ``bad_ciphertext``, ``counter_exhausted``).
    """


class PkiError(CardnetError):
    """A certificate, chain or blocklist was refused; ``reason`` says why
    (``unknown_ca``, ``expired``, ``not_yet_valid``, ``wrong_usage``,
    ``uid_mismatch``, ``bad_signature``, ``blocked``, ``bad_certificate``, ``bad_key``); ``hint``, when set, what
    to do."""

    hint: str | None = None
