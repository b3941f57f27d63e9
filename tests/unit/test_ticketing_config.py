"""The ticketing server's configuration: a good file, and each bad field named in its error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cardnet.protocols.speed.messages import Price
from cardnet.services.ticketing.config import TicketingError, parse_config

GOOD: dict[str, Any] = {
    "name": "Cup final tickets",
    "listen": "127.0.0.1:8080",
    "speed_listen": "127.0.0.1:8081",
    "store": "tickets.db",
    "host": "device.toml",
    "events": [{"id": "final", "name": "Cup final", "date": "2027-05-01", "price": "25.5 EUR", "seats": ["A1", "A2"]}],
}


def test_a_good_file() -> None:
    cfg = parse_config(GOOD, Path("/srv"))
    assert cfg.listen == ("127.0.0.1", 8080) and cfg.store == "sqlite:////srv/tickets.db"
    assert cfg.host == Path("/srv/device.toml") and cfg.transfer_timeout_s == 30.0
    final = cfg.event("final")
    assert final is not None and final.price == Price("EUR", 2550) and final.product("A2") == "final/A2"
    assert cfg.event("other") is None
    assert cfg.http_limits.max_connections == 256
    tight = parse_config(GOOD | {"limits": {"max_connections": 8, "request_timeout_s": 2}}, Path("/srv"))
    assert tight.http_limits.max_connections == 8 and tight.http_limits.request_timeout_s == 2.0


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"colour": "red"}, "colour: unknown field"),
        ({"listen": "8080"}, "listen: write host:port"),
        ({"speed_listen": "x:99999"}, "speed_listen: write host:port"),
        ({"store": ""}, "store: must be a non-empty line"),
        ({"transfer_timeout_s": 0}, "transfer_timeout_s: a number of seconds"),
        ({"events": []}, "events: list 1..1000 events"),
        ({"events": [GOOD["events"][0] | {"id": "no spaces"}]}, "events[0].id"),
        ({"events": [GOOD["events"][0] | {"price": "25 euros"}]}, "events[0].price"),
        ({"events": [GOOD["events"][0] | {"price": "0.00 EUR"}]}, "events[0].price: an amount is 1.."),
        ({"events": [GOOD["events"][0] | {"seats": ["A1", "A1"]}]}, "events[0].seats"),
        ({"events": [GOOD["events"][0] | {"seats": ["A/1"]}]}, "events[0].seats"),
        ({"events": [GOOD["events"][0] | {"when": 1}]}, "events[0].when: unknown field"),
        ({"events": [GOOD["events"][0], GOOD["events"][0]]}, "events[1].id: two events are named 'final'"),
        ({"limits": {"max_body": 1}}, "limits.max_body: unknown field"),
        ({"limits": {"max_connections": 0}}, "limits.max_connections: a positive whole number"),
        ({"limits": {"idle_timeout_s": "1"}}, "limits.idle_timeout_s: a number of seconds"),
        ({"limits": []}, "limits: must be a table"),
    ],
)
def test_a_bad_field_is_named(change: dict[str, Any], where: str) -> None:
    with pytest.raises(TicketingError) as info:
        parse_config(GOOD | change, Path("/srv"))
    assert info.value.reason == "bad_config" and where in str(info.value)


def test_a_hosts_config_given_in_its_place_is_named_as_such() -> None:
    """`cardnet ticketing run --config device.toml` (or gate.toml): the error says it is a host's config and which file
    to give. Before: 'app_socket, cards, routes: unknown field(s)' (found following the ticketing walkthrough)."""
    host = {"name": "device", "app_socket": "device.sock", "cards": [{"store": "sqlite:///d.db"}], "routes": {}}
    with pytest.raises(TicketingError) as info:
        parse_config(host, Path("/srv"))
    assert "a host's config" in str(info.value) and info.value.hint is not None and "`host` field" in info.value.hint


@pytest.mark.parametrize("key", ["name", "listen", "speed_listen", "store", "host", "events"])
def test_a_missing_field_says_missing_and_what_to_write(key: str) -> None:
    """Before: '<key>: ... got None' (or for events a list's bounds), not that the line is missing nor what to write."""
    data = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(TicketingError) as info:
        parse_config(data, Path("/srv"))
    assert f"{key}: missing: add a line such as " in str(info.value) and "None" not in str(info.value)
    assert info.value.hint is not None and "docs/ticketing.md" in info.value.hint
