"""``cardnet trn``: a card owner's commands for TRN tokens, through the host's application socket.

Every command takes ``--socket`` (the host's ``app_socket``) and ``--card DOMAIN`` (which card, when the host
runs several). ``send`` asks the host first whether it can reach the destination (``host.route``) and refuses a
Uid it cannot route before the token is disabled; ``list`` says, for each token on its way out, how the transfer
stands (and what the host last reported about the destination); ``cancel`` takes a token back while its
transfer cannot have been committed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cardnet.cli.output import (
    FiniteRange,
    ask_pin,
    card_refusal,
    console,
    emit_json,
    fail,
    json_option,
    print_table,
    progress,
    say,
    table,
)

if TYPE_CHECKING:
    from cardnet.host.client import AppClient

ANSWER_TIMEOUT_S = 30.0


def card_pin(pin: str | None) -> str:
    """The card's PIN: ``pin``, $CARDNET_PIN, or asked for (:func:`~cardnet.cli.output.ask_pin`)."""
    return ask_pin(pin)


def check_socket(socket: str) -> None:
    """Fail as an unreachable host when ``socket`` does not exist or is no socket (a folder, a file): before the PIN
    is asked for, not after."""
    if not os.path.exists(socket):
        fail(f"cannot reach the host at {socket}: No such file or directory", reason="no_host", hint=NO_HOST_HINT)
    if not stat.S_ISSOCK(os.stat(socket).st_mode):
        what = "a folder" if os.path.isdir(socket) else "a file"
        fail(f"cannot reach the host at {socket}: it is {what}, not a host's application socket", reason="no_host",
             hint="give the app_socket of the host's config (`cardnet host run` prints it in its ready line); "
             + NO_HOST_HINT)  # fmt: skip


NO_HOST_HINT = "is `cardnet host run` (or `cardnet authority run`) running with that app_socket?"


_NAME_CARD = "name the card with --card DOMAIN: one of the domains the host has (the message names them)"
# What to do when the host gives no port on the card (host.refused's code, the host's HostError reason).
OPENING_HINTS = {
    "no_card": _NAME_CARD,
    "no_port": _NAME_CARD,
    "store_failed": "free space on the disk that holds the card's store (the host's log names it), then repeat the "
    "command",
}


def run_on_card(
    socket: str,
    pin: str | None,
    work: Callable[[Any], Awaitable[Any]],
    card: bytes | None = None,
    *,
    login: bool = True,
) -> Any:
    """Connect to the host's socket (to ``card`` if given), verify the PIN unless ``login`` is off, run ``work``."""

    async def go() -> Any:
        app = await _connect(socket, card)
        async with app:
            if login:
                await verify_pin(app, card_pin(pin))
            return await work(app)

    return asyncio.run(go())


async def _connect(socket: str, card: bytes | None) -> AppClient:
    """An application's connection to the host at ``socket`` for ``card`` (its card if None); fail in words if the
    host does not answer or does not let an application use that card."""
    from cardnet.host.client import AppClient
    from cardnet.host.errors import HostError

    try:
        return await AppClient.connect(socket, card=card)
    except OSError as exc:
        fail(f"cannot reach the host at {socket}: {exc.strerror or exc}", reason="no_host", hint=NO_HOST_HINT)
    except HostError as exc:
        fail(str(exc), reason=exc.reason, hint=OPENING_HINTS.get(exc.reason, exc.hint))


async def _reach(socket: str, card: bytes | None) -> None:
    """Fail in words unless the host at ``socket`` answers and lets an application use ``card`` (its card if None):
    checked before a person is asked for the PIN, so that a stopped host or a mistyped --card is said first."""
    await (await _connect(socket, card)).aclose()


def run_on_wallet(
    socket: str,
    pin: str | None,
    card: str | None,
    work: Callable[[Any], Awaitable[Any]],
    hints: dict[str, str] | None = None,
    *,
    login: bool = True,
) -> Any:
    """Open the wallet library (:class:`~cardnet.services.wallet.Wallet`) on ``card`` at ``socket``, logged in
    with the PIN unless ``login`` is off, and run ``work`` on it; a refusal fails in its owner's words, with this
    command's hint for that reason if ``hints`` has one."""
    from cardnet.services.wallet import Wallet, WalletError

    domain = parse_domain(card)  # the arguments first, then the host: only then is the PIN asked for
    if login:
        check_socket(socket)
        if not (pin or os.environ.get("CARDNET_PIN")):  # (it will be asked for: a person waits for it)
            asyncio.run(_reach(socket, domain))
    code = card_pin(pin) if login else None

    async def go() -> Any:
        try:
            wallet = await Wallet.open(socket, pin=code, card=domain)
        except WalletError as exc:
            opening = {"no_host": NO_HOST_HINT, "wrong_pin": "check the PIN; at 0 tries the card locks"}
            opening.update(OPENING_HINTS)
            if exc.reason in opening:
                fail(str(exc), reason=exc.reason, hint=opening[exc.reason])
            message, refusal_hint = card_refusal(exc.reason, str(exc))
            fail(message, reason=exc.reason, hint=refusal_hint)
        try:
            async with wallet:
                return await work(wallet)
        except WalletError as exc:
            if exc.reason == "no_host":
                fail(str(exc), reason=exc.reason, hint="the host stopped: start it again and repeat the command")
            message, hint = card_refusal(exc.reason, str(exc))
            fail(message, reason=exc.reason, hint=(hints or {}).get(exc.reason, hint))
        except TimeoutError:
            fail("the card did not answer in time", reason="timeout", hint="is the host busy? try again")

    return asyncio.run(go())


