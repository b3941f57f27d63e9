"""``cardnet gate``: run a gate (admits each ticket once, keeps it) and operate it (docs/gate.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import FiniteRange, console, emit_json, fail, json_option, print_table, table
from cardnet.cli.trn import card_command, cert_file_der, parse_uid, run_on_wallet

# What the gate decided, for the operator's screen: the word, and what it means.
VERDICT_WORDS = {
    "pending": ("WAIT", "asking the authority"),
    "admitted": ("ADMITTED", "traced by the authority"),
    "admitted_offline": ("ADMITTED", "offline: the authority did not answer in time; the report is sent when it does"),
    "refused": ("REFUSED", ""),
}
# Why a presentation was refused, in the operator's words.
REFUSAL_WORDS = {
    "already_admitted": "this ticket was already admitted at this gate (a copy: a cloned card?)",
    "refused_before": "this ticket was refused here before (the authority disowned it)",
    "issuer_not_accepted": "not a ticket of this gate's issuers",
    "forged": "the issuer's signature does not verify (a forged or altered ticket)",
    "untraceable": "an untraceable ticket (the gate reports every admission)",
    "blocked_device": "the presenting device is on the authority's blocklist",
    "wrong_event": "a ticket of another event than this gate's (`cardnet gate setup --event`)",
    "out of memory": "this gate's card is full: prune the admissions of past events (`cardnet gate prune --before "
    "DAYS`), or give it a larger capacity_bytes in its host config (docs/gate.md: about 600 bytes a ticket) and "
    "restart the gate",
}

DEFAULT_LIMIT = 100  # admissions `gate admissions` shows unless told


def refusal_words(reason: str) -> str:
    code, _, rest = reason.partition(":")
    words = REFUSAL_WORDS.get(code)
    if words is None:
        return reason
    return words + (f" ({rest.strip()})" if rest.strip() else "")


def ticket_words(body: bytes) -> str:
    """A ticket's body for the operator's screen: a ticketing server's ticket (JSON with event and seat) as
    ``event seat`` (its PaymentOrderID, which opens the sale's page at the server, is left out); any other as is."""
    try:
        got = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        got = None
    if isinstance(got, dict) and isinstance(got.get("event"), str) and isinstance(got.get("seat"), str):
        return f"{got['event']} {got['seat']}"
    return body.decode("utf-8", "replace")


def event_line(e: Any) -> str:
    """One line for a person watching the gate: the time it is shown, verdict, ticket, holder, why."""
    clock = time.strftime("%H:%M:%S")
    oid = e.oid.hex() if e.oid is not None else "-" * 32
    body = f' "{ticket_words(e.body)}"' if e.body else ""
    who = f"from {e.holder}"
    if e.kind == "refused":
        return f"{clock} REFUSED  {oid}{body} {who}: {refusal_words(e.reason)}; the ticket stays with its holder"
    if e.kind == "report":
        if e.report == "traced":
            return f"{clock} REPORTED {oid}{body} {who}: the authority recorded this offline admission"
        return (f"{clock} FLAGGED  {oid}{body} {who}: the authority disowned this offline admission: "
                f"{e.report_reason}")  # fmt: skip
    word, meaning = VERDICT_WORDS.get(e.verdict, (e.verdict.upper(), ""))
    if e.verdict == "refused":
        meaning = f"{e.reason}; the ticket is kept by the gate (consumed)"
    return f"{clock} {word:<8} {oid}{body} {who}: {meaning}"


def status_line(status: Any) -> str:
    """One line for a person watching the gate when it closes (its card cannot write its store) or opens again."""
    word = "CLOSED" if status.state == "closed" else "OPEN"
    hint = f": {status.hint}" if status.hint else ""
    return f"{time.strftime('%H:%M:%S')} {word:<8} {status.message}{hint}"


@click.group()
def gate() -> None:
    """A gate: admits each ticket once (it is transferred to the gate's card and consumed there), refuses copies,
    revoked tickets and blocked devices, and keeps admitting while the authority is unreachable.

    \b
    Set up:   cardnet gate setup --socket S --issuer-cert agent.pem --authority UID
    Run:      CARDNET_PIN=... cardnet gate run --config gate.toml
    Look:     cardnet gate status --socket S;  cardnet gate admissions --socket S
    Free:     cardnet gate prune --socket S --before 30   (the admissions of 30 days ago and older)
    A holder presents a ticket by sending it to the gate's card: cardnet wallet enter OID --gate GATE_UID
    """


@gate.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The gate host's config (docs/host.md): one card with applets = [\"gate\"].")  # fmt: skip
@click.option("--refresh", "refresh_s", default=10.0, show_default=True, type=FiniteRange(min=0.05),
              help="Seconds between fetches of the authority's newest blocklist (a new session with it).")  # fmt: skip
@json_option
def gate_run(config_path: Path, refresh_s: float, as_json: bool) -> None:
    """Run the gate's host and show every admission and refusal as it happens (one line each; --json: JSON lines).

    The operator PIN of the gate card comes from $CARDNET_PIN and is checked before `ready`. Admissions are
    recorded on the gate card (durable); `cardnet gate admissions` lists them.
    """
    from cardnet.cli.host import run_host_service
    from cardnet.host.config import load_config
    from cardnet.services.gate import GateService

    pin = os.environ.get("CARDNET_PIN")
    if not pin:
        fail("set CARDNET_PIN to the gate card's PIN", reason="no_pin", hint="the gate logs in to its own card with it")
    config = load_config(config_path)
    gates = [c for c in config.cards if "gate" in c.applets]
    if len(gates) != 1:
        fail(f"the config needs exactly one card with the `gate` applet, found {len(gates)}", reason="bad_config",
             hint='add applets = ["gate"] to the gate card\'s [[cards]] section')  # fmt: skip
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def show(event: Any) -> None:
        if as_json:
            emit_json({"event": event.as_dict()}, line=True)
        else:
            console.print(event_line(event), markup=False, highlight=False)
            console.file.flush()

    def show_status(status: Any) -> None:  # the gate closes (its card cannot write its store) or opens again
        if as_json:
            emit_json({"status": status.as_dict()}, line=True)
        else:
            console.print(status_line(status), markup=False, highlight=False)
            console.file.flush()

    def service(domain: bytes) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
        return GateService(str(config.app_socket), pin, show, card=domain, refresh_s=refresh_s,
                           on_status=show_status).run  # fmt: skip

    run_host_service(config, applet="gate", pin=pin,
                     pin_hint="set CARDNET_PIN to the gate card's PIN; at 0 tries it locks", service=service,
                     failed=("the gate service stopped", "gate_failed"),
                     ready_extra=lambda domain: ("gate", f"{domain.hex()}:00000000"), as_json=as_json)  # fmt: skip


def _gate_socket(socket: str) -> str:
    """``socket``, or fail in the gate operator's words when nothing listens there (the gate is not running)."""
    if not os.path.exists(socket):
        fail(f"cannot reach the gate's host at {socket}: no such socket", reason="no_host",
             hint="start the gate first: `cardnet gate run --config GATE.toml` (its app_socket)")  # fmt: skip
    return socket


def _state_dict(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "issuers": [str(u) for u in s["issuers"]], "wait_s": s["wait_ms"] / 1000, "strict": s["strict"],
        "authority": str(s["authority"]) if "authority" in s else None, "blocklist_epoch": s["epoch"],
        "blocklist_at": s.get("blocklist_at"), "admitted": s["admitted"], "pending": s["pending"],
        "reports_waiting": s["reports_waiting"], "disowned": s["disowned"], "refused": s["refused"],
        "pruned": s.get("pruned", 0), "admissions": s.get("admissions"), "events": list(s.get("events", [])),
    }  # fmt: skip


def _print_state(d: dict[str, Any]) -> None:
    age = "" if d["blocklist_at"] is None else f", signed {max(0, int(time.time()) - d['blocklist_at'])} s ago"
    lines = [
        f"issuers: {', '.join(d['issuers']) or 'none (set them: cardnet gate setup --issuer-cert FILE)'}",
        "events: " + (", ".join(d["events"]) or "any of its issuers' (name them: cardnet gate setup --event ID)"),
        f"authority: {d['authority'] or 'none (set it: cardnet gate setup --authority UID)'}",
        f"blocklist: epoch {d['blocklist_epoch']}{age}" if d["blocklist_epoch"] else "blocklist: none yet",
        f"wait for the authority: {d['wait_s']:g} s, then "
        + ("refuse (strict)" if d["strict"] else "admit on the gate's own checks (offline)"),
        f"admitted: {d['admitted']} ({d['reports_waiting']} not yet reported to the authority, {d['disowned']} "
        f"disowned by it); waiting now: {d['pending']}; refused presentations: {d['refused']}",
    ]
    if d["pruned"]:
        lines.append(f"pruned: {d['pruned']} of those admissions (only their verdict and time are kept)")
    for line in lines:
        console.print(line, markup=False, highlight=False)


@card_command(
    gate,
    "setup",
    click.option(
        "--issuer-cert",
        "issuer_certs",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="An agent card's certificate (PEM or DER) whose tickets this gate admits; repeat for several "
        "(replaces the list).",
    ),
    click.option(
        "--event",
        "events",
        multiple=True,
        help="An event whose tickets this gate admits (its id, as the ticketing server's page and the ticket name "
        "it); repeat for several (replaces the list). A ticket of another event of the same issuer is refused.",
    ),
    click.option("--any-event", is_flag=True, help="Admit the tickets of every event of the issuers (the default)."),
    click.option("--authority", default=None, help="The authority card's Uid: admissions are reported to it."),
    click.option(
        "--wait",
        "wait_s",
        default=None,
        type=FiniteRange(0, 60),
        help="Seconds a person waits for the authority's answer before the gate decides alone.",
    ),
    click.option(
        "--strict/--offline-ok",
        default=None,
        help="When the authority does not answer in time: refuse (strict) or admit on the gate's own checks "
        "(the default).",
    ),
)
def gate_setup(
    socket: str, pin: str | None, card: str | None, issuer_certs: tuple[Path, ...], events: tuple[str, ...],
    any_event: bool, authority: str | None, wait_s: float | None, strict: bool | None, as_json: bool,
) -> None:  # fmt: skip
    """Set which issuers' tickets the gate admits (of which events), its authority, and the offline rule (no
    option: show them)."""
    from cardnet.applets.gate import SETUP, STATE
    from cardnet.protocols.gate import MAX_EVENT_ID, MAX_EVENTS

    fields: dict[str, Any] = {}
    if issuer_certs:
        fields["issuers"] = [cert_file_der(p, "--issuer-cert") for p in issuer_certs]
    if events and any_event:
        fail("give --event or --any-event, not both", reason="bad_option",
             hint="--event ID admits that event's tickets alone; --any-event every event of the issuers")  # fmt: skip
    bad = [e for e in events if not 1 <= len(e) <= MAX_EVENT_ID or not e.isprintable() or e != e.strip()]
    if bad or len(set(events)) > MAX_EVENTS:
        fail(f"not an event id: {bad[0]!r}" if bad else f"a gate admits at most {MAX_EVENTS} events",
             reason="bad_option", hint=f"an event's id is 1..{MAX_EVENT_ID} characters, as the ticketing server's "
             "page shows it (e.g. final)")  # fmt: skip
    if events or any_event:
        fields["events"] = list(dict.fromkeys(events))
    if wait_s is not None:
        fields["wait_ms"] = round(wait_s * 1000)
    if strict is not None:
        fields["strict"] = strict
    auth = None if authority is None else parse_uid(authority)
    hints = {"bad_issuer": "give the agent card's certificate: `cardnet card show --store sqlite:///AGENT.card.db "
             "--cert > AGENT.pem` writes it (while no host runs that card)"}  # fmt: skip

    async def work(wallet: Any) -> dict[str, Any]:
        if auth is not None:
            await wallet.set_authority(auth)
        state: dict[str, Any] = await wallet.ask(SETUP, STATE, **fields)
        return state

    d = _state_dict(run_on_wallet(_gate_socket(socket), pin, card, work, hints))
    if as_json:
        emit_json(d)
    else:
        _print_state(d)


@card_command(gate, "status")
def gate_status(socket: str, pin: str | None, card: str | None, as_json: bool) -> None:
    """How the gate stands: issuers, authority, blocklist, admissions and reports not yet answered."""
    from cardnet.applets.gate import SETUP, STATE

    d = _state_dict(run_on_wallet(_gate_socket(socket), pin, card, lambda wallet: wallet.ask(SETUP, STATE)))
    if as_json:
        emit_json(d)
    else:
        _print_state(d)


@card_command(
    gate,
    "admissions",
    click.option(
        "--pruned",
        "with_pruned",
        is_flag=True,
        help="List the pruned admissions too (their time, verdict and report: the rest was dropped).",
    ),
    click.option("--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(min=0),
                 help="Show at most this many admissions (0: all of them; a gate of months holds many)."),
    click.option("--after", "after", default=None, metavar="OID",
                 help="Start after this oid (the next page: the command prints the OID to give)."),
)  # fmt: skip
def gate_admissions(
    socket: str, pin: str | None, card: str | None, with_pruned: bool, limit: int, after: str | None, as_json: bool
) -> None:
    """The tickets the gate took, by oid, a page at a time: when, from which device, the verdict and the authority's
    answer to its report, and how many the gate holds in all.

    Admissions pruned by `cardnet gate prune` are left out (counted at the end) unless --pruned.
    """
    from cardnet.applets.gate import ADMISSIONS, LIST, SETUP, STATE

    start = _oid(after) if after is not None else None

    async def work(wallet: Any) -> tuple[list[dict[str, Any]], bytes | None, dict[str, Any]]:
        items: list[dict[str, Any]] = []
        fields: dict[str, Any] = {"pruned": True} if with_pruned else {}
        cursor = start
        while True:
            page = await wallet.ask(LIST, ADMISSIONS, **fields, **({} if cursor is None else {"after": cursor}))
            items += page["items"]
            cursor = page.get("next") if page["more"] else None
            if cursor is None or (limit and len(items) >= limit):
                break
        if limit and len(items) > limit:
            items, cursor = items[:limit], items[limit - 1]["oid"]
        state: dict[str, Any] = await wallet.ask(SETUP, STATE)
        return items, cursor, state

    items, cursor, state = run_on_wallet(_gate_socket(socket), pin, card, work)
    pruned = state.get("pruned", 0)
    total = state.get("admissions", 0) - (0 if with_pruned else pruned)
    rows = []
    for it in items:
        rows.append({
            "oid": it["oid"].hex(), "holder": str(it["from"]) if "from" in it else None, "at_ms": it["at_ms"],
            "verdict": it["verdict"], "reason": it["reason"], "report": it.get("report"),
            "report_reason": it.get("report_reason"), "body": it.get("body", b"").decode("utf-8", "replace"),
            "pruned": it.get("pruned", False),
        })  # fmt: skip
    rows.sort(key=lambda r: r["at_ms"])
    nxt = None if cursor is None else cursor.hex()
    if as_json:
        emit_json({"admissions": rows, "pruned": pruned, "total": total, "next": nxt})
        return
    notes = []
    if nxt is not None:
        notes.append(f"{len(rows)} of {total} admission(s) shown; the next ones: --after {nxt}")
    if pruned and not with_pruned:
        notes.append(f"{pruned} pruned admission(s) not shown (--pruned lists them)")
    if not rows:
        console.print("\n".join(notes) or "no ticket taken at this gate yet", markup=False, highlight=False)
        return
    t = table("time", "oid", "body", "holder", "verdict", "report", title="tickets taken at this gate")
    for r in rows:
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at_ms"] / 1000))
        report = (r["report"] or "") + (f": {r['report_reason']}" if r["report_reason"] else "")
        body = "(pruned)" if r["pruned"] else r["body"]
        t.add_row(clock, r["oid"], body, r["holder"] or "-", r["verdict"], report)
    print_table(t)
    for note in notes:
        console.print(note, markup=False, highlight=False)


def _oid(text: str) -> bytes:
    try:
        oid = bytes.fromhex(text)
    except ValueError:
        oid = b""
    if len(oid) != 16:
        fail(f"--after {text!r} is not an oid", reason="bad_oid",
             hint="give the 32 hex digits the last page ended with (its `--after OID` line)")  # fmt: skip
    return oid


MAX_PRUNE_ORDERS = 100_000  # gate.prune orders one command sends (each prunes at most PRUNE_BATCH admissions)
BEFORE_HINT = "give a number of days ago (--before 30; 0: now) or a local date (--before 2026-11-01, 2026-11-01T18:00)"


def parse_before(text: str, now_s: float) -> int:
    """``--before``: a number of days before ``now_s`` ("30", "0.5") or an ISO date or date-time (local time unless
    it names its offset), as host time in milliseconds; a negative number, nonsense or the future fails in words."""
    try:
        days = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            fail(f"--before {text!r} is neither a number of days nor a date", reason="bad_before", hint=BEFORE_HINT)
        before_ms = int(when.timestamp() * 1000)  # (a date without an offset is local time)
    else:
        if not math.isfinite(days) or days < 0:
            fail(f"--before {text}: the number of days ago must be 0 or more", reason="bad_before", hint=BEFORE_HINT)
        before_ms = int((now_s - days * 86400) * 1000)
    if before_ms > now_s * 1000:
        fail(f"--before {text} is in the future", reason="bad_before",
             hint="an admission is pruned once it is over; " + BEFORE_HINT)  # fmt: skip
    return max(0, before_ms)


@card_command(
    gate,
    "prune",
    click.option(
        "--before",
        "before",
        required=True,
        metavar="DAYS-or-DATE",
        help="Prune the admissions taken before this: a number of days ago (30; 0: now) or a date or date-time, "
        "local time (2026-11-01, 2026-11-01T18:00).",
    ),
)
def gate_prune(socket: str, pin: str | None, card: str | None, before: str, as_json: bool) -> None:
    """Free the gate card's memory: drop the tickets of final admissions taken before --before.

    \b
    An admission is final once it was decided and the authority answered its report (traced or disowned). For
    each one the gate card drops the ticket and the details and keeps a 9-byte marker (its time, verdict and
    report): a second copy of the oid is still refused, offline too. Admissions waiting for the authority are
    kept (prune again once `cardnet gate status` shows no report waiting). Idle sessions with holders' cards
    opened before that time end too (a card that comes back handshakes again).
    """
    from cardnet.applets.gate import PRUNE, PRUNED

    before_ms = parse_before(before, time.time())

    async def work(wallet: Any) -> dict[str, int]:
        total = {"pruned": 0, "freed_bytes": 0, "sessions": 0, "kept": 0, "refusals": 0}
        for _ in range(MAX_PRUNE_ORDERS):
            got = await wallet.ask(PRUNE, PRUNED, before_ms=before_ms)
            for k in ("pruned", "freed_bytes", "sessions", "refusals"):
                total[k] += got.get(k, 0)
            total["kept"] = got["kept"]
            if not got["more"]:  # (more: the order did a full batch of work)
                break
        return total

    hints = {"no_applet": "is this the gate's card? `cardnet gate status --socket S` shows it; name it with --card"}
    d: dict[str, Any] = {"before_ms": before_ms, **run_on_wallet(_gate_socket(socket), pin, card, work, hints)}
    if as_json:
        emit_json(d)
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before_ms / 1000))
    if d["pruned"]:
        console.print(
            f"pruned {d['pruned']} admission(s) taken before {when}: their tickets are dropped, a copy is still "
            f"refused; freed {d['freed_bytes']} bytes of the gate card"
            + (f" ({d['sessions']} idle session(s) ended)" if d["sessions"] else ""),
            markup=False, highlight=False,
        )  # fmt: skip
    elif d["sessions"] or d["refusals"]:
        console.print(f"no admission to prune before {when}; {d['sessions']} idle session(s) ended, "
                      f"{d['freed_bytes']} bytes freed", markup=False, highlight=False)  # fmt: skip
    else:
        console.print(f"nothing to prune before {when}", markup=False, highlight=False)
    if d["refusals"]:
        console.print(f"forgot {d['refusals']} refused presentation(s) of cards whose session ended (a card that "
                      "presents again is judged afresh)", markup=False, highlight=False)  # fmt: skip
    if d["kept"]:
        console.print(
            f"kept {d['kept']} admission(s) from before then that are not final yet (the authority has not answered "
            "their reports): prune again once `cardnet gate status` shows no report waiting",
            markup=False, highlight=False,
        )  # fmt: skip
