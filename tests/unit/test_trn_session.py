"""TRN session handshake and records as pure functions (protocols/session.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from cardnet.crypto import pki, profile
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import Uid
from conftest import NOW

T0 = NOW.timestamp()


@dataclass
class Party:
    uid: Uid
    key: profile.PrivateKey
    cert: bytes

    def sign(self, data: bytes) -> bytes:
        return profile.sign(self.key, data)


def party(ca: pki.CertificateAuthority, n: int, role: pki.Role = pki.Role.DEVICE, **kw: Any) -> Party:
    key = profile.generate_private_key()
    uid = Uid.card(bytes([n]) * 12)
    cert = ca.issue(role, uid, key.public_key(), now=NOW, **kw)
    return Party(uid, key, pki.cert_to_der(cert))


def roots(ca: pki.CertificateAuthority) -> list[bytes]:
    return [pki.cert_to_der(ca.certificate)]


def hello(a: Party, b: Party, seed: int = 1) -> tuple[sess.Session, dict[str, Any]]:
    return sess.initiate(b.uid, bytes([seed]) * 48, bytes([seed]) * 16, a.cert)


def respond(
    b: Party, a: Party, h: dict[str, Any], ca: pki.CertificateAuthority, *, now: float = T0, **kw: Any
) -> tuple[sess.Session, dict[str, Any], sess.Verified]:
    return sess.respond(
        b.uid,
        a.uid,
        h,
        my_cert=b.cert,
        roots=roots(ca),
        now=now,
        random48=b"\x07" * 48,
        random16=b"\x08" * 16,
        sign=b.sign,
        blocklist=kw.pop("blocklist", None),
        **kw,
    )


def finish(
    a: Party, st: sess.Session, acc: dict[str, Any], ca: pki.CertificateAuthority, **kw: Any
) -> tuple[sess.Session, dict[str, Any], sess.Verified]:
    return sess.finish(
        st, a.uid, acc, my_cert=a.cert, roots=roots(ca), now=T0, sign=a.sign, blocklist=kw.pop("blocklist", None), **kw
    )


def handshake(a: Party, b: Party, ca: pki.CertificateAuthority, seed: int = 1) -> tuple[sess.Session, sess.Session]:
    sa, h = hello(a, b, seed)
    sb, acc, vb = respond(b, a, h, ca)
    assert vb.peer.uid == a.uid and not sb.open
    sa, fin, va = finish(a, sa, acc, ca)
    assert va.peer.uid == b.uid and sa.open
    sb = sess.complete(sb, fin, sess.peer_key_of(sb, roots(ca), T0))
    assert sb.open
    return sa, sb


@pytest.fixture
def ab(ca: pki.CertificateAuthority) -> tuple[Party, Party]:
    return party(ca, 1), party(ca, 2)


def test_full_handshake_agrees_on_keys_and_carries_records(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    assert sa.th == sb.th and sa.k_send == sb.k_recv and sa.k_recv == sb.k_send and sa.k_send != sa.k_recv
    assert sa.eph_secret is None and sb.cert_a is None  # nothing of the handshake is kept once open
    sa, rec = sess.seal(sa, a.uid, b"ping")
    sb, inner = sess.open_record(sb, b.uid, rec)
    assert inner == b"ping"
    sb, rec = sess.seal(sb, b.uid, b"pong")
    sa, inner = sess.open_record(sa, a.uid, rec)
    assert inner == b"pong"
    # state survives encode/decode (it lives in the card's store between steps)
    assert sess.Session.decode(sa.encode()) == sa and sess.decode_state(None) is None


def test_two_handshakes_give_different_keys(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa1, _ = handshake(a, b, ca, seed=1)
    sa2, _ = handshake(a, b, ca, seed=2)
    assert sa1.k_send != sa2.k_send and sa1.th != sa2.th


def test_unknown_ca_refused_both_ways(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    other = pki.CertificateAuthority.create("rogue CA", now=NOW)
    mallory = party(other, 9)
    _, h = hello(mallory, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, mallory, h, ca)
    assert e.value.reason == "unknown_ca"
    sa, h = hello(a, mallory)
    _, acc, _ = respond(mallory, a, h, ca)  # mallory accepts Alice; her own certificate is the rogue CA's
    with pytest.raises(ProtocolError) as e:
        finish(a, sa, acc, ca)
    assert e.value.reason == "unknown_ca"


def test_expired_certificate_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    _, b = ab
    old = party(ca, 3, valid_days=1)
    _, h = hello(old, b)
    respond(b, old, h, ca, now=T0 + 3600)  # still valid
    with pytest.raises(ProtocolError) as e:
        respond(b, old, h, ca, now=(NOW + timedelta(days=2)).timestamp())
    assert e.value.reason == "expired"


def test_certificate_of_another_uid_refused_mitm_relaying_hello(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    """Mallory has a valid certificate of her own; she relays Alice's hello to Bob as her own message."""
    a, b = ab
    mallory = party(ca, 9)
    _, h = hello(a, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, mallory, h, ca)  # the host delivers it from Mallory's Uid: cert names Alice
    assert e.value.reason == "uid_mismatch"


