"""``cardnet ca`` and ``cardnet card``: create a CA and personalise cards (issuance, done once)."""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import (
    ask_pin,
    console,
    emit_json,
    fail,
    fail_os,
    json_option,
    print_table,
    table,
    write_new_files,
)

VALID_DAYS = click.IntRange(1, 36600)  # as pki.CertificateAuthority checks: at most about a century
SECONDS = click.IntRange(0, 2**32 - 1)


def _policy_words(policy: Any) -> str:
    """A session freshness policy (``protocols.session.Policy``) for a person."""
    parts = [
        f"blocklist at most {policy.max_blocklist_age_s} s old" if policy.max_blocklist_age_s else "",
        f"blocklist epoch at least {policy.min_epoch}" if policy.min_epoch else "",
        f"sessions re-keyed after {policy.lifetime_s} s" if policy.lifetime_s else "",
        f"sessions re-keyed after {policy.max_records} records" if policy.max_records else "",
    ]
    return "; ".join(p for p in parts if p) or "none (no bound)"


def new_card_pin(pin: str | None) -> str:
    """The PIN of a new card: ``pin``, else $CARDNET_PIN, else asked for twice; a PIN the card would refuse fails."""
    from cardnet.card import mtypes as cm

    pin = ask_pin(pin, "PIN for the new card", confirm=True)
    if not 1 <= len(pin.encode()) <= cm.PIN_MAX_BYTES:
        fail(f"the PIN must be 1 to {cm.PIN_MAX_BYTES} bytes, got {len(pin.encode())}", reason="bad_pin")
    return pin


def check_card_name(name: str | None) -> None:
    """A name for a card's certificate (--name) must be a short printable label."""
    from cardnet.crypto import pki

    if name is not None:
        try:
            pki._check_label(name, "--name")
        except ValueError as exc:
            fail(str(exc), reason="bad_name", hint='a short printable name, e.g. --name "Alice\'s wallet"')


@click.group()
def ca() -> None:
    """The certification authority that personalises cards (keep its file safe)."""


@ca.command("create")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default="cardnet CA", show_default=True, help="The CA's common name.")
@click.option(
    "--valid-days", default=3650, show_default=True, type=VALID_DAYS, help="How long the CA certificate is valid."
)
@json_option
def ca_create(path: Path, name: str, valid_days: int, as_json: bool) -> None:
    """Create a CA and save it (certificate and private key, mode 0600) to PATH.

    The certificate alone can be exported with `cardnet ca cert PATH`.
    """
    from cardnet.crypto import pki

    if path.exists():
        fail(f"{path} already exists", hint="choose another path; a CA is never overwritten")
    try:
        pki._check_label(name, "--name")
    except ValueError as exc:
        fail(str(exc), reason="bad_name", hint='a short printable name, e.g. --name "Example Transit CA"')
    authority = pki.CertificateAuthority.create(name, now=datetime.now(UTC), valid_days=valid_days)
    try:
        authority.save(path)  # atomic: a temporary file beside PATH, renamed into place
    except OSError as exc:
        fail_os(exc, "write the CA to", path)
    info = {"path": str(path), "subject": authority.certificate.subject.rfc4514_string()}
    if as_json:
        emit_json(info)
    else:
        console.print(f"CA {info['subject']} saved to {path} (private key inside: keep it safe)", markup=False)


@ca.command("cert")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def ca_cert(path: Path, as_json: bool) -> None:
    """Print the CA certificate (PEM) from a CA file, e.g. for `openssl verify -CAfile`."""
    from cardnet.crypto import pki

    authority = pki.CertificateAuthority.load(path)
    pem = pki.chain_to_pem([authority.certificate]).decode("ascii")
    if as_json:
        emit_json({"subject": authority.certificate.subject.rfc4514_string(), "pem": pem})
    else:
        click.echo(pem, nl=False)


@click.group()
def card() -> None:
    """Cards: manufacture and personalise them, and look inside."""


