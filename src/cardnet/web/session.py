"""Who may use the web wallet: tabs holding a session secret, each opened by a one-time login link.

Theory of operation. The page moves the card's value, so its API answers only the page the person opened a login
link in. Browsers do not separate cookies by port (a cookie set by ``127.0.0.1:PORT`` goes to every port of
127.0.0.1, so to any other local server the browser visits), so there is **no cookie**: the credential lives in
the page's own origin (scheme, host *and port*), which no other port's script can read.

* The **login token** (``secrets``, 256 bits) is printed in the link ``http://127.0.0.1:PORT/#login=TOKEN``. The
  token is in the URL's fragment, which the browser never sends (no request line, no ``Referer``, no server log
  holds it). The page's script takes it out of the address bar and exchanges it, ``POST /api/login {"token"}``,
  for a **session secret** (256 bits), kept in the tab's ``sessionStorage`` (it survives a reload of that tab;
  another tab, and every other origin, has its own). The login token is then spent. One login token is
  pending at a time: a tab that is logged in can have a new one drawn for another tab (``POST /api/link``).
* **Every API request** (``/api/*``: ``GET`` too, and unknown paths) must carry ``Authorization: Bearer
  SECRET``, else ``401 no_session``. Cookies are never read. A page of another origin cannot send that header
  without a CORS preflight, which this server never grants (it sends no ``Access-Control-Allow-*`` header): the
  header is the CSRF protection too, so there is no separate CSRF token.
* An API request that says where it comes from (``Origin``; ``Sec-Fetch-Site`` ``cross-site`` or ``same-site``)
  must come from this page's origin (``403 cross_site``), and a ``POST`` must be JSON (``415``): both hold even
  for a client that somehow holds the secret inside a browser.
* Every request, the page and its script included, must name this server in ``Host`` (``127.0.0.1:PORT`` or
  ``localhost:PORT``): a page of another site whose name was rebound to 127.0.0.1 (DNS rebinding) is refused
  before anything else. The page and its script hold no secret and nothing of the card: they are served without
  the session (a browser's navigation cannot carry the header).

The secrets are compared in constant time and forgotten when the process ends. The server listens on a loopback
address only (:func:`loopback`).

Older versions kept the session in a cookie, ``cardnet_wallet`` (``Path=/; HttpOnly; SameSite=Strict``), which a
browser may still hold (and send to every port of 127.0.0.1). It is never honoured (no cookie is read for the
session), and every answer to a request that carries it expires it (:func:`expire_stale_cookie`), so it stops
travelling.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field

from cardnet.transport.http import HttpError, Request

SCHEME = "Bearer"
SECRET_BYTES = 32
MAX_SESSIONS = 16  # tabs logged in at once; the oldest is logged out by the next login
RESTART = (
    "open the login link `cardnet wallet ui` printed (it works once, in one tab), press \u201cOpen in another "
    "tab\u201d in a tab of this wallet that is logged in, or stop `cardnet wallet ui` and start it again"
)
CHALLENGE = (("WWW-Authenticate", f'{SCHEME} realm="cardnet wallet"'),)
STALE_COOKIE = "cardnet_wallet"  # the session cookie of older versions
EXPIRE_STALE_COOKIE = ("Set-Cookie", f"{STALE_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def loopback(host: str) -> str:
    """``host`` if it is a loopback IP address (127.0.0.0/8, ::1), else :class:`ValueError` saying why not."""
    try:
        ok = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{host!r} is not a loopback address: the web wallet moves your card's value and listens on this "
            "machine only (give 127.0.0.1 or ::1)"
        )
    return host.strip("[]")


def expire_stale_cookie(request: Request) -> tuple[tuple[str, str], ...]:
    """The ``Set-Cookie`` that expires the old versions' session cookie if ``request`` carries it, else nothing
    (its value is never looked at: it is no credential any more)."""
    for name, value in request.headers:
        if name == "cookie" and any(c.partition("=")[0].strip() == STALE_COOKIE for c in value.split(";")):
            return (EXPIRE_STALE_COOKIE,)
    return ()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def served_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values a loopback server at ``host:port`` answers: its address and ``localhost:PORT``."""
    return frozenset({_netloc(host, port), f"localhost:{port}"})


