"""A host carrying one remote domain over several connections at once (a buyer's deliveries at the ticketing
server, each on its own upgraded connection): whichever order they end in, the domain's route goes to a carrier
still open, and back to what it was once none is. It used to be restored to what each carrier replaced, so when
two ended in the order they began, the route pointed at the first, already gone: the card's messages to that
domain went nowhere until a new carrier came."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from test_host_carrier_oversize import carrying_host, echo_card, replies
from waiting import wait_for

from cardnet.crypto import pki
from cardnet.host.server import HostServer
from cardnet.protocols.echo import REQUEST
from cardnet.transport import dial
from cardnet.wire import Uid


async def carriers(server: HostServer, n: int) -> None:
    async def now() -> bool:
        return len(server._carriers) == n

    await wait_for(f"{n} carrier(s)", now)


def test_a_domain_carried_twice_is_routed_to_a_carrier_still_open_whichever_ends_first(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    uid = echo_card(tmp_path, ca)
    remote = Uid(os.urandom(12), 0)

    async def go() -> None:
        async with carrying_host(tmp_path, remote) as (server, carried):
            routes = server.host.routes
            for first_ends_first in (True, False):
                first = await dial(*carried.address)
                await first.send(REQUEST.make(remote, uid, rid=1, body=b"one"))  # the carrier begins with its traffic
                assert await replies(first, 1) == [1]
                second = await dial(*carried.address)
                await second.send(REQUEST.make(remote, uid, rid=2, body=b"two"))
                assert await replies(second, 1) == [2]
                await carriers(server, 2)
                ending, staying = (first, second) if first_ends_first else (second, first)
                await ending.aclose()
                await carriers(server, 1)
                await staying.send(REQUEST.make(remote, uid, rid=3, body=b"still routed"))
                assert await replies(staying, 1) == [3]  # the reply goes out on the carrier still open
                assert routes[remote.domain] in server._carriers
                await staying.aclose()
                await carriers(server, 0)
                assert remote.domain not in routes  # back to no route, as before the first carrier

    asyncio.run(go())
