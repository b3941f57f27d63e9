"""An in-process TRN world: an agent, wallets and the authority as cards on one host."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.fairx import SET_TTP, TTP_IS, TtpApplet
from cardnet.applets.trn import LIST, MINT, RESULT, SEND, SET_AUTHORITY, TOKENS, TrnApplet
from cardnet.card import Applet, Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import Capability, Host
from cardnet.store import SqliteStore, Store
from cardnet.wire import Message, MType, Uid
from conftest import NOW

PIN = "2468"
T0 = NOW.timestamp()


@dataclass
class TrnWorld:
    tmp: Path
    ca: pki.CertificateAuthority
    host: Host = field(default_factory=lambda: Host(name="trn"))
    cards: dict[str, Card] = field(default_factory=dict)
    apps: dict[str, Capability] = field(default_factory=dict)
    now: float = T0

    def card(
        self,
        name: str,
        role: pki.Role = pki.Role.DEVICE,
        *,
        capacity_bytes: int = 256 * 1024,
        policy: bytes = b"",
        valid_days: int = 3 * 365,
        applet: Applet | None = None,
        store: Store | None = None,
    ) -> Card:
        """A personalised card (the authority's applet on a service card, else a wallet, unless ``applet``);
        its certificate is valid from NOW for ``valid_days``; its store ``<name>.db`` unless ``store``."""
        if applet is None:
            applet = AuthorityApplet() if role is pki.Role.SERVICE else TrnApplet()
        if store is None:
            store = SqliteStore(str(self.tmp / f"{name}.db"))
        c = Card(store, applets=[applet], capacity_bytes=capacity_bytes)
        personalise(c, self.ca, pin=PIN, now=NOW, role=role, name=name, policy=policy, valid_days=valid_days)
        self.cards[name] = c
        self.host.add_card(c)
        app = self.host.acquire(c.uid.domain, self.now)
        self.apps[name] = app
        self.ask(name, cm.PIN_VERIFY, pin=PIN)
        return c

    def run(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self.now += 0.01
            self.host.pump(self.now)
            if self.host.idle:
                return

    def ask(self, name: str, mtype: MType, **fields: Any) -> Message:
        app = self.apps[name]
        app.send(self.cards[name].uid, mtype, **fields)
        self.run()
        msgs = app.receive_all()
        assert msgs, f"{name}'s card did not answer {mtype.name}"
        return msgs[-1]

    def result(self, name: str, mtype: MType, **fields: Any) -> dict[str, Any]:
        reply = self.ask(name, mtype, **fields)
        if reply.mtype == cm.REFUSED.code:
            return {"ok": False, **cm.REFUSED.parse(reply)}
        return RESULT.parse(reply)

    def tokens(self, name: str) -> dict[bytes, dict[str, Any]]:
        reply = self.ask(name, LIST)
        return {t["oid"]: t for t in TOKENS.parse(reply)["tokens"]}


def standard(
    tmp: Path, ca: pki.CertificateAuthority, wallets: tuple[str, ...] = ("alice", "bob"), **applets: Applet
) -> TrnWorld:
    """The authority, the agent and ``wallets``, each wallet naming the authority; ``applets`` replaces a
    wallet's (or the authority's) genuine applet (changed card code, for attacks)."""
    w = TrnWorld(tmp, ca)
    w.card("authority", pki.Role.SERVICE, applet=applets.get("authority"))
    agent = w.card("agent", pki.Role.AGENT)
    for name in wallets:
        w.card(name, applet=applets.get(name))
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    for name in ("agent", *wallets):
        assert w.result(name, SET_AUTHORITY, authority=w.cards["authority"].uid)["ok"]
    return w


def fairx_world(
    tmp: Path, ca: pki.CertificateAuthority, vouchers: dict[str, tuple[bytes, bytes]], **applets: Applet
) -> TrnWorld:
    """:func:`standard` with a TTP card (applet ``ttp``) that alice and bob name, and ``vouchers`` (card ->
    (oid, body)) issued to them, traced; ``applets`` replaces a card's genuine applet (the TTP's too)."""
    w = standard(tmp, ca, **applets)
    w.card("ttp", pki.Role.SERVICE, applet=applets.get("ttp") or TtpApplet())
    for name, (oid, body) in vouchers.items():
        issue(w, oid, name, body=body)
    for name in ("alice", "bob"):
        assert TTP_IS.parse(w.ask(name, SET_TTP, ttp=uid(w, "ttp")))["ttp"] == uid(w, "ttp")
    return w


def issue(w: TrnWorld, oid: bytes, to: str, body: bytes = b"seat 12A") -> None:
    assert w.result("agent", MINT, oid=oid, body=body)["ok"]
    assert w.result("agent", SEND, oid=oid, to=w.cards[to].uid)["ok"]
    w.run(200)


def uid(w: TrnWorld, name: str) -> Uid:
    return w.cards[name].uid


def clone_store(w: TrnWorld, name: str) -> Path:
    """Copy a wallet's SQLite EEPROM while it is in use (sqlite's online backup: a consistent snapshot)."""
    dst = w.tmp / f"{name}-clone.db"
    with sqlite3.connect(w.tmp / f"{name}.db") as src, sqlite3.connect(dst) as out:
        src.backup(out)
    src.close()
    out.close()
    return dst
