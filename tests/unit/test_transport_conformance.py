"""One conformance suite, ``check_transport``, run against every transport.

In the spirit of trio's ``testing/_check_streams.py``: the in-memory pair, TCP
on 127.0.0.1 and mutual-TLS TCP must all behave the same way. Every wait is
bounded by an asyncio timeout that only guards against hangs; no test asserts
on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cardnet.transport import (
    DEFAULT_MAX_FRAME,
    LOGGER_NAME,
    Backoff,
    BackoffPolicy,
    BrokenError,
    ClosedError,
    Connection,
    Limits,
    MemoryListener,
    MemoryNetwork,
    ReconnectingLink,
    SkippedFrame,
    TcpConnection,
    TcpServer,
    TransportError,
    dial,
    dialer,
    encode_frame,
    memory_pair,
    tls_contexts,
)
from cardnet.wire import DecodeError, Message, Uid

GUARD_S = 10.0  # only ever a guard against hangs, never asserted
LIMITS = Limits(
    max_frame=256 * 1024,
    max_pending_sends=4,
    write_buffer_bytes=64 * 1024,
    inbox_messages=8,
    linger_s=2.0,
    connect_timeout_s=5.0,
)
FAST_BACKOFF = BackoffPolicy(initial_s=0.005, max_s=0.05, max_attempts=400)
SRC = Uid(b"\x0a" * 12, 1)
DST = Uid(b"\x0b" * 12, 2)


def m(i: int, size: int = 8) -> Message:
    return Message(SRC, DST, i % 65536, i.to_bytes(4, "big") + b"\x5a" * size)


def index(msg: Message) -> int:
    return int.from_bytes(msg.param[:4], "big")


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run (no wall time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _no_asyncio_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Unretrieved task exceptions and callback errors are logged by asyncio, not raised: fail on them."""
    yield
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --- throwaway PKI (P-256 ECDSA X.509, like the project's) ---------------------------------------


@dataclass(frozen=True)
class Identity:
    cert_pem: bytes
    key_pem: bytes
    cert_der: bytes


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    server: Identity
    client: Identity
    server_no_san: Identity
    other_ca_pem: bytes
    stranger: Identity  # issued by the other CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str, *, san_ip: bool) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if san_ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Identity(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
    )


@cache
def pki() -> Pki:
    ca_key, ca = _ca("cardnet test CA")
    other_key, other = _ca("some other CA")
    return Pki(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        server=_leaf(ca_key, ca, "host-server", san_ip=True),
        client=_leaf(ca_key, ca, "host-client", san_ip=True),
        server_no_san=_leaf(ca_key, ca, "host-no-san", san_ip=False),
        other_ca_pem=other.public_bytes(serialization.Encoding.PEM),
        stranger=_leaf(other_key, other, "stranger", san_ip=True),
    )


def server_ctx(ident: Identity | None = None, *, ca_pem: bytes | None = None) -> ssl.SSLContext:
    p = pki()
    ident = ident or p.server
    return tls_contexts(ident.cert_pem, ident.key_pem, ca_pem or p.ca_pem)[0]


def client_ctx(
    ident: Identity | None = None, *, ca_pem: bytes | None = None, check_hostname: bool = False
) -> ssl.SSLContext:
    p = pki()
    ident = ident or p.client
    return tls_contexts(ident.cert_pem, ident.key_pem, ca_pem or p.ca_pem, check_hostname=check_hostname)[1]


# --- environments: one per transport -------------------------------------------------------------