@card.command("create")
@click.option("--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA file (`cardnet ca create`): it signs the card's certificate.")  # fmt: skip
@click.option("--store", required=True, help="Where the card's EEPROM lives, e.g. sqlite:///alice.card.db")
@click.option("--pin", default=None, help="The card's PIN (1-16 bytes); default: $CARDNET_PIN, else asked for.")
@click.option("--domain", default=None, help="24 hex digits; default: a random domain.")
@click.option(
    "--role",
    type=click.Choice(["device", "service", "agent"]),
    default="device",
    show_default=True,
    help="device: wallets and gates; service: the authority, brokers; agent: a ticketing agent.",
)
@click.option("--name", default=None, help="A human name put into the certificate.")
@click.option(
    "--max-blocklist-age",
    "max_blocklist_age_s",
    type=SECONDS,
    default=0,
    help="Freshness: refuse other cards (not the authority) while the newest blocklist is older than this "
    "(seconds; 0: no bound).",
)
@click.option(
    "--min-epoch",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    help="Freshness: accept no blocklist older than this epoch, the card's own or a peer's (0: any).",
)
@click.option(
    "--session-lifetime",
    "lifetime_s",
    type=SECONDS,
    default=0,
    help="Freshness: re-key a session with another card once it is this old (seconds; 0: no bound).",
)
@click.option(
    "--session-records",
    "max_records",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    help="Freshness: re-key a session once it has carried this many records (0: no bound).",
)
@json_option
def card_create(
    ca_path: Path,
    store: str,
    pin: str | None,
    domain: str | None,
    role: str,
    name: str | None,
    max_blocklist_age_s: int,
    min_epoch: int,
    lifetime_s: int,
    max_records: int,
    as_json: bool,
) -> None:
    """Manufacture a card in STORE (its key is generated on it) and personalise it under the CA.

    The freshness options set the card's session freshness policy (docs/trn.md, "Freshness"): written
    once here, it can later only be tightened (`session.policy`), never loosened.
    """
    from cardnet.card import Card
    from cardnet.card.personalise import personalise
    from cardnet.crypto import pki
    from cardnet.protocols.session import Policy

    policy = Policy(max_blocklist_age_s, min_epoch, lifetime_s, max_records)

    pin = new_card_pin(pin)  # checked before a blank card is made in STORE
    check_card_name(name)
    dom = None
    if domain is not None:
        try:
            dom = bytes.fromhex(domain)
        except ValueError:
            dom = b""
        if len(dom) != 12:
            fail(f"--domain {domain!r} is not 24 hex digits", reason="bad_domain",
                 hint="give 24 hex digits (12 bytes), e.g. a11ce0a11ce0a11ce0a11ce0, or leave --domain out for a "
                 "random one")  # fmt: skip
    authority = pki.CertificateAuthority.load(ca_path)
    c = Card.open(store)
    try:
        if c.personalised:
            fail(f"the card in {store} is already personalised as {c.uid}", hint="use another --store")
        uid = personalise(
            c,
            authority,
            pin=pin,
            now=datetime.now(UTC),
            domain=dom,
            role=pki.Role[role.upper()],
            name=name,
            policy=policy.encode(),
        )
    finally:
        c.close()
    if as_json:
        emit_json({"uid": str(uid), "domain": uid.domain.hex(), "store": store, "policy": policy.as_dict()})
    else:
        console.print(f"card {uid} personalised in {store}", markup=False)
        if policy != Policy():
            console.print(f"freshness policy: {_policy_words(policy)}", markup=False)


@card.command("renew")
@click.option("--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA file (`cardnet ca create`): it signs the card's certificate.")  # fmt: skip
@click.option("--store", required=True, help="The card's store URL (its host stopped: the card has one owner).")
@click.option(
    "--valid-days", default=3 * 365, show_default=True, type=VALID_DAYS, help="How long the new certificate is valid."
)
@json_option
def card_renew(ca_path: Path, store: str, valid_days: int, as_json: bool) -> None:
    """Renew the card's certificate before it runs out (then every other card refuses it).

    The CA that certified the card certifies its own key again, for the same Uid, role and name, valid from
    now for --valid-days; the card takes it only if it lasts longer than the one it has. Nothing else of the
    card changes (key, tokens, PIN). Stop the card's host first, and start it again afterwards. An issuing
    agent's card is then registered again at the authority: `cardnet authority add-agent` with the new
    certificate (`cardnet card show --store STORE --cert`).
    """
    from cardnet.card import Card
    from cardnet.card.personalise import renew
    from cardnet.crypto import pki

    authority = pki.CertificateAuthority.load(ca_path)
    c = Card.open(store, create=False)
    try:
        if not c.personalised:
            fail(f"the card in {store} is not personalised: there is no certificate to renew",
                 hint="personalise it with `cardnet card create`", reason="not_personalised")  # fmt: skip
        uid = c.uid
        old, new = renew(c, authority, now=datetime.now(UTC), valid_days=valid_days)
    finally:
        c.close()
    if as_json:
        emit_json({"uid": str(uid), "store": store, "was_valid_until": old.isoformat(), "valid_until": new.isoformat()})
    else:
        console.print(f"card {uid}: certificate renewed, valid until {new:%Y-%m-%d %H:%M} UTC "
                      f"(was {old:%Y-%m-%d %H:%M} UTC)", markup=False)  # fmt: skip


