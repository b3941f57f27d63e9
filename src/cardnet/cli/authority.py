"""``cardnet authority``: run the TRN authority (trace registry + blocklist signer) and operate it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click

from cardnet.cli.output import FiniteRange, console, emit_json, fail, json_option, say, say_ready
from cardnet.cli.trn import (
    answer,
    card_command,
    cert_file_der,
    parse_domain,
    parse_oid,
    run_on_card,
    run_order,
    verify_pin,
)


@click.group()
def authority() -> None:
    """The TRN authority: traces every token movement, detects branches, blocks cloned devices."""


@authority.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The host config (TOML, docs/host.md) with the authority's card.")  # fmt: skip
@click.option("--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA file: the service signs blocklists with it.")  # fmt: skip
@click.option("--every", "every_s", default=1.0, show_default=True, type=FiniteRange(min=0.01),
              help="Seconds between blocklist checks.")  # fmt: skip
@click.option("--refresh", "refresh_s", default=0.0, show_default=True, type=FiniteRange(min=0),
              help="Re-sign the blocklist this often (seconds) even when nothing changed, so that cards with a "
              "maximum blocklist age (their freshness policy) keep accepting peers; 0: only on a change.")  # fmt: skip
@json_option
def authority_run(config_path: Path, ca_path: Path, every_s: float, refresh_s: float, as_json: bool) -> None:
    """Run the authority's host (its card has the `authority` applet) and the blocklist signer.

    The operator PIN of the authority card comes from $CARDNET_PIN and is checked before `ready` (a wrong one
    exits with reason wrong_pin and the tries left). The host may run other cards too (e.g. the
    agent's): the signer logs in to the one card whose config lists the `authority` applet.
    """
    from cardnet.cli.host import run_host_service
    from cardnet.crypto import pki
    from cardnet.host.config import load_config
    from cardnet.services.authority import BlocklistSigner

    pin = os.environ.get("CARDNET_PIN")
    if not pin:
        fail("no PIN: set CARDNET_PIN to the authority card's PIN", reason="no_pin",
             hint=f"run it as `CARDNET_PIN=... cardnet authority run --config {config_path} --ca {ca_path}`: the "
             "service logs in to its own card with it, unattended (it asks no terminal)")  # fmt: skip
    config = load_config(config_path)
    ca = pki.CertificateAuthority.load(ca_path)
    # The signer logs in to the authority card by name: the host may run other cards too (an agent).
    cards = [c for c in config.cards if "authority" in c.applets]
    if not cards:
        fail(f"{config_path} has no authority card: none of its [[cards]] lists the `authority` applet, and "
             "`cardnet authority run` runs the authority's card", reason="no_authority_card",
             hint='give --config the authority host\'s config, or add "authority" to the applets of its authority '
             "card's [[cards]] entry (docs/host.md); a host without one runs with `cardnet host run`")  # fmt: skip
    if len(cards) > 1:
        fail(
            f"{config_path} has {len(cards)} cards with the `authority` applet: the blocklist signer logs in to one",
            reason="bad_config",
            hint="keep the `authority` applet on one card of the host: the authority's",
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signer_log = logging.getLogger("cardnet.authority")  # each epoch signed, at INFO: what the operator watches
    if signer_log.getEffectiveLevel() > logging.INFO:
        signer_log.setLevel(logging.INFO)

    def check_ca(card: Any) -> None:
        """The authority card must take the blocklists signed with --ca: else it would refuse every epoch."""
        from cardnet.services.authority import ca_names, ca_trusted

        if not ca_trusted(ca, card.roots_der):
            fail(
                f"the CA in {ca_path} ({ca.certificate.subject.rfc4514_string()!r}) is not one the authority card "
                f"{card.uid} trusts (it trusts {ca_names(card.roots_der)}): the card would refuse every blocklist "
                "signed with it, and no card would learn of a blocked device",
                reason="wrong_ca",
                hint="give --ca the CA file of the CA that issued the authority card (the network's CA, the one "
                "`cardnet card create --ca` used for it)",
            )

    def service(domain: bytes) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
        return BlocklistSigner(ca, str(config.app_socket), pin, every_s, card=domain, refresh_s=refresh_s).run

    run_host_service(config, applet="authority", pin=pin,
                     pin_hint="set CARDNET_PIN to the authority card's PIN; at 0 tries it locks", service=service,
                     failed=("the blocklist signer failed", None), log_failure="cardnet.authority",
                     check=check_ca, as_json=as_json)  # fmt: skip


@card_command(
    authority,
    "add-agent",
    click.option(
        "--cert",
        "cert_path",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="The agent card's certificate (PEM or DER), e.g. from `cardnet card show --cert`.",
    ),
)
def authority_add_agent(socket: str, pin: str | None, card: str | None, cert_path: Path, as_json: bool) -> None:
    """Register a ticketing agent: tokens it issues can then be traced."""
    from cardnet.applets.authority import ADD_AGENT
    from cardnet.crypto import pki

    der = cert_file_der(cert_path, "--cert")
    run_order(socket, pin, card, ADD_AGENT, cert=der)  # (a refusal fails in words, with its reason)
    agent = pki.uid_of(pki.cert_from_der(der))  # (the card checked it: an agent certificate of its CA)
    message = f"agent {agent} registered: the tokens it issues can now be traced here"
    say(as_json, {"agent": str(agent), "registered": True, "message": message}, message)


def unknown_oid(oid: str) -> NoReturn:
    """Fail for a token the authority never traced (a mistyped oid, one not sent yet, or another authority)."""
    fail(
        f"the authority knows no movement of token {oid}: it never recorded one",
        reason="unknown_oid",
        hint="check the oid (`cardnet trn list` on a card that holds the token shows it) and the authority "
        "(--socket, --card): it learns of a token at its first send; `cardnet authority graph` lists every "
        "token it traced",
        fields={"oid": oid},
    )


@card_command(authority, "chain", click.option("--oid", required=True, help="The token's oid (32 hex digits)."))
def authority_chain(socket: str, pin: str | None, card: str | None, oid: str, as_json: bool) -> None:
    """The recorded movements of a token: issuer, then every holder in order."""
    from cardnet.applets.authority import CHAIN, QUERY

    async def work(app: Any) -> dict[str, Any]:
        await app.send(app.uid.card_uid(), QUERY, oid=parse_oid(oid))
        return await answer(app, CHAIN)

    chain = run_on_card(socket, pin, work, parse_domain(card))
    issuer = str(chain.get("issuer") or "")
    holders = [str(h) for h in chain["holders"]]
    if not issuer and not holders and "revoked" not in chain and "reissued_as" not in chain:
        unknown_oid(oid)
    if as_json:
        reissued = chain["reissued_as"].hex() if "reissued_as" in chain else None
        emit_json(
            {"oid": oid, "issuer": issuer, "holders": holders, "revoked": "revoked" in chain, "reissued_as": reissued}
        )
    else:
        console.print(" -> ".join([issuer, *holders]) if issuer else f"no movement recorded for {oid}", markup=False)
        if "reissued_as" in chain:
            console.print(f"revoked: reissued as {chain['reissued_as'].hex()}")
        elif "revoked" in chain:
            console.print("revoked")


NOT_THE_AUTHORITY = (  # a card that is not the authority's was named (or the host's only card is not)
    "name the authority's card with --card DOMAIN (the card of its host whose config lists the `authority` applet)"
)

_SVG = click.option("--svg", "svg_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
                    help="Draw it to this SVG file (graphviz's dot).")  # fmt: skip
_DOT = click.option("--dot", "dot_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
                    help="Write the graphviz DOT document to this file.")  # fmt: skip


def _fetch_graph(socket: str, pin: str | None, card: str | None, oid: bytes | None) -> Any:
    from cardnet.applets.authority import GRAPH, GRAPH_Q
    from cardnet.protocols.errors import ProtocolError
    from cardnet.services.authority import fetch_graph

    async def work(app: Any) -> Any:
        async def ask(fields: dict[str, Any]) -> dict[str, Any]:
            await app.send(app.uid.card_uid(), GRAPH_Q, **fields)
            return await answer(app, GRAPH, {"no_applet": NOT_THE_AUTHORITY})

        try:
            return await fetch_graph(ask, oid)
        except ProtocolError as exc:
            fail(str(exc), reason=exc.reason, hint="try again; for a big graph, trace one token (trace OID)")

    return run_on_card(socket, pin, work, parse_domain(card))


@card_command(authority, "trace", click.argument("oid"), _SVG, _DOT)
def authority_trace(
    socket: str, pin: str | None, card: str | None, oid: str, svg_path: Path | None, dot_path: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """A token's movement chain (and its reissues'), with any clone branch and blocked device: printed, and drawn
    with --svg FILE / --dot FILE."""
    from cardnet.cli.trace_view import graph_json, print_graph, write_views

    raw = parse_oid(oid)
    graph = _fetch_graph(socket, pin, card, raw)
    if not graph.chains and not graph.branches and not graph.suspects:
        unknown_oid(oid)
    written = write_views(graph, f"cardnet trace of token {oid}", svg_path, dot_path)
    if as_json:
        emit_json({"oid": oid, **graph_json(graph), "written": written})
        return
    print_graph(graph)
    for kind, path in written.items():
        console.print(f"wrote {path} ({kind})", markup=False)


@card_command(authority, "graph", _SVG, _DOT)
def authority_graph(
    socket: str, pin: str | None, card: str | None, svg_path: Path | None, dot_path: Path | None, as_json: bool
) -> None:
    """The whole movement graph: every traced token's chain, the clone branches, blocked and suspected devices;
    printed, and drawn with --svg FILE / --dot FILE."""
    from cardnet.cli.trace_view import graph_json, print_graph, write_views

    graph = _fetch_graph(socket, pin, card, None)
    written = write_views(graph, "cardnet movement graph", svg_path, dot_path)
    if as_json:
        emit_json({**graph_json(graph), "written": written})
        return
    if not graph.chains and not graph.branches:
        console.print("no movement recorded yet", markup=False)
    print_graph(graph)
    for kind, path in written.items():
        console.print(f"wrote {path} ({kind})", markup=False)


def _loopback(listen: str) -> tuple[str, int]:
    import ipaddress

    host, _, port = listen.rpartition(":")
    try:
        ok = ipaddress.ip_address(host.strip("[]")).is_loopback and 0 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        why = "the view shows the authority's records to whoever connects: it listens on this host only"
        raise click.BadParameter(f"{listen!r}: give a loopback address and a port, e.g. 127.0.0.1:8470 ({why})")
    return host.strip("[]"), int(port)


@card_command(
    authority,
    "web",
    click.option(
        "--listen",
        default="127.0.0.1:8470",
        show_default=True,
        help="Where to serve the view: a loopback address and a port (0: any free one).",
    ),
)
def authority_web(socket: str, pin: str | None, card: str | None, listen: str, as_json: bool) -> None:
    """Serve the trace view on this host: the movement graph and each token's chain as SVG (graphviz), HTML for
    a browser and JSON for programs. Runs until Ctrl-C; prints `ready URL` when it listens."""
    from cardnet.applets.authority import CHAIN, QUERY
    from cardnet.card import mtypes as cm
    from cardnet.cli.trace_view import TraceWeb
    from cardnet.cli.trn import card_pin
    from cardnet.host.client import AppClient
    from cardnet.protocols.trace_view import Graph
    from cardnet.services.authority import app_ask, fetch_graph
    from cardnet.transport.errors import TransportError
    from cardnet.transport.http import HttpLimits, HttpServer

    host, port = _loopback(listen)
    code = card_pin(pin)
    domain = parse_domain(card)

    async def main() -> None:
        try:
            first = await AppClient.connect(socket, card=domain)
        except OSError as exc:
            fail(f"cannot reach the host at {socket}: {exc.strerror or exc}", reason="no_host",
                 hint="is `cardnet authority run` running with that app_socket?")  # fmt: skip
        await verify_pin(first, code)
        # the card named must be the authority's (else every page would fail): asked once, before `ready`
        await first.send(first.uid.card_uid(), QUERY, oid=bytes(16))
        await answer(first, CHAIN, {"no_applet": NOT_THE_AUTHORITY})
        apps: list[AppClient] = [first]
        lock = asyncio.Lock()

        async def fetch(oid: bytes | None) -> Graph:
            async with lock:  # one query at a time on the one logged-in connection (made again if it broke)
                if not apps:
                    app = await AppClient.connect(socket, card=domain)
                    await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=code)
                    if not (await app.recv_type(cm.PIN_RESULT))["ok"]:
                        await app.aclose()
                        raise PermissionError("the authority card refused the PIN")
                    apps.append(app)
                try:
                    return await fetch_graph(app_ask(apps[0]), oid)
                except BaseException:
                    await apps.pop().aclose()
                    raise

        view = TraceWeb(fetch)
        server = HttpServer(view.router(), limits=HttpLimits(max_connections=32, max_body_bytes=1024))
        try:
            where = await server.start(host, port)
        except TransportError as exc:
            fail(str(exc), reason="cannot_listen", hint="choose another port with --listen 127.0.0.1:PORT")
        view.address = where
        url = f"http://{where[0]}:{where[1]}/"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say_ready(as_json, {"url": url}, f"ready {url}")
        try:
            await stop.wait()
        finally:
            await server.aclose()
            for app in apps:
                await app.aclose()

    asyncio.run(main())
