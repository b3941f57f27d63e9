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


def _run(socket: str, pin: str | None, work: Callable[[Any], Awaitable[Any]], card: bytes | None = None) -> Any:
    from cardnet.card import mtypes as cm
    from cardnet.host.client import AppClient
    from cardnet.host.errors import HostError

    async def go() -> Any:
        try:
            app = await AppClient.connect(socket, card=card)
        except OSError as exc:
            fail(f"cannot reach the host at {socket}: {exc.strerror}", hint="is `cardnet host run` running there?")
        except HostError as exc:
            fail(f"the host refused: {exc}", reason=exc.reason, hint="a host with several cards needs --card DOMAIN")
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
CARD = click.option("--card", "card", default=None, help="The card's domain (24 hex), if the host has several cards.")


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


def _domain(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text.split(":")[0])
    except ValueError:
        raw = b""
    if len(raw) != 12:
        raise click.BadParameter("a card domain is 24 hex digits (a card Uid <24 hex>:00000000 works too)")
    return raw


@trn.command("reissue")
@SOCKET
@PIN
@click.option("--oid", required=True, help="The lost token's oid (it is revoked).")
@click.option("--new-oid", default=None, help="32 hex digits for the new token (default: the card draws one).")
@click.option("--body", default=None, help="The new token's body (default: the body the agent's card minted).")
@CARD
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds to wait for the authority.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
def trn_reissue(
    socket: str,
    pin: str | None,
    oid: str,
    new_oid: str | None,
    body: str | None,
    card: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Revoke a lost token and reissue it to its last recorded holder (run by the issuing agent's owner).

    The agent's card asks the authority, which revokes the old oid and names the
    last holder it recorded; the card then mints the new token and sends it
    there. Safe to repeat: the same command reports how the reissue went.
    """
    from cardnet.applets.trn import RECOVER, REISSUE, REISSUE_STATE
    from cardnet.card import mtypes as cm

    fields: dict[str, Any] = {"oid": _oid(oid)}
    if new_oid is not None:
        fields["new_oid"] = _oid(new_oid)
    if body is not None:
        fields["body"] = body.encode()

    async def ask(app: Any) -> dict[str, Any]:
        await app.send(app.uid.card_uid(), REISSUE, **fields)
        msg = await app.recv()
        if msg.mtype == cm.REFUSED.code:
            p = cm.REFUSED.parse(msg)
            hints = {
                "need_body": "give the new token's body with --body",
                "no_authority": "run `cardnet trn set-authority` on the agent's card first",
                "wrong_usage": "run this against the issuing agent's card (--card DOMAIN if the host has several)",
            }
            fail(f"the card refused: {p['detail']}", reason=p["reason"], hint=hints.get(p["reason"]))
        return dict(REISSUE_STATE.parse(msg))

    async def work(app: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        state = await ask(app)
        fields.pop("body", None)  # polling: the same old oid (and new oid, once known) reports the state
        fields["new_oid"] = state["new_oid"]
        polls = 0
        while state["state"] == "pending" and loop.time() < deadline:
            await asyncio.sleep(0.25)
            polls += 1
            if polls % 8 == 0:  # the host's timer resends too; this keeps a host without ticks moving
                await app.send(app.uid.card_uid(), RECOVER)
            state = await ask(app)
        return state

    state = _run(socket, pin, work, _domain(card))
    out = {
        "oid": oid,
        "new_oid": state["new_oid"].hex(),
        "state": state["state"],
        "reason": state["reason"],
        "holder": str(state.get("holder") or ""),
    }
    if state["state"] == "refused":
        retry = "to try again once the cause is fixed, give another --new-oid"
        fail(f"the authority refused to reissue {oid}: {state['reason']}", reason="refused", hint=retry)
    if state["state"] == "pending":
        later = "the card keeps the request and resends it; repeat this command to see the outcome"
        fail(
            f"no answer from the authority within {timeout_s:g} s ({oid} -> {out['new_oid']})",
            reason="pending",
            hint=later,
        )
    if as_json:
        emit_json(out)
    else:
        console.print(f"reissued {oid} as {out['new_oid']}: {out['reason']} ({out['holder']})", markup=False)


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
