"""Walking through a gate from ``cardnet wallet enter``: the ticket presented with ``Wallet.redeem``, and the
gate's answer in the words of the person holding the ticket (the operator's words are in :mod:`cardnet.cli.gate`).
"""

from __future__ import annotations

from typing import Any

from cardnet.cli.output import err_console, fail, progress, say
from cardnet.cli.wallet import usable_ticket
from cardnet.services.admissions import AdmissionMemory
from cardnet.services.wallet import TAKEN, WalletError

# Why a gate refused a ticket (docs/gate.md), for the person at the gate: what happened, and what to do. The
# ticket stays on their card in every case.
REFUSALS: dict[str, tuple[str, str]] = {
    "already_admitted": (
        "this ticket was already used at this gate: a copy of it went in before",
        "if you did not go in with it, your card or its ticket was copied: show this to the gate's staff or the "
        "ticket office (the ticket's issuer can reissue a lost ticket)",
    ),
    "refused_before": (
        "this gate refused this ticket before: the authority disowned it",
        "ask the ticket office: the ticket may have been revoked or reissued",
    ),
    "issuer_not_accepted": (
        "this gate does not take tickets of this ticket's issuer",
        "check that this is the gate of your event (`cardnet wallet show OID` shows the ticket)",
    ),
    "wrong_event": (
        "this gate admits another event's tickets: your ticket is for the event in parentheses",
        "go to the gate of your ticket's event (`cardnet wallet show OID` shows the ticket); it stays on your card",
    ),
    "forged": (
        "the issuer's signature on this ticket does not verify: it is forged or altered",
        "ask the ticket office where you bought it",
    ),
    "untraceable": (
        "this ticket travels untraced, and the gate reports every admission to the authority",
        "ask the ticket office for a traced ticket",
    ),
    "blocked_device": (
        "your card is on the authority's blocklist",
        "ask the ticket office: a card is blocked when the authority saw a ticket spent twice from it",
    ),
    "gate_store_failed": (
        "the gate's card cannot write its store (its disk is full or failing), so it could not take your ticket",
        "tell the gate's staff; your ticket stays on your card: present it again once they have mended the gate",
    ),
    "out of memory": (
        "the gate's card is full and cannot take more tickets",
        "tell the gate's staff (the gate needs more capacity); your ticket stays on your card",
    ),
}


def refusal(reason: str) -> tuple[str, str | None]:
    """A gate's refusal ``reason`` (``code`` or ``code: detail``) in the holder's words, and what to do."""
    code, _, detail = reason.partition(":")
    words, hint = REFUSALS.get(code.strip(), (f"the gate refused it ({reason})", None))
    if detail.strip() and code.strip() in REFUSALS:
        words += f" ({detail.strip()})"
    return words, hint


async def enter(wallet: Any, oid: bytes, gate: Any, wait_s: float, memory: AdmissionMemory | None = None) -> Any:
    """Present ticket ``oid`` at ``gate`` (its card's Uid) and wait up to ``wait_s`` for its answer: the
    :class:`~cardnet.services.wallet.Redemption`, the admission written to ``memory`` (the wallet's own record).
    A ticket this card cannot present (one ``memory`` shows admitted: said so), or a gate its host cannot reach,
    fails in words before anything moves."""
    await usable_ticket(wallet, oid, "presented", memory)
    route = None if gate.domain == wallet.card.domain else await wallet.route(gate.domain)
    if route is not None and route["where"] == "none":
        fail(f"this host cannot reach the gate {gate}: no route to its domain {gate.domain.hex()}; the ticket "
             "stays on your card", reason="no_route",
             hint=f"check the gate's Uid (the gate's sign or staff give it: a mistyped one has no route), or add "
             f'"{gate.domain.hex()}" = "HOST:PORT" (the gate\'s address) to [routes] in your host.toml and restart '
             "your host")  # fmt: skip
    try:
        with progress(f"presenting {oid.hex()} at the gate {gate} (up to {wait_s:g} s) …"):
            return await wallet.redeem(oid, gate, timeout_s=wait_s, memory=memory)
    except WalletError as exc:
        if exc.reason != "no_answer":
            raise
        fail(str(exc), reason=exc.reason, hint=no_answer_hint(gate, route))


def no_answer_hint(gate: Any, route: dict[str, Any] | None) -> str:
    """What to do when the gate ``gate`` did not answer: which gate, where this host sends to it (``route``, the
    host's ``host.route_is``; None: a card of this host), and what to check (the web wallet's words too)."""
    if route is None:
        where = "a card of your own host"
    else:
        where = f"your host sends to it at {route.get('address') or '?'} ([routes] in your host.toml)"
        if route.get("undeliverable"):
            where += f", and could not deliver there lately: {route['undeliverable']}"
    return (
        f"is the gate {gate} running ({where})? check the gate's Uid and address with the gate's staff, then "
        "present the ticket again; a card on the authority's blocklist gets no answer either"
    )


def report(got: Any, oid: bytes, gate: Any, as_json: bool, memory: AdmissionMemory | None) -> None:
    """What a presentation at ``gate`` came to (a :class:`~cardnet.services.wallet.Redemption`), for `cardnet wallet
    enter` and `cardnet trn send --gate`: admitted, and whether the wallet's own record (``memory``, None: the
    wallet keeps none) has it, or the gate's refusal in the holder's words."""
    if not got.taken:
        words, hint = refusal(got.reason)
        fail(f"the gate {gate} refused ticket {oid.hex()}: {words}; the ticket is still on your card",
             reason=got.reason.partition(":")[0].strip() or "refused", hint=hint)  # fmt: skip
    # (the admission stands either way: only the wallet's own record of it may be missing)
    if memory is None:
        note: str | None = ("this wallet keeps no record of its admissions (no wallet config: `cardnet wallet init` "
                            "makes one); the gate's admissions are the proof")  # fmt: skip
    elif got.unremembered is not None:
        note = f"this admission is not in your wallet's record: {got.unremembered}"
    else:
        note = None
    message = f"admitted: the gate {gate} took ticket {oid.hex()} (it is used up now: walk in)"
    # (the verdict is the wallet's record's word: the gate's acknowledgement came, or was still on its way)
    verdict = "admitted" if got.reason == TAKEN else "admitted_unacknowledged"
    if note is not None and not as_json:
        err_console.print(f"note: {note}", markup=False)
    result = {"oid": oid.hex(), "gate": str(gate), "admitted": True, "verdict": verdict, "recorded": note is None,
              "record_note": note, "message": message}  # fmt: skip
    say(as_json, result, message)