def test_mitm_substituting_her_certificate_cannot_finish(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    """Mallory swaps in her own certificate (keeping Alice's ephemeral key) and relays Bob's accept to Alice:
    Bob signed a transcript naming Mallory, so Alice refuses it (no unknown-key-share)."""
    a, b = ab
    mallory = party(ca, 9)
    sa, h = hello(a, b)
    _, acc, vb = respond(b, mallory, {**h, "cert": mallory.cert}, ca)
    assert vb.peer.uid == mallory.uid
    with pytest.raises(ProtocolError) as e:
        finish(a, sa, acc, ca)
    assert e.value.reason == "bad_signature"


@pytest.mark.parametrize("role", [pki.Role.HOST])
def test_wrong_role_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party], role: pki.Role) -> None:
    _, b = ab
    host = party(ca, 5, role=role)
    _, h = hello(host, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, host, h, ca)
    assert e.value.reason == "wrong_usage"


@pytest.mark.parametrize("role", [pki.Role.DEVICE, pki.Role.SERVICE, pki.Role.AGENT])
def test_every_peer_role_may_open(ca: pki.CertificateAuthority, ab: tuple[Party, Party], role: pki.Role) -> None:
    _, b = ab
    handshake(party(ca, 6, role=role), b, ca)


def test_blocked_device_refused_by_responder_and_initiator(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    a, b = ab
    bl = ca.sign_blocklist(1, [a.uid], now=NOW)
    _, h = hello(a, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, a, h, ca, blocklist=bl)
    assert e.value.reason == "blocked"
    # the initiator refuses a blocked responder
    sa, h = hello(b, a)
    _, acc, _ = respond(a, b, h, ca)
    with pytest.raises(ProtocolError) as e:
        finish(b, sa, acc, ca, blocklist=bl)
    assert e.value.reason == "blocked"


def test_blocklist_carried_in_the_handshake_is_adopted_and_enforced(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    a, b = ab
    mallory = party(ca, 9)
    bl = ca.sign_blocklist(4, [mallory.uid], now=NOW)
    # Alice presents the newest blocklist in her hello: Bob adopts it (returned in Verified and echoed)
    _, h = hello(a, b)
    _, acc, vb = respond(b, a, {**h, "blocklist": bl.encode()}, ca)
    assert vb.blocklist is not None and vb.blocklist.epoch == 4 and acc["blocklist"] == bl.encode()
    # Mallory cannot use an older (or no) blocklist to hide: the newest of both sides counts
    older = ca.sign_blocklist(3, [], now=NOW)
    _, h = hello(mallory, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, mallory, {**h, "blocklist": older.encode()}, ca, blocklist=vb.blocklist)
    assert e.value.reason == "blocked"


def test_blocklist_not_signed_by_a_trusted_ca_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    forged = pki.CertificateAuthority.create("rogue", now=NOW).sign_blocklist(99, [], now=NOW)
    _, h = hello(a, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, a, {**h, "blocklist": forged.encode()}, ca)
    assert e.value.reason == "bad_blocklist"
    with pytest.raises(ProtocolError) as e:
        respond(b, a, {**h, "blocklist": b"\x01garbage"}, ca)
    assert e.value.reason == "bad_blocklist"


def test_stale_blocklist_refused_when_policy_needs_an_epoch(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    a, b = ab
    _, h = hello(a, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, a, h, ca, min_epoch=2)
    assert e.value.reason == "stale_blocklist"
    with pytest.raises(ProtocolError) as e:
        respond(b, a, {**h, "blocklist": ca.sign_blocklist(1, [], now=NOW).encode()}, ca, min_epoch=2)
    assert e.value.reason == "stale_blocklist"
    respond(b, a, {**h, "blocklist": ca.sign_blocklist(2, [], now=NOW).encode()}, ca, min_epoch=2)


def _flip(raw: bytes, i: int = 0) -> bytes:
    return raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]


@pytest.mark.parametrize("field", ["sig", "eph_swap"])
def test_tampered_accept_signature_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party], field: str) -> None:
    a, b = ab
    sa, h = hello(a, b)
    _, acc, _ = respond(b, a, h, ca)
    if field == "sig":
        bad = {**acc, "sig": _flip(acc["sig"], 10)}
    else:  # a man in the middle replaces B's ephemeral key with his own: the signature no longer covers it
        bad = {**acc, "eph": profile.public_bytes(profile.generate_private_key().public_key())}
    with pytest.raises(ProtocolError) as e:
        finish(a, sa, bad, ca)
    assert e.value.reason == "bad_signature"


