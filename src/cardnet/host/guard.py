"""Guard (TENeT 4.3.6): filter conditions and handlers on messages arriving at the dispatch table.

A guard returns a :class:`Verdict` for each arriving message: ``PASS``,
``DROP`` (discarded and logged) or ``HOLD`` (kept aside until the host's user
calls ``Host.release(held_id)`` or ``Host.discard(held_id)`` — e.g. a prompt
"accept this exchange offer?").

The default guard on remote arrivals drops any message whose ``src`` domain
is the domain of a card on this host: such a message can only be forged
(TENeT 4.4), and letting it through would let a remote host pose as a local,
possibly authenticated, application.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cardnet.wire import Message

if TYPE_CHECKING:
    from cardnet.host.core import Origin


class Verdict(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    HOLD = "hold"


@dataclass(frozen=True)
class Guard:
    """``check(msg, origin)`` decides; ``name`` appears in logs and in held-message records."""

    name: str
    check: Callable[[Message, Origin], Verdict]


def forged_local_domain_guard(local_domains: Callable[[], Collection[bytes]]) -> Guard:
    """Drop remote messages that claim to come from a local card's domain."""

    drop, ok = Verdict.DROP, Verdict.PASS  # looked up once: an Enum attribute lookup is slow

    def check(msg: Message, origin: Origin) -> Verdict:
        if origin.kind == "remote" and msg.src.domain in local_domains():
            return drop
        return ok

    return Guard("forged-local-domain", check)
