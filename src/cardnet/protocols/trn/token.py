"""TRN token objects: ``[oid, issuer, [oid, h(body)]_issuer, body]`` (TRN Definition 4, DESIGN 6).

The issuing agent's signature covers the oid **and** a hash of the body (the
paper signs only the oid, which would let a holder rewrite the body) and the
issuer's Uid, under a domain-separation label. Bodies are opaque to TRN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import Bytes, DecodeError, Field, Schema, UidType
from cardnet.wire.cbor import dumps
from cardnet.wire.ids import Uid
from cardnet.wire.memo import Memo

OID_BYTES = 16
MAX_BODY = 64 * 1024

TOKEN = Schema(
    "trn.token",
    [
        Field(0, "oid", Bytes(OID_BYTES, OID_BYTES)),
        Field(1, "issuer", UidType()),
        Field(2, "sig", Bytes(64, 64)),
        Field(3, "body", Bytes(MAX_BODY)),
    ],
)


@dataclass(frozen=True)
class Token:
    oid: bytes
    issuer: Uid
    sig: bytes
    body: bytes

    def encode(self) -> bytes:
        return TOKEN.encode({"oid": self.oid, "issuer": self.issuer, "sig": self.sig, "body": self.body})

    @classmethod
    def decode(cls, raw: bytes) -> Token:
        memo = cls is Token and type(raw) is bytes and len(raw) <= _MEMO_TOKEN_BYTES
        if memo:
            got = _TOKENS.get(raw)
            if got is not None:
                return got
        try:
            token = cls(**TOKEN.decode(raw))
        except DecodeError as exc:
            raise ProtocolError("bad_token", f"not a token object: {exc}") from None
        if memo:
            _TOKENS.remember(raw, token)
        return token

    def verify(self, issuer_key: profile.PublicKey) -> None:
        """Return None if ``issuer_key`` signed this token as it is, else raise ``bad_token``.

        A token is checked wherever it arrives and again when the authority answers its trace (and the authority
        checks it at every movement): a successful check is remembered for the exact token and key (a pure
        function of them, like a decoding: :data:`_VERIFIED`), and a failed one is not, so it fails again.
        """
        key = (self, profile.public_bytes(issuer_key))
        if key in _VERIFIED:
            return
        try:
            profile.verify(issuer_key, self.sig, signed_bytes(self.oid, self.issuer, self.body))
        except CryptoError:
            raise ProtocolError(
                "bad_token", f"token {self.oid.hex()} is not signed by its issuer {self.issuer} (altered?)"
            ) from None
        _VERIFIED.remember(key, True)


# A token is decoded wherever it is looked at (its issuer, its oid), several times a step. Decoding is a function of
# the bytes and a Token is frozen, so small tokens are kept here by their exact bytes (bounded in entries and size:
# the memo starts over when full): what a lookup returns is what decoding those bytes returns.
_MEMO_TOKEN_BYTES = 4096
_TOKENS: Memo[bytes, Token] = Memo()
# Tokens whose issuer signature was found good, with the key it was checked under (a token's equality and hash
# cover all its fields: oid, issuer, signature and body).
_VERIFIED: Memo[tuple[Token, bytes], bool] = Memo()


def signed_bytes(oid: bytes, issuer: Uid, body: bytes) -> bytes:
    return dumps(["cardnet/trn-token/v1", oid, bytes(issuer), profile.sha256(body)])


def mint(oid: bytes, issuer: Uid, body: bytes, sign: Callable[[bytes], bytes]) -> Token:
    """A new token signed by the issuing agent (``sign`` is the agent card's key)."""
    if len(oid) != OID_BYTES:
        raise ProtocolError("bad_token", f"an oid is {OID_BYTES} bytes")
    if len(body) > MAX_BODY:
        raise ProtocolError("bad_token", f"a token body is at most {MAX_BODY} bytes")
    return Token(oid, issuer, sign(signed_bytes(oid, issuer, body)), body)
