"""A host opens an agent's or a service's card with a security module's memory when its config gives none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.config import CARD_CAPACITY, SERVICE_CAPACITY, load_config
from cardnet.host.server import open_cards
from cardnet.store import SqliteStore


@pytest.mark.parametrize(
    ("role", "given", "expected"),
    [
        (pki.Role.DEVICE, None, CARD_CAPACITY),
        (pki.Role.AGENT, None, SERVICE_CAPACITY),
        (pki.Role.SERVICE, None, SERVICE_CAPACITY),
        (pki.Role.AGENT, 8192, 8192),  # what the config says wins
        (pki.Role.DEVICE, 8192, 8192),
    ],
)
def test_the_card_s_memory_follows_its_role_unless_the_config_says(
    tmp_path: Path, role: pki.Role, given: int | None, expected: int
) -> None:
    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("capacity CA", now=now)
    card = Card(SqliteStore(str(tmp_path / "c.db")))
    personalise(card, ca, pin="1234", now=now, role=role)
    card.close()
    line = "" if given is None else f"capacity_bytes = {given}\n"
    (tmp_path / "h.toml").write_text(
        f'app_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///c.db"\napplets = ["trn"]\n{line}'
    )
    [opened] = open_cards(load_config(tmp_path / "h.toml"))
    try:
        assert opened.capacity_bytes == expected
    finally:
        opened.close()
