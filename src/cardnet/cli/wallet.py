"""``cardnet wallet``: one command group for a person with a card on their host (docs/wallet.md).

Tickets and vouchers (TRN), fair exchanges, SPEED payments and the e-purse, Millicent scrip, and recovery of
whatever was interrupted: each command is the protocol's own command-line code (``cardnet trn``, ``exchange``,
``speed``, ``millicent``), reached without repeating ``--socket``, ``--card`` and the broker on every command:
those come from the wallet config (:mod:`cardnet.cli.wallet_config`), which ``init`` writes. The PIN is never
kept there (``--pin``, ``$CARDNET_PIN`` or a prompt).

This module holds the group, what every command shares (:class:`Target`, :func:`wallet_command`) and the
commands on the card's own tickets; the rest are imported when they run (:data:`SUBCOMMANDS`): the exchanges
(:mod:`.wallet_exchange`), payments and the e-purse (:mod:`.wallet_pay`), buying a ticket (:mod:`.wallet_buy`)
and the web wallet (:mod:`.wallet_ui`).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli import wallet_config
from cardnet.cli.fairx import HINTS as EXCHANGE_HINTS
from cardnet.cli.fairx import exchange_row, people_rows
from cardnet.cli.main import LazyGroup, given_options
from cardnet.cli.output import (
    FiniteRange,
    all_or_nothing,
    console,
    emit_json,
    err_console,
    fail,
    fail_os,
    json_option,
    print_fields,
    print_rows,
    progress,
    say,
)
from cardnet.cli.trn import PIN, STATUS_WORDS, hex16, parse_domain, parse_oid, parse_uid, run_on_wallet, token_rows
from cardnet.cli.wallet_pending import (
    OWNER_WAITS,
    balances,
    owed_tickets,
    pending_loads,
    pending_purchases,
    recover_card,
    recover_deliveries,
    recover_payments,
    scrip,
)
from cardnet.services.admissions import Admission, AdmissionMemory, AdmissionsError
from cardnet.services.wallet import MOVING, PEER_STORE_FAILED, WalletError

APPLETS = ("trn", "purse", "speed")  # a person's card: tickets, vouchers and exchanges; the e-purse; SPEED payments
TICKET_COLUMNS = ("oid", "body", "state", "peer")
NO_TICKETS = "no tickets or vouchers on this card"
USED_SHOWN = 10  # `wallet list`: the newest admissions shown to a person (--json: every one remembered)


@dataclass(frozen=True)
class Target:
    """Which host, card and PIN a command works on: its options, else the wallet config."""

    config: wallet_config.WalletConfig
    socket_option: str | None
    card_option: str | None
    pin: str | None

    @property
    def socket(self) -> str:
        value = self.socket_option or self.config.get("socket")
        if value is None:
            where = f"no wallet config at {self.config.path}" if not self.config.exists else f"{self.config.path}"
            fail(
                f"which host? no --socket given, and no socket in the wallet config ({where})",
                reason="no_wallet",
                hint="make a wallet with `cardnet wallet init --ca CA_FILE`, or give --socket (and --card)",
            )
        host_config = self.config.folder / "host.toml"  # (where `wallet init` wrote it, beside the wallet config)
        if self.socket_option is None and not Path(value).exists() and host_config.exists():
            fail(
                f"your host is not running: there is no socket at {value}",
                reason="no_host",
                hint=f"start it with `cardnet host run --config {host_config}` (and leave it running), then repeat "
                "the command",
            )
        return value

    @property
    def card(self) -> str | None:
        return self.card_option or self.config.get("card")

    def run(self, work: Callable[[Any], Awaitable[Any]], hints: dict[str, str] | None = None) -> Any:
        """Open the wallet library on the card (logged in with the PIN) and run ``work``; refusals in words."""
        hints = {k: given_options(v) for k, v in {**HINTS, **(hints or {})}.items()}  # (its own --config, ...)
        return run_on_wallet(self.socket, self.pin, self.card, work, hints)

    def trn_options(self) -> str:
        """`` --socket S [--card D]`` for a `cardnet trn` command a hint names: they are required there."""
        card = self.card
        return f" --socket {shlex.quote(self.socket)}" + ("" if card is None else f" --card {card}")


# In the `cardnet wallet` commands a hint names: the options this command was given, filled in by given_options, so
# that the command named works on the same wallet config, host and card when typed as shown.
OPTS = "{--config}{--socket}{--card}"


def wallet_cmd(words: str) -> str:
    """```cardnet wallet WORDS``` with this command's own --config/--socket/--card (:data:`OPTS`)."""
    return given_options(f"`cardnet wallet {words}{OPTS}`")


