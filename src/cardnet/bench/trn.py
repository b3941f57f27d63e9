"""``cardnet bench trn`` (or ``transfer``): durable TRN token transfers between host processes, against their bound.

Setup, made and removed by the benchmark in a temporary directory
(:class:`~cardnet.bench.trnnet.TrnNet`): a CA; the authority host (``cardnet
authority run``: the authority card, the agent card, the blocklist signer) and
two wallet hosts a and b (``cardnet host run``), every card in its own durable
SQLite store (WAL, ``synchronous=FULL``), the hosts talking TCP on 127.0.0.1.
The agent mints ``2 * TOKENS_PER_IN_FLIGHT * in_flight`` tokens and sends
them, traced, half to each wallet: one pool for the traced rounds, one for the
untraced ones (untraceable is sticky per token, so the pools never mix).

Figures (each the median of interleaved rounds, all measured in one run):

* ``transfers_per_s``: traced transfers completed per second. At the start of
  a round ``in_flight`` tokens of the pool, half at a and half at b, are sent
  to the other wallet (``trn.send`` from an application on its host); as soon
  as one is enabled at its receiver, that wallet sends the token of the pool
  it has held longest the other way. So ``in_flight`` transfers are always
  under way, both directions at once. Rate = transfers completed during the
  round / the round's length (a round lasts until at least ``in_flight``
  transfers completed, on a very slow machine). A transfer is *completed* when the
  receiver's card has durably committed the token as ``enabled`` (after
  copy/copied/commit/committed and the trace seekfor/seeked at the authority).
* ``untraced_transfers_per_s``: the same with ``traceable=false`` (the
  receiver enables the token at ``commit``; no trace).
* ``p50_ms``, ``p99_ms``: latency of one traced transfer, from just before the
  application sends ``trn.send`` to the moment the benchmark sees the token
  enabled in the receiver's committed store (under the full load above).
* ``bound_transfers_per_s``: what the fsyncs and crypto operations one traced
  transfer needs allow on this machine: ``1 / sum(count_op / rate_op)`` over
  :data:`TRACED_OPS`, each rate measured in the same run (durable SQLite
  commits on the same disk as the cards, ECDSA P-256 verify, AES-256-GCM seal
  and open of the transfer's own records). The serial cost of one transfer:
  no group commit amortisation, no overlap of steps (docs/trn.md, Benchmark).
* ``copy_overhead_bytes``: the ``copy`` record's param (everything above the
  34-byte eTP header) minus the token object; ``ack_bytes``: the
  ``copied``/``committed`` record's param (both are the same size).

Also reported, per traced and untraced transfer: the CPU each host process
(``auth``, ``a``, ``b``) and this process (``driver``: the applications and the
watching) spent in the measured rounds (``host_cpu_ms_per_transfer``, from
``/proc``), and every rate the bound is made of.

How completion is seen: the benchmark reads the receiver card's committed
store (a read-only SQL query on its SQLite file, one query per wallet every
``POLL_S``) for the tokens in flight to it. A read costs the host processes
nothing, where polling ``trn.list`` would make each wallet decode every token
it holds many times a second. After the last round the benchmark checks the
result through the cards' own interfaces: every token enabled on exactly one
wallet (``trn.list``), and every traced token's chain at the authority
(``auth.query``) one movement longer than the transfers it counted.

Target: ``transfers_per_s >= 0.5 * bound_transfers_per_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, RESULT, SEND
from cardnet.bench.card import fsync_rate, sqlite_commit_rate
from cardnet.bench.timing import rate
from cardnet.bench.trnnet import TrnNet
from cardnet.card import mtypes as cm
from cardnet.card.runtime import RECORD_TAG, STORE_TABLE
from cardnet.crypto import pki, profile
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient
from cardnet.protocols import session as sess
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import Token, mint
from cardnet.transport import TransportError
from cardnet.wire import HEADER_BYTES, Uid

DEFAULT_IN_FLIGHT = 32
MAX_IN_FLIGHT = 256  # x 2 x TOKENS_PER_IN_FLIGHT tokens: 4096 per wallet, what one trn.list can report
BODY_BYTES = 64  # a ticket-sized token body
# Tokens of each kind (traced, untraced) per token in flight: a token that arrives waits while the others
# take their turn. Real tickets move a few times each; the authority's record of a token grows with every
# traced movement (docs/trn.md, Benchmark), so a few tokens bounced thousands of times would measure that.
TOKENS_PER_IN_FLIGHT = 8
DISTRIBUTE_CHUNK = 32
POLL_S = 0.002  # how often the benchmark looks into a receiver's store for arrivals
WAIT_TIMEOUT_S = 60.0  # for the tokens in flight to arrive (set-up, the end of a round)
# Cards hold the tokens, their sessions and the memory of every transfer they committed as receivers
# (d:<peer><nonce>, 36 bytes a transfer): room for a long run.
CARD_CAPACITY_BYTES = 64 << 20
OTHER = {"a": "b", "b": "a"}  # the two wallets
FIGURES = ("transfers_per_s", "untraced_transfers_per_s", "bound_transfers_per_s")

# What one transfer costs, counted from the code paths (docs/trn.md, "Benchmark"):
# steps 1 sender trn.send (seal copy) · 2 receiver copy (open; seal copied) · 3 sender copied (open; sign the
# movement statement; seal commit) · 4 receiver commit (open; seal committed, seal seekfor) · 5 sender committed
# (open) · 6 authority seekfor (open; verify the token's issuer signature and the sender's movement statement;
# seal seeked; the asking card's certificate is verified only the first time it presents it) · 7 receiver
# seeked (open; verify the issuer certificate's CA signature and the token's signature): every step one
# durable commit of its card.
TRACED_OPS = {"sqlite_commit": 7, "aead_seal": 6, "aead_open": 6, "ecdsa_verify": 4, "ecdsa_sign": 1}
# untraced: steps 1-5 only; the receiver enables the token at commit (step 4); the sender still signs
UNTRACED_OPS = {"sqlite_commit": 5, "aead_seal": 4, "aead_open": 4, "ecdsa_verify": 0, "ecdsa_sign": 1}
RATE_OF = {
    "sqlite_commit": "sqlite_commit_per_s",
    "aead_seal": "aead_seal_per_s",
    "aead_open": "aead_open_per_s",
    "ecdsa_verify": "ecdsa_verify_per_s",
    "ecdsa_sign": "ecdsa_sign_per_s",
}
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HOLDING_KEY = b"a.trn\x00t:"  # the card's store key of trn applet key t:<oid> (table "a.trn", runtime._skey)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class BenchError(CardnetError):
    """The benchmark could not run (a process did not start, a card refused, tokens went missing)."""

    def __init__(self, message: str) -> None:
        super().__init__("bench_failed", message)


# -- sizes -----------------------------------------------------------------------------------------


def _token(body_bytes: int) -> Token:
    """A token of the shape the benchmark moves (a dummy signature: sizes only)."""
    return Token(bytes(16), Uid(bytes(12)), bytes(64), b"x" * body_bytes)


def record_bytes(inner: bytes, ctr: int = 1) -> int:
    """The ``session.record`` param carrying ``inner`` (above the eTP header): counter + AES-GCM ciphertext."""
    ct = bytes(len(inner) + profile.AEAD_TAG_BYTES)  # GCM: ciphertext as long as the plaintext, plus the tag
    return sess.RECORD.make(Uid(bytes(12)), Uid(bytes(12)), ctr=ctr, ct=ct).size - HEADER_BYTES


def transfer_records(body_bytes: int, issuer_cert: bytes) -> dict[str, bytes]:
    """The inner messages of one traced transfer, encoded exactly as the cards encode them."""
    token = _token(body_bytes).encode()
    nonce = bytes(tr.TRANSFER_NONCE_BYTES)
    oid = bytes(16)
    seeked = {"oid": oid, "ok": True, "reason": "recorded", "issuer_cert": issuer_cert, "from": Uid(bytes(12))}
    seeked["nonce"] = nonce
    return {
        "copy": tr.encode_inner(tr.COPY, {"nonce": nonce, "token": token, "traceable": True}),
        "copied": tr.encode_inner(tr.COPIED, {"nonce": nonce, "ok": True}),
        "commit": tr.encode_inner(tr.COMMIT, {"nonce": nonce, "oid": oid, "sig": bytes(64)}),
        "committed": tr.encode_inner(tr.COMMITTED, {"nonce": nonce, "ok": True}),
        "seekfor": tr.encode_inner(
            tr.SEEKFOR,
            {"oid": oid, "from": Uid(bytes(12)), "nonce": nonce, "token": token, "sig": bytes(64), "cert": issuer_cert},
        ),
        "seeked": tr.encode_inner(tr.SEEKED, seeked),
    }


def sizes(body_bytes: int) -> dict[str, int]:
    """Record sizes above the 34-byte eTP header, with a one-byte record counter (below 24), as docs/trn.md."""
    records = transfer_records(body_bytes, b"")
    token = len(_token(body_bytes).encode())
    copied, committed = record_bytes(records["copied"]), record_bytes(records["committed"])
    if copied != committed:
        raise BenchError(f"copied is {copied} bytes, committed {committed}: ack_bytes assumes they are equal")
    return {
        "token_bytes": token,
        "copy_bytes": record_bytes(records["copy"]),
        "copy_overhead_bytes": record_bytes(records["copy"]) - token,
        "commit_bytes": record_bytes(records["commit"]),
        "ack_bytes": copied,
    }


# -- the bound: this machine's rates for the operations one transfer needs ----------------------------------


@dataclass
class CryptoBench:
    """Real keys, a real token and certificate, and the transfer's own records, made once."""

    token: Token
    issuer_key: profile.PublicKey
    records: list[bytes]
    key: profile.PrivateKey  # a card key: signs movement statements as the sender's card does
    aead: profile.CounterAead = field(default_factory=lambda: profile.CounterAead(bytes(32), b"A>B\x00"))

    @classmethod
    def make(cls, body_bytes: int) -> CryptoBench:
        now = datetime.now(UTC)
        ca = pki.CertificateAuthority.create("bench transfer crypto CA", now=now)
        key = profile.generate_private_key()
        issuer = Uid(bytes(range(12)))
        cert = ca.issue(pki.Role.AGENT, issuer, key.public_key(), now=now)
        token = mint(bytes(16), issuer, b"x" * body_bytes, lambda data: profile.sign(key, data))
        records = list(transfer_records(body_bytes, pki.cert_to_der(cert)).values())
        return cls(token, key.public_key(), records, key)

    def verify_rate(self, seconds: float) -> float:
        """ECDSA P-256 verifications per second: a token's issuer signature, as the authority and receiver check it."""

        def op() -> int:
            self.token.verify(self.issuer_key)  # SHA-256 of the body, then ECDSA P-256 / SHA-256 verify
            return 1

        return rate(op, seconds)

    def sign_rate(self, seconds: float) -> float:
        """ECDSA P-256 signatures per second: the sender's movement statement, as its card signs it at commit."""
        statement = tr.statement_bytes(self.token.oid, self.token.issuer, Uid(bytes(12)), bytes(4))

        def op() -> int:
            profile.sign(self.key, statement)
            return 1

        return rate(op, seconds)

    def seal_rate(self, seconds: float) -> float:
        """AES-256-GCM record seals per second, over one transfer's six records in turn."""
        records = self.records
        aad = bytes(40)
        ctr = 0

        def op() -> int:
            nonlocal ctr
            for inner in records:
                ctr += 1
                self.aead.seal(ctr, inner, aad)
            return len(records)

        return rate(op, seconds)

    def open_rate(self, seconds: float) -> float:
        """AES-256-GCM record opens per second, over one transfer's six records in turn."""
        aad = bytes(40)
        aead = profile.CounterAead(bytes(range(32)), b"B>A\x00")  # its own key: no (key, nonce) pair twice
        sealed = [(i + 1, aead.seal(i + 1, inner, aad)) for i, inner in enumerate(self.records)]

        def op() -> int:
            for ctr, ct in sealed:
                aead.open(ctr, ct, aad)
            return len(sealed)

        return rate(op, seconds)


