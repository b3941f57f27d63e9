"""Who may use the web wallet (:mod:`cardnet.web.session`): the checks on requests as the HTTP server parses them."""

from __future__ import annotations

import pytest

from cardnet.transport.http import HttpError, Request
from cardnet.web.session import COOKIE, Session, loopback


def request(method: str = "GET", headers: dict[str, str] | None = None, path: str = "/api/state") -> Request:
    heads = tuple((k.lower(), v) for k, v in (headers or {}).items())
    return Request(method=method, path=path, query={}, headers=heads, body=b"{}", peer="127.0.0.1:5000")


def refused(session: Session, req: Request) -> str:
    with pytest.raises(HttpError) as info:
        session.check(req)
    assert info.value.message  # every refusal says what to do
    return f"{info.value.status} {info.value.reason}"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_addresses_are_taken(host: str) -> None:
    assert loopback(host) == host.strip("[]")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "localhost", "example.org", ""])
def test_other_addresses_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        loopback(host)


def test_the_login_link_works_once_and_gives_a_strict_http_only_cookie() -> None:
    s = Session("127.0.0.1", 8471)
    here = {"Host": "127.0.0.1:8471"}
    assert s.login_url == f"http://127.0.0.1:8471/login/{s.login_token}"
    with pytest.raises(HttpError, match="not valid"):
        s.login(request(headers=here), s.login_token[:-1] + "x")
    cookie = s.login(request(headers=here), s.login_token)
    assert cookie == f"{COOKIE}={s.cookie}; Path=/; HttpOnly; SameSite=Strict"
    with pytest.raises(HttpError, match="used already"):
        s.login(request(headers=here), s.login_token)
    other = Session("127.0.0.1", 8471)
    with pytest.raises(HttpError, match="open it by that address"):  # a rebound name never logs in
        other.login(request(headers={"Host": "evil.example:8471"}), other.login_token)
    assert len({s.login_token, s.cookie, s.csrf}) == 3 and len(s.cookie) >= 43  # 256 bits each


def test_requests_need_the_cookie_and_this_server_s_name() -> None:
    s = Session("127.0.0.1", 8471)
    good = {"Host": "127.0.0.1:8471", "Cookie": f"other=1; {COOKIE}={s.cookie}"}
    s.check(request(headers=good))
    s.check(request(headers={**good, "Host": "localhost:8471"}))
    assert refused(s, request(headers={"Host": "127.0.0.1:8471"})) == "403 no_session"
    assert refused(s, request(headers={**good, "Cookie": f"{COOKIE}={s.cookie[:-1]}"})) == "403 no_session"
    assert refused(s, request(headers={**good, "Host": "127.0.0.1:8472"})) == "403 wrong_host"
    assert refused(s, request(headers={**good, "Host": "attacker.example:8471"})) == "403 wrong_host"
    assert refused(s, request(headers={"Cookie": good["Cookie"]})) == "403 wrong_host"


def test_a_post_needs_the_csrf_token_json_and_this_origin() -> None:
    s = Session("::1", 8471)
    assert s.url == "http://[::1]:8471/"
    base = {"Host": "[::1]:8471", "Cookie": f"{COOKIE}={s.cookie}", "Content-Type": "application/json",
            "X-CSRF-Token": s.csrf}  # fmt: skip
    s.check(request("POST", base))  # a client that sends neither Origin nor Sec-Fetch-Site
    s.check(request("POST", {**base, "Origin": "http://[::1]:8471", "Sec-Fetch-Site": "same-origin"}))
    assert refused(s, request("POST", {**base, "Origin": "http://evil.example"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Origin": "http://[::1]:9999"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Sec-Fetch-Site": "same-site"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "X-CSRF-Token": ""})) == "403 csrf"
    assert refused(s, request("POST", {k: v for k, v in base.items() if k != "X-CSRF-Token"})) == "403 csrf"
    assert refused(s, request("POST", {**base, "Content-Type": "text/plain"})) == "415 not_json"
    assert refused(s, request("POST", {**base, "Cookie": ""})) == "403 no_session"