async def verify_pin(app: Any, pin: str, *, hint: str = "check the PIN; at 0 tries the card locks") -> None:
    """Log ``app`` in to its card with ``pin``; a wrong PIN fails with ``wrong_pin`` and the tries left (the
    card counts the try: a person learns how many remain), a locked PIN with the card's refusal in words."""
    from cardnet.card import mtypes as cm

    await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=pin)
    r = await answer(app, cm.PIN_RESULT)
    if not r["ok"]:
        left = r["tries_left"]
        fail(f"wrong PIN: the card refused it ({left} {'try' if left == 1 else 'tries'} left)", reason="wrong_pin",
             hint=hint)  # fmt: skip


async def answer(app: Any, mtype: Any, hints: dict[str, str] | None = None) -> dict[str, Any]:
    """The card's answer of ``mtype`` (other messages are skipped); a refusal fails in its owner's words
    (:func:`~cardnet.cli.output.card_refusal`), with this command's hint for that reason if ``hints`` has one."""
    from cardnet.card import mtypes as cm
    from cardnet.host import mtypes as hm

    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        while True:
            msg = await app.recv()
            if msg.mtype == hm.UNDELIVERABLE.code and msg.src == app.uid.card_uid():
                why = hm.UNDELIVERABLE.parse(msg)["reason"]
                fail(f"the host could not give the order to the card: {why}", reason="undeliverable")
            if msg.mtype == cm.REFUSED.code:
                p = cm.REFUSED.parse(msg)
                message, hint = card_refusal(p["reason"], p["detail"])
                fail(message, reason=p["reason"], hint=(hints or {}).get(p["reason"], hint))
            if msg.mtype == mtype.code:
                return dict(mtype.parse(msg))


