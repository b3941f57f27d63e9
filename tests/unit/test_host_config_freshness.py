"""Host configuration of the TRN freshness policy: per-card ``freshness`` (tighten-only, sent to the card as
``session.policy`` when the host starts); every bad value is refused by name (``bad_config``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cardnet.applets.trn import TrnApplet
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import HostError
from cardnet.host.config import load_config
from cardnet.host.server import HostServer
from cardnet.protocols import session as sess
from cardnet.store import SqliteStore
from conftest import NOW

HEAD = 'app_socket = "h.sock"\n'


def card(applets: str, extra: str = "") -> str:
    return f'\n[[cards]]\nstore = "sqlite:///c.db"\napplets = {applets}\n{extra}'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


def test_freshness_is_optional_and_parsed_per_card(tmp_path: Path) -> None:
    text = HEAD + card('["trn"]', "freshness = { max_blocklist_age_s = 3600, lifetime_s = 600 }") + card('["trn"]')
    config = load_config(_write(tmp_path, text))
    assert [c.freshness for c in config.cards] == [(("max_blocklist_age_s", 3600), ("lifetime_s", 600)), ()]
    config = load_config(
        _write(tmp_path, HEAD + card('["authority"]', "[cards.freshness]\nmin_epoch = 3\nmax_records = 1000\n"))
    )
    assert config.cards[0].freshness == (("min_epoch", 3), ("max_records", 1000))


BAD = [
    ("not a table", card('["trn"]', "freshness = 3600"), "cards[0].freshness: must be a table"),
    ("unknown key", card('["trn"]', "freshness = { max_age = 3 }"), "cards[0].freshness.max_age: unknown field"),
    ("negative", card('["trn"]', "freshness = { lifetime_s = -1 }"), "cards[0].freshness.lifetime_s: must be an int"),
    ("fraction", card('["trn"]', "freshness = { lifetime_s = 1.5 }"), "cards[0].freshness.lifetime_s: must be an int"),
    ("boolean", card('["trn"]', "freshness = { min_epoch = true }"), "cards[0].freshness.min_epoch: must be an int"),
    ("text", card('["trn"]', 'freshness = { max_records = "10" }'), "cards[0].freshness.max_records: must be an int"),
    ("no sessions", card('["echo"]', "freshness = { lifetime_s = 60 }"), "cards[0].freshness: only a card with"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_freshness_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(HostError) as err:
        load_config(_write(tmp_path, HEAD + text))
    assert err.value.reason == "bad_config"
    assert str(err.value).startswith(message), str(err.value)


def test_the_host_tightens_the_cards_policy_at_start_and_cannot_loosen_it(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """A real host server on a real card store: the config's bounds reach the card; a looser one is refused."""
    c = Card(SqliteStore(str(tmp_path / "c.db")), applets=[TrnApplet()])
    personalise(c, ca, pin="1234", now=NOW, policy=sess.Policy(max_blocklist_age_s=3600).encode())
    c.close()

    def start_with(freshness: str) -> sess.Policy:
        config = load_config(_write(tmp_path, HEAD + card('["trn"]', f"ticks = {{}}\nfreshness = {freshness}")))
        server = HostServer(config)

        async def run() -> None:
            await server.start()
            for _ in range(50):
                await asyncio.sleep(0.01)
                if server.host.idle:
                    break
            await server.aclose()

        asyncio.run(run())
        card_ = Card(SqliteStore(str(tmp_path / "c.db")), applets=[TrnApplet()])
        try:
            personalised = sess.Policy.decode(card_._read(("sys", b"policy")))
            return personalised.tighter(sess.Policy.decode(card_._read(("a.trn", b"pol"))))
        finally:
            card_.close()

    assert start_with("{ lifetime_s = 600, max_blocklist_age_s = 60 }") == sess.Policy(60, 0, 600, 0)
    assert start_with("{ max_blocklist_age_s = 7200, lifetime_s = 0 }") == sess.Policy(60, 0, 600, 0)  # refused
