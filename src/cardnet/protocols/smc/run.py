"""One security module's part in an SMC run, sans-I/O: joins, a UIC on rho, rho fake rounds, UIC, a padded tail.

Theory of operation (TrustedPals section 5, DESIGN.md section 6):

* A run is fixed by its :class:`RunSpec`: a fresh 16-byte run id, the members' card Uids in order (a module's
  index is its place in that list), the :class:`~cardnet.protocols.smc.registry.Agreement` (function and code
  hash, ``n``, ``t``, input bound) and ``rho_max``. Every host gives its module the same spec.
* **Joins.** Before any round, each module sends every other one a :class:`Join` over the cards' authenticated,
  encrypted TRN session (the applet's business): the spec's digest (a module that was given other terms is
  found out before any input is taken) and a fresh AES-256-GCM key for the frames it will send to that module.
  A module takes its host's input once at least ``n - t`` members (itself included) joined with the same terms
  (:attr:`ModuleRun.agreed`); hosts wait for every join until the first round, but a faulty host that withholds
  its module's joins cannot hold the others back: its frames just do not open (omissions).
* **Rounds.** ``R = 2 (t + 1) + rho_max`` rounds, each one :meth:`ModuleRun.tick` (the host's Clock drives them; a
  tick completes the previous round with the frames that arrived and emits this round's). In every round every
  module sends every other one exactly one frame of :func:`frame_bytes` bytes: a 2-byte length, a UIC payload
  or nothing (a dummy), zero padding, all sealed under the pair's key with the round number as the GCM counter
  and the run id, round and both indices as associated data (no replay across runs, rounds or directions).
  Rounds ``1 .. t + 1`` run a first UIC on 16-byte random shares; ``rho`` (0..rho_max) is a hash of the vector
  it decides, so every module that goes on has the same rho, and no host knows it (the shares travel sealed).
  Then ``rho`` fake rounds, the ``t + 1`` rounds of the UIC on the inputs, and ``rho_max - rho`` tail rounds:
  the number of rounds, the frames and their sizes are the same whatever the inputs, and where the real rounds
  end does not show (:attr:`ModuleRun.public_status` says ``running`` until the last tick).
* **Result.** At tick ``R + 1`` a module that decided computes ``F(D)``; one that halted (it found itself
  faulty in either UIC) or had no input (``out``) has no result. A frame that fails authentication is an
  omission.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cardnet.crypto.errors import CryptoError
from cardnet.crypto.profile import CounterAead
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.registry import MAX_TERMS_BYTES, Agreement, FunctionSpec
from cardnet.protocols.smc.uic import Uic, Vector, rounds_for
from cardnet.protocols.smc.uic_wire import MAX_MODULES, UicPayload, decode_payload, encode_payload, max_payload_bytes
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Schema, Uid, UidType, UInt

RUN_ID_BYTES: Final = 16
KEY_BYTES: Final = 32
CONTRIB_BYTES: Final = 16
DIGEST_BYTES: Final = 32
TAG_BYTES: Final = 16
LENGTH_BYTES: Final = 2
DEFAULT_RHO_MAX: Final = 3
MAX_RHO: Final = 32
_NONCE_PREFIX: Final = b"smc\x00"
_RHO_LABEL: Final = b"cardnet/smc/rho/v1\x00"

JOINING: Final = "joining"
READY: Final = "ready"
RUNNING: Final = "running"
DECIDED: Final = "decided"
HALTED: Final = "halted"
OUT: Final = "out"  # never got ready (or its input) before the first round: it takes no part

SPEC = Schema(
    "smc.spec",
    [
        Field(0, "run", Bytes(RUN_ID_BYTES, RUN_ID_BYTES)),
        Field(1, "members", ListOf(UidType(), MAX_MODULES)),
        Field(2, "terms", Bytes(MAX_TERMS_BYTES, 1)),
        Field(3, "rho_max", UInt(MAX_RHO)),
    ],
)
JOIN = Schema(
    "smc.join",
    [
        Field(0, "run", Bytes(RUN_ID_BYTES, RUN_ID_BYTES)),
        Field(1, "spec", Bytes(DIGEST_BYTES, DIGEST_BYTES)),
        Field(2, "key", Bytes(KEY_BYTES, KEY_BYTES)),
        Field(3, "contrib", Bytes(CONTRIB_BYTES, CONTRIB_BYTES)),
        Field(4, "have", Bool()),
    ],
)


def _decode(schema: Schema, raw: bytes) -> dict[str, object]:
    try:
        return schema.decode(raw)
    except DecodeError as exc:
        raise ProtocolError(exc.reason, f"{schema.name}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What every module of one run is given: run id, members (index = place), terms and ``rho_max``."""

    run: bytes
    members: tuple[Uid, ...]
    terms: Agreement
    rho_max: int = DEFAULT_RHO_MAX

    def __post_init__(self) -> None:
        if type(self.run) is not bytes or len(self.run) != RUN_ID_BYTES:
            raise ProtocolError("bad_spec", f"a run id is {RUN_ID_BYTES} random bytes")
        if len(self.members) != self.terms.n:
            raise ProtocolError(
                "bad_spec", f"the terms say n={self.terms.n} but the run names {len(self.members)} members"
            )
        if len(set(self.members)) != len(self.members) or any(not m.is_card for m in self.members):
            raise ProtocolError("bad_spec", "the members are distinct cards (port 0), one module each")
        if type(self.rho_max) is not int or not 0 <= self.rho_max <= MAX_RHO:
            raise ProtocolError("bad_spec", f"rho_max is 0..{MAX_RHO}, got {self.rho_max!r}")

    @property
    def n(self) -> int:
        return self.terms.n

    @property
    def uic_rounds(self) -> int:
        return rounds_for(self.terms.t)

    @property
    def rounds(self) -> int:
        """Rounds every module runs, whatever happens: ``2 (t + 1) + rho_max`` (the rho UIC, the fake rounds and
        the input UIC, then the tail)."""
        return 2 * self.uic_rounds + self.rho_max

    def index(self, uid: Uid) -> int:
        try:
            return self.members.index(uid)
        except ValueError:
            raise ProtocolError("not_a_member", f"{uid} is not a member of run {self.run.hex()}") from None

    def encode(self) -> bytes:
        return SPEC.encode(
            {"run": self.run, "members": list(self.members), "terms": self.terms.encode(), "rho_max": self.rho_max}
        )

    @classmethod
    def decode(cls, raw: bytes) -> RunSpec:
        f = _decode(SPEC, raw)
        members = f["members"]
        assert isinstance(members, list)
        terms = f["terms"]
        assert isinstance(terms, bytes)
        rho_max = f["rho_max"]
        assert isinstance(rho_max, int)
        run = f["run"]
        assert isinstance(run, bytes)
        return cls(run, tuple(members), Agreement.decode(terms), rho_max)

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def join_wait_s(now: float, start_at: float) -> float:
    """How long a party that joins a planned run at ``now`` waits for the other members' joins: until ``start_at``,
    the run's first round, which is the join deadline every party is told (unix seconds on the hosts' clocks, given
    by the caller: nothing here reads a clock).

    The wait ends at the deadline itself, not a round before it: a join that reaches a module before its first tick
    counts there (:meth:`ModuleRun.accept_join`), and its host gives the input only after the wait, so a member
    that joins just before the deadline takes part. At or after the deadline a join is ``too_late``: the other
    modules have begun their rounds without it, and its own could take no input.
    """
    if now >= start_at:
        raise ProtocolError(
            "too_late",
            f"the join deadline (the first round, at {start_at:.3f}) passed {now - start_at:.3f} s ago: a module "
            "joins and takes its input before the first round",
        )
    return start_at - now