def check_host(request: Request, host: str, port: int, what: str) -> None:
    """403 ``wrong_host`` unless ``request`` names the loopback server ``what`` at ``host:port`` in ``Host``: a page
    of another site whose name was rebound to 127.0.0.1 (DNS rebinding) would otherwise read what it serves."""
    if (request.header("host") or "").lower() not in served_hosts(host, port):
        raise HttpError(
            403, "wrong_host", f"this is {what} at http://{_netloc(host, port)}/: open it by that address, not another "
            "name",
        )  # fmt: skip


def _secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def _among(value: str, known: list[str]) -> bool:
    """Whether ``value`` is one of ``known``, comparing each in constant time."""
    found = False
    for k in known:
        found |= secrets.compare_digest(value.encode(), k.encode())
    return found


@dataclass
class Session:
    """The secrets of one run and the checks of every request (see the module)."""

    host: str
    port: int
    login_token: str | None = field(default_factory=_secret)  # the one pending login token (None: none)
    sessions: list[str] = field(default_factory=list)  # the session secrets of the tabs logged in, oldest first
    _spent: list[str] = field(default_factory=list, init=False, repr=False)  # tokens used or replaced (for words)

    @property
    def hosts(self) -> frozenset[str]:
        """The ``Host`` values this server answers."""
        return served_hosts(self.host, self.port)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{h}" for h in self.hosts)

    @property
    def url(self) -> str:
        return f"http://{_netloc(self.host, self.port)}/"

    @property
    def login_url(self) -> str:
        """The link of the pending login token ('' when there is none)."""
        return f"{self.url}#login={self.login_token}" if self.login_token else ""

    def new_link(self) -> str:
        """A new one-time login token (the pending one, if any, no longer works); its link."""
        if self.login_token is not None:
            self._spent = [*self._spent[-(MAX_SESSIONS - 1) :], self.login_token]
        self.login_token = _secret()
        return self.login_url

    def login(self, request: Request) -> str:
        """A new session secret for ``POST /api/login`` ``{"token": the pending one-time login token}`` (which is
        then spent); 403 if the token is wrong or spent, or the request not from this server's page (as
        :meth:`check`), 415 if it is not JSON."""
        self.check_host(request)
        self.check_origin(request)
        _check_json(request)
        body = request.json()
        token = body.get("token") if isinstance(body, dict) else None
        given = token if isinstance(token, str) and _TOKEN.fullmatch(token) else ""
        pending = self.login_token
        if not given or pending is None or not secrets.compare_digest(given.encode(), pending.encode()):
            used = bool(given) and _among(given, self._spent)
            why = "was used already (a login link opens one tab)" if used else "is not valid"
            raise HttpError(403, "bad_login", f"this login link {why}: {RESTART}")
        self._spent = [*self._spent[-(MAX_SESSIONS - 1) :], pending]
        self.login_token = None
        secret = _secret()
        self.sessions = [*self.sessions[-(MAX_SESSIONS - 1) :], secret]
        return secret

    def check_host(self, request: Request) -> None:
        check_host(request, self.host, self.port, "the web wallet")

    def check_origin(self, request: Request) -> None:
        """403 if the browser says the request comes from a page of another origin."""
        origin = request.header("origin")
        site = (request.header("sec-fetch-site") or "").lower()
        if (origin is not None and origin not in self.origins) or site in ("cross-site", "same-site"):
            raise HttpError(403, "cross_site", "a request from another site was refused: use the wallet's own page")

    def check(self, request: Request) -> None:
        """An API request: 403 unless it names this server and comes from this page's origin (when it says),
        401 without a session's ``Authorization`` header, and for a ``POST`` 415 unless it is JSON."""
        self.check_host(request)
        self.check_origin(request)
        scheme, _, secret = (request.header("authorization") or "").strip().partition(" ")
        if scheme.lower() != SCHEME.lower() or not _among(secret.strip(), self.sessions):
            raise HttpError(401, "no_session", f"this tab is not logged in to the wallet: {RESTART}", CHALLENGE)
        if request.method not in ("GET", "HEAD", "OPTIONS"):  # (an OPTIONS is answered 405: nothing is routed)
            _check_json(request)


def _check_json(request: Request) -> None:
    if (request.header("content-type") or "").split(";")[0].strip().lower() != "application/json":
        raise HttpError(415, "not_json", "the wallet takes JSON (send with the page's buttons)")
