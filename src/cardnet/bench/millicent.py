"""``cardnet bench millicent``: the vendor's validation and purchase rates against their bounds.

Figures, all measured in one run, in interleaved rounds (medians reported):

* ``hmac_bound_per_s``: ``profile.hmac_sha256`` (one-shot HMAC-SHA256,
  truncated to 128 bits) on a scrip body (38 bytes): the rate of the one
  cryptographic operation a validation cannot avoid;
* ``validations_per_s``: :meth:`VendorCore.validate_batch` on a durable
  SQLite store (WAL, ``synchronous=FULL``), in process, one core, group
  commit of ``GROUP`` scrip a transaction: certificate, vendor, expiry and the
  first-wins spent insert (the paper's validation);
* ``validations_bound_per_s``: the same with the level-2 customer binding
  (a second HMAC, with the customer secret) — reported beside it;
* ``tcp_bound_rtt_per_s``: plain asyncio round trips of the purchase's sizes
  (request and reply frames), from the same number of client processes with
  the same window, to an echo process;
* ``purchases_per_s``: customer processes buying a page (level 2, with
  change) from a vendor process over TCP, ``window`` in flight each.

Targets: ``validations_per_s >= 0.25 x hmac_bound_per_s`` and
``purchases_per_s >= 0.3 x tcp_bound_rtt_per_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from cardnet.bench.timing import rate
from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.vendor import VendorCore, VendorServer
from cardnet.store import SqliteStore
from cardnet.transport import dial
from cardnet.wire import Message, Uid

GROUP = 8192
VENDOR = b"\x00\x00\x00\x00\x00\x00\xbe\x01"
NOW = 1_800_000_000
PRICE = 1
PAGE = b"<html>" + b"m" * 100 + b"</html>"
_LEN = struct.Struct(">I")


def _secrets() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Fixed secrets: the bench's vendor, shared with its customer processes (the licensed-broker role)."""
    scrip = {0: profile.sha256(b"bench scrip secret 0"), 0x80: profile.sha256(b"bench scrip secret 80")}
    cms = {i: profile.sha256(b"bench customer master" + bytes([i])) for i in range(256)}
    return scrip, cms


def _customer_id(n: int) -> bytes:
    return bytes([n % 256]) + n.to_bytes(7, "big")


def _pool(start: int, count: int, customers: int = 64) -> list[mc.Scrip]:
    secrets, _ = _secrets()
    return [
        mc.mint(
            secrets,
            index=0x80,
            vendor=VENDOR,
            value=10,
            serial=start + i,
            customer_id=_customer_id(i % customers),
            expiry=NOW + 3600,
        )
        for i in range(count)
    ]


def _init_vendor_store(path: str) -> Any:
    store = SqliteStore(path)
    secrets, cms = _secrets()
    with store.transaction() as txn:
        txn.put(mv.CFG, b"id", VENDOR)
        txn.put(mv.CFG, b"mint", b"\x00")
        txn.put(mv.CFG, b"validity", (3600).to_bytes(8, "big"))
        txn.put(mv.CFG, b"level", b"\x02")
        txn.put(mv.CFG, b"serial", (1).to_bytes(8, "big"))
        for i, s in secrets.items():
            txn.put(mv.SECRETS, bytes([i]), s)
        for i, s in cms.items():
            txn.put(mv.CMASTERS, bytes([i]), s)
        txn.put(mv.CATALOGUE, b"page", PRICE.to_bytes(8, "big") + PAGE)
    return store


# --- in-process figures -----------------------------------------------------------------


def hmac_rate(seconds: float) -> float:
    key = profile.sha256(b"k")
    body = bytes(38)

    def op() -> int:
        for _ in range(256):
            profile.hmac_sha256(key, body, 16)
        return 256

    return rate(op, seconds)


class _Validator:
    def __init__(self, directory: str, binding: bool) -> None:
        self.directory = directory
        self.binding = binding
        self.serial = 0
        self.core: Any = None
        self.items: list[tuple[bytes, bytes | None, bytes | None]] = []
        self.pos = 0
        self.n = 0

    def _refill(self) -> None:
        if self.core is not None:
            self.core.store.close()
        self.n += 1
        self.core = VendorCore(_init_vendor_store(os.path.join(self.directory, f"val{int(self.binding)}-{self.n}.db")))
        _, cms = _secrets()
        items: list[tuple[bytes, bytes | None, bytes | None]] = []
        for s in _pool(self.serial, 8 * GROUP):
            raw = s.encode()
            if self.binding:
                data = b"MCRQ" + raw
                items.append((raw, data, profile.hmac_sha256(mc.customer_secret(cms, s.customer_id), data, 16)))
            else:
                items.append((raw, None, None))
        self.serial += len(items)
        self.items = items
        self.pos = 0

    def rate(self, seconds: float) -> float:
        """Validations per second of vendor time: making fresh scrip (the customers' side) is not timed."""
        busy = 0.0
        done = 0
        while busy < seconds:
            if self.pos + GROUP > len(self.items):
                self._refill()
            batch = self.items[self.pos : self.pos + GROUP]
            self.pos += GROUP
            t0 = time.perf_counter()
            statuses = self.core.validate_batch(batch, NOW)
            busy += time.perf_counter() - t0
            done += GROUP
            if statuses.count(mc.Status.OK) != GROUP:
                raise RuntimeError(f"benchmark scrip refused: {set(statuses)!r}")
        return done / busy