def bound(rates: dict[str, float], ops: dict[str, int]) -> float:
    """Transfers per second if one transfer's operations ran one after another: 1 / sum(count / rate)."""
    return 1.0 / sum(n / rates[RATE_OF[op]] for op, n in ops.items() if n)


# -- watching the receivers' stores ---------------------------------------------------------------


class StoreWatch:
    """Read-only look at one card's committed trn holdings (its SQLite file, WAL: readers never block it)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA query_only=1")
        self._last: dict[bytes, tuple[bytes, str]] = {}

    def states(self, oids: list[bytes]) -> dict[bytes, str]:
        """oid -> state (a row of the move table) for those of ``oids`` the card holds (committed state)."""
        found: dict[bytes, str] = {}
        for i in range(0, len(oids), 500):  # SQLite's bound on host parameters
            chunk = oids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            keys = [_HOLDING_KEY + oid for oid in chunk]
            rows = self._db.execute(f"SELECT k, v FROM kv WHERE tbl=? AND k IN ({marks})", [STORE_TABLE, *keys])
            for k, tagged in rows:
                oid = bytes(k[len(_HOLDING_KEY) :])
                v = bytes(tagged[RECORD_TAG:])  # a stored card record is its integrity tag, then the value
                last = self._last.get(oid)
                if last is None or last[0] != v:  # decode only what changed since the last look
                    last = (v, tr.Holding.decode(oid, v).state)
                    self._last[oid] = last
                found[oid] = last[1]
        return found

    def close(self) -> None:
        self._db.close()


# -- CPU of the host processes ------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def host_cpu(net: TrnNet) -> dict[str, float]:
    """CPU seconds so far of every host process, and of this process (``driver``: the applications)."""
    cpu = {name: cpu_s(hp.proc.pid) if hp.proc is not None else 0.0 for name, hp in net.hosts.items()}
    cpu["driver"] = time.process_time()
    return cpu


# -- the driver ----------------------------------------------------------------------------------------


@dataclass
class Moving:
    to: str
    started: float


class Driver:
    """Keeps a set of tokens bouncing between wallets a and b; counts and times the transfers."""

    def __init__(self, net: TrnNet, apps: dict[str, AppClient], watches: dict[str, StoreWatch]) -> None:
        self.net = net
        self.apps = apps
        self.watches = watches
        self.moving: dict[bytes, Moving] = {}
        self.done = {True: 0, False: 0}  # every transfer completed by bounce(), traced and untraced
        # host CPU seconds spent in the measured rounds and the transfers they completed (traced, untraced)
        self.cpu = {True: dict.fromkeys([*net.hosts, "driver"], 0.0), False: dict.fromkeys([*net.hosts, "driver"], 0.0)}
        self.cpu_transfers = {True: 0, False: 0}
        self.failure: str | None = None
        self._readers = [asyncio.get_running_loop().create_task(self._read(w)) for w in apps]

    async def aclose(self) -> None:
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _read(self, wallet: str) -> None:
        """Every answer the wallet's card sends the application: trn.send must have started the transfer."""
        app = self.apps[wallet]
        while True:
            try:
                msg = await app.recv()
            except (TransportError, OSError) as exc:
                self.failure = f"the application's connection to host {wallet} broke: {exc}"
                return
            if msg.mtype == RESULT.code:
                r = RESULT.parse(msg)
                if not r["ok"]:
                    self.failure = f"card {wallet} refused trn.send: {r['reason']}"
            elif msg.mtype == cm.REFUSED.code:
                r = cm.REFUSED.parse(msg)
                self.failure = f"card {wallet} refused 0x{r['mtype']:04x}: {r['reason']}: {r['detail']}"

    async def send(self, oid: bytes, frm: str, to: str, traceable: bool) -> None:
        self.moving[oid] = Moving(to, time.perf_counter())
        await self.apps[frm].send(self.net.uids[frm], SEND, oid=oid, to=self.net.uids[to], traceable=traceable)

    def arrived(self) -> list[tuple[bytes, str, float]]:
        """Tokens now enabled at the wallet they were sent to: (oid, wallet, latency_s); they stop moving."""
        done = []
        for wallet, watch in self.watches.items():
            waiting = [oid for oid, m in self.moving.items() if m.to == wallet]
            if not waiting:
                continue
            states = watch.states(waiting)
            now = time.perf_counter()
            for oid in waiting:
                if states.get(oid) == "enabled":
                    done.append((oid, wallet, now - self.moving.pop(oid).started))
        return done

    def check(self) -> None:
        if self.failure is not None:
            raise BenchError(f"{self.failure}; logs:\n{self.net.logs()}")

    async def bounce(
        self,
        holders: dict[bytes, str],
        in_flight: int,
        seconds: float,
        traceable: bool,
        latencies: list[float] | None,
    ) -> float:
        """Keep ``in_flight`` tokens of ``holders`` moving between the wallets for ``seconds``; let them land.

        Half start at each wallet. A token that arrives is parked at its receiver, which sends the
        token parked there longest back the other way, so every token of the pool takes its turn (and
        a token leaves again only long after its previous sender has forgotten it: sent back before
        that sender took ``committed``, it would be refused as "already held").

        ``latencies`` None: a warm-up. Otherwise a measured round, which gets the latency of every
        transfer completed in it and lasts ``seconds`` or, on a machine so slow that fewer than
        ``in_flight`` transfers completed by then, until that many did. Returns transfers completed
        in the round per second of the round; ``holders`` ends up telling where each token is.
        """
        other = OTHER
        parked = {w: deque(oid for oid, at in holders.items() if at == w) for w in ("a", "b")}
        if min(len(q) for q in parked.values()) < in_flight // 2:
            raise BenchError(f"each wallet needs {in_flight // 2} tokens to start {in_flight} transfers")
        cpu_before = host_cpu(self.net)
        done_before = self.done[traceable]
        start = last = time.perf_counter()
        end = start + seconds
        at_least = 0 if latencies is None else in_flight
        for i in range(in_flight):
            w = "ab"[i % 2]
            await self.send(parked[w].popleft(), w, other[w], traceable)
        completed = 0
        while self.moving:
            await asyncio.sleep(POLL_S)
            self.check()
            now = time.perf_counter()
            if now - last > WAIT_TIMEOUT_S:
                raise BenchError(f"{len(self.moving)} token(s) never arrived; logs:\n{self.net.logs()}")
            for oid, wallet, latency in self.arrived():
                holders[oid] = wallet
                parked[wallet].append(oid)
                self.done[traceable] += 1
                if now <= end or completed < at_least:
                    completed += 1
                    last = now
                    if latencies is not None:
                        latencies.append(latency)
                    await self.send(parked[wallet].popleft(), wallet, other[wallet], traceable)
        if latencies is not None:  # a measured round (not the warm-up)
            for name, t in host_cpu(self.net).items():
                self.cpu[traceable][name] += t - cpu_before[name]
            self.cpu_transfers[traceable] += self.done[traceable] - done_before
        return completed / max(seconds, last - start) if completed else 0.0