class Env:
    """A server (or listener) plus a way to dial it; collects accepted connections."""

    kind = ""
    has_bytes = True

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[Connection] = asyncio.Queue()
        self.clients: list[Connection] = []

    async def on_connection(self, conn: Connection) -> None:
        self.accepted.put_nowait(conn)
        await asyncio.Event().wait()  # keep it until the server closes (which cancels this handler)

    async def connect(self) -> Connection:
        raise NotImplementedError

    async def next_accepted(self) -> Connection:
        return await asyncio.wait_for(self.accepted.get(), GUARD_S)

    async def pair(self) -> tuple[Connection, Connection]:
        client = await self.connect()
        self.clients.append(client)
        return client, await self.next_accepted()

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A raw byte stream to the server, or None if the transport has no bytes."""
        return None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        for conn in self.clients:
            await conn.aclose()
        await self.stop()


class MemoryEnv(Env):
    kind = "memory"
    has_bytes = False

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork(LIMITS)
        self.listener: MemoryListener | None = None

    async def start(self) -> None:
        self.listener = self.network.listen("server", self.on_connection)

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
            self.listener = None

    async def connect(self) -> Connection:
        return await self.network.dial("server")


class TcpEnv(Env):
    def __init__(self, tls: bool) -> None:
        super().__init__()
        self.kind = "tls" if tls else "tcp"
        self.server_ssl = server_ctx() if tls else None
        self.client_ssl = client_ctx() if tls else None
        self.server: TcpServer | None = None
        self.port = 0
        self.raws: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        server = TcpServer(limits=LIMITS)
        await server.start("127.0.0.1", self.port, self.on_connection, ssl_context=self.server_ssl)
        self.server = server
        self.port = server.port

    async def stop(self) -> None:
        for writer in self.raws:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.raws.clear()
        if self.server is not None:
            await self.server.aclose()
            self.server = None

    async def connect(self) -> Connection:
        return await dial("127.0.0.1", self.port, self.client_ssl, limits=LIMITS)

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client_ssl)
        self.raws.append(writer)
        return reader, writer


async def make_memory() -> Env:
    env = MemoryEnv()
    await env.start()
    return env


async def make_tcp() -> Env:
    env = TcpEnv(tls=False)
    await env.start()
    return env


async def make_tls() -> Env:
    env = TcpEnv(tls=True)
    await env.start()
    return env


# --- the suite -----------------------------------------------------------------------------------


class NotApplicable(Exception):
    pass


async def case_order(env: Env) -> None:
    a, b = await env.pair()
    assert a.peer.transport == b.peer.transport == env.kind
    sent = [m(i) for i in range(LIMITS.inbox_messages)]  # fits any transport's buffers unread
    for x in sent:
        await a.send(x)
    assert [await b.recv() for _ in sent] == sent
    for x in reversed(sent):
        await b.send(x)
    assert [await a.recv() for _ in sent] == list(reversed(sent))
    assert not a.closed and not b.closed
    assert a.pending_sends == b.pending_sends == 0


async def case_many(env: Env) -> None:
    a, b = await env.pair()
    n = 1500

    async def pump(conn: Connection) -> None:
        for i in range(n):
            await conn.send(m(i, (i * 37) % 3000))

    async def drain(conn: Connection) -> list[int]:
        return [index(await conn.recv()) for _ in range(n)]

    _, _, got_b, got_a = await asyncio.gather(pump(a), pump(b), drain(b), drain(a))
    assert got_a == got_b == list(range(n))


async def case_close(env: Env) -> None:
    a, b = await env.pair()
    for i in range(3):
        await a.send(m(i))
    await a.aclose()  # graceful: what was sent is delivered
    assert a.closed
    with pytest.raises(ClosedError) as closed:
        await a.send(m(9))
    assert closed.value.reason == "closed"
    with pytest.raises(ClosedError):
        await a.recv()
    a.close()  # idempotent
    await a.aclose()
    assert [index(await b.recv()) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(BrokenError) as broken:
        await b.recv()
    assert broken.value.reason == "broken"
    assert b.closed
    with pytest.raises(BrokenError):
        await b.send(m(1))
    with pytest.raises(BrokenError):  # sticky
        await b.recv()
    await b.aclose()
    with pytest.raises(ClosedError):  # once we closed it, "closed" wins
        await b.send(m(1))

    # the server side closes: the client sees the end
    c, d = await env.pair()
    await d.aclose()
    with pytest.raises(BrokenError):
        await c.recv()

    # iteration ends cleanly at the peer's close
    e, f = await env.pair()
    await e.send(m(1))
    await e.send(m(2))
    e.close()
    assert [index(x) async for x in f] == [1, 2]

    # a recv pending when we close raises ClosedError; the peer sees the end
    g, h = await env.pair()
    pending = asyncio.create_task(g.recv())
    await settle()
    g.close()
    with pytest.raises(ClosedError):
        await asyncio.wait_for(pending, GUARD_S)
    with pytest.raises(BrokenError):
        await h.recv()
    await g.wait_closed()


async def case_oversize_send(env: Env) -> None:
    a, b = await env.pair()
    with pytest.raises(TransportError) as err:
        await a.send(Message(SRC, DST, 1, b"x" * LIMITS.max_frame))
    assert err.value.reason == "oversize"
    assert not a.closed and a.pending_sends == 0
    at_limit = Message(SRC, DST, 1, b"y" * (LIMITS.max_frame - 34))
    _, got = await asyncio.gather(a.send(at_limit), b.recv())
    assert got == at_limit
    await a.send(m(5))
    assert index(await b.recv()) == 5


async def _expect_peer_gone(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await asyncio.wait_for(reader.read(65536), GUARD_S):
            pass


async def case_bad_frames(env: Env) -> None:
    if not env.has_bytes:
        raise NotApplicable("this transport carries objects, not bytes")
    good_a, good_b = await env.pair()
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        frame = b"\x00\x00\x00\x40" + bytes(64)
        cases: list[tuple[bytes, bool, str]] = [
            (b"\x00\x00\x00\x01x", False, "bad_length"),
            (b"\x00\x00\x00\x00", False, "bad_length"),
            (b"\xff\xff\xff\xff", False, "oversize"),  # refused from the prefix alone
            ((DEFAULT_MAX_FRAME + 1).to_bytes(4, "big"), False, "oversize"),  # above what any cardnet peer sends
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "not_cardnet"),  # said as such, once per peer
            (frame[:20], True, "truncated"),  # the peer leaves mid-frame
        ]
        for i, (payload, close_after, reason) in enumerate(cases):
            raw = await env.raw()
            assert raw is not None
            reader, writer = raw
            writer.write(payload)
            await writer.drain()
            if close_after:
                writer.close()
            victim = await env.next_accepted()
            with pytest.raises(BrokenError) as err:
                await asyncio.wait_for(victim.recv(), GUARD_S)
            cause = err.value.__cause__
            assert isinstance(cause, DecodeError), err.value
            assert cause.reason == reason
            assert victim.closed
            await _expect_peer_gone(reader)  # the server dropped that connection
            # ... and only that one
            await good_a.send(m(i))
            assert index(await good_b.recv()) == i
            await good_b.send(m(i + 100))
            assert index(await good_a.recv()) == i + 100
        assert any(reason in r.getMessage() for r in records for _, _, reason in cases)
        assert sum("bad frame" in r.getMessage() for r in records) == len(cases) - 1
        assert sum("an HTTP request (or other non-cardnet bytes) on a cardnet port from" in r.getMessage()
                   for r in records) == 1  # fmt: skip
    finally:
        logger.removeHandler(handler)


async def case_oversize_frame_read_past(env: Env) -> None:
    """A peer with a larger frame limit sends a message above ours: the connection reads past it, tells its owner
    who sent what (on_skipped), and goes on (it used to break, losing what came after)."""
    if not env.has_bytes:
        raise NotApplicable("this transport carries objects, not bytes")
    raw = await env.raw()
    assert raw is not None
    _, writer = raw
    big = m(2, LIMITS.max_frame)  # 4 + 34 bytes above the limit
    writer.write(encode_frame(m(1)) + encode_frame(big, DEFAULT_MAX_FRAME) + encode_frame(m(3)))
    await writer.drain()
    victim = await env.next_accepted()
    told: list[SkippedFrame] = []
    victim.on_skipped = told.append
    assert [index(x) for x in [await victim.recv(), await victim.recv()]] == [1, 3]
    assert told == [SkippedFrame(SRC, DST, 2, big.size, LIMITS.max_frame, after=1)]  # its place: after m(1)
    assert not victim.closed
    writer.write(encode_frame(m(4)))  # the stream is still in step
    await writer.drain()
    assert index(await victim.recv()) == 4
    writer.close()


async def case_backpressure(env: Env) -> None:
    a, b = await env.pair()  # b never reads until the end
    size = 32 * 1024
    bound = (64 * 1024 * 1024) // size  # what "without bound" would blow through
    sent = 0
    blocked = False
    for i in range(bound):
        try:
            await asyncio.wait_for(a.send(m(i, size)), 0.5)
        except TimeoutError:
            blocked = True  # the cancelled send sent nothing
            break
        sent += 1
        if isinstance(a, TcpConnection):
            assert a.write_buffer_bytes <= LIMITS.write_buffer_bytes + size + 100
    assert blocked, "a peer that never reads must make the sender wait"
    assert 0 < sent < bound
    # the waiting sends are the bounded outgoing queue
    waiting = [asyncio.create_task(a.send(m(sent + j, size))) for j in range(LIMITS.max_pending_sends)]
    for _ in range(100):
        if a.pending_sends == LIMITS.max_pending_sends:
            break
        await asyncio.sleep(0)
    assert a.pending_sends == LIMITS.max_pending_sends
    with pytest.raises(TransportError) as err:
        await asyncio.wait_for(a.send(m(999_999, size)), GUARD_S)
    assert err.value.reason == "queue_full"
    assert not a.closed
    # the peer starts reading: everything accepted arrives, in order, and the waiters finish
    total = sent + LIMITS.max_pending_sends
    got = [index(await asyncio.wait_for(b.recv(), GUARD_S)) for _ in range(total)]
    assert got == list(range(total))
    await asyncio.wait_for(asyncio.gather(*waiting), GUARD_S)
    assert a.pending_sends == 0


async def case_reconnect(env: Env) -> None:
    link = ReconnectingLink(env.connect, rng=random.Random(7), policy=FAST_BACKOFF, max_queue=8, label="test link")
    async with link:
        await asyncio.wait_for(link.wait_connected(), GUARD_S)
        s1 = await env.next_accepted()
        await link.send(m(1))
        assert index(await s1.recv()) == 1
        await s1.send(m(2))
        assert index(await asyncio.wait_for(link.recv(), GUARD_S)) == 2
        assert link.connections == 1

        await env.stop()  # the server goes away
        async with asyncio.timeout(GUARD_S):
            while link.connected:
                await asyncio.sleep(0.005)
        for i in range(8):
            await link.send(m(10 + i))  # queued while down
        assert link.queued == 8
        with pytest.raises(TransportError) as err:
            await link.send(m(99))
        assert err.value.reason == "queue_full"
        assert link.queued == 8

        await env.start()  # the server comes back on the same address
        s2 = await env.next_accepted()
        got = [index(await asyncio.wait_for(s2.recv(), GUARD_S)) for _ in range(8)]
        assert got == list(range(10, 18))
        await s2.send(m(3))
        assert index(await asyncio.wait_for(link.recv(), GUARD_S)) == 3
        assert link.connections == 2
        assert link.failed is None
    assert not link.connected
    with pytest.raises(ClosedError):
        await link.send(m(1))


async def case_poke(env: Env) -> None:
    """A link waiting out a long backoff dials at once when poked (its peer was heard from), not seconds later."""
    slow = BackoffPolicy(initial_s=0.02, max_s=60.0, multiplier=100.0, jitter=0.0)  # 0.02 s, then 2 s, then 60 s
    link = ReconnectingLink(env.connect, rng=random.Random(7), policy=slow, label="test link")
    async with link:
        await asyncio.wait_for(link.wait_connected(), GUARD_S)
        await env.next_accepted()
        link.poke()  # connected: nothing to do
        await env.stop()
        async with asyncio.timeout(GUARD_S):
            while link.connected:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # the retry after 0.02 s failed: the next one is 2 s away
        await env.start()
        await asyncio.sleep(0.3)
        assert not link.connected, "the link dialled before its backoff delay without a poke"
        t0 = asyncio.get_running_loop().time()
        link.poke()
        await asyncio.wait_for(link.wait_connected(), 1.0)
        assert asyncio.get_running_loop().time() - t0 < 0.5
        assert link.connections == 2 and link.failed is None


CASES: dict[str, Callable[[Env], Awaitable[None]]] = {
    "order": case_order,
    "many": case_many,
    "close": case_close,
    "oversize_send": case_oversize_send,
    "bad_frames": case_bad_frames,
    "oversize_frame_read_past": case_oversize_frame_read_past,
    "backpressure": case_backpressure,
    "reconnect": case_reconnect,
    "poke": case_poke,
}


async def check_transport(make_env: Callable[[], Awaitable[Env]], only: str | None = None) -> list[str]:
    """Run the suite (or one case of it) against fresh environments; return the cases not applicable."""
    skipped: list[str] = []
    for name, case in CASES.items():
        if only is not None and name != only:
            continue
        env = await make_env()
        try:
            async with asyncio.timeout(3 * GUARD_S):
                await case(env)
        except NotApplicable:
            skipped.append(name)
        finally:
            await env.aclose()
    return skipped


ENVS = {"memory": make_memory, "tcp": make_tcp, "tls": make_tls}


# bad_frames needs a byte stream: the memory transport carries Message objects, so it has no frames to corrupt.
BYTES_ONLY = {"bad_frames", "oversize_frame_read_past"}
APPLICABLE = [(kind, case) for kind in ENVS for case in CASES if not (kind == "memory" and case in BYTES_ONLY)]


@pytest.mark.parametrize(("kind", "case"), APPLICABLE)
def test_conformance(kind: str, case: str) -> None:
    assert asyncio.run(check_transport(ENVS[kind], only=case)) == []


@pytest.mark.parametrize("case", sorted(BYTES_ONLY))
def test_memory_transport_declares_the_byte_stream_cases_not_applicable(case: str) -> None:
    assert asyncio.run(check_transport(ENVS["memory"], only=case)) == [case]


# --- TLS specifics -------------------------------------------------------------------------------


async def _tls_server(got: asyncio.Queue[Connection], ctx: ssl.SSLContext) -> TcpServer:
    async def on_conn(conn: Connection) -> None:
        got.put_nowait(conn)
        await asyncio.Event().wait()

    server = TcpServer(limits=LIMITS)
    await server.start("127.0.0.1", 0, on_conn, ssl_context=ctx)
    return server


async def _refused(port: int, ctx: ssl.SSLContext) -> BrokenError:
    """Dial and exchange one message; the handshake must fail on one side or the other."""
    with pytest.raises(BrokenError) as err:
        conn = await dial("127.0.0.1", port, ctx, limits=LIMITS)
        try:
            await conn.send(m(1))
            await asyncio.wait_for(conn.recv(), GUARD_S)
        finally:
            await conn.aclose()
    return err.value


def test_tls_exposes_peer_certificates_and_checks_hostname() -> None:
    async def main() -> None:
        got: asyncio.Queue[Connection] = asyncio.Queue()
        async with await _tls_server(got, server_ctx()) as server:
            client = await dial("127.0.0.1", server.port, client_ctx(check_hostname=True), limits=LIMITS)
            async with client:
                srv = await asyncio.wait_for(got.get(), GUARD_S)
                assert client.peer.transport == srv.peer.transport == "tls"
                assert client.peer.cert_der == pki().server.cert_der
                assert srv.peer.cert_der == pki().client.cert_der
                assert client.peer.address == ("127.0.0.1", server.port)
                assert isinstance(client, Connection) and isinstance(srv, Connection)
                await client.send(m(1))
                assert index(await srv.recv()) == 1

    asyncio.run(main())


def test_tls_hostname_check_needs_the_address_in_the_certificate() -> None:
    async def main() -> None:
        got: asyncio.Queue[Connection] = asyncio.Queue()
        async with await _tls_server(got, server_ctx(pki().server_no_san)) as server:
            err = await _refused(server.port, client_ctx(check_hostname=True))
            assert isinstance(err.__cause__, ssl.SSLCertVerificationError)
            # with hostname checks off the chain is still verified, and the cert identifies the peer
            async with await dial("127.0.0.1", server.port, client_ctx(), limits=LIMITS) as client:
                assert client.peer.cert_der == pki().server_no_san.cert_der

    asyncio.run(main())


def test_tls_refuses_client_without_certificate_or_from_another_ca() -> None:
    async def main() -> None:
        got: asyncio.Queue[Connection] = asyncio.Queue()
        async with await _tls_server(got, server_ctx()) as server:
            bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            bare.check_hostname = False
            bare.load_verify_locations(cadata=pki().ca_pem.decode())
            await _refused(server.port, bare)
            await _refused(server.port, client_ctx(pki().stranger))
            assert got.empty()  # no handler ever saw those peers
            async with await dial("127.0.0.1", server.port, client_ctx(), limits=LIMITS):
                await asyncio.wait_for(got.get(), GUARD_S)

    asyncio.run(main())


def test_tls_client_refuses_server_from_another_ca() -> None:
    async def main() -> None:
        got: asyncio.Queue[Connection] = asyncio.Queue()
        async with await _tls_server(got, server_ctx(pki().stranger)) as server:
            err = await _refused(server.port, client_ctx())
            assert isinstance(err.__cause__, ssl.SSLError)

    asyncio.run(main())


def test_tls_contexts_refuse_bad_material() -> None:
    with pytest.raises(TransportError) as err:
        tls_contexts(b"not a cert", b"not a key", pki().ca_pem)
    assert err.value.reason == "tls"
    with pytest.raises(TransportError):
        tls_contexts(pki().server.cert_pem, pki().client.key_pem, pki().ca_pem)  # key does not match


# --- TCP server and dial specifics ---------------------------------------------------------------


def test_dial_refused_is_broken() -> None:
    async def main() -> None:
        server = TcpServer()
        await server.start("127.0.0.1", 0, lambda conn: asyncio.sleep(0))
        port = server.port
        await server.aclose()
        with pytest.raises(BrokenError) as err:
            await dial("127.0.0.1", port)
        assert isinstance(err.value.__cause__, OSError)
        with pytest.raises(BrokenError):
            await dialer("127.0.0.1", port)()

    asyncio.run(main())
    with pytest.raises(TransportError) as err:
        _ = TcpServer().address
    assert err.value.reason == "bad_config"


def test_failing_handler_affects_only_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        seen = 0

        async def on_conn(conn: TcpConnection) -> None:
            nonlocal seen
            seen += 1
            if seen == 1:
                raise RuntimeError("handler bug")
            async for msg in conn:
                await conn.send(msg)

        async with TcpServer(limits=LIMITS) as server:
            await server.start("127.0.0.1", 0, on_conn)
            async with await dial("127.0.0.1", server.port) as first:
                with pytest.raises(BrokenError):
                    await asyncio.wait_for(first.recv(), GUARD_S)
            async with await dial("127.0.0.1", server.port) as second:
                await second.send(m(4))
                assert index(await asyncio.wait_for(second.recv(), GUARD_S)) == 4
                assert server.active == 1

    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        asyncio.run(main())
    assert any("handler" in r.getMessage() and r.exc_info for r in caplog.records if r.name == LOGGER_NAME)


# --- memory specifics ----------------------------------------------------------------------------


def test_memory_pair_and_fault() -> None:
    async def main() -> None:
        a, b = memory_pair(LIMITS)
        assert isinstance(a, Connection)
        await a.send(m(1))
        assert index(await b.recv()) == 1
        a.fail("cable cut")
        for end in (a, b):
            with pytest.raises(BrokenError, match="cable cut"):
                await end.recv()
            with pytest.raises(BrokenError):
                await end.send(m(2))
        async for _ in b:  # a failure is not a clean end: iteration raises
            raise AssertionError("unreachable")

    with pytest.raises(BrokenError):
        asyncio.run(main())


def test_memory_dial_without_listener() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        with pytest.raises(BrokenError):
            await net.dial("nobody")
        listener = net.listen("x", lambda conn: asyncio.sleep(0))
        with pytest.raises(TransportError):
            net.listen("x", lambda conn: asyncio.sleep(0))
        await listener.aclose()

    asyncio.run(main())


# --- backoff and link ----------------------------------------------------------------------------


def test_backoff_bounds_jitter_and_determinism() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=8.0, multiplier=2.0, jitter=0.5)
    one = Backoff(policy, random.Random(42))
    delays = [one.next_delay() for _ in range(12)]
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    for delay, base in zip(delays, bases, strict=True):
        assert delay is not None and base * 0.5 <= delay <= base
    assert [Backoff(policy, random.Random(42)).next_delay() for _ in range(1)] == delays[:1]
    again = Backoff(policy, random.Random(42))
    assert [again.next_delay() for _ in range(12)] == delays
    other = Backoff(policy, random.Random(43))
    assert [other.next_delay() for _ in range(12)] != delays
    one.reset()
    first = one.next_delay()
    assert first is not None and first <= 1.0
    exact = Backoff(BackoffPolicy(initial_s=0.5, max_s=1.0, jitter=0.0), random.Random(0))
    assert [exact.next_delay() for _ in range(3)] == [0.5, 1.0, 1.0]
    many = Backoff(BackoffPolicy(initial_s=0.1, max_s=2.0), random.Random(0))
    assert all((d := many.next_delay()) is not None and d <= 2.0 for _ in range(5000))  # no overflow


def test_backoff_gives_up_after_max_attempts() -> None:
    b = Backoff(BackoffPolicy(max_attempts=3), random.Random(0))
    assert b.next_delay() is not None
    assert b.next_delay() is not None
    assert b.next_delay() is None
    assert b.failures == 3
    b.reset()
    assert b.next_delay() is not None


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": 0}, {"initial_s": 2, "max_s": 1}, {"multiplier": 0.5}, {"jitter": 1.5}, {"max_attempts": 0}],
)
def test_backoff_policy_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(TransportError) as err:
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
    assert err.value.reason == "bad_config"


def test_link_gives_up_and_hands_back_unsent() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        link = ReconnectingLink(
            lambda: net.dial("nobody"),
            rng=random.Random(1),
            policy=BackoffPolicy(initial_s=0.001, max_s=0.002, max_attempts=3),
        )
        await link.send(m(1))
        await link.send(m(2))
        async with link:
            with pytest.raises(BrokenError) as err:
                await asyncio.wait_for(link.wait_connected(), GUARD_S)
            assert "3 failed attempts" in str(err.value)
            assert isinstance(err.value.__cause__, BrokenError)
            assert link.failed is not None
            with pytest.raises(BrokenError):
                await link.send(m(3))
            with pytest.raises(BrokenError):
                await link.recv()
            assert [index(x) for x in link.unsent()] == [1, 2]
            assert link.queued == 0

    asyncio.run(main())


def test_link_does_not_hot_loop_on_a_server_that_drops_every_connection() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        accepted = 0

        async def drop(conn: Connection) -> None:
            nonlocal accepted
            accepted += 1  # returning closes the connection at once

        listener = net.listen("dropper", drop)
        link = ReconnectingLink(
            lambda: net.dial("dropper"),
            rng=random.Random(1),
            policy=BackoffPolicy(initial_s=0.001, max_s=0.002, max_attempts=5),
        )
        async with link:
            async with asyncio.timeout(GUARD_S):
                while link.failed is None:
                    await asyncio.sleep(0.001)
        assert link.connections == accepted == 5
        await listener.aclose()

    asyncio.run(main())
