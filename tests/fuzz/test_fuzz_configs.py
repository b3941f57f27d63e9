"""Fuzzing the configuration files people write: a bad value gets the parser's ``bad_config`` error naming the
field, never another exception (a person would see a traceback).

Each parser gets a valid config with one field replaced by an arbitrary TOML value (any type TOML has, odd
numbers and Unicode digits included), a field deleted or an unknown one added, and the file loaders get
arbitrary text. Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import copy
import tempfile
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from cardnet.host.config import load_config as load_host_config
from cardnet.host.config import parse_address
from cardnet.host.config import parse_config as parse_host_config
from cardnet.host.errors import HostError
from cardnet.services.ticketing.config import TicketingError
from cardnet.services.ticketing.config import load_config as load_ticketing_config
from cardnet.services.ticketing.config import parse_config as parse_ticketing_config

FUZZ = fuzz_settings(300)

# Text a person might type where a number or an address goes: Unicode digits that str.isdigit() accepts and int()
# does not (superscripts), other scripts' digits, signs, blanks.
odd_text = st.sampled_from(
    ["127.0.0.1:²", "127.0.0.1:٣", "h:¹²", ":", "", " ", "a:-1", "[::1]:80", "x:99999", "2.50 EUR", "EUR ²", "1e9 EUR"]
)
toml_scalars = (
    st.text(max_size=24)
    | odd_text
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.datetimes(timezones=st.just(UTC))
    | st.dates()
    | st.times()
)
toml_values: st.SearchStrategy[Any] = st.recursive(
    toml_scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12) | odd_text, kids, max_size=4),
    max_leaves=10,
)

HOST = {
    "name": "alice",
    "listen": "127.0.0.1:7101",
    "app_socket": "alice.sock",
    "max_frame": 1 << 20,
    "resend_after_s": 5.0,
    "cards": [
        {"store": "sqlite:///alice.db", "applets": ["trn"], "capacity_bytes": 262144, "ticks": {"trn.recover": 2.0}},
        {"store": "sqlite:///gate.db", "applets": ["gate"], "exclusive": True},
    ],
    "routes": {"0123456789abcdef01234567": "127.0.0.1:7102"},
    "limits": {"max_connections": 10, "max_per_peer": 2, "handshake_timeout_s": 5.0, "idle_timeout_s": 0},
    "adversary": {"drop_out": 0.5, "drop_in": 0.0, "mtypes": ["trn.send"], "seed": 7, "stop_round": 2},
}
TICKETING = {
    "name": "stadium",
    "listen": "127.0.0.1:8080",
    "speed_listen": "127.0.0.1:8081",
    "store": "tickets.db",
    "host": "device.toml",
    "broker": "127.0.0.1:8090",
    "transfer_timeout_s": 30,
    "max_unpaid_per_card": 4,
    "unpaid_window_s": 600,
    "pay_within_s": 900,
    "release_margin_s": 300,
    "limits": {"max_connections": 100, "request_timeout_s": 10.0},
    "events": [
        {"id": "final", "name": "Cup final", "date": "2027-05-01 20:00", "price": "25.00 EUR", "seats": ["A1", "A2"]},
    ],
}


def _paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a config (table keys and list indexes), the root excluded."""
    found = [at] if at else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*at, i))
    return found


@st.composite
def edited(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three edits: a value replaced by an arbitrary one, a field deleted, a field added."""
    config = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        places = _paths(config)
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent: Any = config
        for step in path[:-1]:
            parent = parent[step]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if kind == "replace":
            parent[path[-1]] = draw(toml_values)
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(toml_values)
        else:
            parent.append(draw(toml_values))
    return config


BASE = Path(tempfile.gettempdir())


def test_the_valid_configs_parse() -> None:
    """The fuzzers' starting points are valid, so an edit is what a refusal is about."""
    assert parse_host_config(copy.deepcopy(HOST), BASE).name == "alice"
    assert parse_ticketing_config(copy.deepcopy(TICKETING), BASE).events[0].seats == ("A1", "A2")


@FUZZ
@given(edited(HOST))
def test_host_config_field_errors(config: dict[str, Any]) -> None:
    try:
        parse_host_config(config, BASE)
    except HostError as exc:
        assert exc.reason == "bad_config" and str(exc)


@FUZZ
@given(edited(TICKETING))
def test_ticketing_config_field_errors(config: dict[str, Any]) -> None:
    try:
        parse_ticketing_config(config, BASE)
    except TicketingError as exc:
        assert exc.reason == "bad_config" and str(exc)


@FUZZ
@given(toml_values | odd_text)
def test_host_address_errors(value: Any) -> None:
    try:
        host, port = parse_address(value, "listen")
    except HostError as exc:
        assert exc.reason == "bad_config" and "listen" in str(exc)
    else:
        assert isinstance(host, str) and host and 0 <= port <= 65535


@pytest.mark.parametrize("field", ["listen", "speed_listen", "broker"])
@pytest.mark.parametrize("value", ["127.0.0.1:²", "127.0.0.1:٣", "127.0.0.1:99999", "127.0.0.1:"])
def test_ticketing_addresses_with_odd_ports_are_refused_by_name(field: str, value: str) -> None:
    config = copy.deepcopy(TICKETING)
    config[field] = value
    with pytest.raises(TicketingError, match=field):
        parse_ticketing_config(config, BASE)


@pytest.mark.parametrize("value", ["127.0.0.1:²", "127.0.0.1:٣", "127.0.0.1:99999", "127.0.0.1:"])
def test_host_addresses_with_odd_ports_are_refused_by_name(value: str) -> None:
    with pytest.raises(HostError, match="listen"):
        parse_address(value, "listen")


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_config_files_of_any_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        for load, error in ((load_host_config, HostError), (load_ticketing_config, TicketingError)):
            try:
                load(path)
            except error as exc:
                assert exc.reason == "bad_config"
