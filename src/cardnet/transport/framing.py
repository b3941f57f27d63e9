"""Length-prefixed framing of eTP messages (sans-I/O).

Theory of operation. A frame is a 4-byte big-endian length ``n`` followed by
exactly ``n`` bytes that decode to one :class:`~cardnet.wire.Message` (its
34-byte header and its param)::

    +----------------+---------------------------------------------+
    | n: uint32 (BE) | message: src(16) dst(16) mtype(2) param(n-34) |
    +----------------+---------------------------------------------+

:class:`FrameDecoder` takes bytes in whatever pieces the network delivers and
hands out whole messages. It checks ``n`` as soon as the 4 prefix bytes are in,
*before* it keeps a single byte of the body: ``n < 34`` or ``n > max_frame``
fails at once, so a peer cannot make it allocate for a frame it will refuse.
A frame above ``max_frame`` but within ``skip_limit`` (the default frame limit
of any cardnet host, 16 MiB, or ``max_frame`` if larger) is *skipped*: its
34-byte header is kept, the rest of it read past without being kept, and
:meth:`FrameDecoder.take_skipped` hands out a :class:`SkippedFrame` (who sent
what to whom, how big) so that the driver can tell the sender; the stream stays
in step and the frames after it are decoded as usual (a host with a smaller
limit than its peer's used to lose the connection, and every message queued
behind the big one, for each resend of it). A length above ``skip_limit`` is not
a cardnet peer's: it fails at once (an HTTP request's first bytes read as a
length of about 1.2 GB). A server that knows the requests it takes gives a
:class:`RecvLimit` instead: a frame above its limit (for the frame's mtype),
and within ``skip_limit``, is *refused* once its 34-byte header is in — never read past — with
:class:`FrameRefused` (reason ``too_large``), which carries the header so that
the server can tell the sender, and the decoder is dead after it (the whole
messages before it in the same ``feed`` are handed out with the error, in
``FrameRefused.decoded``: they were in step). It never holds more than 3
prefix bytes plus one incomplete body (``< max_frame`` bytes, or with a
RecvLimit the limit of the frame's mtype, or a skipped or refused frame's
header); complete frames inside the data being fed are decoded straight from
that data. Every failure is a :class:`~cardnet.wire.DecodeError`
with a ``reason``; after one the decoder is dead and every further call raises
(reason ``dead``), because a byte stream cannot be resynchronised after a bad
length. Frames that were complete in the same ``feed`` as a bad one are
discarded with it: the connection is going down and protocols above recover
lost messages end to end. A connection carries few distinct Uids, so the
decoder keeps the last ``UID_CACHE`` it decoded (immutable, compared by
value) instead of building the same two objects for every frame.

No I/O, no clock, no randomness: the asyncio driver (:mod:`.tcp`) and tests
feed it bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cardnet.transport.errors import TransportError
from cardnet.wire import HEADER_BYTES, DecodeError, Message, Uid
from cardnet.wire.ids import UID_BYTES

PREFIX = struct.Struct(">I")
PREFIX_BYTES = PREFIX.size  # 4
_MTYPE = struct.Struct(">H")
_FRAME_HEAD = struct.Struct(">I16s16sH")  # prefix + message header (src, dst, mtype)
MIN_FRAME = HEADER_BYTES  # a message is at least its header
DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # bytes of message (header + param), prefix excluded
MAX_FRAME_LIMIT = 2**32 - 1  # what a uint32 prefix can say
UID_CACHE = 256  # decoded Uids a FrameDecoder keeps for reuse
_SRC = slice(0, UID_BYTES)
_DST = slice(UID_BYTES, 2 * UID_BYTES)


@dataclass(frozen=True, slots=True)
class SkippedFrame:
    """A frame a :class:`FrameDecoder` read past (or refused) because it was above its frame limit: its header
    and size."""

    src: Uid
    dst: Uid
    mtype: int
    size: int  # bytes of the message (header + param)
    limit: int  # the decoder's frame limit (for this mtype)
    after: int = -1  # read past after this many messages of the stream (its place among them); -1: refused


@dataclass(frozen=True, slots=True)
class RecvLimit:
    """A receive limit: the largest message taken, ``max_frame`` bytes, or ``by_mtype[mtype]`` for the mtypes it
    names (header + param, prefix excluded). A frame above it is refused at its header, never read."""

    max_frame: int
    by_mtype: tuple[tuple[int, int], ...] = ()  # (mtype, limit) pairs

    def __post_init__(self) -> None:
        check_max_frame(self.max_frame)
        for _, limit in self.by_mtype:
            check_max_frame(limit)

    @property
    def largest(self) -> int:
        """The most bytes of one message this limit lets in."""
        return max([self.max_frame, *(limit for _, limit in self.by_mtype)])

    def for_mtype(self, mtype: int) -> int:
        for code, limit in self.by_mtype:
            if code == mtype:
                return limit
        return self.max_frame


class FrameRefused(DecodeError):
    """A frame above a :class:`RecvLimit`, refused at its header (reason ``too_large``); ``frame`` is its header
    and size."""

    def __init__(self, frame: SkippedFrame) -> None:
        super().__init__(
            "too_large",
            f"a {frame.size}-byte message (mtype 0x{frame.mtype:04x}) is above the receive limit of {frame.limit} "
            "bytes: refused unread",
        )
        self.frame = frame
        self.decoded: list[Message] = []  # the whole messages before it in the data fed with it, in order


def check_max_frame(max_frame: int) -> int:
    """Validate a frame limit (``MIN_FRAME .. 2**32-1``) and return it."""
    if isinstance(max_frame, bool) or not isinstance(max_frame, int) or not MIN_FRAME <= max_frame <= MAX_FRAME_LIMIT:
        raise TransportError(
            "bad_config", f"max_frame must be an int in {MIN_FRAME}..{MAX_FRAME_LIMIT} bytes, got {max_frame!r}"
        )
    return max_frame


def encode_frame(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The frame for one message: length prefix + encoded message (``msg.encode()``).

    Raises :class:`TransportError` (reason ``oversize``) if the message is above
    ``max_frame``: that is the sender's mistake, and nothing is sent.
    """
    param = msg.param
    size = HEADER_BYTES + len(param)
    if size > max_frame:
        raise TransportError(
            "oversize",
            f"message is {size} bytes, the frame limit is {max_frame}: send large products in chunks",
        )
    # the 34-byte header (Uid = domain + big-endian port), packed with the prefix
    return _FRAME_HEAD.pack(size, msg.src.raw, msg.dst.raw, msg.mtype) + param


