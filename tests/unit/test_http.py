"""The bounded HTTP/1.1 server (transport/http.py) and the TRN upgrade, over real sockets.

Programs talk to it with httpx (a real client library); the misbehaving clients are raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest

from cardnet.transport import TransportError, encode_frame
from cardnet.transport.http import (
    HttpLimits,
    HttpServer,
    Request,
    Response,
    Router,
    Upgrade,
    UpgradedStream,
    upgrade_required,
)
from cardnet.transport.http import error as http_error
from cardnet.transport.http_client import request
from cardnet.transport.http_upgrade import TRN, UpgradeRefused, dial_trn, trn_connection
from cardnet.wire import Message, Uid

FAST = HttpLimits(
    max_connections=16, max_per_peer=16, max_header_bytes=2048, max_body_bytes=1024,
    request_timeout_s=0.4, idle_timeout_s=0.4, send_timeout_s=2.0,
)  # fmt: skip
A, B = Uid(b"a" * 12, 0), Uid(b"b" * 12, 7)


async def echo_trn(stream: UpgradedStream) -> None:
    """The upgraded connection answers each message with the same param, src and dst swapped."""
    conn = trn_connection(stream)
    async for msg in conn:
        await conn.send(Message(msg.dst, msg.src, msg.mtype, msg.param))


def make_router() -> Router:
    router = Router()

    async def hello(request: Request) -> Response:
        if request.wants_html:
            return Response.html("<h1>hello</h1>")
        return Response.json({"hello": request.query.get("name", "world")})

    async def event(request: Request) -> Response:
        if request.params["event"] != "e1":
            return http_error(404, "no_event", f"no event {request.params['event']}", request)
        return Response.json({"event": "e1"})

    async def post(request: Request) -> Response:
        return Response.json({"got": request.json()}, 201)

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.2)
        return Response.json({"slow": True})

    async def own(request: Request) -> Response:
        return Response.json({"own": True}, headers=[("Cache-Control", "max-age=60")])

    async def trn(request: Request) -> Response | Upgrade:
        if request.upgrade != TRN:
            return upgrade_required(TRN, "this route only works upgraded to TRN", request)
        return Upgrade(TRN, echo_trn)

    router.add("GET", "/", hello)
    router.add("GET", "/events/{event}", event)
    router.add("POST", "/echo", post)
    router.add("GET", "/boom", boom)
    router.add("GET", "/slow", slow)
    router.add("POST", "/trn", trn)
    router.add("GET", "/own", own)
    return router


class ThreadServer:
    """An HttpServer on its own event loop in a thread, so tests can use blocking clients."""

    def __init__(self, limits: HttpLimits = FAST, **server: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HttpServer(make_router(), limits=limits, upgrades=[TRN], **server)
        self.host, self.port = self.run(self.server.start())
        self.url = f"http://{self.host}:{self.port}"

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.run(self.server.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def serving(limits: HttpLimits = FAST, **server: Any) -> Iterator[ThreadServer]:
    srv = ThreadServer(limits, **server)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def srv() -> Iterator[ThreadServer]:
    with serving() as s:
        yield s


def raw(srv: ThreadServer, data: bytes, *, timeout_s: float = 3.0, shut: bool = True) -> bytes:
    """Send ``data`` on a fresh socket and read until the server closes; what it answered."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout_s) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def test_json_for_programs_html_for_people_and_routing(srv: ThreadServer) -> None:
    with httpx.Client(base_url=srv.url) as c:
        r = c.get("/", params={"name": "ann"})
        assert r.status_code == 200 and r.json() == {"hello": "ann"}
        assert r.headers["content-type"] == "application/json"
        r = c.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert r.text == "<h1>hello</h1>" and r.headers["content-type"].startswith("text/html")
        assert c.get("/events/e1").json() == {"event": "e1"}
        r = c.get("/events/e2")
        assert r.status_code == 404 and r.json()["error"] == "no_event"
        r = c.get("/nothing/here", headers={"Accept": "text/html"})
        assert r.status_code == 404 and "<h1>404 Not Found</h1>" in r.text
        r = c.delete("/events/e1")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = c.head("/")
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        r = c.post("/echo", json={"x": [1, 2]})
        assert r.status_code == 201 and r.json() == {"got": {"x": [1, 2]}}
        r = c.post("/echo", content=b"not json")
        assert r.status_code == 400 and r.json()["error"] == "bad_json"


def test_keep_alive_serves_several_requests_on_one_connection(srv: ThreadServer) -> None:
    two = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /events/e1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw(srv, two)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and b'"event": "e1"' in answer


