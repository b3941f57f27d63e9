"""The Adversary (TrustedPals 7.2): a host that drops its own security module's messages, for demonstrations.

TrustedPals assumes general omission: a faulty host may drop any message its module sends or receives,
transiently or for good, or stop the module. This guard does that on purpose, from the host configuration's
``[adversary]`` section (``cardnet smc run --adversary`` writes one for the hosts it makes faulty)::

    [adversary]
    drop_out = 0.3          # each matching message a local card sends is dropped with this probability
    drop_in = 0.3           # ... and each one that arrives for a local card
    mtypes = ["smc.frame"]  # which messages (default: the modules' round frames)
    seed = 7                # optional: the same drops every run
    stop_round = 4          # optional: from this round of every run on, drop every frame: the module stops

``1.0`` drops everything (a permanent omission: to the others the module has crashed); ``stop_round`` stops the
module in the middle of each run (its frames carry the round number in clear). Drops are counted
(:attr:`Adversary.dropped`) and logged at debug level.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cardnet.host.guard import Guard, Verdict
from cardnet.wire import DecodeError, Message
from cardnet.wire.mtypes import lookup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdversaryConfig:
    drop_out: float = 0.0
    drop_in: float = 0.0
    mtypes: tuple[str, ...] = ("smc.frame",)
    seed: int | None = None
    stop_round: int | None = None


@dataclass
class Adversary:
    """Drops matching messages of the host's cards (out) and for them (in) with the configured probabilities."""

    config: AdversaryConfig
    codes: frozenset[int]
    local_domains: Callable[[], Collection[bytes]]
    rng: random.Random = field(default_factory=random.Random)
    dropped: int = 0

    def guard(self) -> Guard:
        return Guard("adversary", self.check)

    def check(self, msg: Message, origin: object) -> Verdict:
        if msg.mtype not in self.codes:
            return Verdict.PASS
        local = self.local_domains()
        stop = self.config.stop_round
        if stop is not None and (msg.src.domain in local) != (msg.dst.domain in local):
            r = _round_of(msg)
            if r is not None and r >= stop:
                self.dropped += 1
                return Verdict.DROP
        if msg.src.domain in local and msg.dst.domain not in local:
            p = self.config.drop_out
        elif msg.dst.domain in local and msg.src.domain not in local:
            p = self.config.drop_in
        else:
            return Verdict.PASS
        if p > 0 and (p >= 1.0 or self.rng.random() < p):
            self.dropped += 1
            log.debug("adversary dropped 0x%04x %s -> %s", msg.mtype, msg.src, msg.dst)
            return Verdict.DROP
        return Verdict.PASS


def _round_of(msg: Message) -> int | None:
    """The round of an ``smc.frame`` (its cleartext ``round`` field), None for anything else."""
    try:
        fields = lookup(msg.mtype).parse(msg)
    except (KeyError, DecodeError):
        return None
    r = fields.get("round")
    return r if isinstance(r, int) else None
