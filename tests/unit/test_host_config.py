"""Host configuration files: a good one parses; every bad field is refused by name (``bad_config``).

Also the command: ``cardnet host run --config bad.toml`` exits non-zero with
the field named on stderr and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cardnet.card import Card
from cardnet.host import HostError
from cardnet.host.config import HostConfig, load_config
from cardnet.transport.framing import DEFAULT_MAX_FRAME

DOMAIN = "0123456789abcdef01234567"

GOOD = f"""
name = "alice"
listen = "127.0.0.1:7101"
app_socket = "alice.sock"
max_frame = 65536

[[cards]]
store = "sqlite:///alice.card.db"
applets = ["notes", "echo"]
capacity_bytes = 131072

[[cards]]
store = "sqlite:////var/lib/cardnet/second.db"
applets = []

[routes]
"{DOMAIN}" = "10.0.0.2:7102"
"ffffffffffffffffffffffff" = "[::1]:7103"

[tls]
cert = "alice-host.pem"
key = "alice-host.key"
ca = "ca.pem"
"""

MINIMAL = """
app_socket = "h.sock"

[[cards]]
store = "sqlite:///h.card.db"
"""


def write(tmp_path: Path, text: str, name: str = "host.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    for f in ("alice-host.pem", "alice-host.key", "ca.pem"):
        (tmp_path / f).write_text("PEM\n")
    return path


def test_a_good_config_parses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.name == "alice"
    assert config.listen == ("127.0.0.1", 7101)
    assert config.app_socket == tmp_path / "alice.sock"  # relative paths are relative to the file
    assert config.max_frame == 65536
    assert [(c.store, c.applets, c.capacity_bytes) for c in config.cards] == [
        (f"sqlite:///{tmp_path}/alice.card.db", ("notes", "echo"), 131072),
        ("sqlite:////var/lib/cardnet/second.db", (), 256 * 1024),
    ]
    assert config.routes == {bytes.fromhex(DOMAIN): ("10.0.0.2", 7102), b"\xff" * 12: ("::1", 7103)}
    assert config.tls is not None
    assert (config.tls.cert, config.tls.key, config.tls.ca) == (
        tmp_path / "alice-host.pem",
        tmp_path / "alice-host.key",
        tmp_path / "ca.pem",
    )


def test_a_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config == HostConfig(
        name="host",
        app_socket=tmp_path / "h.sock",
        cards=config.cards,
        listen=None,
        routes={},
        tls=None,
        max_frame=DEFAULT_MAX_FRAME,
    )
    [card] = config.cards
    assert card.applets == () and card.capacity_bytes == 256 * 1024


@pytest.mark.parametrize(("applets", "expected"), [
    ('["trn"]', 256 * 1024), ('["notes", "trn"]', 256 * 1024),
    ('["authority"]', 64 << 20), ('["ttp"]', 64 << 20), ('["sam"]', 64 << 20), ('["gate"]', 64 << 20),
    ('["trn", "authority"]', 64 << 20),
])  # fmt: skip
def test_a_service_card_gets_a_security_module_s_memory_by_default(tmp_path: Path, applets: str, expected: int) -> None:
    """A person's card holds 256 KiB; the authority, the TTP, a SAM and a gate keep records that grow with the
    system's traffic and get 64 MiB unless the config says otherwise."""
    text = MINIMAL + f"applets = {applets}\n"
    [card] = load_config(write(tmp_path, text)).cards
    assert card.capacity_bytes == expected
    [card] = load_config(write(tmp_path, text + "capacity_bytes = 4096\n")).cards
    assert card.capacity_bytes == 4096