def test_a_failing_handler_is_a_500_and_the_server_goes_on(srv: ThreadServer) -> None:
    with httpx.Client(base_url=srv.url) as c:
        before = srv.server.failures
        r = c.get("/boom")
        assert r.status_code == 500 and r.json()["error"] == "internal"
        assert srv.server.failures == before + 1
        assert c.get("/").status_code == 200  # same client, the server is fine


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"a" * 2048, 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", 400),
        (b"POST /trn HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 426),
    ],
    ids=[
        "garbage",
        "no-host",
        "bad-header",
        "two-lengths",
        "gzip",
        "huge-header",
        "big-body",
        "big-chunked",
        "websocket",
        "h2c",
        "trn-route-without-upgrade",
    ],
)
def test_bad_http_gets_a_proper_error_and_a_close(srv: ThreadServer, request_bytes: bytes, status: int) -> None:
    answer = raw(srv, request_bytes)
    assert status_of(answer) == status
    if b"bad_upgrade" not in answer and status != 426:  # a refused upgrade leaves the connection usable
        assert b"connection: close" in answer.lower()
    if status == 426:
        assert b"upgrade: TRN" in answer.lower().replace(b"trn", b"TRN")


def test_an_oversize_header_block_is_refused_before_it_is_all_read(srv: ThreadServer) -> None:
    """A client that streams headers forever gets 431 once they pass the limit; the server does not read on."""
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(OSError):  # the server closes while we are still sending
            for _ in range(2000):
                s.sendall(b"X-Junk: " + b"j" * 1000 + b"\r\n")
                time.sleep(0.0005)
        got = b""
        with suppress(OSError):
            got = read_all(s)
    assert got == b"" or status_of(got) == 431


def test_a_slow_client_gets_408_and_others_are_served_meanwhile(srv: ThreadServer) -> None:
    t0 = time.monotonic()
    with socket.create_connection((srv.host, srv.port), timeout=5) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHo")  # and then nothing
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/").status_code == 200  # not held up by the slow one
        answer = read_all(slow)
    assert status_of(answer) == 408
    assert 0.3 < time.monotonic() - t0 < 2.0


def test_a_drip_fed_request_is_cut_at_its_deadline(srv: ThreadServer) -> None:
    """Sending a byte now and then does not extend the deadline (slowloris)."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 1000:
                s.send(bytes([b]))
                time.sleep(0.02)
        assert time.monotonic() - t0 < 1.5


def test_an_idle_keep_alive_connection_is_closed_quietly(srv: ThreadServer) -> None:
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        answer = read_all(s)  # the answer, then the close after idle_timeout_s
    assert answer.count(b"HTTP/1.1") == 1 and status_of(answer) == 200
    assert 0.3 < time.monotonic() - t0 < 2.0


def test_connections_beyond_the_cap_get_503_and_the_held_ones_still_work() -> None:
    limits = HttpLimits(max_connections=4, max_per_peer=4, request_timeout_s=5, idle_timeout_s=5)
    with serving(limits) as srv:
        held = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(4)]
        try:
            deadline = time.monotonic() + 2
            while srv.server.held < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            answer = raw(srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(answer) == 503 and b'"busy"' in answer
            assert srv.server.refused == 1
            for s in held:  # each held connection is served normally
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert status_of(read_all(s)) == 200
        finally:
            for s in held:
                s.close()


EVERY = (("Cache-Control", "no-store"), ("X-Frame-Options", "DENY"))


def head_of(answer: bytes) -> tuple[int, list[tuple[str, str]]]:
    """A raw answer's status and its headers (names lower case)."""
    lines = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return status_of(answer), [(k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])]


