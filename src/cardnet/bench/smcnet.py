"""A TrustedPals network of real host processes on 127.0.0.1: one security module card per host.

Made in a directory: a CA (``ca.cnca``) and ``n`` module cards personalised under it (role DEVICE, applet
``smc``, the PIN :data:`PIN`), each in its own durable SQLite store, and one ``cardnet host run`` process per
card routing every other module's domain to its host's TCP port. A host named in ``adversary`` gets an
``[adversary]`` section: it drops its module's frames with the given probabilities (TrustedPals' Adversary).

Used by ``cardnet smc run``, ``cardnet bench smc`` and the integration tests.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

from cardnet.bench.procs import HostProc, HostSet, free_port
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.adversary import AdversaryConfig
from cardnet.protocols.smc.registry import Agreement
from cardnet.protocols.smc.run import DEFAULT_RHO_MAX, RunSpec
from cardnet.services.smc.controller import Module, Party
from cardnet.store import SqliteStore
from cardnet.wire import Uid

PIN = "2580"
CAPACITY_BYTES = 4 << 20  # frames wait in the outbox until the host passed them on


class SmcNet(HostSet):
    """``n`` module hosts, ``m0`` .. ``m<n-1>``; ``start()`` them (or ``with``), then :meth:`parties`."""

    def __init__(self, tmp: Path, n: int, *, adversary: dict[int, AdversaryConfig] | None = None) -> None:
        now = datetime.now(UTC)
        self.tmp = tmp
        self.n = n
        ca = pki.CertificateAuthority.create("smc CA", now=now)
        ca.save(tmp / "ca.cnca")
        self.uids: list[Uid] = []
        for i in range(n):
            card = Card(SqliteStore(str(tmp / f"m{i}.card.db")))
            self.uids.append(personalise(card, ca, pin=PIN, now=now, role=pki.Role.DEVICE, name=f"module {i}"))
            card.close()
        ports = [free_port() for _ in range(n)]
        self.hosts: list[HostProc] = []
        for i in range(n):
            hp = HostProc(f"m{i}", tmp, ports[i], self.uids[i].domain)
            routes = "".join(f'"{self.uids[j].domain.hex()}" = "127.0.0.1:{ports[j]}"\n' for j in range(n) if j != i)
            text = (
                f'name = "m{i}"\nlisten = "127.0.0.1:{ports[i]}"\napp_socket = "m{i}.sock"\n\n'
                f'[[cards]]\nstore = "sqlite:///m{i}.card.db"\napplets = ["smc"]\ncapacity_bytes = {CAPACITY_BYTES}\n\n'
                f"[routes]\n{routes}"
            )
            a = (adversary or {}).get(i)
            if a is not None:
                seed = "" if a.seed is None else f"seed = {a.seed}\n"
                seed += "" if a.stop_round is None else f"stop_round = {a.stop_round}\n"
                mtypes = ", ".join(f'"{m}"' for m in a.mtypes)
                text += f"\n[adversary]\ndrop_out = {a.drop_out}\ndrop_in = {a.drop_in}\nmtypes = [{mtypes}]\n{seed}"
            hp.config.write_text(text)
            self.hosts.append(hp)

    def procs(self) -> list[HostProc]:
        return self.hosts

    def spec(self, terms: Agreement, *, rho_max: int = DEFAULT_RHO_MAX) -> RunSpec:
        """A fresh run among every module of the network."""
        return RunSpec(os.urandom(16), tuple(self.uids), terms, rho_max)

    async def modules(self) -> list[Module]:
        """A logged-in connection to every module (the caller closes them)."""
        return list(await asyncio.gather(*(Module.open(hp.socket, pin=PIN, card=hp.domain) for hp in self.hosts)))

    def parties(self, modules: list[Module], spec: RunSpec) -> list[Party]:
        return [Party(m, spec) for m in modules]
