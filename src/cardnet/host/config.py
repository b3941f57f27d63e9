"""Host configuration files (TOML), validated field by field.

::

    name = "alice"                      # for logs
    listen = "127.0.0.1:7101"           # optional: remote hosts connect here
    app_socket = "/run/cardnet/alice.sock"  # applications connect here (a Unix socket)
    max_frame = 16777216                # optional, bytes

    [[cards]]                           # one or more personalised cards
    store = "sqlite:///alice.card.db"
    applets = ["notes", "echo"]
    capacity_bytes = 262144             # optional

    [routes]                            # card domain (24 hex digits) -> "host:port"
    "0123456789abcdef01234567" = "127.0.0.1:7102"

    [tls]                               # optional: mutual TLS between hosts (PEM files)
    cert = "alice-host.pem"
    key = "alice-host.key"
    ca = "ca.pem"

A bad file is refused with :class:`HostError` (``bad_config``) naming the
field, e.g. ``cards[0].applets: unknown applet(s) ech``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardnet.applets.registry import APPLETS
from cardnet.host.errors import HostError
from cardnet.transport.framing import DEFAULT_MAX_FRAME, MIN_FRAME

KNOWN_TOP = {"name", "listen", "app_socket", "max_frame", "cards", "routes", "tls"}


@dataclass(frozen=True)
class CardConfig:
    store: str
    applets: tuple[str, ...]
    capacity_bytes: int


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class HostConfig:
    name: str
    app_socket: Path
    cards: tuple[CardConfig, ...]
    listen: tuple[str, int] | None = None
    routes: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    tls: TlsConfig | None = None
    max_frame: int = DEFAULT_MAX_FRAME


def _bad(where: str, what: str) -> HostError:
    return HostError("bad_config", f"{where}: {what}")


def parse_address(text: object, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise _bad(where, f'write host:port, e.g. "127.0.0.1:7101", got {text!r}')
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise _bad(where, f"write host:port with a port 0..65535, got {text!r}")
    return host.strip("[]"), int(port)


def _str(d: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v:
        raise _bad(f"{where}{key}", f"must be a non-empty string, got {v!r}")
    return v


def _int(d: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(f"{where}{key}", f"must be an integer {lo}..{hi}, got {v!r}")
    return v


def parse_config(data: dict[str, Any], base: Path) -> HostConfig:
    unknown = set(data) - KNOWN_TOP
    if unknown:
        raise _bad(", ".join(sorted(unknown)), f"unknown field(s); known: {', '.join(sorted(KNOWN_TOP))}")
    name = _str(data, "name", "", "host")
    app_socket = base / _str(data, "app_socket", "")
    listen = parse_address(data["listen"], "listen") if "listen" in data else None
    max_frame = _int(data, "max_frame", "", DEFAULT_MAX_FRAME, MIN_FRAME, 1 << 30)
    raw_cards = data.get("cards")
    if not isinstance(raw_cards, list) or not raw_cards:
        raise _bad("cards", 'list at least one card: [[cards]] with store = "sqlite:///..." and applets = [...]')
    cards = []
    for i, c in enumerate(raw_cards):
        where = f"cards[{i}]."
        if not isinstance(c, dict):
            raise _bad(f"cards[{i}]", "must be a table with store and applets")
        extra = set(c) - {"store", "applets", "capacity_bytes"}
        if extra:
            raise _bad(f"{where}{sorted(extra)[0]}", "unknown field; known: store, applets, capacity_bytes")
        store = _str(c, "store", where)
        if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
            store = "sqlite:///" + str(base / store[len("sqlite:///") :])
        applets = c.get("applets", [])
        if not isinstance(applets, list) or not all(isinstance(a, str) for a in applets):
            raise _bad(f"{where}applets", f"must be a list of applet names, got {applets!r}")
        unknown_applets = [a for a in applets if a not in APPLETS]
        if unknown_applets:
            raise _bad(
                f"{where}applets",
                f"unknown applet(s) {', '.join(unknown_applets)}; known: {', '.join(sorted(APPLETS))}",
            )
        capacity = _int(c, "capacity_bytes", where, 256 * 1024, 1024, 1 << 34)
        cards.append(CardConfig(store, tuple(applets), capacity))
    routes: dict[bytes, tuple[str, int]] = {}
    raw_routes = data.get("routes", {})
    if not isinstance(raw_routes, dict):
        raise _bad("routes", 'must be a table of domain = "host:port"')
    for dom, addr in raw_routes.items():
        try:
            domain = bytes.fromhex(dom)
        except ValueError:
            domain = b""
        if len(domain) != 12:
            raise _bad(f"routes.{dom}", "a route key is a card domain: 24 hex digits")
        routes[domain] = parse_address(addr, f"routes.{dom}")
    tls = None
    if "tls" in data:
        t = data["tls"]
        if not isinstance(t, dict):
            raise _bad("tls", "must be a table with cert, key and ca")
        paths = {}
        for k in ("cert", "key", "ca"):
            p = base / _str(t, k, "tls.")
            if not p.is_file():
                raise _bad(f"tls.{k}", f"file {p} does not exist")
            paths[k] = p
        tls = TlsConfig(paths["cert"], paths["key"], paths["ca"])
    return HostConfig(name, app_socket, tuple(cards), listen, routes, tls, max_frame)


def load_config(path: Path) -> HostConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HostError("bad_config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HostError("bad_config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path.parent)