@dataclass(frozen=True, slots=True)
class Join:
    """A module's join to one other member: the spec digest, its frame key for that member, its rho share, and
    whether it has that member's join already (``have``: a member told False sends its join again, so a join lost
    on the way is resent for as long as its addressee asks)."""

    run: bytes
    spec: bytes
    key: bytes
    contrib: bytes
    have: bool = False

    def encode(self) -> bytes:
        return JOIN.encode(
            {"run": self.run, "spec": self.spec, "key": self.key, "contrib": self.contrib, "have": self.have}
        )

    @classmethod
    def decode(cls, raw: bytes) -> Join:
        f = _decode(JOIN, raw)
        run, spec, key, contrib, have = f["run"], f["spec"], f["key"], f["contrib"], f["have"]
        assert isinstance(run, bytes) and isinstance(spec, bytes) and isinstance(key, bytes)
        assert isinstance(contrib, bytes) and isinstance(have, bool)
        return cls(run, spec, key, contrib, have)


def plaintext_bytes(n: int, max_input_bytes: int) -> int:
    """A frame's padded plaintext: the 2-byte length and room for the longest UIC payload of either UIC (the
    rho shares' or the inputs')."""
    return LENGTH_BYTES + max_payload_bytes(n, max(max_input_bytes, CONTRIB_BYTES))


