"""``cardnet trn``: a card owner's commands for TRN tokens, through the host's application socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.table import Table

from cardnet.cli.output import console, emit_json, fail


def _pin(pin: str | None) -> str:
    value = pin or os.environ.get("CARDNET_PIN")
    if value is None:
        value = click.prompt("card PIN", hide_input=True)
    return value


def _run(socket: str, pin: str | None, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from cardnet.card import mtypes as cm
    from cardnet.host.client import AppClient

    async def go() -> Any:
        try:
            app = await AppClient.connect(socket)
        except OSError as exc:
            fail(f"cannot reach the host at {socket}: {exc.strerror}", hint="is `cardnet host run` running there?")
        async with app:
            await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=_pin(pin))
            r = await app.recv_type(cm.PIN_RESULT)
            if not r["ok"]:
                fail(f"wrong PIN ({r['tries_left']} tries left)", hint="check the PIN; at 0 tries the card locks")
            return await work(app)

    return asyncio.run(go())


async def _result(app: Any) -> dict[str, Any]:
    from cardnet.applets.trn import RESULT
    from cardnet.card import mtypes as cm

    msg = await app.recv()
    if msg.mtype == cm.REFUSED.code:
        p = cm.REFUSED.parse(msg)
        fail(f"the card refused: {p['detail']}", reason=p["reason"])
    return dict(RESULT.parse(msg))


def _oid(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise click.BadParameter("an oid is 32 hex digits (16 bytes)")
    return raw


SOCKET = click.option("--socket", required=True, help="The host's application socket (app_socket in its config).")
PIN = click.option("--pin", default=None, help="The card's PIN (default: $CARDNET_PIN, else asked for).")


@click.group()
def trn() -> None:
    """TRN tokens: mint (agents), send, list, recover — atomic, traceable transfers between cards."""


@trn.command("mint")
@SOCKET
@PIN
@click.option("--oid", required=True, help="32 hex digits, unique per token.")
@click.option("--body", required=True, help="The token's body (text), e.g. 'Olympic baseball, seat 12A'.")
def trn_mint(socket: str, pin: str | None, oid: str, body: str) -> None:
    """Create a token on an agent's card (the card signs oid and body)."""
    from cardnet.applets.trn import MINT

    async def work(app: Any) -> None:
        await app.send(app.uid.card_uid(), MINT, oid=_oid(oid), body=body.encode())
        console.print(f"minted {oid}: {(await _result(app))['reason']}")

    _run(socket, pin, work)


@trn.command("send")
@SOCKET
@PIN
@click.option("--oid", required=True)
@click.option("--to", "to", required=True, help="The receiving card's Uid (<24 hex>:00000000).")
@click.option("--untraceable", is_flag=True, help="Skip the trace at the authority (untraceable tokens).")
def trn_send(socket: str, pin: str | None, oid: str, to: str, untraceable: bool) -> None:
    """Start moving a token to another card (two-phase commit; the host carries it)."""
    from cardnet.applets.trn import SEND
    from cardnet.wire import Uid

    dst = Uid.parse(to)

    async def work(app: Any) -> None:
        await app.send(app.uid.card_uid(), SEND, oid=_oid(oid), to=dst, traceable=not untraceable)
        console.print(f"sending {oid} to {dst}: {(await _result(app))['reason']}")

    _run(socket, pin, work)


@trn.command("list")
@SOCKET
@PIN
@click.option("--json", "as_json", is_flag=True)
def trn_list(socket: str, pin: str | None, as_json: bool) -> None:
    """The tokens on the card with their status (enabled, disabled, trustless, ...)."""
    from cardnet.applets.trn import LIST, TOKENS

    async def work(app: Any) -> list[dict[str, Any]]:
        await app.send(app.uid.card_uid(), LIST)
        return list((await app.recv_type(TOKENS))["tokens"])

    tokens = _run(socket, pin, work)
    rows = [
        {"oid": t["oid"].hex(), "status": t["status"], "peer": str(t.get("peer") or ""),
         "body": t.get("body", b"").decode("utf-8", "replace")}
        for t in tokens
    ]  # fmt: skip
    if as_json:
        emit_json({"tokens": rows})
        return
    table = Table(title="tokens on the card")
    for col in ("oid", "status", "peer", "body"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["oid"], r["status"], r["peer"], r["body"])
    console.print(table)


@trn.command("set-authority")
@SOCKET
@PIN
@click.option("--authority", required=True, help="The authority card's Uid.")
def trn_set_authority(socket: str, pin: str | None, authority: str) -> None:
    """Tell the card which authority traces its tokens."""
    from cardnet.applets.trn import SET_AUTHORITY
    from cardnet.wire import Uid

    uid = Uid.parse(authority)

    async def work(app: Any) -> None:
        await app.send(app.uid.card_uid(), SET_AUTHORITY, authority=uid)
        console.print((await _result(app))["reason"])

    _run(socket, pin, work)


@trn.command("recover")
@SOCKET
def trn_recover(socket: str) -> None:
    """Resend whatever transfers and traces are unfinished (safe to repeat)."""
    from cardnet.applets.trn import RECOVER
    from cardnet.host.client import AppClient

    async def go() -> None:
        async with await AppClient.connect(socket) as app:
            await app.send(app.uid.card_uid(), RECOVER)
            await asyncio.sleep(0.2)

    asyncio.run(go())
    console.print("recovery ordered")
