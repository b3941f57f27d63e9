"""What the gate operator reads: one line per event from ``cardnet gate run`` (human output), and its JSON."""

from __future__ import annotations

from cardnet.cli.gate import event_line, status_line
from cardnet.cli.wallet_gate import refusal
from cardnet.services.gate import OPEN, GateEvent, closed_status
from cardnet.wire import Uid

HOLDER = Uid.card(bytes.fromhex("0123456789abcdef01234567"))
OID = bytes(range(16))


def line(**fields: object) -> str:
    base: dict[str, object] = {"from": HOLDER, "at_ms": 0, "verdict": "admitted", "reason": "", "oid": OID}
    return event_line(GateEvent.of(base | fields))


def test_each_outcome_says_what_happened_and_why() -> None:
    assert "ADMITTED" in line(kind="verdict", body=b"seat 7") and '"seat 7"' in line(kind="verdict", body=b"seat 7")
    offline = line(kind="verdict", verdict="admitted_offline", report="waiting")
    assert "ADMITTED" in offline and "offline" in offline
    refused = line(kind="refused", verdict="refused", reason="already_admitted")
    assert "REFUSED" in refused and "already admitted at this gate" in refused and "stays with its holder" in refused
    blocked = line(kind="refused", verdict="refused", reason="blocked_device: device x is blocked", oid=None)
    assert "on the authority's blocklist" in blocked and "device x is blocked" in blocked
    revoked = line(kind="verdict", verdict="refused", reason="revoked: this token was replaced by a reissue")
    assert "REFUSED" in revoked and "revoked" in revoked and "kept by the gate" in revoked
    flagged = line(kind="report", verdict="admitted_offline", report="disowned", report_reason="branch: ...")
    assert "FLAGGED" in flagged and "branch" in flagged
    assert "REPORTED" in line(kind="report", verdict="admitted_offline", report="traced")
    assert str(HOLDER) in refused and OID.hex() in refused
    full = line(kind="refused", verdict="refused", reason="out of memory")
    assert "card is full" in full and "capacity_bytes" in full and "stays with its holder" in full


def test_a_ticketing_servers_ticket_shows_its_event_and_seat_not_its_sale() -> None:
    """The ticketing server's ticket body is JSON with the sale's PaymentOrderID (80 hex), which opens the sale's page
    at the server (the buyer's card, the seat): the screen shows "final A2" instead of the whole body."""
    poid = "40bc47af" * 10
    shown = line(kind="verdict", body=b'{"event": "final", "seat": "A2", "poid": "' + poid.encode() + b'"}')
    assert '"final A2"' in shown and poid not in shown
    assert '"2 drinks"' in line(kind="verdict", body=b"2 drinks")


def test_a_holder_turned_away_by_a_full_gate_is_told_what_to_do() -> None:
    words, hint = refusal("out of memory")
    assert "full" in words and hint is not None and "stays on your card" in hint


def test_a_ticket_of_another_event_is_turned_away_saying_which_and_where_to_go() -> None:
    words, hint = refusal("wrong_event: youth")
    assert words.startswith("this gate admits another event's tickets") and words.endswith("(youth)")
    assert hint is not None and "gate of your ticket's event" in hint


def test_json_form_is_plain_text() -> None:
    item = {"from": HOLDER, "at_ms": 5, "verdict": "refused", "reason": "forged", "kind": "refused"}
    d = GateEvent.of(item).as_dict()
    assert d["holder"] == str(HOLDER) and d["oid"] is None and d["body"] is None and d["kind"] == "refused"


def test_a_gate_whose_card_cannot_write_says_it_is_closed_what_to_do_and_when_it_opens_again() -> None:
    closed = status_line(closed_status("card X cannot write its store: ..."))
    assert "CLOSED" in closed and "cannot write its store" in closed and "admits no ticket" in closed
    assert "free space" in closed and "opens again by itself" in closed
    assert closed_status("the host's words").as_dict()["detail"] == "the host's words"
    opened = status_line(OPEN)
    assert "OPEN" in opened and "admits tickets again" in opened
