"""TRN across real host processes over TCP: the authority service, an agent, two wallets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hostprocs import HostProc, free_port

from cardnet.applets.authority import ADD_AGENT, CHAIN, QUERY
from cardnet.applets.trn import LIST, MINT, RECOVER, RESULT, SEND, SET_AUTHORITY, TOKENS
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.client import AppClient
from cardnet.store import SqliteStore
from cardnet.wire import MType, Uid

PIN = "1357"
OID = bytes.fromhex("00112233445566778899aabbccddeeff")


class TrnNet:
    """auth host: authority card + agent card (run by `cardnet authority run`); wallet hosts a and b."""

    def __init__(self, tmp: Path, wallets: tuple[str, ...] = ("a", "b")) -> None:
        now = datetime.now(UTC)
        self.tmp = tmp
        self.wallets = wallets
        ca = pki.CertificateAuthority.create("trn CA", now=now)
        ca.save(tmp / "ca.cnca")
        self.uids: dict[str, Uid] = {}
        self.agent_cert = b""
        roles = {"authority": pki.Role.SERVICE, "agent": pki.Role.AGENT} | {w: pki.Role.DEVICE for w in wallets}
        for name, role in roles.items():
            card = Card(SqliteStore(str(tmp / f"{name}.card.db")))
            self.uids[name] = personalise(card, ca, pin=PIN, now=now, role=role)
            if name == "agent":
                self.agent_cert = card.certificate_der
            card.close()
        ports = {h: free_port() for h in ("auth", *wallets)}
        cards = {"auth": [("authority", "authority"), ("agent", "trn")]} | {w: [(w, "trn")] for w in wallets}
        where = {"authority": "auth", "agent": "auth"} | {w: w for w in wallets}
        self.hosts: dict[str, HostProc] = {}
        for h, port in ports.items():
            hp = HostProc(h, tmp, port, self.uids[cards[h][0][0]].domain)
            if h == "auth":
                hp.command = ("authority", "run", "--every", "0.2", "--ca", str(tmp / "ca.cnca"))
                hp.env = {"CARDNET_PIN": PIN}
            card_sections = "".join(
                f'[[cards]]\nstore = "sqlite:///{c}.card.db"\napplets = ["{a}"]\n\n' for c, a in cards[h]
            )
            routes = "".join(
                f'"{self.uids[c].domain.hex()}" = "127.0.0.1:{ports[where[c]]}"\n' for c in where if where[c] != h
            )
            head = f'name = "{h}"\nlisten = "127.0.0.1:{port}"\napp_socket = "{h}.sock"\n\n'
            hp.config.write_text(f"{head}{card_sections}[routes]\n{routes}")
            self.hosts[h] = hp
        self.where = where
        self.ports = ports

    def start(self) -> None:
        for hp in self.hosts.values():
            hp.start()

    def stop(self) -> None:
        for hp in self.hosts.values():
            hp.stop()

    async def ask(self, card: str, mtype: MType, reply: MType = RESULT, **fields: Any) -> dict[str, Any]:
        hp = self.hosts[self.where[card]]
        async with await AppClient.connect(hp.socket, card=self.uids[card].domain) as app:
            await app.send(self.uids[card], cm.PIN_VERIFY, pin=PIN)
            await app.recv_type(cm.PIN_RESULT, timeout_s=20)
            await app.send(self.uids[card], mtype, **fields)
            if mtype is RECOVER:
                return {}
            return await app.recv_type(reply, timeout_s=20)

    async def tokens(self, card: str) -> dict[bytes, str]:
        got = await self.ask(card, LIST, TOKENS)
        return {t["oid"]: t["status"] for t in got["tokens"]}

    async def settle(self, expect: str, timeout_s: float = 30.0) -> None:
        """Drive recovery until the token is enabled on ``expect`` alone."""
        async with asyncio.timeout(timeout_s):
            while True:
                for card in ("agent", *self.wallets):
                    await self.ask(card, RECOVER)
                views = {c: await self.tokens(c) for c in ("agent", *self.wallets)}
                if views[expect].get(OID) == "enabled" and all(OID not in v for c, v in views.items() if c != expect):
                    return
                await asyncio.sleep(0.1)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path)
    try:
        n.start()
        yield n
    finally:
        n.stop()


def test_issue_transfer_and_trace_across_processes(net: TrnNet) -> None:
    async def go() -> None:
        assert (await net.ask("authority", ADD_AGENT, cert=net.agent_cert))["ok"]
        for c in ("agent", "a", "b"):
            assert (await net.ask(c, SET_AUTHORITY, authority=net.uids["authority"]))["ok"]
        assert (await net.ask("agent", MINT, oid=OID, body=b"Final, seat 7"))["ok"]
        assert (await net.ask("agent", SEND, oid=OID, to=net.uids["a"]))["ok"]
        await net.settle("a")
        assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]
        await net.settle("b")
        chain = await net.ask("authority", QUERY, CHAIN, oid=OID)
        assert chain["issuer"] == net.uids["agent"] and chain["holders"] == [net.uids["a"], net.uids["b"]]

    asyncio.run(go())
