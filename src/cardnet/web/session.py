"""Who may use the web wallet: one browser session per run, opened by a one-time login link.

Theory of operation. The page moves the card's value, so it answers only the browser the person opened the
login link in. Each run of ``cardnet wallet ui`` draws three random secrets (``secrets``, 256 bits each):

* the **login token**, printed in the link ``http://127.0.0.1:PORT/login/TOKEN``; it works once: it answers
  ``303`` to ``/`` with the session cookie and is then spent (a copy of the link in a shell history or a second
  browser opens nothing);
* the **session cookie** (``HttpOnly``: no script reads it; ``SameSite=Strict``: the browser does not send it
  with a request another site started; no ``Max-Age``: it ends with the browser session, and with this process,
  which forgets it). Every request without it is refused ``403``, whatever its path;
* the **CSRF token**, written into the page (a ``<meta>``) and sent back by the page's script in the
  ``X-CSRF-Token`` header of every ``POST``. Only ``POST`` changes anything, and a ``POST`` must carry the cookie,
  the token, ``Content-Type: application/json`` and, when the browser says where it comes from (``Origin``,
  ``Sec-Fetch-Site``), come from this page's own origin.

Every request must also name this server in ``Host`` (``127.0.0.1:PORT`` or ``localhost:PORT``): a page of
another site whose name was rebound to 127.0.0.1 (DNS rebinding) is refused before anything else. The secrets
are compared in constant time. The server listens on a loopback address only (:func:`loopback`).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from cardnet.transport.http import HttpError, Request

COOKIE = "cardnet_wallet"
CSRF_HEADER = "X-CSRF-Token"
SECRET_BYTES = 32
RESTART = "run `cardnet wallet ui` again and open the login link it prints"


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


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Session:
    """The secrets of one run and the checks of every request (see the module)."""

    host: str
    port: int
    login_token: str = field(default_factory=lambda: secrets.token_urlsafe(SECRET_BYTES))
    cookie: str = field(default_factory=lambda: secrets.token_urlsafe(SECRET_BYTES))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(SECRET_BYTES))
    logged_in: bool = False

    @property
    def hosts(self) -> frozenset[str]:
        """The ``Host`` values this server answers."""
        return frozenset({_netloc(self.host, self.port), f"localhost:{self.port}"})

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{h}" for h in self.hosts)

    @property
    def url(self) -> str:
        return f"http://{_netloc(self.host, self.port)}/"

    @property
    def login_url(self) -> str:
        return f"{self.url}login/{self.login_token}"

    def login(self, request: Request, token: str) -> str:
        """The ``Set-Cookie`` value for the one-time login ``token``; 403 if it is wrong or spent."""
        self.check_host(request)
        if self.logged_in or not secrets.compare_digest(token.encode(), self.login_token.encode()):
            why = "was used already (a login link opens one browser session)" if self.logged_in else "is not valid"
            raise HttpError(403, "bad_login", f"this login link {why}: {RESTART}")
        self.logged_in = True
        return f"{COOKIE}={self.cookie}; Path=/; HttpOnly; SameSite=Strict"

    def check_host(self, request: Request) -> None:
        if (request.header("host") or "").lower() not in self.hosts:
            raise HttpError(
                403, "wrong_host", f"this is the web wallet at {self.url}: open it by that address, not another name"
            )

    def check(self, request: Request) -> None:
        """403 unless the request names this server and carries the session cookie; for a ``POST`` also the CSRF
        checks (403) and a JSON body (415)."""
        self.check_host(request)
        if not secrets.compare_digest(_cookie(request).encode(), self.cookie.encode()):
            raise HttpError(403, "no_session", f"this page needs the session of the browser that logged in: {RESTART}")
        if request.method in ("GET", "HEAD"):
            return
        origin = request.header("origin")
        site = request.header("sec-fetch-site")
        if (origin is not None and origin not in self.origins) or (site is not None and site != "same-origin"):
            raise HttpError(403, "cross_site", "a request from another site was refused: use the wallet's own page")
        if not secrets.compare_digest((request.header(CSRF_HEADER) or "").encode(), self.csrf.encode()):
            raise HttpError(403, "csrf", "the page's token is missing or old: reload the page and try again")
        if (request.header("content-type") or "").split(";")[0].strip().lower() != "application/json":
            raise HttpError(415, "not_json", "the wallet takes JSON (send with the page's buttons)")


def _cookie(request: Request) -> str:
    """This server's session cookie as the request carries it ('' if it does not)."""
    for name, value in request.headers:
        if name == "cookie":
            for pair in value.split(";"):
                key, sep, got = pair.strip().partition("=")
                if sep and key == COOKIE:
                    return got.strip()
    return ""
