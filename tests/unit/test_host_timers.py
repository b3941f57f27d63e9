"""The host's timers, sans-I/O: the Schedule, ticks from the host port, and re-emission of lost card outputs.

``resend_unacked`` re-emits a card output that is unacknowledged but neither queued nor held (the driver could
not pass it on) once it was found so at two sweeps in a row; queued and held outputs are never duplicated.
"""

from __future__ import annotations

import logging

import pytest

from cardnet.applets.echo import EchoApplet
from cardnet.applets.trn import RECOVER
from cardnet.card import Card
from cardnet.host import Guard, Host, HostError, Verdict
from cardnet.host.core import Schedule
from cardnet.protocols.echo import REPLY, REQUEST
from conftest import NOW, CardFactory

T = NOW.timestamp()


def test_the_schedule_runs_each_job_every_period_and_once_when_late() -> None:
    s = Schedule({"fast": 1.0, "slow": 2.5}, now=10.0)
    assert s.deadline() == 11.0
    assert s.due(10.5) == []
    assert s.due(11.0) == ["fast"]
    assert s.deadline() == 12.0
    assert sorted(map(str, s.due(20.0))) == ["fast", "slow"]  # late: once each, not once per missed period
    assert s.deadline() == 21.0 and s.due(21.0) == ["fast"] and s.due(22.5) == ["fast", "slow"]
    assert Schedule({}, now=0.0).deadline() is None
    with pytest.raises(HostError) as err:
        Schedule({"never": 0.0}, now=0.0)
    assert err.value.reason == "bad_config"


def _reply_not_sent(make_card: CardFactory) -> tuple[Host, Card, Host]:
    """Card a answers an application on host b; host a's driver could not pass the reply on (link full)."""
    card_a = make_card("a", applets=[EchoApplet()])
    card_b = make_card("b", applets=[EchoApplet()])
    a = Host([card_a], routes={card_b.uid.domain: "b"}, name="a")
    b = Host([card_b], routes={card_a.uid.domain: "a"}, name="b")
    app_b = b.acquire()
    app_b.send(card_a.uid, REQUEST, rid=1, body=b"hello")
    [req] = b.pump(T)
    req.sent()
    a.receive_remote(req.msg, "b")
    [rep] = a.pump(T)  # ... and never calls rep.sent()
    assert [o.msg for o in card_a.outbox()] == [rep.msg]
    return a, card_a, b


def test_an_output_the_driver_could_not_pass_on_is_re_emitted(make_card: CardFactory) -> None:
    a, card_a, _ = _reply_not_sent(make_card)
    assert a.resend_unacked() == 0  # first sweep: only suspected (the driver may still report sent())
    assert a.pump(T) == []
    assert a.resend_unacked() == 1  # second sweep: still not passed on
    [again] = a.pump(T)
    assert again.address == "b" and REPLY.parse(again.msg)["body"] == b"hello"
    again.sent()
    assert card_a.outbox() == []
    assert a.resend_unacked() == 0 and a.resend_unacked() == 0


def test_queued_and_held_outputs_are_not_re_emitted(make_card: CardFactory) -> None:
    a, card_a, _ = _reply_not_sent(make_card)
    a.guards.append(Guard("hold-all", lambda msg, origin: Verdict.HOLD))
    assert a.resend_unacked() == 0
    assert a.resend_unacked() == 1  # re-emitted into the table (the guards saw it already)
    assert a.resend_unacked() == 0 and a.resend_unacked() == 0  # queued: not again
    [unsent] = a.pump(T)  # the driver fails again: it stays unacknowledged
    assert unsent.msg.mtype == REPLY.code
    a.guards.pop()
    # held by a guard (e.g. a prompt): the user decides; never re-emitted meanwhile
    app = a.acquire()
    a.guards.append(
        Guard("hold-replies", lambda msg, origin: Verdict.HOLD if msg.mtype == REPLY.code else Verdict.PASS)
    )
    app.send(card_a.uid, REQUEST, rid=2, body=b"local")
    a.pump(T)
    assert len(a.held) == 1
    assert a.resend_unacked() == 0 and a.resend_unacked() == 1  # only `unsent`
    [held_id] = a.held
    a.release(held_id)
    a.pump(T)
    assert [REPLY.parse(m)["body"] for m in app.receive_all()] == [b"local"]


def test_a_tick_comes_from_the_host_port_and_a_refusal_is_logged(
    make_card: CardFactory, caplog: pytest.LogCaptureFixture
) -> None:
    card = make_card("a", applets=[EchoApplet()])  # no trn applet: the card refuses trn.recover
    host = Host([card], name="a")
    with caplog.at_level(logging.WARNING, logger="cardnet.host"):
        host.tick(card.uid.domain, RECOVER)
        assert host.pump(T) == []
    assert host.idle and card.outbox() == []
    assert any("refused a tick" in r.getMessage() for r in caplog.records)
    assert not any("undeliverable" in r.getMessage() for r in caplog.records)
    with pytest.raises(HostError):
        host.tick(b"\x01" * 12, RECOVER)