# -- the run --------------------------------------------------------------------------------------------


def run(
    seconds: float = 6.0,
    in_flight: int = DEFAULT_IN_FLIGHT,
    *,
    rounds: int = 3,
    directory: str | None = None,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Measure every figure in ``rounds`` interleaved rounds (``seconds / rounds`` each); report the medians."""
    if not seconds > 0 or rounds < 1:
        raise ValueError("seconds must be > 0 and rounds >= 1")
    if not 2 <= in_flight <= MAX_IN_FLIGHT or in_flight % 2:
        raise ValueError(f"in_flight must be an even number 2..{MAX_IN_FLIGHT} (half the tokens start at each wallet)")
    tmp = Path(tempfile.mkdtemp(prefix="cardnet-bench-transfer-", dir=directory))
    try:
        return asyncio.run(_run(tmp, seconds, in_flight, rounds, progress))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _distribute(net: TrnNet, driver: Driver, oids: list[bytes]) -> dict[bytes, str]:
    """Mint ``oids`` on the agent card and send them, traced, half to each wallet; wait until all are enabled.

    They leave in chunks of ``DISTRIBUTE_CHUNK`` (each chunk enabled before the next leaves), so the
    agent's queue for a wallet whose session is still opening never overflows (``MAX_QUEUE``).
    """
    holders = {oid: "ab"[i % 2] for i, oid in enumerate(oids)}
    async with await net.app("agent") as agent:
        for oid in oids:
            await agent.send(net.uids["agent"], MINT, oid=oid, body=oid * (BODY_BYTES // len(oid)))
        for _ in oids:
            if not (await agent.recv_type(RESULT, timeout_s=WAIT_TIMEOUT_S))["ok"]:
                raise BenchError(f"the agent card refused to mint; logs:\n{net.logs()}")
        for i in range(0, len(oids), DISTRIBUTE_CHUNK):
            chunk = oids[i : i + DISTRIBUTE_CHUNK]
            for oid in chunk:
                driver.moving[oid] = Moving(holders[oid], time.perf_counter())
                await agent.send(net.uids["agent"], SEND, oid=oid, to=net.uids[holders[oid]])
            for _ in chunk:
                r = await agent.recv_type(RESULT, timeout_s=WAIT_TIMEOUT_S)
                if not r["ok"]:
                    raise BenchError(f"the agent card refused trn.send: {r['reason']}; logs:\n{net.logs()}")
            async with asyncio.timeout(WAIT_TIMEOUT_S):
                while driver.moving:
                    driver.arrived()
                    await asyncio.sleep(0.005)
    return holders


async def _check_end(net: TrnNet, traced: dict[bytes, str], untraced: dict[bytes, str], moves: int) -> dict[str, int]:
    """Through the cards' own interfaces: every token enabled on its one wallet, every trace recorded."""
    everything = traced | untraced
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        views = {w: await net.tokens(w) for w in ("a", "b")}
        wrong = [
            (oid, w, views[w].get(oid), views[OTHER[w]].get(oid))
            for oid, w in everything.items()
            if views[w].get(oid) != "enabled" or oid in views[OTHER[w]]
        ]
        # A last sender may not have taken ``committed`` yet (it still shows the token disabled): wait for it.
        if not wrong or any(st != "enabled" or other != "disabled" for _, _, st, other in wrong):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for oid, w, st, other in wrong:
        raise BenchError(f"token {oid.hex()}: {w} has {st}, the other wallet {other}; expected enabled on {w} alone")
    enabled = sum(1 for w in views.values() for s in w.values() if s == "enabled")
    chain_moves = 0
    for oid in everything:
        chain = await net.ask("authority", QUERY, CHAIN, oid=oid)
        if oid in untraced and len(chain["holders"]) != 1:
            raise BenchError(f"untraced token {oid.hex()} has {len(chain['holders'])} traced movements, expected 1")
        if oid in traced:
            chain_moves += len(chain["holders"]) - 1  # minus the agent's issue to the first wallet
    if chain_moves != moves:
        raise BenchError(f"the authority recorded {chain_moves} traced transfers, the benchmark completed {moves}")
    return {"tokens_enabled_at_end": enabled, "chain_movements": chain_moves}


async def _run(tmp: Path, seconds: float, in_flight: int, rounds: int, progress: Progress) -> dict[str, Any]:
    per = seconds / rounds
    progress("personalising the authority, agent and wallet cards under a CA")
    # exclusive=False: the bench watches the wallets' stores while their hosts run (a read-only query);
    # the hosts then pay SQLite's lock system calls on every commit, so the figure errs low.
    net = TrnNet(tmp, capacity_bytes=CARD_CAPACITY_BYTES, signer_every_s=1.0, exclusive=False)
    crypto = CryptoBench.make(BODY_BYTES)
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "transfers_per_s",
            "untraced_transfers_per_s",
            "sqlite_commit_per_s",
            "fsync_per_s",
            "ecdsa_verify_per_s",
            "ecdsa_sign_per_s",
            "aead_seal_per_s",
            "aead_open_per_s",
        )
    }
    latencies: list[float] = []
    untraced_latencies: list[float] = []
    traced_moves = untraced_moves = 0
    watches: dict[str, StoreWatch] = {}
    apps: dict[str, AppClient] = {}
    driver: Driver | None = None
    try:
        progress("starting the authority host and wallet hosts a and b")
        net.start()
        await net.setup_trace()
        watches = {w: StoreWatch(tmp / f"{w}.card.db") for w in ("a", "b")}
        for w in ("a", "b"):
            apps[w] = await net.app(w)
        driver = Driver(net, apps, watches)
        pool = TOKENS_PER_IN_FLIGHT * in_flight
        progress(f"minting {2 * pool} tokens and sending them, traced, to the wallets")
        oids = [i.to_bytes(16, "big") for i in range(1, 2 * pool + 1)]
        traced = await _distribute(net, driver, oids[:pool])
        untraced = await _distribute(net, driver, oids[pool:])
        progress("warming up")
        await driver.bounce(traced, 2, 0.0, True, None)  # opens the a-b sessions (queues wait only for that)
        await driver.bounce(traced, in_flight, min(per, 0.5), True, None)
        await driver.bounce(untraced, in_flight, min(per, 0.5), False, None)
        for r in range(1, rounds + 1):
            progress(f"round {r}/{rounds}: traced transfers, {in_flight} in flight")
            samples["transfers_per_s"].append(await driver.bounce(traced, in_flight, per, True, latencies))
            progress(f"round {r}/{rounds}: untraced transfers, {in_flight} in flight")
            samples["untraced_transfers_per_s"].append(
                await driver.bounce(untraced, in_flight, per, False, untraced_latencies)
            )
            progress(f"round {r}/{rounds}: the bound (durable commits on this disk, ECDSA, AES-GCM)")
            samples["sqlite_commit_per_s"].append(sqlite_commit_rate(str(tmp), per / 4))
            samples["fsync_per_s"].append(fsync_rate(str(tmp), per / 4))
            samples["ecdsa_verify_per_s"].append(crypto.verify_rate(per / 4))
            samples["ecdsa_sign_per_s"].append(crypto.sign_rate(per / 8))
            samples["aead_seal_per_s"].append(crypto.seal_rate(per / 8))
            samples["aead_open_per_s"].append(crypto.open_rate(per / 8))
        traced_moves, untraced_moves = driver.done[True], driver.done[False]
        cpu = {
            f"{kind}host_cpu_ms_per_transfer": {
                name: round(1e3 * t / max(1, driver.cpu_transfers[traced_kind]), 3)
                for name, t in driver.cpu[traced_kind].items()
            }
            for kind, traced_kind in (("", True), ("untraced_", False))
        }
        progress("checking every token and every trace through the cards")
        end = await _check_end(net, traced, untraced, traced_moves)
    except TimeoutError:
        raise BenchError(f"tokens went missing between the hosts; logs:\n{net.logs()}") from None
    finally:
        progress("stopping the processes")
        if driver is not None:
            await driver.aclose()
        for app in apps.values():
            with contextlib.suppress(Exception):
                await app.aclose()
        for watch in watches.values():
            watch.close()
        net.stop()
    result: dict[str, Any] = {k: round(statistics.median(v)) for k, v in samples.items() if k in FIGURES}
    rates = {k: statistics.median(v) for k, v in samples.items()}
    result["bound_transfers_per_s"] = round(bound(rates, TRACED_OPS))
    result["untraced_bound_transfers_per_s"] = round(bound(rates, UNTRACED_OPS))
    lat = sorted(latencies)
    result["p50_ms"] = round(1e3 * _quantile(lat, 0.50), 2)
    result["p99_ms"] = round(1e3 * _quantile(lat, 0.99), 2)
    result["untraced_p50_ms"] = round(1e3 * _quantile(sorted(untraced_latencies), 0.50), 2)
    result.update(sizes(BODY_BYTES))
    result.update(end)
    result.update(cpu)
    result.update(
        {k: round(v) for k, v in rates.items() if k not in FIGURES},
        body_bytes=BODY_BYTES,
        header_bytes=HEADER_BYTES,
        in_flight=in_flight,
        tokens=2 * TOKENS_PER_IN_FLIGHT * in_flight,
        traced_transfers_done=traced_moves,
        untraced_transfers_done=untraced_moves,
        latency_samples=len(lat),
        traced_ops_per_transfer=TRACED_OPS,
        untraced_ops_per_transfer=UNTRACED_OPS,
        group_commit_in_bound=False,
        seconds_per_figure=seconds,
        rounds=rounds,
        samples={k: [round(x) for x in v] for k, v in samples.items()},
    )
    result["transfers_vs_bound"] = round(result["transfers_per_s"] / result["bound_transfers_per_s"], 3)
    result["untraced_vs_bound"] = round(
        result["untraced_transfers_per_s"] / result["untraced_bound_transfers_per_s"], 3
    )
    result["targets"] = {
        "transfers_per_s >= 0.5 x bound_transfers_per_s": result["transfers_vs_bound"] >= 0.5,
    }
    return result


def _quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of a sorted, non-empty list."""
    if not sorted_values:
        raise BenchError("no traced transfer completed: lengthen --seconds")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]
