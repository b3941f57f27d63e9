"""``cardnet demo``: personalise cards under a CA and watch their applets talk.

The story (each line printed as it happens):

1. an authority creates a CA; three blank cards are manufactured (each
   generates its own key) and personalised (domain, certificate, PIN);
2. Alice's wallet application gets a port on her card and proves the PIN
   (one wrong try first: the card counts it durably);
3. Alice's card sends Bob's card a signed note; Bob's card checks Alice's
   certificate chain and signature, keeps the note and acknowledges it;
4. attacks: an application that skipped the PIN is refused; a note whose
   text was altered in transit is refused; a duplicated note is kept once;
5. a crash: Carol's card emits a note, the host dies before delivering it,
   the card is reopened from its store and re-emits the note from its outbox;
6. Bob reads his notes.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from cardnet.applets.notes import NOTE, NOTES, READ_NOTES, SEND_NOTE, NotesApplet
from cardnet.card import Card, Outgoing
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.cli.output import card_refusal, console, emit_json, json_option
from cardnet.crypto import pki
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from cardnet.wire import mtypes as registry

HOST_PORT = 0xFFFFFFFF  # the host itself, asking its card for a port
PINS = {"alice": "1234", "bob": "2468", "carol": "1357"}


class DemoWorld:
    """Cards on one host, a queue of messages between them, and a log of what happened."""

    def __init__(self, directory: Path, now: datetime, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.dir = directory
        self.now = now
        self.t = now.timestamp()
        self.events: list[dict[str, Any]] = []
        self.cards: dict[str, Card] = {}
        self.names: dict[bytes, str] = {}
        self.queue: deque[Outgoing] = deque()
        self.app_inbox: dict[Uid, list[Message]] = {}
        self.ca = pki.CertificateAuthority.create("cardnet demo CA", now=now)
        self.say("authority", f"created CA [bold]{self.ca.certificate.subject.rfc4514_string()}[/]", kind="ca")

    def say(self, who: str, line: str, **data: Any) -> None:
        self.events.append({"who": who, "text": _plain(line), **data})
        if not self.quiet:
            console.print(f"[cyan]{who:>9}[/] {line}")

    def open_card(self, name: str) -> Card:
        return Card(SqliteStore(str(self.dir / f"{name}.card.db")), applets=[NotesApplet()])

    def manufacture(self, name: str) -> Card:
        card = self.open_card(name)
        uid = personalise(card, self.ca, pin=PINS[name], now=self.now, name=f"{name}'s card")
        self.cards[name] = card
        self.names[uid.domain] = name
        self.say(name, f"card personalised: uid [bold]{uid}[/], key generated on the card", kind="card", uid=str(uid))
        return card

    def label(self, uid: Uid) -> str:
        name = self.names.get(uid.domain, "?")
        if uid.port == HOST_PORT:
            return f"{name}'s host"
        return f"{name}'s card" if uid.is_card else f"{name}'s app:{uid.port}"

    def send(self, msg: Message) -> None:
        self.queue.append(Outgoing(None, msg))

    def run(self, *, until_empty: bool = True, drop_from: str | None = None) -> None:
        """Deliver queued messages: to cards through ``step``, to applications into inboxes."""
        rounds = 0
        while self.queue and rounds < 1000:
            rounds += 1
            out = self.queue.popleft()
            msg = out.msg
            src_name = self.names.get(msg.src.domain)
            if drop_from is not None and src_name == drop_from and msg.src.is_card:
                self.say("host", f"[red]crash![/] {registry.lookup(msg.mtype).name} from {drop_from} was not delivered")
                continue
            self.deliver(msg)
            if out.seq is not None and src_name is not None and msg.src.is_card:
                self.cards[src_name].ack([out.seq])
            if not until_empty:
                break

    def deliver(self, msg: Message) -> None:
        name = registry.lookup(msg.mtype).name
        here = self.names[msg.dst.domain]
        if not msg.dst.is_card:
            self.app_inbox.setdefault(msg.dst, []).append(msg)
            return
        card = self.cards[self.names[msg.dst.domain]]
        self.t += 1
        for out in card.step(msg, self.t):
            self.queue.append(out)
            o_name = registry.lookup(out.msg.mtype).name
            if out.msg.mtype == cm.REFUSED.code:
                p = cm.REFUSED.parse(out.msg)
                words, _ = card_refusal(p["reason"], p["detail"])
                self.say(
                    here,
                    f"[red]refused[/] {name} from {escape(self.label(msg.src))}: {escape(words)} "
                    f"[dim]({escape(p['reason'])}: {escape(p['detail'])})[/]",
                    kind="refused",
                    reason=p["reason"],
                )
            else:
                self.say(
                    here,
                    f"{name} from {self.label(msg.src)} → {o_name} to {self.label(out.msg.dst)}",
                    kind="step",
                    mtype=o_name,
                )

    def app(self, name: str) -> Uid:
        """An application on ``name``'s host gets a port from the card."""
        card = self.cards[name]
        ask = Uid(card.uid.domain, HOST_PORT)
        self.send(cm.PORT_REQUEST.make(ask, card.uid))
        self.run()
        grant = cm.PORT_GRANT.parse(self.app_inbox.pop(ask)[-1])
        return Uid(card.uid.domain, grant["port"])

    def login(self, app: Uid, pin: str) -> dict[str, Any]:
        self.send(cm.PIN_VERIFY.make(app, app.card_uid(), pin=pin))
        self.run()
        reply = self.app_inbox[app].pop()
        return cm.PIN_RESULT.parse(reply)