def _replace(old: str, new: str, text: str = GOOD) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD: list[tuple[str, str, str]] = [
    ("unknown top-level key", 'colour = "blue"\n' + GOOD, "colour"),
    ("missing cards", 'app_socket = "h.sock"\n', "cards"),
    ("empty cards", 'app_socket = "h.sock"\ncards = []\n', "cards"),
    ("a card that is not a table", 'app_socket = "h.sock"\ncards = [1]\n', "cards[0]"),
    ("unknown card field", _replace("capacity_bytes = 131072", "colour = 1"), "cards[0].colour"),
    ("card without a store", _replace('store = "sqlite:///alice.card.db"\n', ""), "cards[0].store"),
    ("bad applet name", _replace('"echo"]', '"ech"]'), "cards[0].applets: unknown applet(s) ech"),
    ("applets not a list", _replace('applets = ["notes", "echo"]', 'applets = "echo"'), "cards[0].applets"),
    ("capacity too small", _replace("131072", "10"), "cards[0].capacity_bytes"),
    ("capacity not a number", _replace("131072", '"big"'), "cards[0].capacity_bytes"),
    ("capacity a boolean", _replace("131072", "true"), "cards[0].capacity_bytes"),
    ("exclusive not a boolean", _replace("capacity_bytes = 131072", 'exclusive = "yes"'), "cards[0].exclusive"),
    (
        "bad capacity in the second card",
        _replace("applets = []", "applets = []\ncapacity_bytes = -1"),
        "cards[1].capacity_bytes",
    ),
    ("route key not hex", _replace(f'"{DOMAIN}"', '"alice"'), "routes.alice"),
    ("route key too short", _replace(f'"{DOMAIN}"', '"0123"'), "routes.0123"),
    ("route address without a port", _replace('"10.0.0.2:7102"', '"10.0.0.2"'), f"routes.{DOMAIN}"),
    ("routes not a table", 'routes = "everywhere"\n' + MINIMAL, "routes"),
    ("listen without a port", _replace('"127.0.0.1:7101"', '"localhost"'), "listen"),
    ("listen port out of range", _replace('"127.0.0.1:7101"', '"127.0.0.1:70000"'), "listen"),
    ("listen without a host", _replace('"127.0.0.1:7101"', '":7101"'), "listen"),
    ("listen a number", _replace('"127.0.0.1:7101"', "7101"), "listen"),
    ("max_frame too small", _replace("65536", "10"), "max_frame"),
    ("empty name", _replace('"alice"', '""'), "name"),
    ("no app_socket", _replace('app_socket = "alice.sock"\n', ""), "app_socket"),
    ("missing tls file", _replace('key = "alice-host.key"', 'key = "missing.key"'), "tls.key"),
    ("tls without ca", _replace('ca = "ca.pem"\n', ""), "tls.ca"),
    ("tls not a table", 'tls = "yes"\n' + MINIMAL, "tls"),
]