class FrameDecoder:
    """Turns a byte stream into messages; see the module docstring for the guarantees."""

    __slots__ = (
        "_body",
        "_body_len",
        "_decoded",
        "_error",
        "_head_len",
        "_max_frame",
        "_out",
        "_prefix",
        "_recv",
        "_skip_head",
        "_skip_left",
        "_skip_limit",
        "_skip_size",
        "_skipped",
        "_uids",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, recv_limit: RecvLimit | None = None) -> None:
        """``recv_limit``: refuse frames above it at their header (see the module) instead of reading past those
        above ``max_frame``; its ``max_frame`` is then the decoder's."""
        self._recv = recv_limit
        if recv_limit is not None:
            max_frame = recv_limit.max_frame
        self._max_frame = check_max_frame(max_frame)
        self._skip_limit = max(max_frame, DEFAULT_MAX_FRAME)
        self._head_len = 0  # with a RecvLimit: the length of a frame above max_frame whose header is being read
        self._skip_left = 0  # bytes of a skipped frame still to read past (its header kept in _skip_head)
        self._skip_size = 0
        self._skip_head = bytearray()
        self._skipped: list[SkippedFrame] = []
        self._decoded = 0  # messages of the stream handed out by the feeds before the current one
        self._out: list[Message] = []  # the current feed's messages so far (a skipped frame's place: after them)
        self._prefix = bytearray()  # < PREFIX_BYTES bytes of an incomplete prefix
        self._body_len: int | None = None  # length of the body being read, once its prefix is known
        self._body = bytearray()  # < _body_len bytes of an incomplete body
        self._error: DecodeError | None = None
        self._uids: dict[bytes, Uid] = {}  # at most UID_CACHE decoded Uids, by their 16 wire bytes

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def partial_size(self) -> int | None:
        """Bytes of the message being read (as its prefix announced it), or None at a frame boundary or while the
        prefix itself is incomplete."""
        if self._body_len is not None:
            return self._body_len
        if self._skip_left:
            return self._skip_size
        return self._head_len or None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (always ``< PREFIX_BYTES + max(max_frame, HEADER_BYTES)``, with a
        :class:`RecvLimit` its ``largest`` in place of ``max_frame``)."""
        return len(self._prefix) + len(self._body) + len(self._skip_head)

    @property
    def has_skipped(self) -> bool:
        """Whether :meth:`take_skipped` has frames to hand out."""
        return bool(self._skipped)

    def take_skipped(self) -> list[SkippedFrame]:
        """The frames skipped since the last call (above the frame limit, read past), oldest first."""
        out, self._skipped = self._skipped, []
        return out

    @property
    def failed(self) -> DecodeError | None:
        """The error that killed this decoder, or None while it is alive."""
        return self._error

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for the stream to end)."""
        return self._body_len is None and not self._prefix and not self._skip_left and not self._head_len

    def feed(self, data: bytes) -> list[Message]:
        """Take the next bytes of the stream; return the messages they complete, in order."""
        self._check_alive()
        out: list[Message] = []
        self._out = out
        try:
            if (
                type(data) is bytes
                and self._body_len is None
                and not self._prefix
                and not self._skip_left
                and not self._head_len
            ):
                got = self._feed_whole(data, out)
            else:
                got = self._feed(memoryview(data), out)
            self._decoded += len(got)
            return got
        except FrameRefused as exc:
            exc.decoded = out  # the messages before it are whole and in step: its receiver may still answer them
            self._error = exc
            self._clear()
            raise
        except DecodeError as exc:
            self._error = exc
            self._clear()
            raise

    def eof(self) -> None:
        """The stream ended. Raises :class:`DecodeError` (``truncated``) if it ended inside a frame."""
        self._check_alive()
        if not self.at_boundary:
            self._error = DecodeError(
                "truncated",
                f"the stream ended inside a frame ({self.buffered} bytes of it buffered): the peer went away mid-send",
            )
            self._clear()
            raise self._error

    def _clear(self) -> None:
        self._prefix.clear()
        self._body.clear()
        self._body_len = None
        self._skip_head.clear()
        self._skip_left = 0
        self._head_len = 0

    def _check_alive(self) -> None:
        if self._error is not None:
            raise DecodeError(
                "dead",
                f"this decoder already failed ({self._error.reason}): the stream cannot be resynchronised, "
                "close the connection",
            ) from self._error

    def _feed_whole(self, data: bytes, out: list[Message]) -> list[Message]:
        """At a frame boundary: decode the complete frames straight from ``data``, then buffer the rest."""
        pos = 0
        end = len(data)
        unpack = PREFIX.unpack_from
        max_frame = self._max_frame
        message = self._message
        while end - pos >= PREFIX_BYTES:
            (length,) = unpack(data, pos)
            if length < MIN_FRAME or length > max_frame:
                break  # refused or skipped: the byte-by-byte path below decides, before a byte of the body is kept
            start = pos + PREFIX_BYTES
            stop = start + length
            if stop > end:
                break
            out.append(message(data[start:stop]))
            pos = stop
        if pos < end:
            self._feed(memoryview(data)[pos:], out)
        return out

    def _feed(self, view: memoryview, out: list[Message]) -> list[Message]:
        pos = 0
        end = len(view)
        while pos < end:
            if self._skip_left:
                pos = self._skip(view, pos, end)
                continue
            if self._head_len:
                pos = self._check_head(view, pos, end)
                continue
            if self._body_len is None:
                take = min(PREFIX_BYTES - len(self._prefix), end - pos)
                if not self._prefix and take == PREFIX_BYTES:
                    (length,) = PREFIX.unpack_from(view, pos)
                else:
                    self._prefix += view[pos : pos + take]
                    if len(self._prefix) < PREFIX_BYTES:
                        break
                    (length,) = PREFIX.unpack(self._prefix)
                    self._prefix.clear()
                pos += take
                if self._recv is not None and self._max_frame < length <= self._skip_limit:
                    self._head_len = length  # its header decides (the limit of its mtype), before its body is kept
                    continue
                if length > self._max_frame and MIN_FRAME <= length <= self._skip_limit:
                    self._skip_left = self._skip_size = length
                    continue
                self._body_len = self._check_length(length)
                continue
            need = self._body_len - len(self._body)
            if not self._body and end - pos >= need:
                raw = bytes(view[pos : pos + need])  # whole body in this chunk: no buffering
                pos += need
            else:
                take = min(need, end - pos)
                self._body += view[pos : pos + take]
                pos += take
                if take < need:
                    break
                raw = bytes(self._body)
                self._body.clear()
            self._body_len = None
            out.append(self._message(raw))
        return out

    def _check_head(self, view: memoryview, pos: int, end: int) -> int:
        """Read the header of a frame above ``max_frame`` (a RecvLimit's); take its body if its mtype's limit allows
        it, else refuse it (:class:`FrameRefused`) without keeping a byte of its body."""
        head = self._skip_head
        take = min(HEADER_BYTES - len(head), end - pos)
        head += view[pos : pos + take]
        pos += take
        if len(head) < HEADER_BYTES:
            return pos
        assert self._recv is not None
        length = self._head_len
        (mtype,) = _MTYPE.unpack_from(head, 2 * UID_BYTES)
        limit = self._recv.for_mtype(mtype)
        if length > limit:
            src, dst = self._uid(bytes(head[_SRC])), self._uid(bytes(head[_DST]))
            raise FrameRefused(SkippedFrame(src, dst, mtype, length, limit))
        self._head_len = 0
        self._body_len = length
        self._body += head  # the header is the start of the body
        head.clear()
        return pos

    def _skip(self, view: memoryview, pos: int, end: int) -> int:
        """Read past a skipped frame: keep its header, drop the rest; report it once it is all read."""
        head = self._skip_head
        if len(head) < HEADER_BYTES:
            take = min(HEADER_BYTES - len(head), end - pos)
            head += view[pos : pos + take]
            pos += take
            self._skip_left -= take
        drop = min(self._skip_left, end - pos)
        pos += drop
        self._skip_left -= drop
        if not self._skip_left:
            raw = bytes(head)
            head.clear()
            (mtype,) = _MTYPE.unpack_from(raw, 2 * UID_BYTES)
            src, dst = self._uid(raw[_SRC]), self._uid(raw[_DST])
            after = self._decoded + len(self._out)
            self._skipped.append(SkippedFrame(src, dst, mtype, self._skip_size, self._max_frame, after))
        return pos

    def _message(self, raw: bytes) -> Message:
        """``Message.decode(raw)``; its length checks hold already (``MIN_FRAME <= len(raw) <= max_frame``)."""
        uids = self._uids
        src_raw = raw[_SRC]
        src = uids.get(src_raw)
        if src is None:
            src = self._uid(src_raw)
        dst_raw = raw[_DST]
        dst = uids.get(dst_raw)
        if dst is None:
            dst = self._uid(dst_raw)
        (mtype,) = _MTYPE.unpack_from(raw, 2 * UID_BYTES)
        return Message(src, dst, mtype, raw[HEADER_BYTES:])

    def _uid(self, raw: bytes) -> Uid:
        uid = Uid.from_bytes(raw)
        if len(self._uids) >= UID_CACHE:
            self._uids.clear()
        self._uids[raw] = uid
        return uid

    def _check_length(self, length: int) -> int:
        if length < MIN_FRAME:
            raise DecodeError(
                "bad_length",
                f"frame length {length} is below the {MIN_FRAME}-byte message header: the peer is not speaking "
                "cardnet framing",
            )
        if length > self._max_frame:
            if _is_text(length):  # (checked only for a length refused anyway: not on a good frame's path)
                raise DecodeError(
                    "not_cardnet",
                    f"an HTTP request (or other non-cardnet bytes) where a frame's length was expected "
                    f"({length.to_bytes(PREFIX_BYTES, 'big')!r}...): the peer is not speaking cardnet framing",
                )
            raise DecodeError(
                "oversize",
                f"frame length {length} is above the limit of {self._max_frame} bytes (and above "
                f"{self._skip_limit}, the most a cardnet peer sends): refused before reading it",
            )
        return length


def _is_text(length: int) -> bool:
    """Whether a length prefix is four printable ASCII bytes: ``GET ``, ``POST``, ``HEAD``, ``SSH-``, ... (a text
    protocol's first line on a cardnet port). Every such value is above the largest frame any cardnet peer sends."""
    return all(0x20 <= b <= 0x7E for b in length.to_bytes(PREFIX_BYTES, "big"))
