"""Host runtime (TENeT 4.3): dispatch table, messaging library, card proxy, remote proxy, Guard."""

from cardnet.host.core import Host, Origin, SendRemote
from cardnet.host.errors import HostError
from cardnet.host.guard import Guard, Verdict
from cardnet.host.library import Capability, Filter

__all__ = ["Capability", "Filter", "Guard", "Host", "HostError", "Origin", "SendRemote", "Verdict"]
