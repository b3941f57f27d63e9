"""The authority's reissue decision (protocols/trn/trace.py), pure: every refusal and the idempotent resend."""

from __future__ import annotations

from cardnet.protocols.trn import trace
from cardnet.wire import Uid

AGENT, OTHER = Uid(b"\x0a" * 12), Uid(b"\x0b" * 12)
ALICE, BOB, CAROL = Uid(b"\x01" * 12), Uid(b"\x02" * 12), Uid(b"\x03" * 12)
OLD, NEW, NEW2 = b"\x10" * 16, b"\x20" * 16, b"\x30" * 16
H = b"\x99" * 32
CHAIN = [trace.Movement(AGENT, ALICE, b"n1__"), trace.Movement(ALICE, BOB, b"n2__")]
REQ = trace.Reissue(OLD, NEW, AGENT, H)


def judge(req: trace.Reissue = REQ, requester: Uid = AGENT, **kw: object) -> trace.ReissueVerdict:
    args: dict[str, object] = {
        "issuer": AGENT, "chain": CHAIN, "revoked": False, "previous": None, "new_in_use": False, "blocked": set(),
    }  # fmt: skip
    args.update(kw)
    return trace.decide_reissue(req, requester, **args)  # type: ignore[arg-type]


def test_granted_to_the_issuer_for_the_last_recorded_holder() -> None:
    v = judge()
    assert v.ok and not v.again and v.grant == trace.Reissue(OLD, NEW, BOB, H)
    assert judge(chain=[]).grant == trace.Reissue(OLD, NEW, AGENT, H)  # never moved: back to the agent


def test_a_resend_gets_the_same_answer_and_anything_else_is_refused() -> None:
    granted = trace.Reissue(OLD, NEW, BOB, H)
    again = judge(previous=granted, revoked=True)
    assert again.ok and again.again and again.grant == granted
    assert not judge(trace.Reissue(OLD, NEW2, AGENT, H), previous=granted, revoked=True).ok
    assert not judge(trace.Reissue(OLD, NEW, AGENT, b"\x00" * 32), previous=granted, revoked=True).ok
    assert not judge(requester=OTHER, previous=granted, revoked=True).ok


def test_refusals_say_why() -> None:
    cases = {
        "unknown oid": judge(issuer=None),
        "not the issuer": judge(requester=OTHER),
        "already revoked": judge(revoked=True),
        "already in use": judge(new_in_use=True),
        "is blocked": judge(blocked={BOB}),
    }
    for why, verdict in cases.items():
        assert not verdict.ok and verdict.grant is None and why in verdict.reason, (why, verdict)
    assert "already in use" in judge(trace.Reissue(OLD, OLD, AGENT, H)).reason


def test_the_first_movement_of_a_reissued_oid_must_go_to_its_holder() -> None:
    to_bob = trace.Movement(AGENT, BOB, b"n3__")
    assert trace.decide([], to_bob, AGENT, revoked=False, blocked=set(), destined=BOB).record == to_bob
    wrong = trace.decide([], trace.Movement(AGENT, CAROL, b"n3__"), AGENT, revoked=False, blocked=set(), destined=BOB)
    assert not wrong.ok and wrong.block == () and "reissued for" in wrong.reason
    later = trace.decide(
        [to_bob], trace.Movement(BOB, CAROL, b"n4__"), AGENT, revoked=False, blocked=set(), destined=BOB
    )
    assert later.ok  # after that it moves freely
