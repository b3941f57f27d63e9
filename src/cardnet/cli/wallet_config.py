"""The wallet config: where ``cardnet wallet`` finds a person's host, card, broker and stores without options.

One TOML file, by default ``~/.cardnet/wallet.toml`` (``$CARDNET_HOME/wallet.toml`` when ``CARDNET_HOME`` is
set; ``$CARDNET_WALLET_CONFIG`` or ``--config`` name another file). ``cardnet wallet init`` writes it beside the
card's store and the host's config; ``cardnet wallet config --set KEY=VALUE`` changes it. Relative paths in it
are relative to its folder. The PIN is never kept there: a file with a ``pin`` is refused, and the PIN comes from
``--pin``, ``$CARDNET_PIN`` or a prompt.

::

    socket = "/home/alice/.cardnet/host.sock"   # the host's app_socket
    card = "0123456789abcdef01234567"           # the card's domain (needed when the host runs several)
    broker = "127.0.0.1:7400"                   # SPEED: the broker (e-purse loads, payments)
    broker_cert = "broker.pem"                  # SPEED: the broker's certificate
    ca_cert = "ca.pem"                          # the CA certificate (checks vendors and the broker)
    account = "C-1"                             # SPEED: your account at the broker (loads)
    purchases = "purchases"                     # SPEED: products, receipts, purchases under way (default)
    millicent = "millicent.db"                  # Millicent: the scrip wallet's store (default)
"""

from __future__ import annotations

import os
import shlex
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cardnet.cli.output import fail, fail_os
from cardnet.services.admissions import FILE as ADMISSIONS
from cardnet.services.admissions import AdmissionMemory

FILE = "wallet.toml"
HOME_ENV = "CARDNET_HOME"
CONFIG_ENV = "CARDNET_WALLET_CONFIG"
PATHS = ("socket", "broker_cert", "ca_cert", "purchases", "millicent")  # keys whose values are paths
KEYS = ("socket", "card", "broker", "broker_cert", "ca_cert", "account", "purchases", "millicent")
DEFAULTS = {"purchases": "purchases", "millicent": "millicent.db"}
# What a value looks like, in the hint that asks for a missing one
EXAMPLES = {"broker": "HOST:PORT", "broker_cert": "BROKER_PEM", "ca_cert": "CA_PEM", "account": "ACCOUNT",
            "socket": "SOCKET", "card": "DOMAIN"}  # fmt: skip


def default_path() -> Path:
    """Where the wallet config is when no ``--config`` is given."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    home = os.environ.get(HOME_ENV)
    return (Path(home) if home else Path.home() / ".cardnet") / FILE


@dataclass(frozen=True)
class WalletConfig:
    """A wallet config as read (``exists`` False: no file, every value unset but the defaults)."""

    path: Path
    values: dict[str, str]
    exists: bool

    @property
    def folder(self) -> Path:
        return self.path.parent

    def get(self, key: str) -> str | None:
        """The value of ``key`` (a path made absolute against the file's folder), or None if unset."""
        value = self.values.get(key, DEFAULTS.get(key))
        if value is None:
            return None
        if key in PATHS:
            return str(self.folder / Path(value).expanduser())
        return value

    def need(self, key: str, option: str, what: str) -> str:
        """The value of ``key``, or a failure saying how to give it (``option`` on the command line, or the config)."""
        value = self.get(key)
        if value is None:
            example = EXAMPLES.get(key, "VALUE")
            keep = f"cardnet wallet config --config {shlex.quote(str(self.path))} --set {key}={example}"
            fail(
                f"no {what}: give {option}, or keep it in the wallet config ({self.path})",
                reason="not_configured",
                hint=f"`{keep}` keeps it (in the config this command read), or give {option}",
            )
        return value


def admissions(config: WalletConfig) -> AdmissionMemory | None:
    """The wallet's memory of its admissions at gates, beside the config (None without a config: a wallet run
    with ``--socket`` alone keeps no files)."""
    return AdmissionMemory(config.folder / ADMISSIONS) if config.exists else None


def load(path: Path | None) -> WalletConfig:
    """The wallet config at ``path`` (default :func:`default_path`); a missing file is an empty config."""
    path = path or default_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return WalletConfig(path, {}, False)
    except OSError as exc:
        fail_os(exc, "read the wallet config", path)
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        fail(f"the wallet config {path} is not valid TOML: {exc}", reason="bad_config",
             hint="fix the file, or move it away and run `cardnet wallet init` again")  # fmt: skip
    if "pin" in data:
        fail(
            f"the wallet config {path} holds a PIN: cardnet never keeps the PIN in a file",
            reason="pin_in_config",
            hint="remove the pin line; give --pin, set CARDNET_PIN, or type the PIN when asked",
        )
    unknown = sorted(set(data) - set(KEYS))
    wrong = sorted(k for k in data if k in KEYS and not isinstance(data[k], str))
    if unknown or wrong:
        what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"not a string: {', '.join(wrong)}"
        fail(f"the wallet config {path} has {what}", reason="bad_config",
             hint=f"its keys are {', '.join(KEYS)}, each a quoted string")  # fmt: skip
    return WalletConfig(path, {k: str(v) for k, v in data.items()}, True)


def render(values: dict[str, str]) -> str:
    """The TOML text of ``values`` (every value a basic string)."""

    def quoted(text: str) -> str:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'

    head = "# cardnet wallet config (docs/wallet.md). The PIN is never kept here.\n"
    return head + "".join(f"{k} = {quoted(values[k])}\n" for k in KEYS if k in values)


def save(path: Path, values: dict[str, str]) -> None:
    """Write the config whole (a temporary file beside it, renamed into place), readable by its owner alone."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        fail_os(exc, "write the wallet config to", path)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(render(values))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        fail_os(exc, "write the wallet config to", path)
