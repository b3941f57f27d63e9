"""The demo applet: cards send each other signed notes.

* ``demo.send_note`` (privileged: only the card owner's authenticated
  application) asks the card to send a note to another card;
* ``demo.note`` travels card to card, signed by the sender card's key and
  carrying its certificate; the receiver checks the chain against its own
  trusted roots, that the certificate names the sender, and the signature,
  and keeps the note once (duplicates are acknowledged again, not stored
  twice);
* ``demo.note_ack`` tells the sender the note arrived;
* ``demo.read_notes`` (privileged) returns the notes received.
"""

from __future__ import annotations

from typing import Any

from cardnet.card import Applet, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.wire import Bytes, Field, ListOf, Message, Nested, Schema, Text, Uid, UidType, UInt, register
from cardnet.wire.cbor import dumps, loads_one

NOTE_TEXT_BYTES = 280

SEND_NOTE = register(
    0x0F01,
    "demo.send_note",
    "demo",
    Schema("demo.send_note", [Field(0, "to", UidType()), Field(1, "text", Text(NOTE_TEXT_BYTES))]),
    privileged=True,
)
NOTE = register(
    0x0F02,
    "demo.note",
    "demo",
    Schema(
        "demo.note",
        [
            Field(0, "seq", UInt()),
            Field(1, "text", Text(NOTE_TEXT_BYTES)),
            Field(2, "sig", Bytes(64, 64)),
            Field(3, "cert", Bytes(4096)),
        ],
    ),
)
NOTE_ACK = register(0x0F03, "demo.note_ack", "demo", Schema("demo.note_ack", [Field(0, "seq", UInt())]))
READ_NOTES = register(0x0F04, "demo.read_notes", "demo", Schema("demo.read_notes", []), privileged=True)
_NOTE_ITEM = Schema(
    "demo.note_item", [Field(0, "from", UidType()), Field(1, "seq", UInt()), Field(2, "text", Text(NOTE_TEXT_BYTES))]
)
NOTES = register(
    0x0F05, "demo.notes", "demo", Schema("demo.notes", [Field(0, "notes", ListOf(Nested(_NOTE_ITEM), 1000))])
)


def note_digest(src: bytes, dst: bytes, seq: int, text: str) -> bytes:
    """What a note's signature covers: both ids, the sequence number and the text."""
    return dumps(["cardnet demo note v1", src, dst, seq, text])


class NotesApplet(Applet):
    name = "notes"
    handles = (SEND_NOTE, NOTE, NOTE_ACK, READ_NOTES)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        if msg.mtype == SEND_NOTE.code:
            raw = ctx.get(b"next_seq")
            seq = 1 if raw is None else int.from_bytes(raw, "big")
            ctx.put(b"next_seq", (seq + 1).to_bytes(8, "big"))
            to = params["to"]
            sig = ctx.sign(note_digest(bytes(ctx.card_uid), bytes(to), seq, params["text"]))
            ctx.put(b"sent:" + seq.to_bytes(8, "big"), bytes(to))
            ctx.emit(NOTE, to, seq=seq, text=params["text"], sig=sig, cert=ctx.certificate_der)
        elif msg.mtype == NOTE.code:
            self._receive(ctx, msg, params)
        elif msg.mtype == NOTE_ACK.code:
            ctx.delete(b"sent:" + params["seq"].to_bytes(8, "big"))
        else:
            notes = []
            for _, v in ctx.scan(b"in:"):
                item = loads_one(v)
                assert isinstance(item, list)
                notes.append({"from": Uid.from_bytes(item[0]), "seq": item[1], "text": item[2]})
            ctx.reply(NOTES, notes=notes)

    def _receive(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        key = b"in:" + bytes(msg.src) + params["seq"].to_bytes(8, "big")
        if ctx.get(key) is None:
            try:
                peer = pki.verified(params["cert"], ctx.roots_der, now=ctx.now, uid=msg.src)
                digest = note_digest(bytes(msg.src), bytes(msg.dst), params["seq"], params["text"])
                profile.verify(peer.public_key, params["sig"], digest)
            except (PkiError, CryptoError) as exc:
                raise Refused(exc.reason, f"note refused: {exc}") from None
            ctx.put(key, dumps([bytes(msg.src), params["seq"], params["text"]]))
        ctx.reply(NOTE_ACK, seq=params["seq"])
