"""Who may use the web wallet (:mod:`cardnet.web.session`): the checks on requests as the HTTP server parses them."""

from __future__ import annotations

import json

import pytest

from cardnet.transport.http import HttpError, Request
from cardnet.web.session import EXPIRE_STALE_COOKIE, MAX_SESSIONS, Session, expire_stale_cookie, loopback


def request(
    method: str = "GET", headers: dict[str, str] | None = None, path: str = "/api/state", body: object = None
) -> Request:
    heads = tuple((k.lower(), v) for k, v in (headers or {}).items())
    raw = b"{}" if body is None else json.dumps(body).encode()
    return Request(method=method, path=path, query={}, headers=heads, body=raw, peer="127.0.0.1:5000")


def refused(session: Session, req: Request) -> str:
    with pytest.raises(HttpError) as info:
        session.check(req)
    assert info.value.message  # every refusal says what to do
    return f"{info.value.status} {info.value.reason}"


def login(session: Session, token: object, headers: dict[str, str] | None = None) -> str:
    here = {"Host": f"127.0.0.1:{session.port}", "Content-Type": "application/json", **(headers or {})}
    return session.login(request("POST", here, "/api/login", {"token": token}))


def bearer(secret: str) -> dict[str, str]:
    return {"Host": "127.0.0.1:8471", "Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_addresses_are_taken(host: str) -> None:
    assert loopback(host) == host.strip("[]")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "localhost", "example.org", ""])
def test_other_addresses_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        loopback(host)


def test_the_login_link_works_once_and_gives_a_session_secret() -> None:
    s = Session("127.0.0.1", 8471)
    token = s.login_token
    assert token is not None and s.login_url == f"http://127.0.0.1:8471/#login={token}"  # a fragment: never sent
    with pytest.raises(HttpError, match="not valid"):
        login(s, token[:-1] + ("x" if token[-1] != "x" else "y"))
    for bad in (None, 42, "", "a b", token + "/"):
        with pytest.raises(HttpError, match="not valid"):
            login(s, bad)
    assert s.login_token == token and not s.sessions  # wrong tokens spend nothing
    secret = login(s, token)
    assert s.sessions == [secret] and s.login_token is None and s.login_url == ""
    with pytest.raises(HttpError, match="used already"):
        login(s, token)
    assert len({token, secret}) == 2 and len(secret) >= 43  # 256 bits each
    s.check(request(headers=bearer(secret)))
    assert refused(s, request(headers=bearer(token))) == "401 no_session"  # the login token is no session


def test_the_login_needs_this_server_its_origin_and_json() -> None:
    s = Session("127.0.0.1", 8471)
    token = s.login_token
    for headers, why in (
        ({"Host": "evil.example:8471"}, "open it by that address"),  # a rebound name never logs in
        ({"Origin": "http://127.0.0.1:9999"}, "another site"),  # a page of another port
        ({"Sec-Fetch-Site": "same-site"}, "another site"),
        ({"Content-Type": "text/plain"}, "takes JSON"),  # a form, or a fetch without a preflight
    ):
        with pytest.raises(HttpError, match=why):
            login(s, token, headers)
    assert s.login_token == token  # none of them spent it
    login(s, token, {"Origin": "http://127.0.0.1:8471", "Sec-Fetch-Site": "same-origin"})


def test_a_new_link_replaces_the_pending_one_and_logs_in_another_tab() -> None:
    s = Session("127.0.0.1", 8471)
    first = s.login_token
    tab1 = login(s, first)
    s.new_link()
    second = s.login_token
    s.new_link()  # drawn again before it was used: only the newest works
    third = s.login_token
    assert len({first, second, third}) == 3
    with pytest.raises(HttpError, match="used already"):
        login(s, second)
    tab2 = login(s, third)
    s.check(request(headers=bearer(tab1)))
    s.check(request(headers=bearer(tab2)))
    for _ in range(MAX_SESSIONS - 1):  # the oldest tab is logged out when too many are
        s.new_link()
        login(s, s.login_token)
    assert refused(s, request(headers=bearer(tab1))) == "401 no_session"
    s.check(request(headers=bearer(tab2)))