async def order(app: Any, mtype: Any, hints: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """Send ``mtype`` with ``fields`` to this app's card and return its result (``trn.result``)."""
    from cardnet.applets.trn import RESULT

    await app.send(app.uid.card_uid(), mtype, **fields)
    return await answer(app, RESULT, hints)


def run_order(
    socket: str, pin: str | None, card: str | None, mtype: Any, hints: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    """Log in to the card ``card`` at ``socket`` and give it one :func:`order`: its result."""
    result: dict[str, Any] = run_on_card(
        socket, pin, lambda app: order(app, mtype, hints, **fields), parse_domain(card)
    )
    return result


def given_as(text: str) -> str | None:
    """The option (or argument) of the running command that was given ``text``, as click names it in a usage error
    (``'--oid'``, ``'OID'``), so that an error about a value a function checks says which option it was."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    for param in ctx.command.params:
        value = ctx.params.get(param.name) if param.name is not None else None
        if value == text or (isinstance(value, tuple) and text in value):  # (a tuple: an option given repeatedly)
            return param.get_error_hint(ctx)
    return None


def hex16(text: str, what: str, *, example: str = "") -> bytes:
    """``text`` as 16 bytes of hex (an oid, an exchange id), or a usage error naming the option it was given to and
    ``what`` it must be (``example``: words after it, e.g. where one is shown)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        got = f"{len(text)} character{'' if len(text) == 1 else 's'}"
        raise click.BadParameter(f"{text!r} ({got}): {what} is 32 hex digits (16 bytes){example}",
                                 param_hint=given_as(text))  # fmt: skip
    return raw


def parse_oid(text: str) -> bytes:
    """A token's oid, or a usage error naming the option and saying what an oid looks like."""
    return hex16(text, "an oid", example=", e.g. 0123456789abcdef0123456789abcdef (`cardnet trn list` shows the "
                 "oids of a card's tokens)")  # fmt: skip


def cert_file_der(path: Path, option: str) -> bytes:
    """The certificate in the file ``path`` (PEM or DER) as DER, checked here: a file that holds none fails in the
    person's words, naming ``option``, before any card sees it."""
    from cardnet.crypto import pki
    from cardnet.crypto.errors import PkiError

    raw = path.read_bytes()
    try:
        return pki.cert_to_der(pki.cert_from_pem(raw) if raw.lstrip().startswith(b"-----") else pki.cert_from_der(raw))
    except PkiError:
        what = f"give {option} the card's certificate: `cardnet card show --store STORE --cert > FILE` writes it"
        fail(f"{path} is not a certificate (PEM or DER)", reason="bad_certificate", hint=what)


def parse_domain(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        raw = bytes.fromhex(text.split(":")[0])
    except ValueError:
        raw = b""
    if len(raw) != 12:
        raise click.BadParameter(f"{text!r}: a card domain is 24 hex digits (a card Uid <24 hex>:00000000 works too)",
                                 param_hint=given_as(text))  # fmt: skip
    return raw


def parse_uid(text: str) -> Any:
    from cardnet.wire import DecodeError, Uid

    try:
        return Uid.parse(text)
    except DecodeError as exc:
        raise click.BadParameter(str(exc), param_hint=given_as(text)) from None


SOCKET = click.option("--socket", required=True, help="The host's application socket (app_socket in its config).")
PIN = click.option("--pin", default=None, help="The card's PIN (default: $CARDNET_PIN, else asked for).")
CARD = click.option(
    "--card", "card", default=None, help="The card's domain (24 hex), needed when the host runs several cards."
)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def card_command(
    group: click.Group, name: str, *options: Decorator, pin: bool = True
) -> Callable[[Callable[..., Any]], click.Command]:
    """``group``'s command ``name``, run against a card through its host's socket: the options ``--socket``,
    ``--pin`` (unless ``pin`` is off), ``--card``, then ``options`` in order, then ``--json``."""
    stack = (SOCKET, *((PIN,) if pin else ()), CARD, *options, json_option)

    def wrap(f: Callable[..., Any]) -> click.Command:
        for option in reversed(stack):
            f = option(f)
        return group.command(name)(f)

    return wrap


def _ago(at: int | None) -> str:
    """``(N s ago)`` for a host time (the host process's clock is this machine's wall clock)."""
    if at is None:
        return ""
    return f" ({max(0, int(time.time()) - at)} s ago)"


def undeliverable_hint(oid: str, cancellable: bool) -> str:
    if cancellable:
        return f"check the receiver's Uid; `cardnet trn cancel --oid {oid}` takes the token back"
    return "the commit was sent: the transfer ends when the receiver answers; fix the route so it can"


async def send_token(wallet: Any, oid: bytes, dst: Any, *, traceable: bool = True) -> str:
    """Start moving token ``oid`` to card ``dst`` (the card's answer in words), after asking the host whether it
    can reach ``dst``: a Uid it cannot route fails (``no_route``) and the token stays where it is. A token that is
    being sent already fails in words that say to whom and what to do (the card would refuse it: ``illegal_move``).
    ``dst`` this very card (``own_card``), or an application's Uid (``usage``), fails before the card is asked."""
    if not dst.is_card:
        fail(f"{dst} is an application's Uid, not a card's: {oid.hex()} was not sent", reason="usage",
             hint="give the receiving card's Uid: its domain and :00000000 (its owner gives it)")  # fmt: skip
    if dst == wallet.card:
        fail(f"{dst} is this card itself: {oid.hex()} was not sent", reason="own_card",
             hint="give the receiving card's Uid (its owner gives it)")  # fmt: skip
    held = await wallet.voucher(oid)
    if held is not None and held.status in ("disabled+O", "disabled"):
        to = f" to {held.peer}" if held.peer is not None else ""
        if held.status == "disabled+O":
            words, hint = "waiting for the receiver's copy", (
                "wait for the receiver to take it (`cardnet trn list` shows how it goes), or take it back with "
                f"`cardnet trn cancel --oid {oid.hex()}` and send it again")  # fmt: skip
        else:
            words, hint = "this card has committed the transfer", (
                "wait: it is the receiver's once it acknowledges (`cardnet trn recover` finishes it)")  # fmt: skip
        fail(f"token {oid.hex()} is already being sent{to} ({words})", reason="illegal_move", hint=hint)
    if dst.is_card and dst.domain != wallet.card.domain:
        where = await wallet.route(dst.domain)
        if where["where"] == "none":
            fail(
                f"this host cannot reach {dst}: no card of domain {dst.domain.hex()} here and no route to it; "
                f"{oid.hex()} was not sent",
                reason="no_route",
                hint="check the Uid (`cardnet card show --store ...` on the receiver prints it), or add "
                f'"{dst.domain.hex()}" = "HOST:PORT" to [routes] in the host\'s config and restart it',
            )
    return str(await wallet.transfer(oid, dst, traceable=traceable))


@click.group()
def trn() -> None:
    """TRN tokens: mint (agents), send, list, cancel, recover, reissue, and which tokens to take (policy, offers,
    accept, reject): atomic, traceable transfers."""


@card_command(
    trn,
    "mint",
    click.option("--oid", required=True, help="32 hex digits, unique per token."),
    click.option("--body", required=True, help="The token's body (text), e.g. 'Olympic baseball, seat 12A'."),
)
def trn_mint(socket: str, pin: str | None, card: str | None, oid: str, body: str, as_json: bool) -> None:
    """Create a token on an agent's card (the card signs oid and body)."""
    raw = parse_oid(oid)
    taken = {"refused": "choose another --oid (each token's is unique: `cardnet trn list` shows this card's)"}
    run_on_wallet(socket, pin, card, lambda wallet: wallet.issue(raw, body.encode()), taken)  # (a refusal fails)
    then = f"`cardnet trn send --oid {oid} --to UID` gives it to another card"
    message = f"Minted token {oid} on this card: it is enabled here; {then}."
    say(as_json, {"oid": oid, "minted": True, "message": message}, message)


@card_command(
    trn,
    "send",
    click.option("--oid", required=True, help="The token to send (32 hex digits, as `cardnet trn list` shows it)."),
    click.option("--to", "to", required=True, help="The receiving card's Uid (<24 hex>:00000000)."),
    click.option("--untraceable", is_flag=True, help="Skip the trace at the authority (untraceable tokens)."),
    click.option("--wait", "wait", is_flag=True,
                 help="Wait until the transfer is complete: the receiving card has the token and this card has let "
                 "it go (or it came back, refused), showing how it goes."),
    click.option("--timeout", "timeout_s", type=FiniteRange(0.1, 3600), default=None,
                 help="With --wait: seconds to wait before giving up the wait (the transfer goes on)  [default: 30]; "
                 "with --gate: for the gate's answer, then the token is taken back  [default: 10]"),
    click.option("--gate", "gate", is_flag=True,
                 help="The receiver is a gate: present the token there as `cardnet wallet enter` does (wait for the "
                 "gate's answer) and write the admission to your wallet's own record (admissions.json beside the "
                 "wallet config `cardnet wallet` uses without --config, if it exists)."),
)  # fmt: skip
def trn_send(
    socket: str,
    pin: str | None,
    card: str | None,
    oid: str,
    to: str,
    untraceable: bool,
    wait: bool,
    timeout_s: float | None,
    gate: bool,
    as_json: bool,
) -> None:
    """Start moving a token to another card (two-phase commit; the host carries it).

    The host is asked first whether it can reach the receiver: a Uid that is neither a card of this host nor
    routed (`[routes]` in its config) is refused, and the token stays where it is. With --wait, the command
    returns once the transfer is complete.
    """
    if gate:
        _present(socket, pin, card, oid, to, untraceable, 10.0 if timeout_s is None else timeout_s, as_json)
        return
    if timeout_s is not None and not wait:
        fail("--timeout is how long --wait waits: give --wait too", reason="usage",
             hint=f"cardnet trn send --oid {oid} --to {to} --wait --timeout {timeout_s:g}")  # fmt: skip
    raw, dst = parse_oid(oid), parse_uid(to)

    async def work(wallet: Any) -> None:
        await send_token(wallet, raw, dst, traceable=not untraceable)  # (a refusal fails, with its reason)
        if wait:
            await wait_sent(wallet, raw, dst, DEFAULT_SEND_WAIT_S if timeout_s is None else timeout_s)

    run_on_wallet(socket, pin, card, work)
    # (untraceable is sticky: a token sent once untraceable is never traced again, so "for a traced token")
    trace = " (untraceable: the authority is not told)" if untraceable else (
        " and, for a traced token, the authority has recorded the move")  # fmt: skip
    if wait:
        done = (f"sent {oid} to {dst}: the receiving card has it and this card has let it go; it is usable there "
                + ("now" if untraceable else "once its authority has recorded the move (the receiving card asks "
                   "it; `cardnet authority chain --oid` on the authority's host shows it)"))  # fmt: skip
        say(as_json, {"oid": oid, "to": str(dst), "status": "sent", "message": done}, done)
        return
    then = "this card has committed the transfer" + trace
    sending = (f"Sending token {oid} to {dst}: this card has disabled it and is sending the receiver a copy; "
               f"it is enabled at the receiver once {then}.")  # fmt: skip
    if as_json:
        emit_json({"oid": oid, "to": str(dst), "status": "sending", "message": sending})
        return
    console.print(sending, markup=False)
    console.print("`cardnet trn list` shows how it goes; until the receiver has copied it, `cardnet trn cancel` "
                  "takes it back.", markup=False)  # fmt: skip


DEFAULT_SEND_WAIT_S = 30.0


def _present(
    socket: str, pin: str | None, card: str | None, oid: str, to: str, untraceable: bool, wait_s: float, as_json: bool
) -> None:
    """`trn send --gate`: the token presented at the gate ``to`` by the code of `cardnet wallet enter` (its answer
    awaited, the token taken back if none comes), the admission written to the wallet's own record beside the
    wallet config when there is one (a card cannot tell a gate from another card: the person says it)."""
    from cardnet.cli import wallet_config, wallet_gate

    if untraceable:
        fail("a gate takes traced tickets only (it reports every admission to the authority): --untraceable and "
             "--gate do not go together", reason="usage", hint="leave out --untraceable")  # fmt: skip
    raw, dst = parse_oid(oid), parse_uid(to)
    memory = wallet_config.admissions(wallet_config.load(None))
    got = run_on_wallet(socket, pin, card, lambda wallet: wallet_gate.enter(wallet, raw, dst, wait_s, memory))
    wallet_gate.report(got, raw, dst, as_json, memory)


async def wait_sent(wallet: Any, oid: bytes, dst: Any, timeout_s: float) -> None:
    """`trn send --wait`: wait (a progress line up) until token ``oid`` has left this card for ``dst``. A token that
    came back (the receiver refused it, or it was taken back), a receiver whose card cannot write its store, or
    the time running out, fails in words saying how the token stands and what to do; nothing is cancelled."""
    from cardnet.services.wallet import PEER_STORE_FAILED, WalletError

    with progress(f"sending {oid.hex()} to {dst}: waiting for the receiving card (up to {timeout_s:g} s) …"):
        try:
            v = await wallet.wait_moved(oid, timeout_s=timeout_s)
        except TimeoutError:
            v = await wallet.voucher(oid)
            if v is None:  # (it left in the last instant)
                return
            if v.status == "disabled+O":
                words = "the receiving card has not copied it yet (or its owner has not yet accepted the offer)"
                hint = (f"check that the receiver's host runs and that this host routes to it (`cardnet trn list` "
                        f"says if it is undeliverable); wait again with `cardnet trn list`, or take it back with "
                        f"`cardnet trn cancel --oid {oid.hex()}`")  # fmt: skip
            elif v.status == "disabled":
                words = "this card has committed it and waits for the receiving card's acknowledgement"
                hint = ("nothing to undo: it is the receiver's; it finishes by itself while both hosts run "
                        "(`cardnet trn recover` resends, `cardnet trn list` shows it)")  # fmt: skip
            else:
                words, hint = STATUS_WORDS.get(v.status, v.status), "`cardnet trn list` shows how it stands"
            fail(f"{oid.hex()} is not yet at {dst} after {timeout_s:g} s: {words}; the transfer goes on (nothing "
                 "was cancelled)", reason="timeout", hint=hint)  # fmt: skip
        except WalletError as exc:
            if exc.reason != PEER_STORE_FAILED:
                raise
            held = await wallet.voucher(oid)
            cancel = f"`cardnet trn cancel --oid {oid.hex()}` takes it back now, or " if (
                held is not None and held.status == "disabled+O") else ""  # fmt: skip
            fail(str(exc), reason=exc.reason, hint=f"{cancel}ask the receiver's owner to free space on the disk of "
                 "their card's host: the transfer then finishes by itself while both hosts run")  # fmt: skip
    if v is not None and v.status == "enabled":
        why = refusal_words(v.refused) if v.refused else "it was taken back (cancelled)"
        fail(f"{oid.hex()} came back to this card: {why}; it is enabled here again", reason="refused",
             hint="`cardnet trn list` shows it; check the receiver's Uid and what it takes (`cardnet trn policy` on "
             "the receiving card)")  # fmt: skip
    if v is not None:
        fail(
            f"{oid.hex()} is {STATUS_WORDS.get(v.status, v.status)}",
            reason="not_sent",
            hint="`cardnet trn list` shows how it stands",
        )
    return None


# What a status means for the card's owner, and what to do.
STATUS_WORDS = {
    "enabled": "yours: usable and movable",
    "disabled+O": "leaving: waiting for the receiver's copy (cancel possible)",
    "disabled": "leaving: committed, waiting for the receiver's acknowledgement",
    "trustless_disabled": "arriving: waiting for the sender's commit",
    "trustless": "arrived: waiting for the authority's trace",
    "offered": "offered to you: `cardnet trn accept` or `reject` it",
    "exchanging": "locked in an exchange: it goes, or is yours again, when it ends (`cardnet exchange list`)",
}


def _token(v: Any) -> dict[str, Any]:
    """A :class:`~cardnet.services.wallet.Voucher` as the rows below read it."""
    t: dict[str, Any] = {"oid": v.oid, "status": v.status}
    for name in ("peer", "body", "issuer", "refused"):
        if getattr(v, name) is not None:
            t[name] = getattr(v, name)
    return t


async def _tokens(wallet: Any) -> list[dict[str, Any]]:
    return [_token(v) for v in await wallet.vouchers()]


# Why the authority refused to record a copy's transfer (the kind its answer began with: trace.decide's words), in
# the receiving owner's words; the copy stays `trustless` on the card (docs/trn.md section 4), never usable.
TRACE_REFUSALS = (
    ("branch", "a second copy of a token that had already left its sender: that card was cloned or rolled back"),
    ("stale", "a copy of a transfer that had already happened once: the token moved on since"),
    ("revoked", "the token was replaced by a reissue: its agent reissued it to its last recorded holder"),
    ("blocked device", "the sender's card (or this one) is blocked by the authority"),
)


def trace_refused_words(oid: str, kind: str, sender: str) -> tuple[str, str]:
    """The state and the hint of a received copy of ``oid`` whose trace the authority refused (``kind``: its reason's
    kind)."""
    why = next((words for start, words in TRACE_REFUSALS if kind.startswith(start)), None)
    state = f"refused by the authority ({why or kind}): this copy is not usable, it cannot be sent, exchanged or shown "
    state += "at a gate"
    if why is not None:
        hint = (
            f"this copy will never become usable; take it up with whoever gave it to you ({sender}) or the "
            f"token's issuer (the authority's operator shows its moves with `cardnet authority trace {oid}`)"
        )
    else:
        hint = (
            f"ask the sender ({sender}) or the token's issuer why; once the authority's operator has mended the "
            "cause (a registered issuer, say), `cardnet trn recover` asks for the trace again"
        )
    return state, hint


async def token_rows(wallet: Any) -> list[dict[str, Any]]:
    """The tokens on the card as rows for people and scripts: oid, status, peer, body, ``state`` (the status in
    words) and, for a transfer stuck on an unreachable receiver, what the host reported and what to do."""
    rows = []
    routes: dict[bytes, dict[str, Any]] = {}
    for t in await _tokens(wallet):
        oid = t["oid"].hex()
        row = {"oid": oid, "status": t["status"], "peer": str(t.get("peer") or ""),
               "body": t.get("body", b"").decode("utf-8", "replace"),
               "state": STATUS_WORDS.get(t["status"], t["status"])}  # fmt: skip
        if "refused" in t and t["status"] == "trustless":  # the authority refused this copy's trace (section 4)
            row["refused"] = t["refused"]
            row["state"], row["hint"] = trace_refused_words(oid, t["refused"], str(t.get("peer") or "the sender"))
        elif "refused" in t:  # back after a refused transfer (docs/trn.md section 3.1)
            row["refused"] = t["refused"]
            row["state"] = f"{row['state']} (back: {refusal_words(t['refused'])})"
        peer = t.get("peer")
        if t["status"] in ("disabled+O", "disabled") and peer is not None:
            if peer.domain not in routes:
                routes[peer.domain] = await wallet.route(peer.domain)
            where = routes[peer.domain]
            problem = where.get("undeliverable")
            if where["where"] == "none" and problem is None:
                problem = f"no route to domain {peer.domain.hex()}"
            if problem is not None:
                row["undeliverable"] = problem + _ago(where.get("undeliverable_at"))
                row["state"] = "undeliverable: " + row["undeliverable"]
                row["hint"] = undeliverable_hint(oid, t["status"] == "disabled+O")
        rows.append(row)
    return rows


@card_command(trn, "list")
def trn_list(socket: str, pin: str | None, card: str | None, as_json: bool) -> None:
    """The tokens on the card with their status; a transfer stuck on an unreachable receiver says so."""
    rows = run_on_wallet(socket, pin, card, token_rows)
    if as_json:
        emit_json({"tokens": rows})
        return
    if not rows:
        console.print("no tokens on this card")
        return
    t = table("oid", "status", "peer", "body", "state", title="tokens on the card")
    for r in rows:
        t.add_row(r["oid"], r["status"], r["peer"], r["body"], r["state"])
    print_table(t)
    for r in rows:
        if "hint" in r:
            console.print(f"{r['oid']}: {r['hint']}", markup=False)


@card_command(trn, "cancel", click.option("--oid", required=True, help="The token being sent."))
def trn_cancel(socket: str, pin: str | None, card: str | None, oid: str, as_json: bool) -> None:
    """Take back a token being sent, while its transfer cannot have been committed (safe to repeat).

    Possible until the receiver's copy arrived and the card sent the commit; after that the transfer can only
    finish (the receiver may already hold the token), and this command says so.
    """
    from cardnet.services.wallet import WalletError

    raw = parse_oid(oid)

    async def work(wallet: Any) -> tuple[str, str]:
        held = {t["oid"]: t for t in await _tokens(wallet)}
        t = held.get(raw)
        if t is not None and t["status"] == "disabled+O":
            try:
                await wallet.cancel(raw)
            except WalletError:
                t = {t2["oid"]: t2 for t2 in await _tokens(wallet)}.get(raw)  # it moved on: say how it is now
            else:
                back = f"cancelled: {oid} is enabled again on this card (the receiver is told to drop its copy)"
                return "cancelled", back
        if t is None:
            fail(f"this card does not hold token {oid}", reason="not_held",
                 hint="`cardnet trn list` shows the tokens on this card (--card DOMAIN for another card)")  # fmt: skip
        status, peer = t["status"], str(t.get("peer") or "")
        if status == "enabled":
            return "enabled", f"{oid} is not being sent: it is enabled on this card, nothing to cancel"
        if status == "disabled":
            fail(
                f"too late to cancel {oid}: the receiver {peer} copied it and this card sent the commit, so the "
                "receiver may already hold it",
                reason="committed",
                hint="the transfer ends when the receiver answers (`cardnet trn recover` resends the commit); if "
                "that card is gone for good, the issuing agent can reissue the token (`cardnet trn reissue`)",
            )
        fail(
            f"{oid} is arriving on this card ({STATUS_WORDS.get(status, status)}): only its sender can cancel",
            reason="not_sender",
            hint="wait for the transfer to finish, or ask the sender to cancel it",
        )

    state, message = run_on_wallet(socket, pin, card, work)
    say(as_json, {"oid": oid, "state": state, "message": message}, message)


@card_command(
    trn,
    "reissue",
    click.option("--oid", required=True, help="The lost token's oid (it is revoked)."),
    click.option("--new-oid", default=None, help="32 hex digits for the new token (default: the card draws one)."),
    click.option("--body", default=None, help="The new token's body (default: the body the agent's card minted)."),
    click.option(
        "--timeout",
        "timeout_s",
        default=30.0,
        show_default=True,
        type=FiniteRange(0, 3600),
        help="Seconds to wait for the authority.",
    ),
)
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
    old = parse_oid(oid)
    new = None if new_oid is None else parse_oid(new_oid)
    hints = {
        "need_body": "check --oid (a mistyped oid is one this card never minted); for a token it minted and "
        "forgot, give the new token's body with --body",
        "no_authority": "run `cardnet trn set-authority` on the agent's card first",
        "wrong_usage": "run this against the issuing agent's card (--card DOMAIN if the host has several)",
    }

    async def work(wallet: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        state: dict[str, Any] = await wallet.reissue(old, new_oid=new, body=None if body is None else body.encode())
        polls = 0
        while state["state"] == "pending" and loop.time() < deadline:
            await asyncio.sleep(0.25)
            polls += 1
            if polls % 8 == 0:  # the host's timer resends too; this keeps a host without ticks moving
                await wallet.recover()
            # polling: the same old oid (and new oid, once known) reports the state
            state = await wallet.reissue(old, new_oid=state["new_oid"])
        return state

    state = run_on_wallet(socket, pin, card, work, hints)
    new_hex, holder = state["new_oid"].hex(), str(state.get("holder") or "")
    if state["state"] == "refused":
        fail(f"the authority refused to reissue {oid}: {state['reason']}", reason="refused",
             hint=_reissue_refused_hint(state["reason"]))  # fmt: skip
    if state["state"] == "pending":
        later = "the card keeps the request and resends it; repeat this command to see the outcome"
        fail(
            f"no answer from the authority within {timeout_s:g} s ({oid} -> {new_hex})",
            reason="pending",
            hint=later,
        )
    # (the card's note, "kept: ..." or "sent to ...", is in the sentence; the holder says which)
    message = f"reissued {oid} as {new_hex}: {state['reason']} ({holder})"
    say(as_json, {"oid": oid, "new_oid": new_hex, "state": state["state"], "holder": holder, "message": message},
        message)  # fmt: skip


# What to do when the authority refuses a reissue, by how its reason begins (trn.trace.decide_reissue words it).
REISSUE_REFUSED_HINTS = (
    ("unknown oid", "check --oid (a typo?): `cardnet authority chain --oid OID` on the authority's host shows what "
     "it recorded of a token"),
    ("not the issuer", "run it against the card of the agent that minted the token (--card DOMAIN)"),
    ("already revoked", "nothing left to do: the old oid is revoked (`cardnet authority chain --oid OID` shows it)"),
    ("new oid", "give another --new-oid, or none (the card draws one)"),
)  # fmt: skip


def _reissue_refused_hint(reason: str) -> str:
    default = "to try again once the cause is fixed, give another --new-oid"
    return next((hint for start, hint in REISSUE_REFUSED_HINTS if reason.startswith(start)), default)


@card_command(trn, "set-authority", click.option("--authority", required=True, help="The authority card's Uid."))
def trn_set_authority(socket: str, pin: str | None, card: str | None, authority: str, as_json: bool) -> None:
    """Tell the card which authority traces its tokens."""
    uid = parse_uid(authority)
    if not uid.is_card:
        raise click.BadParameter(f"{authority} is an application's Uid: give the authority card's, DOMAIN:00000000",
                                 param_hint="--authority")  # fmt: skip

    async def work(wallet: Any) -> None:
        # an authority this host cannot reach would leave every traced token it sends waiting: said before
        if uid.domain != wallet.card.domain and (await wallet.route(uid.domain))["where"] == "none":
            fail(f"this host cannot reach the authority {uid}: no card of domain {uid.domain.hex()} here and no route "
                 "to it; the card's authority was not changed", reason="no_route",
                 hint="check the authority's Uid (its operator gives it: `cardnet card show --store STORE` on the "
                 f'authority card prints it), or add "{uid.domain.hex()}" = "HOST:PORT" (the authority\'s host) to '
                 "[routes] in this host's config and restart it")  # fmt: skip
        await wallet.set_authority(uid)  # (a refusal fails, with its reason)

    run_on_wallet(socket, pin, card, work)
    message = f"the tokens on this card are now traced by {uid}"
    say(as_json, {"authority": str(uid), "message": message}, message)


@card_command(trn, "recover", pin=False)
def trn_recover(socket: str, card: str | None, as_json: bool) -> None:
    """Resend whatever transfers and traces are unfinished (safe to repeat; no PIN needed)."""

    async def work(wallet: Any) -> None:
        await wallet.recover()
        await asyncio.sleep(0.2)

    run_on_wallet(socket, None, card, work, login=False)
    say(as_json, {"recovery": "ordered"}, "recovery ordered")


# -- the owner refuses tokens: acceptance policy and offers (docs/trn.md section 3.1) -------------------------

# Why a receiving card refused a token (the reason in its copied=false), in the sender's owner's words.
REFUSAL_WORDS = {
    "refused_by_owner": "the receiver's owner refused it",
    "issuer_not_accepted": "the receiving card does not take tokens of this issuer",
    "already held": "the receiving card already holds this token",
    "out of memory": "the receiving card is full",
}


def refusal_words(reason: str) -> str:
    return REFUSAL_WORDS.get(reason, f"the receiving card refused it ({reason})")


@card_command(
    trn,
    "policy",
    click.option(
        "--issuer",
        "issuers",
        multiple=True,
        help="An agent card's Uid whose tokens this card takes (repeat for several; replaces the list).",
    ),
    click.option("--any-issuer", is_flag=True, help="Take tokens of any issuer (empties the list)."),
    click.option("--ask/--no-ask", default=None, help="Hold every incoming token until you accept or reject it."),
)
def trn_policy(
    socket: str, pin: str | None, card: str | None, issuers: tuple[str, ...], any_issuer: bool, ask: bool | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Show or set which incoming tokens this card takes (no option: show it)."""
    if issuers and any_issuer:
        raise click.BadParameter("give --issuer or --any-issuer, not both", param_hint="--any-issuer")
    taken = [parse_uid(u) for u in issuers] if issuers or any_issuer else None
    hints = {"bad_policy": "give agent cards' Uids (<24 hex>:00000000)"}
    r = run_on_wallet(socket, pin, card, lambda wallet: wallet.policy(issuers=taken, ask=ask), hints)
    shown = {"issuers": [str(u) for u in r["issuers"]], "ask": r["ask"]}
    if as_json:
        emit_json(shown)
        return
    takes = ", ".join(shown["issuers"]) if shown["issuers"] else "any issuer"
    console.print(f"this card takes tokens of: {takes}", markup=False)
    console.print("incoming tokens wait for `cardnet trn accept` or `cardnet trn reject`" if r["ask"]
                  else "incoming tokens are taken at once", markup=False)  # fmt: skip


@card_command(trn, "offers")
def trn_offers(socket: str, pin: str | None, card: str | None, as_json: bool) -> None:
    """Tokens offered to this card, waiting for you to accept or reject them (with `policy --ask`)."""

    async def work(wallet: Any) -> list[dict[str, Any]]:
        return [t for t in await _tokens(wallet) if t["status"] == "offered"]

    rows = []
    for t in run_on_wallet(socket, pin, card, work):
        frm, issuer = str(t.get("peer") or ""), str(t.get("issuer") or "")
        body = t.get("body", b"").decode("utf-8", "replace")
        rows.append({"oid": t["oid"].hex(), "from": frm, "issuer": issuer, "body": body})
    if as_json:
        emit_json({"offers": rows})
        return
    if not rows:
        console.print("no tokens offered to this card")
        return
    t = table("oid", "from", "issuer", "body", title="tokens offered to this card")
    for r in rows:
        t.add_row(r["oid"], r["from"], r["issuer"], r["body"])
    print_table(t)
    console.print("`cardnet trn accept --oid OID` takes one; `cardnet trn reject --oid OID` gives it back")


OFFERED_OID = click.option("--oid", required=True, help="The offered token (`cardnet trn offers`).")


def _answer_offer(socket: str, pin: str | None, card: str | None, oid: str, accept: bool, as_json: bool) -> None:
    hints = {"no_offer": "`cardnet trn offers` lists what waits for an answer"}
    raw = parse_oid(oid)
    run_on_wallet(socket, pin, card, lambda wallet: wallet.answer_offer(raw, accept=accept), hints)
    if accept:
        done = f"accepted {oid}: the transfer goes on; `cardnet trn list` shows it arrive"
    else:
        done = f"rejected {oid}: the sender's card takes it back"
    say(as_json, {"oid": oid, "answer": "accepted" if accept else "rejected", "message": done}, done)


@card_command(trn, "accept", OFFERED_OID)
def trn_accept(socket: str, pin: str | None, card: str | None, oid: str, as_json: bool) -> None:
    """Take a token offered to this card."""
    _answer_offer(socket, pin, card, oid, True, as_json)


@card_command(trn, "reject", OFFERED_OID)
def trn_reject(socket: str, pin: str | None, card: str | None, oid: str, as_json: bool) -> None:
    """Refuse a token offered to this card: it goes back to its sender, enabled."""
    _answer_offer(socket, pin, card, oid, False, as_json)
