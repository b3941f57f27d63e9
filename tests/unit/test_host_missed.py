"""An in-process application whose inbox overflows is told what it missed (``host.missed``), as an application on
the host's socket is (tests/integration/test_app_socket.py): a real Host with a real card, a capability that
receives nothing while its card answers more than ``MAX_INBOX`` messages."""

from __future__ import annotations

from cardnet.applets.echo import EchoApplet
from cardnet.host import Host
from cardnet.host import mtypes as hm
from cardnet.host.library import MAX_INBOX
from cardnet.protocols.echo import REPLY, REQUEST
from conftest import NOW, CardFactory

T = NOW.timestamp()
ROUND = 2_000  # requests a pump (one card transaction: its outbox row stays well under the card's capacity)
EXTRA = 7  # replies past the inbox's bound


def test_a_capability_whose_inbox_overflows_gets_host_missed_in_the_dropped_replies_place(
    make_card: CardFactory,
) -> None:
    card = make_card("a", applets=[EchoApplet()], capacity_bytes=16 << 20)  # (a group of 2,000 replies is one row)
    host = Host([card])
    app = host.acquire()
    total = MAX_INBOX + EXTRA
    for start in range(0, total, ROUND):
        for rid in range(start, min(total, start + ROUND)):
            app.send(card.uid, REQUEST, rid=rid, body=b"")
        host.pump(T)
    assert app.missed_total == EXTRA
    first = app.receive()
    assert first is not None and first.mtype == hm.MISSED.code and first.src == card.uid
    assert hm.MISSED.parse(first) == {"count": EXTRA, "mtype": REPLY.code}
    rest = app.receive_all()
    assert [REPLY.parse(m)["rid"] for m in rest] == list(range(EXTRA, total))  # the oldest went
    assert app.receive() is None  # told once
    # nothing more is lost: the next reply comes alone
    app.send(card.uid, REQUEST, rid=total, body=b"")
    host.pump(T)
    assert [(m.mtype, REPLY.parse(m)["rid"]) for m in app.receive_all()] == [(REPLY.code, total)]