# --- processes ----------------------------------------------------------------------------


def _vendor_proc(path: str, conn: Connection) -> None:
    async def main() -> None:
        server = VendorServer(VendorCore(SqliteStore(path)), clock=lambda: float(NOW))
        addr = await server.start("127.0.0.1", 0)
        conn.send(addr[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.aclose()

    asyncio.run(main())


def _echo_proc(reply_bytes: int, conn: Connection) -> None:
    async def main() -> None:
        reply = _LEN.pack(reply_bytes) + bytes(reply_bytes)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readexactly(4)
                    await reader.readexactly(_LEN.unpack(head)[0])
                    writer.write(reply)
                    if writer.transport.get_write_buffer_size() > 65536:
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                # (a handler cancelled at shutdown would make 3.11's start_server log a spurious error)
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.close()

    asyncio.run(main())


def _customer_proc(index: int, port: int, window: int, count: int, conn: Connection) -> None:
    """Builds ``count`` level-2 purchase requests, then buys on command: ``("go", seconds)`` -> done."""

    _, cms = _secrets()
    reqs: list[Message] = []
    me, them = Uid(b"\x00" * 12, 1 + index), Uid(b"\x00" * 12, 0)
    for i, s in enumerate(_pool(10_000_000 * (index + 1), count)):
        mt, p = mc.make_request(
            s,
            rid=struct.pack(">QQ", index, i),
            level=mc.Level.THEFT,
            secret=mc.customer_secret(cms, s.customer_id),
            price=PRICE,
            product="page",
        )
        reqs.append(Message(me, them, mt, p))

    async def run_for(c: Any, seconds: float, pos: int) -> tuple[int, int, int]:
        done = ok = 0
        inflight = 0
        end = time.perf_counter() + seconds
        while inflight < window and pos < len(reqs):
            await c.send(reqs[pos])
            pos += 1
            inflight += 1
        while inflight:
            replies = await c.recv_many()
            inflight -= len(replies)
            done += len(replies)
            ok += sum(1 for r in replies if r.param[20:21] == b"\x00")  # map, key 0, rid (1+16), key 1, status
            if time.perf_counter() < end:
                more = reqs[pos : pos + len(replies)]
                pos += len(more)
                inflight += len(more)
                if more:
                    await c.send_many(more)
        return done, ok, pos

    async def main() -> None:
        c = await dial("127.0.0.1", port)
        conn.send("ready")
        pos = 0
        while True:
            cmd = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if cmd[0] == "stop":
                break
            t0 = time.perf_counter()
            done, ok, pos = await run_for(c, cmd[1], pos)
            conn.send((done, ok, time.perf_counter() - t0))
        await c.aclose()

    asyncio.run(main())


def _bound_client_proc(port: int, window: int, req_bytes: int, conn: Connection) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        req = _LEN.pack(req_bytes) + bytes(req_bytes)
        conn.send("ready")
        while True:
            cmd = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            if cmd[0] == "stop":
                break
            end = time.perf_counter() + cmd[1]
            t0 = time.perf_counter()
            writer.write(req * window)
            inflight, done = window, 0
            while inflight:
                head = await reader.readexactly(4)
                await reader.readexactly(_LEN.unpack(head)[0])
                inflight -= 1
                done += 1
                if time.perf_counter() < end:
                    writer.write(req)
                    inflight += 1
            conn.send((done, done, time.perf_counter() - t0))
        writer.close()

    asyncio.run(main())


def _drive(pipes: list[Connection], seconds: float) -> float:
    for p in pipes:
        p.send(("go", seconds))
    results = [p.recv() for p in pipes]
    if any(ok != done for done, ok, _ in results):
        raise RuntimeError(f"purchases refused during the benchmark: {results}")
    return float(sum(done / max(dt, 1e-9) for done, _, dt in results))


def run(seconds: float = 3.0, *, customers: int = 2, window: int = 64, rounds: int = 5) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="cardnet-bench-millicent-")
    per = seconds / rounds
    samples: dict[str, list[float]] = {k: [] for k in FIGURES}
    procs: list[Any] = []
    pipes: list[Connection] = []
    try:
        # Sizes of one purchase (frames carry the 34-byte header + param).
        probe = _pool(0, 1)[0]
        _, cms = _secrets()
        mt, req = mc.make_request(
            probe,
            rid=bytes(16),
            level=mc.Level.THEFT,
            secret=mc.customer_secret(cms, probe.customer_id),
            price=PRICE,
            product="page",
        )
        vendor = mc.Vendor(VENDOR, _secrets()[0], 0, cms, {"page": mc.Product(PRICE, PAGE)}, 3600)
        cand = vendor.prepare(mt, req, NOW)
        assert isinstance(cand, mc.Candidate)
        _, reply = vendor.accept(cand, [1, 2], NOW)
        req_bytes, reply_bytes = 34 + len(req), 34 + len(reply)

        vendor_parent, vendor_child = ctx.Pipe()
        vproc = ctx.Process(target=_vendor_proc, args=(os.path.join(tmp, "vendor.db"), vendor_child), daemon=True)
        _init_vendor_store(os.path.join(tmp, "vendor.db")).close()
        vproc.start()
        procs.append(vproc)
        vport = vendor_parent.recv()
        echo_parent, echo_child = ctx.Pipe()
        eproc = ctx.Process(target=_echo_proc, args=(reply_bytes, echo_child), daemon=True)
        eproc.start()
        procs.append(eproc)
        eport = echo_parent.recv()
        est = 40_000 * seconds  # requests each customer builds: generous for this machine class
        cust_pipes: list[Connection] = []
        bound_pipes: list[Connection] = []
        for i in range(customers):
            a, b = ctx.Pipe()
            cproc = ctx.Process(target=_customer_proc, args=(i, vport, window, int(est), b), daemon=True)
            cproc.start()
            procs.append(cproc)
            cust_pipes.append(a)
            a2, b2 = ctx.Pipe()
            bproc = ctx.Process(target=_bound_client_proc, args=(eport, window, req_bytes, b2), daemon=True)
            bproc.start()
            procs.append(bproc)
            bound_pipes.append(a2)
        for pipe in [*cust_pipes, *bound_pipes]:
            pipe.recv()
        pipes = [*cust_pipes, *bound_pipes, vendor_parent, echo_parent]
        plain = _Validator(tmp, binding=False)
        bound = _Validator(tmp, binding=True)
        _drive(cust_pipes, 0.2)  # warm up
        _drive(bound_pipes, 0.2)
        for _ in range(rounds):
            samples["hmac_bound_per_s"].append(hmac_rate(per))
            samples["validations_per_s"].append(plain.rate(per))
            samples["validations_binding_per_s"].append(bound.rate(per))
            samples["tcp_bound_rtt_per_s"].append(_drive(bound_pipes, per))
            samples["purchases_per_s"].append(_drive(cust_pipes, per))
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("stop",))
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        shutil.rmtree(tmp, ignore_errors=True)
    r: dict[str, Any] = {k: round(statistics.median(v)) for k, v in samples.items()}
    r.update(
        rounds=rounds,
        seconds_per_figure=seconds,
        group=GROUP,
        customers=customers,
        window=window,
        scrip_bytes=mc.SCRIP_MIN_BYTES,
        request_bytes=req_bytes,
        reply_bytes=reply_bytes,
        cpus=os.cpu_count(),
        load_avg_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],  # before and after: others' work
        samples={k: [round(x) for x in v] for k, v in samples.items()},
    )
    r["validations_vs_hmac_bound"] = round(r["validations_per_s"] / r["hmac_bound_per_s"], 3)
    r["validations_binding_vs_hmac_bound"] = round(r["validations_binding_per_s"] / r["hmac_bound_per_s"], 3)
    r["purchases_vs_tcp_bound"] = round(r["purchases_per_s"] / r["tcp_bound_rtt_per_s"], 3)
    r["targets"] = {
        "validations_per_s >= 0.25 x hmac_bound_per_s": r["validations_vs_hmac_bound"] >= 0.25,
        "purchases_per_s >= 0.3 x tcp_bound_rtt_per_s": r["purchases_vs_tcp_bound"] >= 0.3,
    }
    return r


FIGURES = (
    "hmac_bound_per_s",
    "validations_per_s",
    "validations_binding_per_s",
    "tcp_bound_rtt_per_s",
    "purchases_per_s",
)