@pytest.mark.parametrize(("text", "field"), [(t, f) for _, t, f in BAD], ids=[i for i, _, _ in BAD])
def test_each_bad_field_is_refused_by_name(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HostError) as err:
        load_config(path)
    assert err.value.reason == "bad_config"
    assert str(err.value).startswith(f"{path}: {field}"), str(err.value)  # the file, then the field


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name = alice\n[[cards\n")
    with pytest.raises(HostError) as err:
        load_config(path)
    assert err.value.reason == "bad_config" and f"{path} is not valid TOML" in str(err.value)
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(HostError) as err:
        load_config(path)
    assert err.value.reason == "bad_config" and "not valid TOML" in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent.toml"
    if kind == "directory":  # unreadable even for root, unlike a chmod 000 file
        path.mkdir()
    with pytest.raises(HostError) as err:
        load_config(path)
    assert err.value.reason == "bad_config" and str(err.value).startswith(f"cannot read {path}")


def run_host(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "host", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("colour = 1\n" + GOOD, "colour"),
        (_replace('"echo"]', '"ech"]'), "cards[0].applets"),
        ("not toml at all [[[", "is not valid TOML"),
        # parses, but the store holds a blank card: refused when the host opens it
        (MINIMAL, "cards[0].store"),
    ],
    ids=["unknown-field", "bad-applet", "not-toml", "unpersonalised-card"],
)
def test_host_run_with_a_bad_config_exits_cleanly(tmp_path: Path, text: str, field: str) -> None:
    if text is MINIMAL:
        blank_card(tmp_path)
    result = run_host(write(tmp_path, text))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.startswith("error: ") and field in result.stderr, result.stderr  # on one line, unfolded
    assert "bad_config" in result.stderr
    assert not (tmp_path / "h.sock").exists()  # it never started serving


@pytest.mark.parametrize("text", ["", "# nothing yet\n", MINIMAL.replace('app_socket = "h.sock"\n', "")],
                         ids=["empty", "comments-only", "no-app_socket"])  # fmt: skip
def test_host_run_with_a_config_missing_app_socket_names_the_file_and_the_line_to_add(
    tmp_path: Path, text: str
) -> None:
    """Before: "app_socket: must be a non-empty string, got None", naming neither the file nor what to write."""
    path = write(tmp_path, text, name="empty.toml")
    result = run_host(path)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f'error: {path}: app_socket: missing: add a line such as app_socket = "host.sock" (the Unix socket '
        "applications connect to, relative to the config's folder) (reason: bad_config)"
    ), result.stderr
    assert len(lines) == 2 and lines[1].startswith(
        "what to do: a host config needs app_socket and at least one [[cards]]"
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "host", "run", "--config", str(path), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert as_json.returncode == 2, as_json.stderr
    err = json.loads(as_json.stdout)["error"]
    assert err["reason"] == "bad_config", err
    assert err["message"].startswith(f"{path}: app_socket: missing: add a line such as app_socket = "), err
    assert 'docs/host.md "Configuration"' in err["hint"], err
    assert not list(tmp_path.glob("*.sock")) and not list(tmp_path.glob("*.db"))  # it never started


def blank_card(tmp_path: Path) -> None:
    """A store holding a card that was never personalised (MINIMAL's h.card.db)."""
    Card.open(f"sqlite:///{tmp_path}/h.card.db").close()


def test_host_run_names_the_store_of_an_unpersonalised_card_on_one_line(tmp_path: Path) -> None:
    blank_card(tmp_path)
    result = run_host(write(tmp_path, MINIMAL))
    assert result.returncode != 0
    [first, *_] = result.stderr.splitlines()
    assert f"sqlite:///{tmp_path}/h.card.db is not personalised" in first


@pytest.mark.parametrize("as_json", [False, True])
def test_host_run_refuses_a_missing_card_store_and_creates_none(tmp_path: Path, as_json: bool) -> None:
    """A mistyped cards[i].store is refused by name, not made into a new, empty card store."""
    ca = tmp_path / "ca.cnca"
    cardnet = [sys.executable, "-m", "cardnet.cli.main"]
    subprocess.run([*cardnet, "ca", "create", str(ca)], check=True, capture_output=True, timeout=60)
    made = subprocess.run(
        [*cardnet, "card", "create", "--ca", str(ca), "--store", "sqlite:///alice.card.db", "--pin", "1234"],
        cwd=tmp_path, check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = write(tmp_path, 'app_socket = "h.sock"\n\n[[cards]]\nstore = "sqlite:///alice.card.db"\n'
                   '\n[[cards]]\nstore = "sqlite:///alcie.card.db"\n')  # fmt: skip
    result = subprocess.run(
        [*cardnet, "host", "run", "--config", str(config), *(["--json"] if as_json else [])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    missing = tmp_path / "alcie.card.db"
    if as_json:
        err = json.loads(result.stdout)["error"]
        assert err["reason"] == "missing", err
        assert f"cards[1].store: there is no card store {missing}" in err["message"], err
        assert "cardnet card create" in err["hint"], err
    else:
        [first, what_to_do] = result.stderr.splitlines()
        assert first.startswith(f"error: cards[1].store: there is no card store {missing}"), first
        assert "check cards[1].store" in what_to_do and "cardnet card create" in what_to_do, what_to_do
    assert not missing.exists() and sorted(p.name for p in tmp_path.glob("alcie*")) == []
    assert not (tmp_path / "h.sock").exists()  # it never started serving


def test_a_card_is_held_exclusively_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    assert all(c.exclusive for c in load_config(write(tmp_path, GOOD)).cards)
    shared = load_config(write(tmp_path, _replace("capacity_bytes = 131072", "exclusive = false")))
    assert [c.exclusive for c in shared.cards] == [False, True]