def frame_bytes(n: int, max_input_bytes: int) -> int:
    """Every frame's ciphertext length in a run among ``n`` modules with this input bound."""
    return plaintext_bytes(n, max_input_bytes) + TAG_BYTES


def _aad(run: bytes, r: int, sender: int, receiver: int) -> bytes:
    return run + r.to_bytes(4, "big") + bytes((sender, receiver))


def rho_of(run: bytes, shares: Sequence[bytes | None], rho_max: int) -> int:
    """The number of fake rounds, 0..rho_max, from the rho shares the first UIC decided (None: a share missing)."""
    h = hashlib.sha256(_RHO_LABEL + run)
    for share in shares:
        h.update(b"\x00" if share is None else b"\x01" + share)
    return int.from_bytes(h.digest()[:8], "big") % (rho_max + 1)


class ModuleRun:
    """Module ``me``'s run: :meth:`join_for` / :meth:`accept_join`, :meth:`give_input`, then :meth:`tick` 1..R+1.

    ``keys`` holds this module's fresh frame key for each other member, ``contrib`` its rho share (both from the
    card's randomness). ``fn`` is the function the terms name, already checked against the card's registry.
    """

    def __init__(self, spec: RunSpec, me: int, fn: FunctionSpec, keys: Mapping[int, bytes], contrib: bytes) -> None:
        if set(keys) != set(range(spec.n)) - {me} or any(len(k) != KEY_BYTES for k in keys.values()):
            raise ProtocolError("bad_keys", f"a module needs one {KEY_BYTES}-byte key for each other member")
        if len(contrib) != CONTRIB_BYTES:
            raise ProtocolError("bad_keys", f"a rho contribution is {CONTRIB_BYTES} bytes")
        self.spec, self.me, self.fn = spec, me, fn
        self._digest = spec.digest()
        self._send = {j: CounterAead(k, _NONCE_PREFIX) for j, k in keys.items()}
        self._keys = dict(keys)
        self._contrib = contrib
        self._recv: dict[int, CounterAead] = {}
        self._joins: dict[int, Join] = {}
        self._inbox: dict[int, dict[int, bytes]] = {}  # round -> sender -> payload (b"": a dummy), authentic only
        self._input: bytes | None = None
        self._setup: Uic | None = None  # the first UIC, on the rho shares
        self._uic: Uic | None = None  # the second, on the inputs
        self._rho: int | None = None
        self._ticks = 0
        self._status = JOINING
        self._result: bytes | None = None
        self.plain = plaintext_bytes(spec.n, spec.terms.max_input_bytes)
        self.frame = self.plain + TAG_BYTES

    # --- joining -----------------------------------------------------------------------------------------------

    def join_for(self, j: int) -> Join:
        """The join this module sends member ``j`` (the same keys every time it is asked)."""
        return Join(self.spec.run, self._digest, self._keys[j], self._contrib, j in self._recv)

    def accept_join(self, j: int, join: Join) -> None:
        """Take member ``j``'s join; a second one must be the same (a resent copy)."""
        if j == self.me or not 0 <= j < self.spec.n:
            raise ProtocolError("not_a_member", f"module {j} is not another member of this run")
        if join.run != self.spec.run:
            raise ProtocolError("wrong_run", "the join is for another run")
        if join.spec != self._digest:
            raise ProtocolError(
                "terms_differ",
                f"member {j} was given other terms for run {self.spec.run.hex()} (function, code hash, n, t, bound, "
                "members or rho_max): every host must start the run with the same spec",
            )
        known = self._joins.get(j)
        if known is not None:
            if (known.key, known.contrib) != (join.key, join.contrib):
                raise ProtocolError("join_changed", f"member {j} sent a different join for the same run")
            return
        self._joins[j] = join
        if self._ticks == 0:  # (a join that comes after the first round is too late to count)
            self._recv[j] = CounterAead(join.key, _NONCE_PREFIX)
            if self._status == JOINING and self.ready:
                self._status = READY

    @property
    def joined(self) -> frozenset[int]:
        """Members whose join arrived (this module included)."""
        return frozenset({self.me, *self._recv})

    @property
    def ready(self) -> bool:
        """Every other member's join arrived, with the same terms."""
        return len(self._recv) == self.spec.n - 1

    @property
    def agreed(self) -> bool:
        """At least ``n - t`` members (this one included) joined with the same terms: enough to take the input.

        A member whose join never came (its host withheld it, or it was not started) counts as faulty: its frames
        do not open here. Hosts wait for every join until the start; a faulty host cannot hold the others back.
        """
        return len(self.joined) >= self.spec.n - self.spec.terms.t

    def give_input(self, raw: bytes) -> None:
        """The host's input, taken only once enough members agreed on the terms, and before the first round."""
        if self._ticks > 0:
            raise ProtocolError("too_late", f"module {self.me} takes its input before the first round")
        if not self.agreed:
            raise ProtocolError(
                "not_agreed",
                f"module {self.me} takes its input once at least n - t = {self.spec.n - self.spec.terms.t} members "
                f"joined with the same terms; {len(self.joined)} of {self.spec.n} have",
            )
        if self._input is not None:
            raise ProtocolError("input_given", "this module already has its input for this run")
        self.fn.check_input(raw, max_input_bytes=self.spec.terms.max_input_bytes)
        self._input = raw

    # --- state -------------------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """What the module knows of itself (``running``, ``decided``, ``halted``, ...); see :attr:`public_status`."""
        return self._status

    @property
    def public_status(self) -> str:
        """The status a host may see: ``running`` from the first tick to the last round, whatever happened
        inside (a ``decided`` or ``halted`` before the padded tail would tell the host where the real rounds
        ended, hence rho); the true end state after the last tick."""
        if 0 < self._ticks <= self.spec.rounds and self._status in (RUNNING, DECIDED, HALTED):
            return RUNNING
        return self._status

    @property
    def ticks(self) -> int:
        """Ticks done: rounds emitted (and, from the second, the previous one completed)."""
        return self._ticks

    @property
    def finished(self) -> bool:
        return self._ticks == self.spec.rounds + 1

    @property
    def result(self) -> bytes | None:
        """``F(D)`` once the last round is done, if this module decided."""
        return self._result

    @property
    def vector(self) -> Vector | None:
        """The input vector this module decided (it never leaves the module: only ``F`` of it does)."""
        return self._uic.decided if self._uic is not None else None

    @property
    def rho(self) -> int | None:
        """The fake rounds, once the first UIC decided them (hidden from the host)."""
        return self._rho

    @property
    def my_input(self) -> bytes | None:
        return self._input

    # --- rounds ------------------------------------------------------------------------------------------------

    def _phase(self, r: int) -> tuple[Uic, int, int] | None:
        """(the UIC, its round, its input bound) that round ``r`` carries, or None for a fake or tail round (or a
        round this module cannot place yet: rho is known once the first UIC decided)."""
        u = self.spec.uic_rounds
        if 1 <= r <= u:
            return (self._setup, r, CONTRIB_BYTES) if self._setup is not None else None
        if self._rho is None or self._uic is None:
            return None
        k = r - u - self._rho
        return (self._uic, k, self.spec.terms.max_input_bytes) if 1 <= k <= u else None

    def offer(self, r: int, j: int, ct: bytes) -> bool:
        """A frame from member ``j`` for round ``r`` arrived: kept if it opens under ``j``'s key for that round.

        Only the round being collected (the last ticked) and the next are kept (a member whose clock runs a little
        ahead); the first authentic frame per sender and round counts. A frame that does not open (forged by a
        host, replayed from another run, round or direction) is dropped here, so it cannot crowd out the real one.
        """
        if self._status == OUT or not self._ticks <= r <= self._ticks + 1 or self.finished:
            return False
        if not 0 <= j < self.spec.n or j == self.me or j in self._inbox.get(r, {}):
            return False
        payload = self._open(r, j, ct)
        if payload is None:
            return False
        self._inbox.setdefault(r, {})[j] = payload
        return True

    @property
    def round_full(self) -> bool:
        """Every joined member's frame for the round being collected is in: the round can end now.

        The host's Clock ends a round at its deadline at the latest; a module whose frames have all arrived ends
        it at once (a communication-closed round): without faults a run goes as fast as the frames travel. A
        module is never more than one round ahead of another: it needs that one's frame of the current round.
        A member whose join never came (before the first tick) is not waited for: no frame of its can open here
        (:meth:`offer`), so waiting out every deadline for it would only slow the run, and leave the members that
        did join no slack for a frame a loaded host sends late (with ``n - t`` joined, one such frame halts them).
        """
        if self._status == OUT or self.finished or self._ticks == 0:
            return False
        return len(self._inbox.get(self._ticks, ())) == len(self._recv)

    def tick(self, r: int, arrived: Mapping[int, bytes] | None = None) -> dict[int, bytes]:
        """Complete round ``r - 1`` with the frames offered (and those in ``arrived``), emit round ``r``'s.

        Tick ``R + 1`` emits nothing and ends the run (:attr:`result`).
        """
        total = self.spec.rounds
        if r != self._ticks + 1 or r > total + 1:
            raise ProtocolError(
                "wrong_round",
                f"module {self.me} has done {self._ticks} of {total + 1} ticks: the next is {self._ticks + 1}, not {r}",
            )
        for j, ct in (arrived or {}).items():
            self.offer(r - 1, j, ct)
        if r == 1:
            self._start()
        else:
            self._complete(r - 1, self._inbox.pop(r - 1, {}))
        self._ticks = r
        if r == total + 1:
            self._finish()
            return {}
        return self._emit(r)

    def stop(self) -> None:
        """The module takes no further part (its host crashed it out): no frames, no result."""
        self._status = OUT
        self._setup = self._uic = None
        self._result = None

    def _start(self) -> None:
        if self._input is None:
            self._status = OUT  # no input (too few joins, or its host gave none): it cannot take part
            return
        t = self.spec.terms.t
        self._setup = Uic(self.spec.n, t, self.me, self._contrib, max_input_bytes=CONTRIB_BYTES)
        self._status = RUNNING

    def _open(self, r: int, j: int, ct: bytes) -> bytes | None:
        """The payload of an authentic frame (``b""``: a dummy), None if it does not open."""
        aead = self._recv.get(j)
        if aead is None or len(ct) != self.frame:
            return None
        try:
            plain = aead.open(r, ct, _aad(self.spec.run, r, j, self.me))
        except CryptoError:
            return None  # forged, replayed or from another round: an omission
        length = int.from_bytes(plain[:LENGTH_BYTES], "big")
        if LENGTH_BYTES + length > len(plain):
            return None
        return plain[LENGTH_BYTES : LENGTH_BYTES + length]

    def _complete(self, r: int, inbox: Mapping[int, bytes]) -> None:
        phase = self._phase(r)
        if self._status != RUNNING or phase is None:
            return
        uic, u, bound = phase
        if uic.done:
            return
        received: dict[int, UicPayload] = {}
        for j, raw in inbox.items():
            if not raw:
                continue  # a dummy where a payload was due: that member is out (an omission)
            try:
                payload = decode_payload(raw, n=self.spec.n, max_input_bytes=bound)
            except ProtocolError:
                continue
            if payload.round == u and payload.sender == j:
                received[j] = payload
        try:
            uic.receive_round(u, received)
        except ProtocolError:
            self._status = HALTED  # authenticated frames never disagree; if they do, stopping keeps agreement
            return
        if uic.halted:
            self._status = HALTED
        elif uic is self._setup and uic.decided is not None:
            self._rho = rho_of(self.spec.run, uic.decided, self.spec.rho_max)
            assert self._input is not None
            t = self.spec.terms.t
            self._uic = Uic(self.spec.n, t, self.me, self._input, max_input_bytes=self.spec.terms.max_input_bytes)
        elif uic is self._uic and uic.decided is not None:
            self._status = DECIDED

    def _payload(self, r: int) -> bytes:
        """Round ``r``'s UIC payload, encoded; empty in a fake or tail round and once UIC is done (a dummy)."""
        phase = self._phase(r)
        if self._status == RUNNING and phase is not None and not phase[0].done:
            uic, u, bound = phase
            msgs = uic.messages_for_round(u)
            if msgs:
                return encode_payload(next(iter(msgs.values())), max_input_bytes=bound)
        return b""

    def _pad(self, payload: bytes) -> bytes:
        """The frame's plaintext: the payload's 2-byte length, the payload, zeros to the run's one length."""
        plain = len(payload).to_bytes(LENGTH_BYTES, "big") + payload
        return plain + bytes(self.plain - len(plain))

    def _emit(self, r: int) -> dict[int, bytes]:
        plain = self._pad(self._payload(r))
        run, me = self.spec.run, self.me
        return {j: aead.seal(r, plain, _aad(run, r, me, j)) for j, aead in self._send.items()}

    def _finish(self) -> None:
        uic = self._uic
        if self._status == DECIDED and uic is not None and uic.decided is not None:
            self._result = self.fn.evaluate(uic.decided)
        elif self._status == RUNNING:
            self._status = HALTED  # (cannot happen: UIC ends decided or halted within its rounds)