def test_bad_key_confirmation_refused_both_ways(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, h = hello(a, b)
    sb, acc, _ = respond(b, a, h, ca)
    with pytest.raises(ProtocolError) as e:
        finish(a, sa, {**acc, "confirm": _flip(acc["confirm"])}, ca)
    assert e.value.reason == "bad_confirm"
    _, fin, _ = finish(a, sa, acc, ca)
    key = sess.peer_key_of(sb, roots(ca), T0)
    with pytest.raises(ProtocolError) as e:
        sess.complete(sb, {**fin, "confirm": _flip(fin["confirm"])}, key)
    assert e.value.reason == "bad_confirm"
    with pytest.raises(ProtocolError) as e:
        sess.complete(sb, {**fin, "sig": _flip(fin["sig"], 5)}, key)
    assert e.value.reason == "bad_signature"


def test_out_of_order_handshake_steps_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    _, acc, _ = respond(b, a, hello(a, b)[1], ca)
    with pytest.raises(ProtocolError) as e:
        finish(a, sa, acc, ca)  # already open
    assert e.value.reason == "no_session"
    with pytest.raises(ProtocolError) as e:
        sess.complete(sb, {"sig": b"\0" * 64, "confirm": b"\0" * 16}, b_key(b))
    assert e.value.reason == "no_session"
    with pytest.raises(ProtocolError) as e:
        sess.seal(hello(a, b)[0], a.uid, b"x")  # not open yet
    assert e.value.reason == "no_session"


def b_key(p: Party) -> profile.PublicKey:
    return p.key.public_key()


def test_unusable_ephemeral_key_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    _, h = hello(a, b)
    with pytest.raises(ProtocolError) as e:
        respond(b, a, {**h, "eph": b"\x04" + b"\x00" * 64}, ca)
    assert e.value.reason == "bad_key"


# --- records -----------------------------------------------------------------------------------


def test_replayed_record_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, rec = sess.seal(sa, a.uid, b"copy")
    sb, _ = sess.open_record(sb, b.uid, rec)
    with pytest.raises(ProtocolError) as e:
        sess.open_record(sb, b.uid, rec)
    assert e.value.reason == "replay"


def test_reordered_record_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, r1 = sess.seal(sa, a.uid, b"one")
    sa, r2 = sess.seal(sa, a.uid, b"two")
    sb, inner = sess.open_record(sb, b.uid, r2)
    assert inner == b"two"
    with pytest.raises(ProtocolError) as e:
        sess.open_record(sb, b.uid, r1)
    assert e.value.reason == "replay"


def test_a_lost_record_does_not_block_the_next(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, _lost = sess.seal(sa, a.uid, b"one")
    sa, r2 = sess.seal(sa, a.uid, b"two")
    assert sess.open_record(sb, b.uid, r2)[1] == b"two"


def test_reflected_record_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, rec = sess.seal(sa, a.uid, b"commit")
    with pytest.raises(ProtocolError) as e:
        sess.open_record(sa, a.uid, rec)  # Alice's own record handed back to her as if from Bob
    assert e.value.reason == "bad_record"
    # and B's record replayed towards B (reflection the other way)
    sb, rec = sess.seal(sb, b.uid, b"committed")
    with pytest.raises(ProtocolError) as e:
        sess.open_record(sb, b.uid, rec)
    assert e.value.reason == "bad_record"


def test_forged_counter_or_ciphertext_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, rec = sess.seal(sa, a.uid, b"copy")
    for bad in ({**rec, "ctr": rec["ctr"] + 5}, {**rec, "ct": _flip(rec["ct"], 2)}):
        with pytest.raises(ProtocolError) as e:
            sess.open_record(sb, b.uid, bad)
        assert e.value.reason == "bad_record"
    assert sess.open_record(sb, b.uid, rec)[1] == b"copy"  # the genuine one still opens


def test_record_for_another_pair_refused(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    """The Uids are associated data: a record cannot be redirected to a third card's session."""
    a, b = ab
    sa, sb = handshake(a, b, ca)
    sa, rec = sess.seal(sa, a.uid, b"copy")
    with pytest.raises(ProtocolError) as e:
        sess.open_record(replace(sb, peer=Uid.card(b"\x09" * 12)), b.uid, rec)
    assert e.value.reason == "bad_record"


def test_record_from_an_old_session_refused_after_new_handshake(
    ca: pki.CertificateAuthority, ab: tuple[Party, Party]
) -> None:
    a, b = ab
    sa, _ = handshake(a, b, ca, seed=1)
    sa, old = sess.seal(sa, a.uid, b"old copy")
    _, sb2 = handshake(a, b, ca, seed=2)
    with pytest.raises(ProtocolError) as e:
        sess.open_record(sb2, b.uid, old)  # its counter is fresh for the new session, its key is not
    assert e.value.reason == "bad_record"


def test_recovery_after_one_side_lost_its_state(ca: pki.CertificateAuthority, ab: tuple[Party, Party]) -> None:
    """B lost its session (state None): A's records cannot be opened; a new handshake works."""
    a, b = ab
    sa, _ = handshake(a, b, ca, seed=1)
    sa, rec = sess.seal(sa, a.uid, b"lost")
    lost = sess.decode_state(None)
    assert lost is None
    sa2, sb2 = handshake(a, b, ca, seed=3)
    with pytest.raises(ProtocolError):
        sess.open_record(sb2, b.uid, rec)
    sa2, rec2 = sess.seal(sa2, a.uid, b"again")
    assert sess.open_record(sb2, b.uid, rec2)[1] == b"again"
