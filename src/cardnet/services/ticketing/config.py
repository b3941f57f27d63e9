"""The ticketing server's configuration file (TOML), validated field by field.

::

    name = "stadium"                       # for logs and pages
    listen = "127.0.0.1:8080"              # HTTP (people and programs)
    speed_listen = "127.0.0.1:8081"        # the SPEED vendor (payment)
    store = "tickets.db"                   # the vendor's store (`cardnet speed vendor init`); sales live there too
    host = "device.toml"                   # the host config of the server's device: an agent card, applet trn
    transfer_timeout_s = 30.0              # optional: how long an upgraded connection waits for the transfer
    max_unpaid_per_card = 8                # optional: sales one card may hold billed and not paid (more: refused)
    unpaid_window_s = 3600.0               # optional: how long an unpaid sale counts against its card
    pay_within_s = 900.0                   # optional: each bill's deadline, from when it is made
    release_margin_s = 300.0               # optional: after a deadline, before an unpaid seat is sold again
    broker = "127.0.0.1:7400"              # optional: the SPEED broker, asked about each sale before a release

    [limits]                               # optional: bounds on the HTTP port (defaults shown; docs/transport.md)
    max_connections = 256
    max_per_peer = 64
    max_header_bytes = 16384
    max_body_bytes = 65536
    request_timeout_s = 10.0
    idle_timeout_s = 30.0

    [[events]]
    id = "final"                           # letters, digits, '-' and '_'
    name = "Cup final"
    date = "2027-05-01 20:00"
    price = "25.00 EUR"
    seats = ["A1", "A2", "B1"]

The device's PIN comes from the environment variable ``CARDNET_PIN``. Paths are relative to the file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardnet.errors import CardnetError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed.messages import Price
from cardnet.protocols.speed.messages import parse_price as speed_price
from cardnet.services.ticketing.sales import MAX_UNPAID, PAY_WITHIN_S, RELEASE_MARGIN_S, UNPAID_WINDOW_S
from cardnet.transport.http import DEFAULT_HTTP_LIMITS, HttpLimits
from cardnet.transport.tcp import port_number

KNOWN = {"name", "listen", "speed_listen", "store", "host", "transfer_timeout_s", "max_unpaid_per_card",
         "unpaid_window_s", "pay_within_s", "release_margin_s", "broker", "events", "limits"}  # fmt: skip
KNOWN_LIMITS = ("max_connections", "max_per_peer", "max_header_bytes", "max_body_bytes", "request_timeout_s",
                "idle_timeout_s")  # fmt: skip
KNOWN_EVENT = {"id", "name", "date", "price", "seats"}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_SEATS = 100_000  # seats of one event
MAX_EVENTS = 1000


class TicketingError(CardnetError):
    """The ticketing server cannot be set up or run as asked (``reason`` says why; ``hint`` what to do)."""

    hint: str | None = None


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    date: str
    price: Price
    seats: tuple[str, ...]

    def product(self, seat: str) -> str:
        """The SPEED product id of one seat."""
        return f"{self.id}/{seat}"


@dataclass(frozen=True)
class TicketingConfig:
    name: str
    listen: tuple[str, int]
    speed_listen: tuple[str, int]
    store: str
    host: Path
    events: tuple[Event, ...]
    transfer_timeout_s: float = 30.0
    http_limits: HttpLimits = DEFAULT_HTTP_LIMITS
    max_unpaid_per_card: int = MAX_UNPAID
    unpaid_window_s: float = UNPAID_WINDOW_S
    pay_within_s: float = PAY_WITHIN_S
    release_margin_s: float = RELEASE_MARGIN_S
    broker: tuple[str, int] | None = None  # asked about each sale before its seat is released (None: never released)

    def event(self, event_id: str) -> Event | None:
        return next((e for e in self.events if e.id == event_id), None)


def _bad(where: str, what: str) -> TicketingError:
    return TicketingError("bad_config", f"{where}: {what}")


# What to write for each field a ticketing config must have, for the error when it is left out.
REQUIRED = {
    "name": ('name = "stadium"', "the server's name, for logs and pages"),
    "listen": ('listen = "127.0.0.1:8080"', "the HTTP address people and programs use"),
    "speed_listen": ('speed_listen = "127.0.0.1:8081"', "the SPEED vendor's address (payment)"),
    "store": ('store = "tickets.db"', "the vendor's store, made by `cardnet speed vendor init --store tickets.db`"),
    "host": ('host = "device.toml"', "the host config of the server's device (`cardnet host init`)"),
    "events": ("[[events]]", "one table per event: id, name, date, price, seats"),
}
REQUIRED_EVENT = {
    "id": ('id = "final"', "letters, digits, '-' and '_'"),
    "name": ('name = "Cup final"', "the event's name"),
    "date": ('date = "2027-05-01 20:00"', "the event's date, as people read it"),
    "price": ('price = "25.00 EUR"', "each seat's price: an amount and an ISO 4217 currency"),
    "seats": ('seats = ["A1", "A2", "B1"]', "the seats for sale"),
}


def _missing(data: dict[str, Any], where: str, required: dict[str, tuple[str, str]]) -> None:
    """Name the first required field that is not in ``data``, with a line to add and what it is for."""
    for key, (line, what) in required.items():
        if key not in data:
            section = f" to {where.rstrip('.')}" if where else ""
            err = _bad(f"{where}{key}", f"missing: add a line such as {line}{section} ({what})")
            err.hint = f"the ticketing config needs {', '.join(required)}{' in every [[events]]' if where else ''}; " \
                       "docs/ticketing.md shows a whole file"  # fmt: skip
            raise err


def _address(v: object, where: str) -> tuple[str, int]:
    if not isinstance(v, str) or ":" not in v:
        raise _bad(where, f'write host:port, e.g. "127.0.0.1:8080", got {v!r}')
    host, _, digits = v.rpartition(":")
    port = port_number(digits)
    if port is None or not host:
        raise _bad(where, f"write host:port with a port 0..65535, got {v!r}")
    return host, port


def _text(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v or not v.isprintable() or len(v) > 200:
        raise _bad(f"{where}{key}", f"must be a non-empty line of text (at most 200 characters), got {v!r}")
    return v


def parse_price(text: str, where: str) -> Price:
    """``"25.00 EUR"`` as a SPEED price, in the currency's minor units (SPEED's own parser)."""
    try:
        return speed_price(text)
    except ProtocolError as exc:
        raise _bad(where, f'{exc}: write an amount and an ISO 4217 currency, e.g. "25.00 EUR"') from None


def parse_config(data: dict[str, Any], base: Path) -> TicketingConfig:
    unknown = set(data) - KNOWN
    if "cards" in unknown:
        err = _bad("cards", "this is a host's config (it has [[cards]]), not a ticketing server's")
        err.hint = ("give the ticketing server's config (name, listen, speed_listen, store, host, [[events]]); its "
                    "`host` field names the device's host config")  # fmt: skip
        raise err
    if unknown:
        raise _bad(", ".join(sorted(unknown)), f"unknown field(s); known: {', '.join(sorted(KNOWN))}")
    _missing(data, "", REQUIRED)
    store = _text(data, "store", "")
    if "://" not in store:
        store = "sqlite:///" + str((base / store).resolve())
    timeout = data.get("transfer_timeout_s", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= 3600:
        raise _bad("transfer_timeout_s", f"a number of seconds 0.1..3600, got {timeout!r}")
    unpaid = data.get("max_unpaid_per_card", MAX_UNPAID)
    if isinstance(unpaid, bool) or not isinstance(unpaid, int) or not 1 <= unpaid <= 10_000:
        raise _bad("max_unpaid_per_card", f"a whole number 1..10000 (sales one card may hold unpaid), got {unpaid!r}")
    window = data.get("unpaid_window_s", UNPAID_WINDOW_S)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 1 <= window <= 30 * 86400:
        raise _bad("unpaid_window_s", f"a number of seconds 1..2592000 (30 days), got {window!r}")
    pay_within = _seconds(data, "pay_within_s", PAY_WITHIN_S, 1, 30 * 86400, "a bill's deadline, from when it is made")
    margin = _seconds(data, "release_margin_s", RELEASE_MARGIN_S, 0, 86400,
                      "the wait after a bill's deadline before its unpaid seat is sold again")  # fmt: skip
    raw = data.get("events")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_EVENTS:
        raise _bad("events", f"list 1..{MAX_EVENTS} events: [[events]] with id, name, date, price, seats")
    events: list[Event] = []
    for i, e in enumerate(raw):
        where = f"events[{i}]."
        if not isinstance(e, dict):
            raise _bad(f"events[{i}]", "must be a table")
        extra = set(e) - KNOWN_EVENT
        if extra:
            raise _bad(f"{where}{sorted(extra)[0]}", f"unknown field; known: {', '.join(sorted(KNOWN_EVENT))}")
        _missing(e, where, REQUIRED_EVENT)
        eid = e.get("id")
        if not isinstance(eid, str) or not _ID.match(eid):
            raise _bad(f"{where}id", f"1..32 letters, digits, '-' or '_', got {eid!r}")
        if any(x.id == eid for x in events):
            raise _bad(f"{where}id", f"two events are named {eid!r}")
        seats = e.get("seats")
        if (
            not isinstance(seats, list)
            or not 1 <= len(seats) <= MAX_SEATS
            or not all(isinstance(s, str) and _ID.match(s) for s in seats)
            or len(set(seats)) != len(seats)
        ):
            raise _bad(f"{where}seats", "a list of distinct seat names (1..32 letters, digits, '-' or '_')")
        events.append(
            Event(
                eid,
                _text(e, "name", where),
                _text(e, "date", where),
                parse_price(_text(e, "price", where), f"{where}price"),
                tuple(seats),
            )
        )
    return TicketingConfig(
        name=_text(data, "name", ""),
        listen=_address(data.get("listen"), "listen"),
        speed_listen=_address(data.get("speed_listen"), "speed_listen"),
        store=store,
        host=base / _text(data, "host", ""),
        events=tuple(events),
        transfer_timeout_s=float(timeout),
        http_limits=_limits(data.get("limits", {})),
        max_unpaid_per_card=unpaid,
        unpaid_window_s=float(window),
        pay_within_s=pay_within,
        release_margin_s=margin,
        broker=None if data.get("broker") is None else _address(data.get("broker"), "broker"),
    )


def _seconds(data: dict[str, Any], key: str, default: float, low: float, high: float, what: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(key, f"a number of seconds {low:g}..{high:g} ({what}), got {value!r}")
    return float(value)


def _limits(raw: object) -> HttpLimits:
    if not isinstance(raw, dict):
        raise _bad("limits", f"must be a table with {', '.join(KNOWN_LIMITS)}")
    extra = set(raw) - set(KNOWN_LIMITS)
    if extra:
        raise _bad(f"limits.{sorted(extra)[0]}", f"unknown field; known: {', '.join(KNOWN_LIMITS)}")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        seconds = key.endswith("_s")
        ok = isinstance(value, int | float) if seconds else isinstance(value, int)
        if isinstance(value, bool) or not ok or not (0 < value <= (3600 if seconds else 1 << 30)):
            what = "a number of seconds 0..3600" if seconds else "a positive whole number"
            raise _bad(f"limits.{key}", f"{what}, got {value!r}")
        fields[key] = float(value) if seconds else value
    return HttpLimits(**fields)


def load_config(path: Path) -> TicketingConfig:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise TicketingError("bad_config", f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TicketingError("bad_config", f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(data, path.parent)
    except TicketingError as exc:  # the field's words, after the file that holds it
        named = TicketingError(exc.reason, f"{path}: {exc}")
        named.hint = exc.hint
        raise named from None