HINTS = {
    **EXCHANGE_HINTS,
    "no_exchange": f"`cardnet wallet show{OPTS}` lists this card's exchanges and their ids",
    "illegal_move": f"`cardnet wallet list{OPTS}` shows your tickets and vouchers and how each stands",
    "no_applet": "this card was not made for that: a wallet card has the applets trn, purse and speed "
    "(`cardnet wallet init` makes one)",
}

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The wallet config (default: $CARDNET_WALLET_CONFIG, else $CARDNET_HOME/wallet.toml or "
    "~/.cardnet/wallet.toml).",
)
SOCKET = click.option("--socket", default=None, help="The host's application socket (default: the wallet config's).")
CARD = click.option("--card", "card", default=None, help="The card's domain, 24 hex (default: the wallet config's).")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
WAIT_S = FiniteRange(0, 3600)


def wallet_command(
    group: click.Group | None, name: str, *options: Decorator
) -> Callable[[Callable[..., Any]], click.Command]:
    """``group``'s command ``name`` on the person's card: ``--config``, ``--socket``, ``--card``, ``--pin``, then
    ``options``, then ``--json``; the function gets a :class:`Target` as ``target`` instead of the first four.
    With no ``group``, a command of its own (one of :data:`SUBCOMMANDS`)."""

    def wrap(f: Callable[..., Any]) -> click.Command:
        @functools.wraps(f)
        def command(config_path: Path | None, socket: str | None, card: str | None, pin: str | None,
                    **kwargs: Any) -> Any:  # fmt: skip
            return f(target=Target(wallet_config.load(config_path), socket, card, pin), **kwargs)

        g: Callable[..., Any] = command
        stack: tuple[Decorator, ...] = (CONFIG, SOCKET, CARD, PIN, *options, json_option)
        for option in reversed(stack):
            g = option(g)
        return (click.command(name) if group is None else group.command(name))(g)

    return wrap


# The subcommands kept in modules of their own, imported only when they run (or `cardnet wallet --help` lists them).
SUBCOMMANDS: dict[str, str] = {
    "exchange": "cardnet.cli.wallet_exchange:wallet_exchange",
    "pay": "cardnet.cli.wallet_pay:wallet_pay",
    "load": "cardnet.cli.wallet_pay:wallet_load",
    "buy": "cardnet.cli.wallet_buy:wallet_buy",
    "ui": "cardnet.cli.wallet_ui:wallet_ui",
}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def wallet() -> None:
    """Your card: tickets and vouchers, exchanges, payments and the e-purse, in one place.

    \b
    Start here:
      cardnet wallet init --ca CA_FILE         a new card for this machine, and its host's config
      cardnet host run --config ~/.cardnet/host.toml &
      cardnet wallet show                      everything on the card, and what is under way
      cardnet wallet send OID --to UID         give a ticket to another card
      cardnet wallet enter OID --gate UID      walk through a gate with a ticket
      cardnet wallet recover                   finish whatever a crash or a lost network interrupted

    The host, the card and the broker come from the wallet config (~/.cardnet/wallet.toml,
    `cardnet wallet config`); the PIN never does: --pin, $CARDNET_PIN, or you are asked.
    """


# -- init and config ---------------------------------------------------------------------------------------------
def _address(text: str, option: str) -> str:
    """``text`` if it is a HOST:PORT, else a usage error naming ``option``."""
    from cardnet.transport import host_port

    try:
        host_port(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=option) from None
    if '"' in text or "\\" in text:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=option)
    return text


def _route(text: str) -> tuple[str, str]:
    domain, sep, address = text.partition("=")
    try:
        ok = sep == "=" and len(bytes.fromhex(domain)) == 12
    except ValueError:
        ok = False
    if not ok:
        raise click.BadParameter(f"{text!r}: a route is DOMAIN=HOST:PORT (DOMAIN: 24 hex digits)", param_hint="--route")
    return domain.lower(), _address(address, "--route")


