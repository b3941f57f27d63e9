"""`cardnet card renew` through its real entry point: the certificate is renewed and shown; a renewal that would
not last longer, one from another CA, a mistyped store and a card its host holds are refused in words, and the
card is left as it was."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hostprocs import cardnet, make_hosts


def _show(store: str) -> dict[str, str]:
    got: dict[str, str] = json.loads(cardnet("card", "show", "--store", store, "--json").stdout)
    return got


def _error(r: object) -> dict[str, str]:
    assert getattr(r, "returncode", 0) != 0
    got: dict[str, dict[str, str]] = json.loads(getattr(r, "stdout", ""))
    return got["error"]


def test_cardnet_card_renew(tmp_path: Path) -> None:
    ca, other_ca = str(tmp_path / "ca.cnca"), str(tmp_path / "other.cnca")
    cardnet("ca", "create", ca)
    cardnet("ca", "create", other_ca, "--name", "another CA")
    store = f"sqlite:///{tmp_path / 'agent.db'}"
    cardnet("card", "create", "--ca", ca, "--store", store, "--pin", "1234", "--role", "agent", "--name", "tickets")
    first = _show(store)
    until = datetime.fromisoformat(first["valid_until"])
    assert timedelta(days=3 * 365 - 1) < until - datetime.now(UTC) <= timedelta(days=3 * 365)

    r = cardnet("card", "renew", "--ca", ca, "--store", store, "--valid-days", "2000", "--json")
    done = json.loads(r.stdout)
    assert done["uid"] == first["uid"] and datetime.fromisoformat(done["was_valid_until"]) == until
    new = datetime.fromisoformat(done["valid_until"])
    assert timedelta(days=1999) < new - datetime.now(UTC) <= timedelta(days=2000)
    assert _show(store)["valid_until"] == done["valid_until"] and _show(store)["uid"] == first["uid"]
    human = cardnet("card", "show", "--store", store).stdout
    assert "certificate valid until" in human and f"{new:%Y-%m-%d}" in human

    # a shorter one, another CA's: refused in words, the card unchanged
    short = cardnet("card", "renew", "--ca", ca, "--store", store, "--valid-days", "30", check=False)
    assert short.returncode != 0 and "must last longer" in short.stderr and "Traceback" not in short.stderr
    foreign = _error(cardnet("card", "renew", "--ca", other_ca, "--store", store, "--json", check=False))
    assert foreign["reason"] == "refused" and "not acceptable" in foreign["message"]
    assert _show(store)["valid_until"] == done["valid_until"]
    # a mistyped store: said, and no file made
    missing = cardnet("card", "renew", "--ca", ca, "--store", f"sqlite:///{tmp_path / 'nope.db'}", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and not (tmp_path / "nope.db").exists()


def test_a_card_its_host_holds_is_not_renewed_under_it(tmp_path: Path) -> None:
    (host,) = make_hosts(tmp_path, ["a"], ["trn"])
    store = f"sqlite:///{tmp_path / 'a.card.db'}"
    before = _show(store)["valid_until"]
    cardnet("ca", "create", str(tmp_path / "ca.cnca"))
    host.start()
    try:
        r = cardnet("card", "renew", "--ca", str(tmp_path / "ca.cnca"), "--store", store, "--json", check=False)
        assert _error(r)["reason"] == "in_use"
    finally:
        host.stop()
    assert _show(store)["valid_until"] == before
