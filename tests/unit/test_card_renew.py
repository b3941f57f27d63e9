"""A card's certificate is renewed for the same key, Uid and role under its roots, lasting longer; nothing else of
the card changes; and a host says, when it starts, that a card's certificate has run out or soon will."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cardnet.card import Card, CardError
from cardnet.card.personalise import personalise, renew
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.host.config import load_config
from cardnet.host.server import open_cards
from cardnet.store import SqliteStore
from cardnet.wire import Uid

NOW = datetime.now(UTC).replace(microsecond=0)


def _card(tmp: Path, ca: pki.CertificateAuthority, *, start: datetime = NOW, days: int = 10, name: str = "c") -> Card:
    card = Card(SqliteStore(str(tmp / f"{name}.db")))
    personalise(card, ca, pin="1234", now=start, valid_days=days, role=pki.Role.AGENT, name=name)
    return card


def _until(card: Card) -> datetime:
    return pki.cert_from_der(card.certificate_der).not_valid_after_utc


def test_a_renewal_keeps_everything_but_the_certificate(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("renew CA", now=NOW - timedelta(days=1))
    card = _card(tmp_path, ca)
    uid, key, roots, used = card.uid, profile.public_bytes(card.public_key), card.roots_der, card.used_bytes
    old_der = card.certificate_der
    old, new = renew(card, ca, now=NOW + timedelta(days=5), valid_days=365)
    assert old == _until_of(old_der) and new == NOW + timedelta(days=370) and _until(card) == new
    card.close()
    card = Card(SqliteStore(str(tmp_path / "c.db")))  # kept, and its record passes the card's integrity check
    try:
        cert = pki.cert_from_der(card.certificate_der)
        assert card.certificate_der != old_der and cert.not_valid_after_utc == new
        assert (card.uid, profile.public_bytes(card.public_key), card.roots_der) == (uid, key, roots)
        assert card.used_bytes == used and pki.role_of(cert) is pki.Role.AGENT
        assert "O=c" in cert.subject.rfc4514_string()  # its name kept
        peer = pki.verify_chain([cert], [ca.certificate], now=NOW + timedelta(days=300), role=pki.Role.AGENT)
        assert peer.uid == uid  # a peer accepts it where the old one had run out
        with pytest.raises(PkiError):
            pki.verify_chain([pki.cert_from_der(old_der)], [ca.certificate], now=NOW + timedelta(days=300))
    finally:
        card.close()


def _until_of(der: bytes) -> datetime:
    return pki.cert_from_der(der).not_valid_after_utc


def test_a_renewal_is_refused_unless_it_is_this_card_s_under_its_roots_and_lasts_longer(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("renew CA", now=NOW - timedelta(days=1))
    other_ca = pki.CertificateAuthority.create("another CA", now=NOW - timedelta(days=1))
    card = _card(tmp_path, ca)
    other = _card(tmp_path, ca, name="other")
    before = card.certificate_der
    later = NOW + timedelta(days=1)

    def issued(**kw: object) -> bytes:
        args: dict[str, object] = {"role": pki.Role.AGENT, "uid": card.uid, "key": card.public_key, "ca": ca,
                                   "now": later, "days": 365} | kw  # fmt: skip
        authority = args["ca"]
        assert isinstance(authority, pki.CertificateAuthority)
        cert = authority.issue(args["role"], args["uid"], args["key"], now=args["now"], valid_days=args["days"])  # type: ignore[arg-type]
        return pki.cert_to_der(cert)

    cases = {
        "another key": issued(key=other.public_key),
        "another Uid": issued(uid=Uid(b"\x05" * 12, 0)),
        "another role": issued(role=pki.Role.DEVICE),
        "another CA": issued(ca=other_ca),
        "not yet valid": issued(now=later + timedelta(days=2)),
        "ends sooner": issued(days=5),
        "ends the same": pki.cert_to_der(ca.issue(pki.Role.AGENT, card.uid, card.public_key, now=NOW, valid_days=10)),
        "not a certificate": b"\x30\x03\x02\x01\x01",
    }
    try:
        for what, der in cases.items():
            with pytest.raises(CardError) as exc:
                card.renew_certificate(der, later)
            assert exc.value.reason == "refused", what
            assert card.certificate_der == before, what  # nothing changed
        blank = Card(SqliteStore(str(tmp_path / "blank.db")))
        with pytest.raises(CardError) as exc:
            blank.renew_certificate(issued(), later)
        assert exc.value.reason == "not_personalised"
        blank.close()
    finally:
        card.close()
        other.close()


@pytest.mark.parametrize(
    ("start", "days", "level", "words"),
    [
        (NOW - timedelta(days=20), 10, logging.ERROR, "ran out"),
        (NOW - timedelta(days=1), 20, logging.WARNING, "runs out"),
        (NOW - timedelta(days=1), 60, None, ""),
    ],
)
def test_a_host_says_when_a_card_s_certificate_ran_out_or_soon_will(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, start: datetime, days: int, level: int | None, words: str
) -> None:
    ca = pki.CertificateAuthority.create("renew CA", now=NOW - timedelta(days=30))
    _card(tmp_path, ca, start=start, days=days).close()
    (tmp_path / "h.toml").write_text(
        'app_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.db"\napplets = ["trn"]\n'
    )
    caplog.set_level(logging.INFO, logger="cardnet.host")
    [card] = open_cards(load_config(tmp_path / "h.toml"))
    card.close()
    said = [r for r in caplog.records if r.name == "cardnet.host" and r.levelno >= logging.WARNING]
    if level is None:
        assert said == []
    else:
        [line] = said
        assert line.levelno == level and words in line.getMessage() and "cardnet card renew" in line.getMessage()
