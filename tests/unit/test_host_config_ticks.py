"""Host configuration of the timers: per-card ``ticks`` (default ``trn.recover`` every 2 s on trn cards) and
``resend_after_s``; every bad value is refused by name (``bad_config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardnet.host import HostError
from cardnet.host.config import DEFAULT_RESEND_AFTER_S, load_config

HEAD = 'app_socket = "h.sock"\n'


def card(applets: str, extra: str = "") -> str:
    return f'\n[[cards]]\nstore = "sqlite:///c.db"\napplets = {applets}\n{extra}'


def test_a_trn_card_gets_the_recovery_tick_by_default_and_others_none(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, HEAD + card('["trn"]') + card('["echo"]') + card('["authority"]')))
    assert [c.ticks for c in config.cards] == [(("trn.recover", 2.0),), (), ()]
    assert config.resend_after_s == DEFAULT_RESEND_AFTER_S == 5.0


def test_ticks_and_resend_can_be_set_or_turned_off(tmp_path: Path) -> None:
    text = (
        "resend_after_s = 0\n"
        + HEAD
        + card('["trn"]', 'ticks = { "trn.recover" = 0.5 }')
        + card('["trn"]', "ticks = {}")
    )
    config = load_config(_write(tmp_path, text))
    assert [c.ticks for c in config.cards] == [(("trn.recover", 0.5),), ()]
    assert config.resend_after_s == 0.0
    config = load_config(
        _write(tmp_path, "resend_after_s = 30\n" + HEAD + card('["trn"]', '[cards.ticks]\n"trn.recover" = 10\n'))
    )
    assert config.resend_after_s == 30.0 and config.cards[0].ticks == (("trn.recover", 10.0),)


def test_a_rekey_timer_on_trn_and_authority_cards(tmp_path: Path) -> None:
    text = (
        HEAD
        + card('["trn"]', 'ticks = { "trn.recover" = 2, "session.rekey" = 600 }')
        + card('["authority"]', 'ticks = { "session.rekey" = 3600 }')
    )
    trn, authority = (c.ticks for c in load_config(_write(tmp_path, text)).cards)
    assert trn == (("trn.recover", 2.0), ("session.rekey", 600.0))
    assert authority == (("session.rekey", 3600.0),)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


BAD = [
    ("ticks not a table", card('["trn"]', 'ticks = ["trn.recover", 2]'), "cards[0].ticks: must be a table"),
    ("unknown mtype", card('["trn"]', 'ticks = { "trn.recovr" = 2 }'), "cards[0].ticks.trn.recovr: none of"),
    ("not handled by the card", card('["echo"]', 'ticks = { "trn.recover" = 2 }'), "cards[0].ticks.trn.recover: none"),
    ("privileged", card('["trn"]', 'ticks = { "trn.list" = 2 }'), "cards[0].ticks.trn.list: trn.list is privileged"),
    (
        "required fields",
        card('["trn"]', 'ticks = { "trn.blocklist" = 2 }'),
        "cards[0].ticks.trn.blocklist: trn.blocklist has",
    ),
    ("period zero", card('["trn"]', 'ticks = { "trn.recover" = 0 }'), "cards[0].ticks.trn.recover: must be a number"),
    ("period negative", card('["trn"]', 'ticks = { "trn.recover" = -1.0 }'), "cards[0].ticks.trn.recover: must be"),
    ("period too short", card('["trn"]', 'ticks = { "trn.recover" = 0.001 }'), "cards[0].ticks.trn.recover: must be"),
    ("period too long", card('["trn"]', 'ticks = { "trn.recover" = 1e9 }'), "cards[0].ticks.trn.recover: must be"),
    ("period a string", card('["trn"]', 'ticks = { "trn.recover" = "2s" }'), "cards[0].ticks.trn.recover: must be"),
    ("period a boolean", card('["trn"]', 'ticks = { "trn.recover" = true }'), "cards[0].ticks.trn.recover: must be"),
    ("period nan", card('["trn"]', 'ticks = { "trn.recover" = nan }'), "cards[0].ticks.trn.recover: must be"),
    ("resend negative", "resend_after_s = -5\n" + card('["trn"]'), "resend_after_s: must be a number of seconds"),
    ("resend too short", "resend_after_s = 0.001\n" + card('["trn"]'), "resend_after_s: must be a number"),
    ("resend a string", 'resend_after_s = "often"\n' + card('["trn"]'), "resend_after_s: must be a number"),
    # session.rekey (docs/trn.md "Freshness"): the host's re-key timer; the freshness policy is the owner's
    (
        "policy is the owner's",
        card('["trn"]', 'ticks = { "session.policy" = 60 }'),
        "cards[0].ticks.session.policy: session.policy is privileged (needs the PIN)",
    ),
    (
        "rekey without sessions",
        card('["echo"]', 'ticks = { "session.rekey" = 60 }'),
        "cards[0].ticks.session.rekey: none of this card's applets handles 'session.rekey'",
    ),
    ("rekey zero", card('["trn"]', 'ticks = { "session.rekey" = 0 }'), "cards[0].ticks.session.rekey: must be a"),
    ("rekey a string", card('["trn"]', 'ticks = { "session.rekey" = "1h" }'), "cards[0].ticks.session.rekey: must"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in BAD], ids=[i for i, _, _ in BAD])
def test_bad_timer_values_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    top, _, cards = text.partition("\n[[cards]]")
    path = _write(tmp_path, top + "\n" + HEAD + "\n[[cards]]" + cards)
    with pytest.raises(HostError) as err:
        load_config(path)
    assert err.value.reason == "bad_config"
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_errors_say_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(HostError) as err:
        load_config(_write(tmp_path, HEAD + card('["trn"]', 'ticks = { "trn.recover" = 0 }')))
    assert "0.05..86400" in str(err.value)
    with pytest.raises(HostError) as err:
        load_config(_write(tmp_path, HEAD + card('["echo"]', 'ticks = { "echo.request" = 1 }')))
    assert "echo.request" in str(err.value)