def test_the_servers_headers_are_on_every_answer_errors_included() -> None:
    """``headers`` on every answer (a handler's own header wins), ``answer_headers`` on every answer to a request
    whose head was read: the routed ones, 404, 405, 400, 413, 431, 408, a handler's 500, and the 503 of a full
    server (``headers`` only: nothing was read)."""
    limits = HttpLimits(max_connections=2, max_per_peer=2, max_header_bytes=2048, max_body_bytes=1024,
                        request_timeout_s=0.4, idle_timeout_s=0.4, send_timeout_s=2.0)  # fmt: skip

    def per_request(request: Request) -> list[tuple[str, str]]:
        return [("X-Path", request.path)]

    cases = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, "/"),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, "/"),
        (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "/nothing"),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "/"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nnot", 400, "/echo"),
        (b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n", 500, "/boom"),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413, "/echo"),
        (b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2100 + b"\r\n\r\n", 431, "/big"),  # (one read)
        (b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000, 431, None),  # (h11: the head never ends)
        (b"GET /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n1", 408, "/slow"),  # the body never comes
        (b"NOT HTTP AT ALL\r\n\r\n", 400, None),
        (b"GET /trn HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "/trn"),
    ]
    with serving(limits, headers=EVERY, answer_headers=per_request) as srv:
        for data, status, path in cases:
            got, headers = head_of(raw(srv, data, shut=False))
            assert got == status, (data[:40], got)
            for name, value in EVERY:
                assert headers.count((name.lower(), value)) == 1, (status, headers)
            assert [v for k, v in headers if k == "x-path"] == ([path] if path else [])
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:  # a handler's own header wins
            s.sendall(b"GET /own HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got, headers = head_of(read_all(s))
        assert got == 200 and [v for k, v in headers if k == "cache-control"] == ["max-age=60"]
        assert ("x-frame-options", "DENY") in headers
        held = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(2)]
        try:
            deadline = time.monotonic() + 2
            while srv.server.held < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            got, headers = head_of(raw(srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert got == 503 and all(headers.count((k.lower(), v)) == 1 for k, v in EVERY), headers
            assert "x-path" not in dict(headers)
        finally:
            for s in held:
                s.close()
    with pytest.raises(TransportError, match="not an HTTP header"):
        HttpServer(Router(), headers=[("X-Evil", "a\r\nSet-Cookie: x=1")])


def test_many_concurrent_clients_are_all_served() -> None:
    limits = HttpLimits(max_connections=64, max_per_peer=64)
    with serving(limits) as srv:

        async def many() -> list[int]:
            async with httpx.AsyncClient(base_url=srv.url, limits=httpx.Limits(max_connections=50)) as c:
                rs = await asyncio.gather(*(c.get("/slow") for _ in range(50)))
            return [r.status_code for r in rs]

        t0 = time.monotonic()
        assert asyncio.run(many()) == [200] * 50
        assert time.monotonic() - t0 < 3  # concurrently: each takes 0.2 s
        assert srv.server.refused == 0


def frame(mtype: int, param: bytes = b"") -> bytes:
    return encode_frame(Message(B, A, mtype, param))


def test_upgrade_to_trn_carries_frames_both_ways_including_ones_sent_with_the_request(srv: ThreadServer) -> None:
    request = b"POST /trn HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TRN\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        s.sendall(request + frame(0x0101, b"early"))  # a frame right behind the request: h11's trailing data
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and b"upgrade: trn" in head.lower()
        s.sendall(frame(0x0102, b"later"))
        want = encode_frame(Message(A, B, 0x0101, b"early")) + encode_frame(Message(A, B, 0x0102, b"later"))
        while len(rest) < len(want):
            rest += s.recv(4096)
        assert rest == want


def test_dial_trn_gets_a_message_connection_or_the_servers_refusal(srv: ThreadServer) -> None:
    async def go() -> None:
        got = await request(srv.host, srv.port, "GET", "/?name=bo", headers=[("Accept", "application/json")])
        assert got.status == 200 and got.json() == {"hello": "bo"} and got.stream is None
        assert (await request(srv.host, srv.port, "GET", "/events/x")).json()["error"] == "no_event"
        up = await dial_trn(srv.host, srv.port, "POST", "/trn")
        assert up.headers["upgrade"] == "TRN"
        conn = up.conn
        await conn.send(Message(B, A, 0x0103, b"hi"))
        assert await conn.recv() == Message(A, B, 0x0103, b"hi")
        await conn.aclose()
        with pytest.raises(UpgradeRefused) as info:
            await dial_trn(srv.host, srv.port, "POST", "/echo")  # a route that does not upgrade answers normally
        assert info.value.status == 400 and info.value.error == "bad_json"
        with pytest.raises(UpgradeRefused) as info:
            await dial_trn(srv.host, srv.port, "GET", "/missing")
        assert info.value.status == 404

    asyncio.run(go())


def test_httpx_sees_the_101_and_speaks_frames_on_its_network_stream(srv: ThreadServer) -> None:
    """A stock client library can use the upgrade: the 101 hands httpx's stream over to eTP frames."""

    async def go() -> bytes:
        async with (
            httpx.AsyncClient(base_url=srv.url) as c,
            c.stream("POST", "/trn", headers={"Connection": "Upgrade", "Upgrade": "TRN"}) as r,
        ):
            assert r.status_code == 101 and r.headers["upgrade"] == "TRN"
            stream = r.extensions["network_stream"]
            await stream.write(frame(0x0104, b"via httpx"))
            out = b""
            want = len(frame(0x0104, b"via httpx"))
            while len(out) < want:
                out += await stream.read(4096)
            return out

    assert asyncio.run(go()) == encode_frame(Message(A, B, 0x0104, b"via httpx"))


def test_an_upgraded_connection_that_sends_a_bad_frame_is_closed_alone(srv: ThreadServer) -> None:
    request = b"POST /trn HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TRN\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection((srv.host, srv.port), timeout=3) as s:
        s.sendall(request + b"\x00\x00\x00\x05junk")  # a frame length below the 34-byte header
        answer = read_all(s)
    assert status_of(answer) == 101
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/").status_code == 200


def test_limits_are_checked() -> None:
    from cardnet.transport import TransportError

    for bad in ({"max_connections": 0}, {"request_timeout_s": 0}, {"max_body_bytes": True}):
        with pytest.raises(TransportError, match="HttpLimits"):
            HttpLimits(**bad)  # type: ignore[arg-type]
