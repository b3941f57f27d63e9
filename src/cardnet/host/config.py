"""Host configuration files (TOML), validated field by field.

::

    name = "alice"                      # for logs
    listen = "127.0.0.1:7101"           # optional: remote hosts connect here
    app_socket = "/run/cardnet/alice.sock"  # applications connect here (a Unix socket)
    max_frame = 16777216                # optional, bytes
    resend_after_s = 5.0                # optional: re-emit card outputs the host could not pass on (0: never)

    [[cards]]                           # one or more personalised cards
    store = "sqlite:///alice.card.db"
    applets = ["notes", "trn"]
    capacity_bytes = 262144             # optional (default 256 KiB; 64 MiB for an agent's or service's card)
    ticks = { "trn.recover" = 2.0 }     # optional: mtype -> seconds; the host sends it to the card that often
    exclusive = true                    # optional: the host holds the card's store alone while it runs

    [routes]                            # card domain (24 hex digits) -> "host:port"
    "0123456789abcdef01234567" = "127.0.0.1:7102"

    [tls]                               # optional: mutual TLS between hosts (PEM files)
    cert = "alice-host.pem"
    key = "alice-host.key"
    ca = "ca.pem"

    [adversary]                         # optional, demonstrations only: drop this host's module messages
    drop_out = 0.3                      # probability per message its cards send (1.0: all of them)
    drop_in = 0.3                       # ... per message arriving for its cards
    mtypes = ["smc.frame"]              # which message types (default shown)
    seed = 7                            # optional
    stop_round = 4                      # optional: from this round of a run on, drop all: the module stops

    [limits]                            # optional: bounds on the listening sockets (defaults shown)
    max_connections = 512               # remote connections held at once on `listen`
    max_per_peer = 64                   # ... from one IP address
    handshake_timeout_s = 10.0          # accept -> TLS handshake and first frame, on `listen` and `app_socket`
    idle_timeout_s = 600.0              # a remote connection sending no frame this long is closed (0: never)
    app_max_connections = 256           # application connections held at once on `app_socket`

A bad file is refused with :class:`HostError` (``bad_config``) naming the
file and the field, e.g. ``host.toml: cards[0].applets: unknown applet(s) ech``.

``exclusive`` (default true) makes the host the only process that can open the
card's store while it runs (a second host, or ``cardnet card show``, is refused
with ``in_use``); ``exclusive = false`` lets tools read the store meanwhile, at
the cost of SQLite's lock system calls on every commit.

``ticks`` default to :data:`DEFAULT_TICKS` of the card's applets (a card with
the ``trn`` applet gets ``trn.recover`` every 2 s); ``ticks = {}`` turns them off.
A tick must be a message type one of the card's applets handles, not
privileged (the host has no PIN) and without required fields.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardnet.applets.registry import APPLETS, import_applets
from cardnet.host.adversary import AdversaryConfig
from cardnet.host.errors import HostError
from cardnet.transport.base import DEFAULT_SERVER_LIMITS, ServerLimits
from cardnet.transport.framing import DEFAULT_MAX_FRAME, MIN_FRAME
from cardnet.transport.tcp import port_number
from cardnet.wire import DecodeError, by_name

KNOWN_TOP = {
    "name", "listen", "app_socket", "max_frame", "resend_after_s", "cards", "routes", "tls", "limits", "adversary",
}  # fmt: skip
KNOWN_ADVERSARY = ("drop_out", "drop_in", "mtypes", "seed", "stop_round")
KNOWN_LIMITS = ("max_connections", "max_per_peer", "handshake_timeout_s", "idle_timeout_s", "app_max_connections")
KNOWN_CARD = ("store", "applets", "capacity_bytes", "ticks", "exclusive")
# A card's memory when the config does not say: a person's smart card holds 256 KiB; a service's security module
# (the trace authority, the TTP, a broker's SAM, a gate keeping what it admitted) and an issuing agent's card (it
# keeps every token it minted) keep records that grow with the system's traffic (about 160 bytes a traced
# movement, some 400 a minted ticket), and get 64 MiB (docs/decisions.md): by their applets here, by their
# certificate's role (agent, service) when the host opens them (host/server.py).
CARD_CAPACITY = 256 * 1024
SERVICE_CAPACITY = 64 * 1024 * 1024
SERVICE_APPLETS = frozenset({"authority", "ttp", "sam", "gate"})
DEFAULT_TICKS: dict[str, tuple[tuple[str, float], ...]] = {
    # resending is harmless and a lost copy/commit/seekfor or handshake is only ever resent by recovery
    "trn": (("trn.recover", 2.0),),
    # a gate also decides the admissions whose wait for the authority is over (docs/gate.md)
    "gate": (("trn.recover", 2.0), ("gate.tick", 0.25)),
}
DEFAULT_RESEND_AFTER_S = 5.0
DEFAULT_APP_MAX_CONNECTIONS = 256
MIN_PERIOD_S = 0.05
MAX_PERIOD_S = 86_400.0


@dataclass(frozen=True)
class CardConfig:
    store: str
    applets: tuple[str, ...]
    capacity_bytes: int
    ticks: tuple[tuple[str, float], ...] = ()  # (mtype name, every seconds)
    exclusive: bool = True  # hold the store alone (docs/store.md); false lets others read it while the host runs
    capacity_given: bool = True  # false: the config left it out (a host raises an agent's or service's default)


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
    resend_after_s: float = DEFAULT_RESEND_AFTER_S  # 0: never re-emit (only when a card is reopened)
    server_limits: ServerLimits = DEFAULT_SERVER_LIMITS  # the `listen` socket's caps and timeouts
    app_max_connections: int = DEFAULT_APP_MAX_CONNECTIONS  # the `app_socket`'s cap
    adversary: AdversaryConfig | None = None  # drops its own modules' messages (demonstrations)


def _bad(where: str, what: str) -> HostError:
    return HostError("bad_config", f"{where}: {what}")


def parse_address(text: object, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise _bad(where, f'write host:port, e.g. "127.0.0.1:7101", got {text!r}')
    host, _, digits = text.rpartition(":")
    port = port_number(digits)
    if port is None or not host:
        raise _bad(where, f"write host:port with a port 0..65535, got {text!r}")
    return host.strip("[]"), port


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


def _seconds(v: object, where: str, *, zero_ok: bool = False) -> float:
    value = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else -1.0
    if zero_ok and value == 0:
        return 0.0
    if not MIN_PERIOD_S <= value <= MAX_PERIOD_S:
        off = " or 0 (off)" if zero_ok else ""
        raise _bad(where, f"must be a number of seconds {MIN_PERIOD_S}..{MAX_PERIOD_S:g}{off}, got {v!r}")
    return value


def _ticks(c: dict[str, Any], applets: list[str], where: str) -> tuple[tuple[str, float], ...]:
    if "ticks" not in c:
        return tuple(t for a in applets for t in DEFAULT_TICKS.get(a, ()))
    raw = c["ticks"]
    if not isinstance(raw, dict):
        example = '{ "trn.recover" = 2.0 }'
        raise _bad(f"{where}ticks", f"must be a table of message type = seconds, e.g. {example}, got {raw!r}")
    handled = {mt.name: mt for a in applets for mt in APPLETS[a]().handles}
    ticks = []
    for name, every in raw.items():
        at = f"{where}ticks.{name}"
        mt = handled.get(name)
        if mt is None:
            known = sorted(n for n, m in handled.items() if not m.privileged)
            raise _bad(at, f"none of this card's applets handles {name!r}; e.g. {', '.join(known[:8]) or 'nothing'}")
        if mt.privileged:
            raise _bad(at, f"{name} is privileged (needs the PIN): a host cannot send it on a timer")
        try:
            mt.schema.encode({})
        except DecodeError:
            raise _bad(at, f"{name} has required fields: a tick carries none") from None
        ticks.append((name, _seconds(every, at)))
    return tuple(ticks)


# The hint for a host config that leaves out a field it must have.
MISSING_HINT = (
    'a host config needs app_socket and at least one [[cards]] (store, applets): docs/host.md "Configuration" '
    "shows a whole file, and `cardnet wallet init` writes one (host.toml) beside a new card"
)


def parse_config(data: dict[str, Any], base: Path) -> HostConfig:
    unknown = set(data) - KNOWN_TOP
    if unknown:
        raise _bad(", ".join(sorted(unknown)), f"unknown field(s); known: {', '.join(sorted(KNOWN_TOP))}")
    if "app_socket" not in data:
        err = _bad(
            "app_socket",
            'missing: add a line such as app_socket = "host.sock" (the Unix socket applications connect to, '
            "relative to the config's folder)",
        )
        err.hint = MISSING_HINT
        raise err
    name = _str(data, "name", "", "host")
    app_socket = base / _str(data, "app_socket", "")
    listen = parse_address(data["listen"], "listen") if "listen" in data else None
    max_frame = _int(data, "max_frame", "", DEFAULT_MAX_FRAME, MIN_FRAME, 1 << 30)
    resend_after_s = _seconds(data.get("resend_after_s", DEFAULT_RESEND_AFTER_S), "resend_after_s", zero_ok=True)
    raw_cards = data.get("cards")
    if not isinstance(raw_cards, list) or not raw_cards:
        err = _bad("cards", 'list at least one card: [[cards]] with store = "sqlite:///..." and applets = [...]')
        err.hint = MISSING_HINT
        raise err
    cards = []
    for i, c in enumerate(raw_cards):
        where = f"cards[{i}]."
        if not isinstance(c, dict):
            raise _bad(f"cards[{i}]", "must be a table with store and applets")
        extra = set(c) - set(KNOWN_CARD)
        if extra:
            raise _bad(f"{where}{sorted(extra)[0]}", f"unknown field; known: {', '.join(KNOWN_CARD)}")
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
        default = SERVICE_CAPACITY if SERVICE_APPLETS & set(applets) else CARD_CAPACITY
        capacity = _int(c, "capacity_bytes", where, default, 1024, 1 << 34)
        exclusive = c.get("exclusive", True)
        if not isinstance(exclusive, bool):
            raise _bad(f"{where}exclusive", f"must be true or false, got {exclusive!r}")
        cards.append(
            CardConfig(
                store,
                tuple(applets),
                capacity,
                _ticks(c, applets, where),
                exclusive=exclusive,
                capacity_given="capacity_bytes" in c,
            )
        )
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
    server_limits, app_max_connections = _limits(data)
    return HostConfig(
        name,
        app_socket,
        tuple(cards),
        listen,
        routes,
        tls,
        max_frame,
        resend_after_s,
        server_limits,
        app_max_connections,
        _adversary(data, [a for c in cards for a in c.applets]),
    )


def _adversary(data: dict[str, Any], applets: list[str]) -> AdversaryConfig | None:
    raw = data.get("adversary")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("adversary", f"must be a table with {', '.join(KNOWN_ADVERSARY)}")
    extra = set(raw) - set(KNOWN_ADVERSARY)
    if extra:
        raise _bad(f"adversary.{sorted(extra)[0]}", f"unknown field; known: {', '.join(KNOWN_ADVERSARY)}")
    probs = {}
    for k in ("drop_out", "drop_in"):
        v = raw.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise _bad(f"adversary.{k}", f"a probability from 0.0 to 1.0, got {v!r}")
        probs[k] = float(v)
    mtypes = raw.get("mtypes", list(AdversaryConfig.mtypes))
    if not isinstance(mtypes, list) or not mtypes or not all(isinstance(m, str) for m in mtypes):
        raise _bad("adversary.mtypes", f'a list of message type names such as ["smc.frame"], got {mtypes!r}')
    import_applets(applets)  # their message types are looked up by name
    for m in mtypes:
        try:
            by_name(m)
        except (KeyError, DecodeError):
            raise _bad("adversary.mtypes", f"no message type is named {m!r}") from None
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("adversary.seed", f"a whole number, got {seed!r}")
    stop = raw.get("stop_round")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 1):
        raise _bad("adversary.stop_round", f"a round number from 1, got {stop!r}")
    return AdversaryConfig(probs["drop_out"], probs["drop_in"], tuple(mtypes), seed, stop)


def _limits(data: dict[str, Any]) -> tuple[ServerLimits, int]:
    raw = data.get("limits", {})
    if not isinstance(raw, dict):
        raise _bad("limits", f"must be a table with {', '.join(KNOWN_LIMITS)}")
    extra = set(raw) - set(KNOWN_LIMITS)
    if extra:
        raise _bad(f"limits.{sorted(extra)[0]}", f"unknown field; known: {', '.join(KNOWN_LIMITS)}")
    d = DEFAULT_SERVER_LIMITS
    idle = _seconds(raw.get("idle_timeout_s", d.idle_timeout_s), "limits.idle_timeout_s", zero_ok=True)
    limits = ServerLimits(
        max_connections=_int(raw, "max_connections", "limits.", d.max_connections, 1, 1 << 20),
        max_per_peer=_int(raw, "max_per_peer", "limits.", d.max_per_peer, 1, 1 << 20),
        handshake_timeout_s=_seconds(
            raw.get("handshake_timeout_s", d.handshake_timeout_s), "limits.handshake_timeout_s"
        ),
        idle_timeout_s=idle or None,
    )
    return limits, _int(raw, "app_max_connections", "limits.", DEFAULT_APP_MAX_CONNECTIONS, 1, 1 << 20)


def load_config(path: Path) -> HostConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HostError("bad_config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HostError("bad_config", f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(data, path.parent)
    except HostError as exc:  # the field's words, after the file that holds it
        raise HostError(exc.reason, f"{path}: {exc}", hint=exc.hint) from None