@card.command("show")
@click.option("--store", required=True, help="The card's store URL.")
@json_option
@click.option("--cert", "show_cert", is_flag=True, help="Print the card's certificate (PEM) instead.")
def card_show(store: str, as_json: bool, show_cert: bool) -> None:
    """Identity, memory use and pending outputs of a card (never its keys)."""
    from cardnet.card import Card
    from cardnet.crypto import pki

    c = Card.open(store, create=False)  # a read command makes no file at a mistyped path
    if show_cert:
        try:
            pem = pki.chain_to_pem([pki.cert_from_der(c.certificate_der)]).decode("ascii")
        finally:
            c.close()
        if as_json:
            emit_json({"pem": pem})
        else:
            click.echo(pem, nl=False)
        return
    try:
        until = pki.cert_from_der(c.certificate_der).not_valid_after_utc if c.personalised else None
        info: dict[str, Any] = {
            "uid": str(c.uid) if c.personalised else None,
            "domain": c.uid.domain.hex() if c.personalised else None,
            "valid_until": until.isoformat() if until else None,
            "used_bytes": c.used_bytes,
            "capacity_bytes": c.capacity_bytes,
            "outbox": len(c.outbox()),
        }
    finally:
        c.close()
    if as_json:
        emit_json(info)
        return
    t = table("", "")
    t.show_header = False
    t.add_row("store", store)
    t.add_row("uid", info["uid"] or "not personalised yet (cardnet card create)")
    t.add_row("domain", info["domain"] or "-")
    if until is not None:
        left = "ran out: renew it (cardnet card renew)" if until <= datetime.now(UTC) else f"{until:%Y-%m-%d %H:%M} UTC"
        t.add_row("certificate valid until", left)
    t.add_row("memory used", f"{info['used_bytes']:,} of {info['capacity_bytes']:,} bytes")
    t.add_row("outbox", f"{info['outbox']} output(s) not yet acknowledged" if info["outbox"] else "empty")
    print_table(t)


@ca.command("host-cert")
@click.argument("ca_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--domain", required=True, help="The host's card domain (24 hex digits): the certificate names it.")
@click.option(
    "--name",
    "names",
    multiple=True,
    default=["127.0.0.1"],
    show_default=True,
    help="IP address or DNS name the host is reached at (repeat for several).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes OUT.pem (certificate), OUT.key (private key, mode 0600) and OUT.ca.pem (the CA).",
)
@click.option(
    "--valid-days", default=365, show_default=True, type=VALID_DAYS, help="How long the certificate is valid."
)
@json_option
def ca_host_cert(ca_path: Path, domain: str, names: tuple[str, ...], out: Path, valid_days: int, as_json: bool) -> None:
    """Issue a host's TLS certificate (mutual TLS between host processes, [tls] in the host config)."""
    from cryptography.hazmat.primitives import serialization

    from cardnet.crypto import pki, profile
    from cardnet.wire import Uid

    try:
        dom = bytes.fromhex(domain)
    except ValueError:
        dom = b""
    if len(dom) != 12:
        fail(f"--domain {domain!r} is not 24 hex digits", hint="use the domain `cardnet card create --json` printed")
    authority = pki.CertificateAuthority.load(ca_path)
    key = profile.generate_private_key()
    try:
        cert = authority.issue(
            pki.Role.HOST,
            Uid(dom, 0xFFFFFFFF),
            key.public_key(),
            now=datetime.now(UTC),
            valid_days=valid_days,
            tls_names=list(names),
        )
    except ValueError as exc:
        fail(str(exc), hint="--name takes an IP address or a DNS name")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths = {"cert": Path(f"{out}.pem"), "key": Path(f"{out}.key"), "ca": Path(f"{out}.ca.pem")}
    for p in paths.values():
        if p.exists():
            fail(f"{p} already exists", reason="already_exists", hint="choose another --out; nothing was written")
    try:
        write_new_files(
            {
                paths["cert"]: (pki.chain_to_pem([cert]), 0o644),
                paths["key"]: (key_pem, 0o600),
                paths["ca"]: (pki.chain_to_pem([authority.certificate]), 0o644),
            }
        )
    except OSError as exc:
        fail_os(exc, "write the host certificate to", exc.filename if exc.errno == errno.EEXIST else paths["cert"])
    if as_json:
        emit_json({"domain": domain, **{k: str(p) for k, p in paths.items()}})
    else:
        console.print(
            f"host certificate for domain {domain} written to {paths['cert']}, key to {paths['key']}, "
            f"CA to {paths['ca']}",
            markup=False,
        )