@wallet.command("init")
@CONFIG
@click.option("--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA file you were given (`cardnet ca create`): it certifies the new card.")  # fmt: skip
@click.option("--pin", default=None, help="The new card's PIN (default: $CARDNET_PIN, else asked for twice).")
@click.option("--name", default=None, help="Your name, put into the card's certificate.")
@click.option("--domain", default=None, help="The new card's domain, 24 hex digits (default: a random one).")
@click.option("--authority", default=None, help="The authority card's Uid: it traces your tickets.")
@click.option("--ttp", default=None, help="The TTP card's Uid: it settles interrupted exchanges.")
@click.option("--listen", default=None, help="HOST:PORT where other hosts reach yours (default: none).")
@click.option("--route", "routes", multiple=True, help="DOMAIN=HOST:PORT: where another card's host is (repeat).")
@click.option("--broker", default=None, help="SPEED: the broker's HOST:PORT (kept in the wallet config).")
@click.option("--broker-cert", default=None, help="SPEED: the broker's certificate, PEM (kept in the config).")
@click.option("--ca-cert", default=None, help="The CA certificate, PEM (kept in the config).")
@click.option("--account", default=None, help="SPEED: your account at the broker (kept in the config).")
@json_option
def wallet_init(config_path: Path | None, ca_path: Path, pin: str | None, name: str | None, domain: str | None,
                authority: str | None, ttp: str | None, listen: str | None, routes: tuple[str, ...],
                broker: str | None, broker_cert: str | None, ca_cert: str | None, account: str | None,
                as_json: bool) -> None:  # fmt: skip
    """Make a new card for this machine, personalised under the CA you were given, with its host's config and the
    wallet config beside it (in the wallet config's folder: card.db, host.toml, wallet.toml).

    Then start the host (`cardnet host run --config FOLDER/host.toml`) and use the other `cardnet wallet` commands.
    """
    from cardnet.applets import fairx as fa
    from cardnet.applets import trn
    from cardnet.applets.registry import make_applets
    from cardnet.card import Card
    from cardnet.card.personalise import personalise
    from cardnet.cli.admin import check_card_name, new_card_pin
    from cardnet.crypto import pki
    from cardnet.host.local import LocalCard

    path = config_path or wallet_config.default_path()
    folder = path.parent
    store, host_config = folder / "card.db", folder / "host.toml"
    for existing in (path, store, host_config):
        if existing.exists():
            fail(f"{existing} already exists: a wallet is already made there", reason="already_exists",
                 hint="give another --config (its folder holds the new wallet), or use the one there")  # fmt: skip
    route_pairs = [_route(r) for r in routes]
    if listen is not None:
        _address(listen, "--listen")
    raw_domain = parse_domain(domain)
    auth_uid = parse_uid(authority) if authority else None
    ttp_uid = parse_uid(ttp) if ttp else None
    pin = new_card_pin(pin)
    check_card_name(name)
    authority_ca = pki.CertificateAuthority.load(ca_path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        fail_os(exc, "make the wallet's folder", folder)
    with all_or_nothing(path, host_config, store):  # a half-made wallet would refuse the next init as "already made"
        card = Card.open("sqlite:///" + str(store.resolve()), applets=make_applets(list(APPLETS)))
        try:
            uid = personalise(card, authority_ca, pin=pin, now=datetime.now(UTC), name=name, domain=raw_domain)
            local = LocalCard(card, pin)  # the card's first orders, before any host runs it
            if auth_uid is not None:
                local.ask(trn.SET_AUTHORITY, trn.RESULT, authority=auth_uid)
            if ttp_uid is not None:
                local.ask(fa.SET_TTP, fa.TTP_IS, ttp=ttp_uid)
        finally:
            card.close()
        lines = ['name = "wallet"']
        if listen:
            lines.append(f'listen = "{listen}"')
        lines += ['app_socket = "host.sock"', "", "[[cards]]", 'store = "sqlite:///card.db"',
                  f"applets = [{', '.join(f'{a!r}' for a in APPLETS)}]".replace("'", '"'), "", "[routes]",
                  *(f'"{d}" = "{a}"' for d, a in route_pairs)]  # fmt: skip
        host_config.write_text("\n".join(lines) + "\n")
        values = {"socket": "host.sock", "card": uid.domain.hex()}
        kept = (("broker", broker), ("broker_cert", broker_cert), ("ca_cert", ca_cert), ("account", account))
        for key, value in kept:
            if value is not None:
                values[key] = str(Path(value).resolve()) if key in wallet_config.PATHS else value
        wallet_config.save(path, values)
    result = {"uid": str(uid), "domain": uid.domain.hex(), "store": str(store), "host_config": str(host_config),
              "config": str(path), "socket": str(folder / "host.sock")}  # fmt: skip
    if as_json:
        emit_json(result)
        return
    print_fields([("card", result["uid"]), ("card store", result["store"]), ("host config", result["host_config"]),
                  ("wallet config", result["config"])], title="your new wallet")  # fmt: skip
    if not listen:
        console.print("no --listen: other hosts cannot reach yours, so only cards on this host can send to you "
                      f"(add listen = \"HOST:PORT\" to {host_config} to change that)", markup=False)  # fmt: skip
    then = given_options("`cardnet wallet show{--config}`")  # (typed as shown it reads this wallet's config)
    console.print(f"next: start your host with `cardnet host run --config {shlex.quote(str(host_config))}`, then "
                  f"{then}", markup=False)  # fmt: skip


@wallet.command("config")
@CONFIG
@click.option("--set", "assignments", multiple=True, help="KEY=VALUE to keep in the wallet config (repeat).")
@click.option("--unset", "removals", multiple=True, help="KEY to remove from the wallet config (repeat).")
@json_option
def wallet_config_command(config_path: Path | None, assignments: tuple[str, ...], removals: tuple[str, ...],
                          as_json: bool) -> None:  # fmt: skip
    """Show (or change) the wallet config: the host's socket, the card, the broker. Never the PIN."""
    config = wallet_config.load(config_path)
    values = dict(config.values)
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or key not in wallet_config.KEYS:
            raise click.BadParameter(f"{text!r}: give KEY=VALUE, KEY one of {', '.join(wallet_config.KEYS)}",
                                     param_hint="--set")  # fmt: skip
        values[key] = str(Path(value).expanduser().resolve()) if key in wallet_config.PATHS else value
    for key in removals:
        values.pop(key, None)
    if assignments or removals:
        wallet_config.save(config.path, values)
        config = wallet_config.load(config.path)
    shown = {k: config.get(k) for k in wallet_config.KEYS}
    if as_json:
        emit_json({"config": str(config.path), "exists": config.exists, "values": shown})
        return
    if not config.exists:
        make = given_options("`cardnet wallet init{--config} --ca CA_FILE`")
        console.print(f"no wallet config at {config.path} ({make} makes one)", markup=False)
        return
    print_fields([(k, v if v is not None else "(not set)") for k, v in shown.items()], title=str(config.path))


# -- what is on the card ------------------------------------------------------------------------------------------
def _ticket(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("oid", "status", "body", "state", "peer", "refused", "hint") if k in row}


def remembered(memory: AdmissionMemory | None, card: bytes, oid: bytes) -> Admission | None:
    """What this wallet remembers of card ``card`` giving ticket ``oid`` to a gate (``wallet_config.admissions``),
    if anything; a damaged memory is said on stderr and remembers nothing."""
    if memory is None:
        return None
    try:
        return memory.find(card, oid)
    except AdmissionsError as exc:
        err_console.print(f"note: {exc}", markup=False)
        return None


def _used(memory: AdmissionMemory | None, card: bytes, held: set[str]) -> list[dict[str, str]]:
    """The tickets this card gave to gates (the wallet's memory) that it no longer holds, newest first."""
    try:
        gone = [] if memory is None else [a for a in memory.of_card(card) if a.oid not in held]
    except AdmissionsError as exc:
        err_console.print(f"note: {exc}", markup=False)
        return []
    return [{"oid": a.oid, **a.fields()} for a in reversed(gone)]


@wallet_command(wallet, "list")
def wallet_list(target: Target, as_json: bool) -> None:
    """The tickets and vouchers on your card, and how each stands; and the tickets it used at gates."""

    async def work(wallet: Any) -> tuple[bytes, list[dict[str, Any]]]:
        return wallet.card.domain, await token_rows(wallet)

    card, tokens = target.run(work)
    rows = [_ticket(r) for r in tokens]
    used = _used(wallet_config.admissions(target.config), card, {r["oid"] for r in rows})
    if as_json:
        emit_json({"tickets": rows, "admissions": used})
        return
    print_rows(rows, TICKET_COLUMNS, title="tickets and vouchers", empty=NO_TICKETS)
    for r in rows:
        if "hint" in r:
            console.print(f"{r['oid']}: {r['hint']}", markup=False)
    _print_used(used)


def _print_used(used: list[dict[str, str]]) -> None:
    """The tickets this card gave to gates (newest first, :data:`USED_SHOWN` of them), if any, for a person."""
    if used:
        print_rows(used[:USED_SHOWN], ("oid", "gate", "at"), title="used at gates (this wallet's own record)",
                   empty="")  # fmt: skip
        if len(used) > USED_SHOWN:
            console.print(f"({len(used) - USED_SHOWN} earlier: --json lists them all)", markup=False)


@wallet_command(wallet, "show", click.argument("item", required=False, metavar="[OID|EXCHANGE_ID]"))
def wallet_show(target: Target, item: str | None, as_json: bool) -> None:
    """Everything on your card and what is under way: tickets and vouchers, e-purse, exchanges, payments, scrip.

    With an OID or an exchange id: that one ticket, voucher or exchange in full.
    """
    if item is not None:
        _show_one(target, hex16(item, "a ticket's oid or an exchange id"), as_json)
        return

    async def work(wallet: Any) -> tuple[bytes, dict[str, Any]]:
        tickets = [_ticket(r) for r in await token_rows(wallet)]
        exchanges = [exchange_row(x) for x in await wallet.exchanges() if not x.finished]
        return bytes(wallet.card.domain), {"card": str(wallet.card), "tickets": tickets,
                                           "purse": await balances(wallet), "exchanges": exchanges,
                                           "loads_pending": len(await pending_loads(wallet))}  # fmt: skip

    card, got = target.run(work)
    got["admissions"] = _used(wallet_config.admissions(target.config), card, {t["oid"] for t in got["tickets"]})
    held = scrip(target.config)
    got["purchases_pending"] = pending_purchases(target.config)
    got["tickets_owed"] = owed_tickets(target.config)
    got["scrip"], got["scrip_pending"] = held if held is not None else (None, [])
    if as_json:
        emit_json(got)
        return
    _print_overview(target, got)


def _print_overview(target: Target, got: dict[str, Any]) -> None:
    from cardnet.cli.speed_purse import balance_words

    purse = got["purse"]
    print_fields([("card", got["card"]), ("host", target.socket),
                  ("e-purse", "this card has no e-purse" if purse is None else balance_words(purse)
                   + ("" if purse["keyed"] else f" (no key yet: {wallet_cmd('load')} gets it)"))],
                 title="your wallet")  # fmt: skip
    print_rows(got["tickets"], TICKET_COLUMNS, title="tickets and vouchers", empty=NO_TICKETS)
    _print_used(got["admissions"])
    print_rows(people_rows(got["exchanges"]), ("id", "role", "give", "want", "state"), title="exchanges under way",
               empty="no exchanges under way")  # fmt: skip
    if got["scrip"] is None:
        console.print("no Millicent scrip wallet yet", markup=False)
    else:
        print_rows(got["scrip"], ("vendor", "scrip_id", "value", "expiry"), title="Millicent scrip",
                   empty="no Millicent scrip")  # fmt: skip
    pending = (
        [{"what": "transfer", "id": t["oid"], "state": t["state"]} for t in got["tickets"] if t["status"] in MOVING]
        + [{"what": "exchange", "id": x["id"], "state": x["state"]} for x in got["exchanges"]
           if x["phase"] not in OWNER_WAITS]
        + [{"what": "purchase", "id": p["id"], "state": f"{p['products']}: delivered, not yet paid"}
           for p in got["purchases_pending"]]
        + [{"what": "ticket delivery", "id": t["id"], "state": f"{t['products']}: paid, not delivered by {t['url']}"}
           for t in got["tickets_owed"]]
        + [{"what": "scrip request", "id": r["request"], "state": f"{r['kind']} at {r['to']}: {r['reason']}"}
           for r in got["scrip_pending"]]
    )  # fmt: skip
    if got["loads_pending"]:
        pending.append({"what": "e-purse load", "id": "-", "state": f"{got['loads_pending']} load(s) not credited"})
    print_rows(pending, ("what", "id", "state"), title="under way", empty="nothing is under way")
    if pending:
        console.print(f"{wallet_cmd('recover')} finishes what was interrupted", markup=False)
    for x in got["exchanges"]:
        if x["phase"] == "proposed":
            console.print(f"offered to you: {wallet_cmd('exchange accept ' + x['id'])} takes it, `reject` refuses it",
                          markup=False)  # fmt: skip


def _show_one(target: Target, ident: bytes, as_json: bool) -> None:
    from cardnet.cli.fairx import next_step
    from cardnet.cli.wallet_exchange import SPELLING

    async def work(wallet: Any) -> tuple[str, dict[str, Any], str | None] | bytes:
        for row in await token_rows(wallet):
            if row["oid"] == ident.hex():
                return "ticket", _ticket(row), None
        for x in await wallet.exchanges():
            if x.n1 == ident:
                return "exchange", exchange_row(x), next_step(x, SPELLING)
        return bytes(wallet.card.domain)

    found = target.run(work)
    if isinstance(found, bytes):
        used = remembered(wallet_config.admissions(target.config), found, ident)
        if used is not None:
            say(as_json, {"admission": {"oid": used.oid, **used.fields()}},
                f"{used.words()} (this wallet's own record): this card no longer holds it")  # fmt: skip
            return
        fail(f"this card holds no ticket or voucher {ident.hex()} and has no exchange with that id",
             reason="not_found", hint=f"{wallet_cmd('list')} shows your tickets and vouchers, {wallet_cmd('show')} "
             "your exchanges")  # fmt: skip
    kind, row, then = found
    if as_json:
        emit_json({kind: row})
        return
    if kind == "exchange":  # for a person: who made it in words, not the protocol's phase; what to do next
        (row,) = people_rows([{k: v for k, v in row.items() if k != "phase"}])
        if then:
            row["next"] = then
    print_fields([(k.replace("_", " "), str(v)) for k, v in row.items()], title=kind)


# -- send ---------------------------------------------------------------------------------------------------------
async def usable_ticket(wallet: Any, oid: bytes, doing: str, memory: AdmissionMemory | None = None) -> None:
    """Fail in words unless this card holds ticket ``oid`` and it is usable now (``enabled``), before it is
    ``doing`` ("sent", "presented"): nothing has moved then. A ticket it no longer holds that ``memory`` (the
    wallet's record of its admissions) shows admitted at a gate is said so (``--json``: ``admission``)."""
    held = {v.oid: v for v in await wallet.vouchers()}
    usable = oid in held and held[oid].status == "enabled"  # (else a record says why: admitted, ack on its way)
    used = None if usable else remembered(memory, wallet.card.domain, oid)
    if used is not None:
        fail(f"{used.words()} (this wallet's own record): this card no longer holds it, so it cannot be {doing} "
             "again", reason="not_held", fields={"admission": used.fields()},
             hint="a ticket is used up at the gate that took it; if you did not go in with it, show this to the "
             "gate's staff or the ticket office")  # fmt: skip
    if oid not in held:
        fail(f"this card does not hold ticket {oid.hex()}", reason="not_held",
             hint=f"{wallet_cmd('list')} shows the tickets and vouchers on this card")  # fmt: skip
    if held[oid].status != "enabled":
        words = STATUS_WORDS.get(held[oid].status, held[oid].status)
        fail(f"ticket {oid.hex()} cannot be {doing} now: {words}", reason="not_movable",
             hint=f"{wallet_cmd('show')} shows what is under way, {wallet_cmd('recover')} ends it")  # fmt: skip


@wallet_command(
    wallet,
    "send",
    click.argument("oid"),
    click.option("--to", "to", required=True, help="The receiving card's Uid (<24 hex>:00000000)."),
    click.option("--untraceable", is_flag=True, help="Skip the trace at the authority (untraceable tickets)."),
    click.option("--wait", "wait_s", type=WAIT_S, default=30.0, show_default=True,
                 help="Seconds to wait for the receiver to take it (0: do not wait)."),
)  # fmt: skip
def wallet_send(target: Target, oid: str, to: str, untraceable: bool, wait_s: float, as_json: bool) -> None:
    """Give a ticket or voucher to another card (TRN: it is never on both, never lost on the way)."""
    from cardnet.cli.trn import send_token

    raw, dst = parse_oid(oid), parse_uid(to)

    async def work(wallet: Any) -> str | None:
        await usable_ticket(wallet, raw, "sent", wallet_config.admissions(target.config))
        await send_token(wallet, raw, dst, traceable=not untraceable)
        if wait_s <= 0:
            return "disabled+O"
        with progress(f"sending {raw.hex()} to {dst} (up to {wait_s:g} s) …"):
            try:
                v = await wallet.wait_moved(raw, timeout_s=wait_s)
            except TimeoutError:
                held = await wallet.voucher(raw)
                return "missing" if held is None else str(held.status)
            except WalletError as exc:
                if exc.reason != PEER_STORE_FAILED:
                    raise
                held = await wallet.voucher(raw)  # (its words say how it stands: nothing is cancelled)
                cancel = f"`cardnet trn cancel --oid {raw.hex()}{target.trn_options()}` takes it back now, or " if (
                    held is not None and held.status == "disabled+O") else ""  # fmt: skip
                fail(str(exc), reason=exc.reason, hint=f"{cancel}ask the receiver's owner to free space on the "
                     "disk of their card's host (or mend it): the transfer then finishes by itself while both hosts "
                     f"run ({wallet_cmd('list')} shows how it stands)")  # fmt: skip
        return None if v is None else str(v.status)

    status = target.run(work)
    out = {"oid": raw.hex(), "to": str(dst), "status": status or "sent", "delivered": status is None}
    if status is None:
        text = f"sent {raw.hex()} to {dst}: the receiving card has it now"
    elif status == "enabled":
        text = f"{raw.hex()} came back: the receiving card refused it"
    else:
        text = (f"sending {raw.hex()} to {dst}: {STATUS_WORDS.get(status, status)}; it goes on by itself while "
                f"both hosts run, and {wallet_cmd('recover')} finishes it")  # fmt: skip
    say(as_json, out, text)


# -- enter (walk through a gate) ----------------------------------------------------------------------------------
@wallet_command(
    wallet,
    "enter",
    click.argument("oid"),
    click.option("--gate", "gate", required=True, help="The gate card's Uid (DOMAIN:00000000; the gate shows it)."),
    click.option("--wait", "wait_s", type=FiniteRange(0.1, 3600), default=10.0, show_default=True,
                 help="Seconds to wait for the gate's answer; then the ticket is taken back."),
)  # fmt: skip
def wallet_enter(target: Target, oid: str, gate: str, wait_s: float, as_json: bool) -> None:
    """Walk through a gate: present a ticket to the gate's card, which takes it (you are admitted and the ticket
    is used up) or refuses it with its reason (the ticket stays yours)."""
    from cardnet.cli import wallet_gate

    raw, dst = parse_oid(oid), parse_uid(gate)
    memory = wallet_config.admissions(target.config)
    got = target.run(lambda wallet: wallet_gate.enter(wallet, raw, dst, wait_s, memory))
    wallet_gate.report(got, raw, dst, as_json, memory)


# -- recover ------------------------------------------------------------------------------------------------------
@wallet_command(
    wallet,
    "recover",
    click.option("--wait", "wait_s", type=FiniteRange(0, 3600), default=30.0, show_default=True,
                 help="Seconds to wait for transfers and exchanges to finish."),
    click.option("--ttp-after", "ttp_after_s", type=FiniteRange(0, 3600), default=5.0, show_default=True,
                 help="Seconds of resending before an interrupted exchange is put to the TTP."),
)  # fmt: skip
def wallet_recover(target: Target, wait_s: float, ttp_after_s: float, as_json: bool) -> None:
    """Finish everything a crash or a lost network interrupted: transfers (resent), exchanges (resent, then settled
    by the TTP), e-purse loads, SPEED purchases and Millicent requests. Safe to repeat."""
    cfg = target.config

    async def work(wallet: Any) -> list[dict[str, Any]]:
        with progress(f"finishing what was interrupted (up to {wait_s:g} s) …"):
            rows = await recover_card(wallet, wait_s, ttp_after_s)
            rows += await recover_payments(wallet, cfg)
            rows += await recover_deliveries(target.socket, cfg)
        return rows

    rows = target.run(work)
    if as_json:
        emit_json({"recovered": rows, "unfinished": sum(1 for r in rows if not r["finished"])})
        return
    print_rows(rows, ("what", "id", "outcome"), title="recovery", empty="nothing was left to finish")
    if any(not r["finished"] for r in rows):
        console.print(f"some things are still under way: repeat {wallet_cmd('recover')} once the party each waits "
                      "for (named above) is reachable", markup=False)  # fmt: skip
