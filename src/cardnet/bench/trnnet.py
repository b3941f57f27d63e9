"""A TRN network of real host processes on 127.0.0.1: the authority host and wallet hosts.

Made in a directory (stores, configs, logs, the CA file):

* a CA (``ca.cnca``), and cards personalised under it, each in its own durable
  SQLite store: ``authority`` (role SERVICE, applet ``authority``), ``agent``
  (role AGENT, applet ``trn``: it mints tokens) and one wallet card per name
  in ``wallets`` (role DEVICE, applet ``trn``), all with the PIN :data:`PIN`;
* one gate card per name in ``gates`` (role DEVICE, applet ``gate``), each on a host of
  its own run by ``cardnet gate run --json`` (its admission lines on the process's stdout);
* host ``auth`` (``cardnet authority run``: the authority card, the agent card,
  with ``ttp`` a TTP card for fair exchanges (applet ``ttp``; with
  ``ttp_host`` on a host of its own, ``cardnet ttp run``), and the
  blocklist signer) and one host per wallet (``cardnet host run``),
  each routing every other card's domain to its host's TCP port.

Used by ``cardnet bench trn`` and by the integration tests
(``tests/integration/test_trn_processes.py``, ``test_trn_kill.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cardnet.applets.authority import ADD_AGENT
from cardnet.applets.gate import SETUP, STATE
from cardnet.applets.trn import LIST, RECOVER, RESULT, SET_AUTHORITY, TOKENS
from cardnet.bench.procs import HostProc, HostSet, free_port
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient
from cardnet.store import SqliteStore
from cardnet.wire import MType, Uid

PIN = "1357"
ASK_TIMEOUT_S = 20.0
DEFAULT_CAPACITY_BYTES = 256 * 1024  # the host config's default
# The authority's card keeps every traced movement (159 bytes each, docs/trn.md section 4.2): a default card holds
# some 1,600, fewer than a benchmark makes. A service card (an HSM in production) is sized for its traffic.
AUTHORITY_CAPACITY_BYTES = 16 << 20


class TrnNetError(CardnetError):
    """A card of the network refused a set-up command (the hosts' logs say more)."""


class TrnNet(HostSet):
    """auth host: authority card + agent card (run by ``cardnet authority run``); one host per wallet."""

    def __init__(
        self,
        tmp: Path,
        wallets: tuple[str, ...] = ("a", "b"),
        *,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        authority_capacity_bytes: int = AUTHORITY_CAPACITY_BYTES,
        signer_every_s: float = 0.2,
        exclusive: bool = True,
        ttp: bool = False,
        ttp_host: bool = False,
        gates: tuple[str, ...] = (),
        gate_refresh_s: float = 0.5,
    ) -> None:
        now = datetime.now(UTC)
        self.tmp = tmp
        self.wallets = wallets
        self.gates = gates
        # valid since yesterday: a test can have it issue a certificate whose day of validity ends soon
        ca = pki.CertificateAuthority.create("trn CA", now=now - timedelta(days=1))
        ca.save(tmp / "ca.cnca")
        self.uids: dict[str, Uid] = {}
        self.agent_cert = b""
        roles = {"authority": pki.Role.SERVICE, "agent": pki.Role.AGENT} | {w: pki.Role.DEVICE for w in wallets}
        roles |= {g: pki.Role.DEVICE for g in gates}
        if ttp:  # a TTP card for fair exchanges, run by the authority's host
            roles["ttp"] = pki.Role.SERVICE
        for name, role in roles.items():
            card = Card(SqliteStore(str(tmp / f"{name}.card.db")))
            self.uids[name] = personalise(card, ca, pin=PIN, now=now, role=role)
            if name == "agent":
                self.agent_cert = card.certificate_der
            card.close()
        ttp_at = ("ttp" if ttp_host else "auth") if ttp else None  # the TTP's host: its own, or the authority's
        ports = {h: free_port() for h in ("auth", *wallets, *gates, *(["ttp"] if ttp_at == "ttp" else []))}
        auth_cards = [("authority", "authority"), ("agent", "trn"), *([("ttp", "ttp")] if ttp_at == "auth" else [])]
        cards = {"auth": auth_cards} | {w: [(w, "trn")] for w in wallets} | {g: [(g, "gate")] for g in gates}
        if ttp_at == "ttp":
            cards["ttp"] = [("ttp", "ttp")]
        where = {"authority": "auth", "agent": "auth"} | {w: w for w in (*wallets, *gates)}
        where |= {"ttp": ttp_at} if ttp_at else {}
        self.hosts: dict[str, HostProc] = {}
        for h, port in ports.items():
            hp = HostProc(h, tmp, port, self.uids[cards[h][0][0]].domain)
            if h == "auth":
                hp.command = ("authority", "run", "--every", str(signer_every_s), "--ca", str(tmp / "ca.cnca"))
                hp.env = {"CARDNET_PIN": PIN}
            elif h == "ttp":
                hp.command = ("ttp", "run")
            elif h in gates:
                hp.command = ("gate", "run", "--json", "--refresh", str(gate_refresh_s))
                hp.env = {"CARDNET_PIN": PIN}
            capacity = {c: max(capacity_bytes, authority_capacity_bytes) if c == "authority" else capacity_bytes
                        for c, _ in cards[h]}  # fmt: skip
            card_sections = "".join(
                f'[[cards]]\nstore = "sqlite:///{c}.card.db"\napplets = ["{a}"]\ncapacity_bytes = {capacity[c]}\n'
                f"exclusive = {'true' if exclusive else 'false'}\n\n"
                for c, a in cards[h]
            )
            routes = "".join(
                f'"{self.uids[c].domain.hex()}" = "127.0.0.1:{ports[where[c]]}"\n' for c in where if where[c] != h
            )
            head = f'name = "{h}"\nlisten = "127.0.0.1:{port}"\napp_socket = "{h}.sock"\n\n'
            hp.config.write_text(f"{head}{card_sections}[routes]\n{routes}")
            self.hosts[h] = hp
        self.where = where
        self.ports = ports

    def host_of(self, card: str) -> HostProc:
        return self.hosts[self.where[card]]

    def procs(self) -> list[HostProc]:
        return list(self.hosts.values())

    async def app(self, card: str) -> AppClient:
        """An application on ``card``'s host, logged in to it with the PIN (the caller closes it)."""
        hp = self.host_of(card)
        app = await AppClient.connect(hp.socket, card=self.uids[card].domain)
        await app.send(self.uids[card], cm.PIN_VERIFY, pin=PIN)
        await app.recv_type(cm.PIN_RESULT, timeout_s=ASK_TIMEOUT_S)
        return app

    async def ask(self, card: str, mtype: MType, reply: MType = RESULT, **fields: Any) -> dict[str, Any]:
        """One command to ``card`` from a fresh, logged-in application; its reply (none for trn.recover)."""
        async with await self.app(card) as app:
            await app.send(self.uids[card], mtype, **fields)
            if mtype is RECOVER:
                return {}
            return await app.recv_type(reply, timeout_s=ASK_TIMEOUT_S)

    async def tokens(self, card: str) -> dict[bytes, str]:
        """``trn.list`` of ``card``: oid -> status."""
        got = await self.ask(card, LIST, TOKENS)
        return {t["oid"]: t["status"] for t in got["tokens"]}

    async def setup_trace(self) -> None:
        """Register the agent at the authority and make the authority every trn card's authority."""
        if not (await self.ask("authority", ADD_AGENT, cert=self.agent_cert))["ok"]:
            raise TrnNetError("refused", f"the authority card refused to register the agent card; logs:\n{self.logs()}")
        for c in ("agent", *self.wallets):
            if not (await self.ask(c, SET_AUTHORITY, authority=self.uids["authority"]))["ok"]:
                raise TrnNetError("refused", f"card {c} refused trn.set_authority; logs:\n{self.logs()}")

    async def setup_gates(self, wait_ms: int = 1500) -> None:
        """Every gate admits the agent's tickets, reports to the authority and waits ``wait_ms`` for its answer."""
        for g in self.gates:
            if not (await self.ask(g, SET_AUTHORITY, authority=self.uids["authority"]))["ok"]:
                raise TrnNetError("refused", f"gate {g} refused trn.set_authority; logs:\n{self.logs()}")
            await self.ask(g, SETUP, STATE, issuers=[self.agent_cert], wait_ms=wait_ms)

    async def settle(self, expect: str, oid: bytes, timeout_s: float = 30.0) -> None:
        """Drive recovery until token ``oid`` is enabled on ``expect`` alone (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for card in ("agent", *self.wallets):
                    await self.ask(card, RECOVER)
                views = {c: await self.tokens(c) for c in ("agent", *self.wallets)}
                if views[expect].get(oid) == "enabled" and all(oid not in v for c, v in views.items() if c != expect):
                    return
                await asyncio.sleep(0.1)