def _plain(text: str) -> str:
    return Text.from_markup(text).plain


def run_demo(directory: Path, *, quiet: bool) -> list[dict[str, Any]]:
    w = DemoWorld(directory, datetime.now(UTC).replace(microsecond=0), quiet=quiet)
    alice, bob, carol = (w.manufacture(n) for n in ("alice", "bob", "carol"))

    a_app = w.app("alice")
    w.say("alice", f"wallet app acquired port {a_app.port}")
    r = w.login(a_app, "0000")
    w.say("alice", f"wrong PIN: ok={r['ok']}, tries left {r['tries_left']}", kind="pin", ok=r["ok"])
    r = w.login(a_app, PINS["alice"])
    w.say(
        "alice",
        f"right PIN: ok={r['ok']}, tries left {r['tries_left']} (app is now authenticated)",
        kind="pin",
        ok=r["ok"],
    )

    w.send(SEND_NOTE.make(a_app, alice.uid, to=bob.uid, text="Meet me at gate 3 at noon."))
    w.run(until_empty=False)  # Alice's card signs and emits the note; hold it to show the attacks
    note_out = w.queue[0]
    assert note_out.msg.mtype == NOTE.code

    tampered = dataclasses.replace(
        note_out.msg, param=NOTE.schema.encode({**NOTE.parse(note_out.msg), "text": "Meet me at gate 9."})
    )
    w.say("mallory", "alters the note's text in transit and delivers it")
    w.deliver(tampered)
    w.run()  # the genuine note and its ack
    w.say("network", "duplicates Alice's note (delivered a second time)")
    w.deliver(note_out.msg)
    w.run()

    b_spy = w.app("bob")
    w.say("mallory", f"an app on Bob's host (port {b_spy.port}) reads Bob's notes without the PIN")
    w.send(READ_NOTES.make(b_spy, bob.uid))
    w.run()

    c_app = w.app("carol")
    w.login(c_app, PINS["carol"])
    w.send(SEND_NOTE.make(c_app, carol.uid, to=bob.uid, text="Your ticket is in the post."))
    w.run(drop_from="carol")
    carol.close()
    carol = w.cards["carol"] = w.open_card("carol")
    pending = carol.outbox()
    w.say(
        "carol",
        f"card reopened from its store; {len(pending)} unacknowledged output(s) re-emitted",
        kind="reemit",
        count=len(pending),
    )
    w.queue.extend(pending)
    w.run()

    b_app = w.app("bob")
    w.login(b_app, PINS["bob"])
    w.send(READ_NOTES.make(b_app, bob.uid))
    w.run()
    notes = NOTES.parse(w.app_inbox[b_app].pop())["notes"]
    for n in notes:
        w.say("bob", f"note #{n['seq']} from {w.label(n['from'])}: “{n['text']}”", kind="note", note=n["text"])
    for card in w.cards.values():
        card.close()
    return w.events


@click.command()
@json_option
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the cards' stores in this directory (default: a temporary one, removed after).",
)
def demo(as_json: bool, directory: str | None) -> None:
    """Personalise three cards under a CA and watch their applets exchange signed notes.

    Shows the card runtime at work: keys born on the card, certificates that
    bind each card's Uid, a PIN with a durable try counter, privileged
    messages, signature checks between cards, refusal of tampering, and a
    crash after which the card re-emits what it had not yet delivered.
    """
    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="cardnet-demo-")
        path = Path(tmp)
    else:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if any(path.glob("*.card.db")):
            raise click.UsageError(f"{path} already holds cards from an earlier demo: choose an empty directory")
    start = time.perf_counter()
    try:
        events = run_demo(path, quiet=as_json)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        emit_json({"events": events, "stores": str(path) if tmp is None else None})
    else:
        console.print(f"\n[green]demo finished[/] in {time.perf_counter() - start:.2f} s: {len(events)} events.")
        if tmp is None:
            console.print(f"the cards' stores are in {path}")
