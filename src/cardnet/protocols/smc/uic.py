"""Uniform Interactive Consistency (UIC) among security modules under general omission, t < n/2, sans-I/O.

Theory of operation. ``n`` modules run ``t + 1`` synchronous rounds (:func:`rounds_for`). Each keeps the partial
vector of inputs it knows (its own at first) and the set of modules it trusts (all at first). Every round it sends
both to every other module; then it *accepts* the message of module ``j`` only if ``j`` is still in its trusted set
and ``j``'s message says ``j`` still trusts it (mutual trust), joins the vectors it accepted into its own, and
trusts from now on exactly the modules it accepted (and itself). A module that ends a round trusting fewer than
``n - t`` modules knows it is faulty and halts without deciding; one that completes round ``t + 1`` decides its
vector (None for the inputs it never learned: the paper's bottom). This is the mutual-trust, halt-when-isolated
scheme of Parvedy and Raynal (2003) that TrustedPals uses, carried from one estimate to a vector.

Why it holds (full sketch in docs/uic.md): correct modules always accept each other, so they never halt and
decide (termination) with every correct input (validity). Trust only shrinks, so ``i`` accepting ``j`` in round
``r`` means ``i`` accepted all of ``j``'s earlier messages: a module that first learns an input in round ``r``
learned it along a chain of modules that first knew it in rounds ``0, 1, .., r``. A decider accepted at least
``n - t > t`` modules in round ``t + 1``, so at least one correct one; and that correct module accepted the
decider in round ``t``. Counting the at most ``t`` faulty modules along the chains then shows that an input known
to one decider is known to every decider (uniform agreement), faulty deciders included.

The caller (an applet) drives the rounds: :meth:`Uic.messages_for_round` before sending, then
:meth:`Uic.receive_round` with what arrived (a missing sender is an omission); it encodes, pads and encrypts the
payloads (:mod:`cardnet.protocols.smc.uic_wire`) and stops calling a module that crashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.uic_wire import DEFAULT_MAX_INPUT_BYTES, UicPayload, check_sizes

Vector = tuple[bytes | None, ...]
"""A decision: one entry per module, its input or None (bottom)."""

RUNNING: Final = "running"
DECIDED: Final = "decided"
HALTED: Final = "halted"


def rounds_for(t: int) -> int:
    """Rounds of a UIC run that tolerates ``t`` faulty modules: ``t + 1`` (optimal for uniform agreement)."""
    return t + 1


def check_parameters(n: int, t: int) -> None:
    """Refuse ``n``/``t`` for which UIC under general omission cannot be solved or is out of range."""
    if type(n) is not int or n < 1:
        raise ProtocolError("bad_n", f"a UIC run needs at least one module, got n={n!r}")
    if type(t) is not int or t < 0:
        raise ProtocolError("bad_t", f"t counts faulty modules and is at least 0, got t={t!r}")
    if 2 * t >= n:
        raise ProtocolError(
            "too_many_faults",
            f"UIC under general omission needs a majority of correct modules (t < n/2), got n={n}, t={t}: "
            f"lower t to at most {(n - 1) // 2}, or run with at least {2 * t + 1} modules",
        )


class Uic:
    """Module ``me``'s side of one UIC run among ``n`` modules tolerating ``t`` faulty ones.

    ``my_input`` is at most ``max_input_bytes`` long; every module of a run must use the same ``n``, ``t`` and
    bound. ``decided`` is the decision vector once round ``t + 1`` completes; ``halted`` is True once the module
    has found out that it is faulty (it then sends nothing and never decides).
    """

    def __init__(
        self, n: int, t: int, me: int, my_input: bytes, *, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    ) -> None:
        check_parameters(n, t)
        check_sizes(n, max_input_bytes)
        if type(me) is not int or not 0 <= me < n:
            raise ProtocolError("bad_me", f"me is this module's index 0..{n - 1}, got {me!r}")
        if type(my_input) is not bytes:
            raise ProtocolError("bad_input", f"an input is bytes, got {type(my_input).__name__}: encode it first")
        if len(my_input) > max_input_bytes:
            raise ProtocolError(
                "bad_input",
                f"an input is at most {max_input_bytes} bytes (the declared bound), got {len(my_input)}: "
                "shorten it or declare a larger bound for every module of the run",
            )
        self.n, self.t, self.me, self.max_input_bytes = n, t, me, max_input_bytes
        self._known: list[bytes | None] = [None] * n
        self._known[me] = my_input
        self._trusted = frozenset(range(n))
        self._round = 0  # rounds completed
        self._status = RUNNING

    # --- the rules (each one small, so that a test can break exactly one and see the checker object) ----------

    @property
    def rounds(self) -> int:
        """Rounds of this run: the module decides when it completes round ``rounds``."""
        return rounds_for(self.t)

    @property
    def quorum(self) -> int:
        """Modules (itself included) a module must still trust after a round to go on: ``n - t``."""
        return self.n - self.t

    def _accepts(self, sender: int, payload: UicPayload) -> bool:
        """Mutual trust: ``sender`` is still trusted here, and the sender still trusts this module."""
        return sender in self._trusted and self.me in payload.trusted

    # --- state -----------------------------------------------------------------------------------------------

    @property
    def round(self) -> int:
        """Rounds completed so far (0 before the first)."""
        return self._round

    @property
    def status(self) -> str:
        """``running``, ``decided`` or ``halted``."""
        return self._status

    @property
    def done(self) -> bool:
        return self._status != RUNNING

    @property
    def halted(self) -> bool:
        return self._status == HALTED

    @property
    def decided(self) -> Vector | None:
        """The decision vector, or None while running and after halting."""
        return tuple(self._known) if self._status == DECIDED else None

    @property
    def trusted(self) -> frozenset[int]:
        return self._trusted

    @property
    def known(self) -> Vector:
        """The inputs this module knows so far (None where unknown)."""
        return tuple(self._known)

    # --- the round API -----------------------------------------------------------------------------------------

    def messages_for_round(self, r: int) -> dict[int, UicPayload]:
        """The payload for every other module in round ``r`` (the same payload to each); nothing once done."""
        self._check_round_number(r)
        if self.done:
            return {}
        self._check_next(r)
        payload = UicPayload(round=r, sender=self.me, trusted=self._trusted, known=tuple(self._known))
        return {j: payload for j in range(self.n) if j != self.me}

    def receive_round(self, r: int, received: Mapping[int, UicPayload]) -> None:
        """Complete round ``r`` with the payloads that arrived (sender -> payload); a missing sender is an omission.

        Every payload is checked before anything changes: one that is not from its key's module, not for round
        ``r`` or not consistent with what this module knows raises :class:`ProtocolError` and leaves the module
        as it was. A halted module ignores the call.
        """
        self._check_round_number(r)
        if self.halted:
            return
        if self.done:
            raise ProtocolError("wrong_round", f"module {self.me} decided after round {self._round}: the run is over")
        self._check_next(r)
        for sender, payload in received.items():
            self._check_payload(r, sender, payload)
        accepted = {self.me} | {j for j, p in received.items() if self._accepts(j, p)}
        self._round = r
        self._trusted = frozenset(accepted)
        if len(accepted) < self.quorum:
            self._status = HALTED  # it knows it is faulty: stopping keeps agreement uniform
            return
        for j in accepted - {self.me}:
            for k, v in enumerate(received[j].known):
                if v is not None:
                    self._known[k] = v
        if r == self.rounds:
            self._status = DECIDED

    # --- checks --------------------------------------------------------------------------------------------------

    def _check_round_number(self, r: int) -> None:
        if type(r) is not int or not 1 <= r <= self.rounds:
            raise ProtocolError("wrong_round", f"rounds of this run are 1..{self.rounds}, got {r!r}")

    def _check_next(self, r: int) -> None:
        if r != self._round + 1:
            raise ProtocolError(
                "wrong_round",
                f"module {self.me} has completed {self._round} rounds, so the next is {self._round + 1}, "
                f"not {r}: run the rounds in order",
            )

    def _check_payload(self, r: int, sender: object, payload: object) -> None:
        if type(sender) is not int or not 0 <= sender < self.n or sender == self.me:
            raise ProtocolError("wrong_sender", f"payloads come from other modules 0..{self.n - 1}, got {sender!r}")
        if not isinstance(payload, UicPayload):
            raise ProtocolError("bad_payload", f"module {sender} sent a {type(payload).__name__}, not a UicPayload")
        if payload.sender != sender:
            raise ProtocolError("wrong_sender", f"a payload from module {sender} names module {payload.sender}")
        if payload.round != r:
            raise ProtocolError("wrong_round", f"module {sender}'s payload is for round {payload.round}, not {r}")
        if len(payload.known) != self.n:
            raise ProtocolError(
                "bad_payload",
                f"module {sender}'s vector has {len(payload.known)} entries, not {self.n}: "
                "every module of a run must use the same n",
            )
        if len(payload.trusted) < (self.n if r == 1 else self.quorum):
            raise ProtocolError(
                "bad_payload",
                f"module {sender} trusts {len(payload.trusted)} modules in round {r}, which a running module never "
                "does: every module of a run must use the same n and t",
            )
        for k, v in enumerate(payload.known):
            if v is None:
                continue
            if len(v) > self.max_input_bytes:
                raise ProtocolError("bad_payload", f"module {sender} sends an input over the declared bound")
            mine = self._known[k]
            if mine is not None and mine != v:
                raise ProtocolError(
                    "conflicting_value", f"module {sender} says module {k}'s input differs from the one known here"
                )
