"""Fuzz the HTTP server's request path over real sockets: any bytes get a proper HTTP answer or a clean close.

Never an exception escaping a connection (``HttpServer.crashes`` stays 0), never a hang (every read has a
deadline), and the server keeps serving a good request after each example.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.transport.http import REASONS, HttpLimits, HttpServer, Request, Response, Router, Upgrade, UpgradedStream
from cardnet.transport.http_upgrade import TRN, trn_connection

LIMITS = HttpLimits(max_header_bytes=1024, max_body_bytes=512, request_timeout_s=1.0, idle_timeout_s=1.0)


async def _echo(request: Request) -> Response:
    return Response.json({"path": request.path, "body": len(request.body)})


async def _trn(request: Request) -> Response | Upgrade:
    async def run(stream: UpgradedStream) -> None:
        conn = trn_connection(stream)
        async for msg in conn:
            await conn.send(msg)

    return Upgrade(TRN, run) if request.upgrade == TRN else Response.json({}, 426)


class _Server:
    def __init__(self) -> None:
        router = Router()
        for method in ("GET", "POST", "PUT"):
            router.add(method, "/", _echo)
            router.add(method, "/events/{event}", _echo)
        router.add("POST", "/trn", _trn)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = HttpServer(router, limits=LIMITS, upgrades=[TRN])
        self.address = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, half-close, read until the server closes (a 3 s socket timeout: a hang fails)."""
    with socket.create_connection(address, timeout=3) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed while we were still sending: allowed
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


METHODS = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "CONNECT", "G\x00T", "", "get"])
TARGETS = st.sampled_from(["/", "/events/e1", "/events/", "/trn", "*", "http://x/events/a", "/%zz", "", "/a b", "/é"])
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1x", "", "http/1.1"])
HEADER_NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Expect", "Accept", "X", "", "Bad Name"]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "x",
            "0",
            "5",
            "-1",
            "99999999999999999999",
            "chunked",
            "gzip, chunked",
            "Upgrade",
            "TRN",
            "websocket",
            "close",
            "100-continue",
            "text/html",
            "",
        ]
    ),
    st.text(max_size=40),
)
SEP = st.sampled_from(["\r\n", "\n", "\r", " "])


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    eol = draw(SEP)
    line = f"{draw(METHODS)} {draw(TARGETS)} {draw(VERSIONS)}"
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    head = eol.join([line, *(f"{k}: {v}" for k, v in headers)]) + eol + eol
    data = head.encode("utf-8", "surrogatepass") + draw(st.binary(max_size=600))
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    return data[:cut] if draw(st.booleans()) else data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2000), http_requests(), st.lists(http_requests(), max_size=3).map(b"".join)))
def test_any_bytes_get_a_proper_answer_or_a_clean_close(server: _Server, data: bytes) -> None:
    answer = exchange(server.address, data)
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        for part in answer.split(b"HTTP/1.1 ")[1:]:
            if part[:3].isdigit() and part[3:4] == b" ":
                assert int(part[:3]) in REASONS or int(part[:3]) == 101
    assert server.server.crashes == 0
    good = exchange(server.address, b"GET /events/e9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert good.startswith(b"HTTP/1.1 200 OK")