def test_requests_need_the_bearer_header_and_this_server_s_name() -> None:
    s = Session("127.0.0.1", 8471)
    secret = login(s, s.login_token)
    good = bearer(secret)
    s.check(request(headers=good))
    s.check(request(headers={**good, "Host": "localhost:8471"}))
    s.check(request(headers={**good, "Authorization": f"bearer  {secret} "}))
    s.check(request(headers={**good, "Sec-Fetch-Site": "same-origin"}))
    s.check(request(headers={**good, "Sec-Fetch-Site": "none"}))  # typed into the address bar (no header then)
    assert refused(s, request(headers={"Host": "127.0.0.1:8471"})) == "401 no_session"
    for wrong in (secret[:-1], f"Bearer {secret[:-1]}", f"Basic {secret}", secret, f"Bearer {secret}x", "Bearer "):
        assert refused(s, request(headers={**good, "Authorization": wrong})) == "401 no_session", wrong
    with pytest.raises(HttpError) as info:
        s.check(request(headers={"Host": "127.0.0.1:8471"}))
    assert ("WWW-Authenticate", 'Bearer realm="cardnet wallet"') in info.value.headers
    # no cookie is read, whatever it holds
    cookie = {"Host": "127.0.0.1:8471", "Cookie": f"cardnet_wallet={secret}; session={secret}"}
    assert refused(s, request(headers=cookie)) == "401 no_session"
    assert refused(s, request(headers={**good, "Host": "127.0.0.1:8472"})) == "403 wrong_host"
    assert refused(s, request(headers={**good, "Host": "attacker.example:8471"})) == "403 wrong_host"
    assert refused(s, request(headers={"Authorization": good["Authorization"]})) == "403 wrong_host"
    assert refused(s, request(headers={**good, "Origin": "http://127.0.0.1:9999"})) == "403 cross_site"
    assert refused(s, request(headers={**good, "Sec-Fetch-Site": "cross-site"})) == "403 cross_site"


def test_a_post_needs_json_and_this_origin() -> None:
    s = Session("::1", 8471)
    assert s.url == "http://[::1]:8471/"
    secret = s.login(request("POST", {"Host": "[::1]:8471", "Content-Type": "application/json"}, "/api/login",
                             {"token": s.login_token}))  # fmt: skip
    base = {"Host": "[::1]:8471", "Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    s.check(request("POST", base))  # a client that sends neither Origin nor Sec-Fetch-Site
    s.check(request("POST", {**base, "Origin": "http://[::1]:8471", "Sec-Fetch-Site": "same-origin"}))
    s.check(request("POST", {**base, "Origin": "http://localhost:8471"}))
    assert refused(s, request("POST", {**base, "Origin": "http://evil.example"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Origin": "http://[::1]:9999"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Origin": "null"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Sec-Fetch-Site": "same-site"})) == "403 cross_site"
    assert refused(s, request("POST", {**base, "Content-Type": "text/plain"})) == "415 not_json"
    assert refused(s, request("POST", {k: v for k, v in base.items() if k != "Authorization"})) == "401 no_session"


@pytest.mark.parametrize(
    ("cookies", "expired"),
    [
        ([], False),
        (["theme=dark"], False),
        (["cardnet_wallet=abc"], True),
        (["cardnet_wallet="], True),
        (["theme=dark; cardnet_wallet=abc; lang=en"], True),
        (["theme=dark", " cardnet_wallet = abc"], True),  # (two Cookie headers)
        (["cardnet_wallet_x=1; xcardnet_wallet=2", "a=cardnet_wallet"], False),
    ],
)
def test_the_old_versions_session_cookie_is_expired_and_never_read(cookies: list[str], expired: bool) -> None:
    s = Session("127.0.0.1", 8471)
    secret = login(s, s.login_token)
    heads = (*(("cookie", c) for c in cookies), ("host", "127.0.0.1:8471"))
    req = Request(method="GET", path="/api/state", query={}, headers=heads, body=b"", peer="127.0.0.1:5000")
    assert expire_stale_cookie(req) == ((EXPIRE_STALE_COOKIE,) if expired else ())
    assert EXPIRE_STALE_COOKIE == ("Set-Cookie", "cardnet_wallet=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")
    with_secret = request(headers={"Host": "127.0.0.1:8471", "Cookie": f"cardnet_wallet={secret}"})
    assert refused(s, with_secret) == "401 no_session"  # a cookie holding a live secret is no session
