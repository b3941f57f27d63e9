"""Sans-I/O framing: round trips, every split, limits enforced from the prefix, dead after an error."""

from __future__ import annotations

import pytest

from cardnet.transport import (
    DEFAULT_MAX_FRAME,
    MIN_FRAME,
    PREFIX_BYTES,
    FrameDecoder,
    FrameRefused,
    RecvLimit,
    SkippedFrame,
    TransportError,
    encode_frame,
)
from cardnet.wire import HEADER_BYTES, DecodeError, Message, Uid

A = Uid(b"\x01" * 12, 0)
B = Uid(b"\x02" * 12, 7)


def msg(i: int, size: int = 3) -> Message:
    return Message(A, B, i % 65536, bytes([i % 256]) * size)


def prefix(n: int) -> bytes:
    return n.to_bytes(PREFIX_BYTES, "big")


def test_frame_layout() -> None:
    m = msg(5, 10)
    frame = encode_frame(m)
    assert frame[:PREFIX_BYTES] == prefix(HEADER_BYTES + 10)
    assert frame[PREFIX_BYTES:] == m.encode()
    assert len(frame) == PREFIX_BYTES + m.size


@pytest.mark.parametrize("size", [0, 1, 100, 70_000])
def test_round_trip(size: int) -> None:
    m = msg(9, size)
    dec = FrameDecoder()
    assert dec.feed(encode_frame(m)) == [m]
    assert dec.buffered == 0 and dec.at_boundary
    dec.eof()


def test_split_at_every_byte_boundary() -> None:
    frames = [msg(1, 0), msg(2, 5), msg(3, 40)]
    stream = b"".join(encode_frame(m) for m in frames)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        out = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert out == frames, cut
    for cut1 in range(0, len(stream) + 1, 3):
        for cut2 in range(cut1, len(stream) + 1, 5):
            dec = FrameDecoder()
            out = dec.feed(stream[:cut1]) + dec.feed(stream[cut1:cut2]) + dec.feed(stream[cut2:])
            assert out == frames


def test_one_byte_at_a_time() -> None:
    frames = [msg(i, i) for i in range(20)]
    dec = FrameDecoder()
    out: list[Message] = []
    for byte in b"".join(encode_frame(m) for m in frames):
        out += dec.feed(bytes([byte]))
        assert dec.buffered < PREFIX_BYTES + dec.max_frame
    assert out == frames


def test_many_frames_in_one_feed() -> None:
    frames = [msg(i, i % 50) for i in range(2000)]
    dec = FrameDecoder()
    assert dec.feed(b"".join(encode_frame(m) for m in frames)) == frames
    assert dec.buffered == 0


def test_empty_feed() -> None:
    assert FrameDecoder().feed(b"") == []


def test_oversize_refused_from_prefix_alone() -> None:
    dec = FrameDecoder()
    with pytest.raises(DecodeError) as err:
        dec.feed(prefix(0xFFFFFFFF))
    assert err.value.reason == "oversize"
    assert dec.buffered == 0  # nothing kept for the body


def test_above_the_skip_limit_refused_from_the_prefix_even_when_split() -> None:
    dec = FrameDecoder(max_frame=1000)
    too_big = prefix(DEFAULT_MAX_FRAME + 1)  # above what any cardnet peer sends: not read past
    assert dec.feed(too_big[:2]) == []
    with pytest.raises(DecodeError) as err:
        dec.feed(too_big[2:] + b"x" * 5000)
    assert err.value.reason == "oversize"
    assert dec.buffered == 0


def test_a_frame_above_the_limit_is_read_past_reported_and_the_stream_goes_on() -> None:
    """A peer with a larger frame limit sent a message too big for us: we keep only its header, tell who sent what
    (take_skipped), and decode the frames after it, however the bytes arrive."""
    small, big, after = msg(1, 5), msg(2, 3000), msg(3, 7)
    stream = b"".join(encode_frame(m) for m in (small, big, after))
    want = SkippedFrame(A, B, 2, big.size, 1000, after=1)  # read past after the one message before it
    for step in (1, 7, 33, 34, 35, 1000, len(stream)):
        dec = FrameDecoder(max_frame=1000)
        out: list[Message] = []
        for at in range(0, len(stream), step):
            out += dec.feed(stream[at : at + step])
            assert dec.buffered < PREFIX_BYTES + 1000
        assert out == [small, after], step
        assert dec.take_skipped() == [want] and dec.take_skipped() == []
        assert dec.at_boundary
        dec.eof()
    for cut in range(len(stream) + 1):
        dec = FrameDecoder(max_frame=1000)
        assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == [small, after], cut
        assert dec.take_skipped() == [want]


def test_a_frame_above_a_receive_limit_is_refused_at_its_header_without_keeping_its_body() -> None:
    """A server's RecvLimit: the frames within it (by mtype) are decoded, the first above it is refused once its
    34-byte header is in, whatever the split, with the whole messages before it handed out with the error."""
    limit = RecvLimit(100, ((9, 2000),))
    small, allowed, big = msg(1, 50), msg(9, 1500), msg(2, 3000)
    stream = b"".join(encode_frame(m) for m in (small, allowed, big)) + b"never read"
    want = SkippedFrame(A, B, 2, big.size, 100)
    end_of_head = len(stream) - len(b"never read") - big.size + HEADER_BYTES  # where big's header ends
    for step in (1, 7, 33, 34, 35, 1000, len(stream)):
        dec = FrameDecoder(recv_limit=limit)
        out: list[Message] = []
        with pytest.raises(FrameRefused) as e:
            for at in range(0, len(stream), step):
                out += dec.feed(stream[at : at + step])
                assert dec.buffered < PREFIX_BYTES + 2000
        assert at < end_of_head <= at + step, step  # refused in the feed that completed its header
        assert e.value.reason == "too_large" and e.value.frame == want
        assert out + e.value.decoded == [small, allowed], step
        assert "3034-byte message (mtype 0x0002)" in str(e.value) and "limit of 100 bytes" in str(e.value)
        with pytest.raises(DecodeError, match="already failed"):
            dec.feed(b"x")
    assert limit.largest == 2000 and limit.for_mtype(9) == 2000 and limit.for_mtype(10) == 100


def test_a_receive_limit_announced_past_while_the_header_trickles_holds_only_the_header() -> None:
    dec = FrameDecoder(recv_limit=RecvLimit(100))
    frame = prefix(DEFAULT_MAX_FRAME) + A.raw + B.raw + b"\x00\x05"
    for i, byte in enumerate(frame[:-1]):
        assert dec.feed(bytes([byte])) == []
        assert dec.buffered <= HEADER_BYTES and not dec.at_boundary
        assert dec.partial_size == (None if i < PREFIX_BYTES - 1 else DEFAULT_MAX_FRAME)
    with pytest.raises(FrameRefused):
        dec.feed(frame[-1:])
    dec = FrameDecoder(recv_limit=RecvLimit(100))  # above any cardnet peer's frame: not cardnet, refused at once
    with pytest.raises(DecodeError) as e:
        dec.feed(prefix(DEFAULT_MAX_FRAME + 1))
    assert e.value.reason == "oversize" and not isinstance(e.value, FrameRefused)


def test_the_stream_ending_inside_a_skipped_frame_is_truncated() -> None:
    dec = FrameDecoder(max_frame=1000)
    frame = encode_frame(msg(2, 3000))
    assert dec.feed(frame[:-1]) == [] and dec.take_skipped() == []
    assert not dec.at_boundary
    with pytest.raises(DecodeError) as err:
        dec.eof()
    assert err.value.reason == "truncated"


def test_limit_is_inclusive() -> None:
    dec = FrameDecoder(max_frame=HEADER_BYTES + 10)
    assert dec.feed(encode_frame(msg(1, 10))) == [msg(1, 10)]
    with pytest.raises(TransportError) as err:
        encode_frame(msg(1, 11), max_frame=HEADER_BYTES + 10)
    assert err.value.reason == "oversize"


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024
    dec = FrameDecoder()
    assert dec.feed(prefix(DEFAULT_MAX_FRAME)) == []  # accepted, waiting for the body
    assert dec.buffered == 0  # nothing allocated ahead of the body


def test_encode_refuses_oversize() -> None:
    with pytest.raises(TransportError) as err:
        encode_frame(msg(1, 200), max_frame=100)
    assert err.value.reason == "oversize"


@pytest.mark.parametrize("length", [0, 1, MIN_FRAME - 1])
def test_short_length_refused(length: int) -> None:
    dec = FrameDecoder()
    with pytest.raises(DecodeError) as err:
        dec.feed(prefix(length) + b"\x00" * length)
    assert err.value.reason == "bad_length"


def test_garbage_refused() -> None:
    with pytest.raises(DecodeError):
        FrameDecoder().feed(b"\x7f\x00\x00\x00" + b"\x00" * 40)


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", b"POST /x", b"SSH-2.0-x\r\n"])
def test_an_http_request_is_named_as_such_not_as_a_frame_length(first: bytes) -> None:
    """Before: 'frame length 1195725856 is above the limit ...' (the length "GET " spells), reason oversize."""
    for dec, data in ((FrameDecoder(), first), (FrameDecoder(max_frame=1000), first)):
        with pytest.raises(DecodeError) as err:
            dec.feed(data[:2])
            dec.feed(data[2:])
        assert err.value.reason == "not_cardnet" and "an HTTP request (or other non-cardnet bytes)" in str(err.value)
        assert "frame length" not in str(err.value) and dec.buffered == 0
    with pytest.raises(DecodeError) as err:  # a length of 4 bytes not all text stays what it was
        FrameDecoder().feed(b"\x80GET")
    assert err.value.reason == "oversize"


def test_any_header_decodes_params_are_checked_later() -> None:
    # At this level any body of >= 34 bytes is a Message (every 16 bytes are a Uid, every
    # uint16 an mtype); param CBOR is checked by the mtype registry above the transport.
    body = bytes(range(HEADER_BYTES)) + b"\xff\xff"
    [m] = FrameDecoder().feed(prefix(len(body)) + body)
    assert m.encode() == body


def test_dead_after_error() -> None:
    dec = FrameDecoder()
    with pytest.raises(DecodeError):
        dec.feed(prefix(3))
    assert dec.failed is not None and dec.failed.reason == "bad_length"
    with pytest.raises(DecodeError) as err:
        dec.feed(encode_frame(msg(1)))
    assert err.value.reason == "dead"
    assert err.value.__cause__ is dec.failed
    with pytest.raises(DecodeError):
        dec.eof()


def test_eof_inside_frame_is_truncated() -> None:
    dec = FrameDecoder()
    frame = encode_frame(msg(1, 10))
    assert dec.feed(frame[:-1]) == []
    with pytest.raises(DecodeError) as err:
        dec.eof()
    assert err.value.reason == "truncated"
    dec2 = FrameDecoder()
    dec2.feed(frame[:2])
    with pytest.raises(DecodeError):
        dec2.eof()


def test_buffer_bounded_by_one_frame() -> None:
    dec = FrameDecoder(max_frame=200)
    frames = [msg(i, 150) for i in range(10)]
    stream = b"".join(encode_frame(m) for m in frames)
    out: list[Message] = []
    for i in range(0, len(stream), 97):
        out += dec.feed(stream[i : i + 97])
        assert dec.buffered < PREFIX_BYTES + 200
    assert out == frames


@pytest.mark.parametrize("bad", [0, MIN_FRAME - 1, 2**32, -1, True, 1.5])
def test_bad_limit(bad: object) -> None:
    with pytest.raises(TransportError) as err:
        FrameDecoder(max_frame=bad)  # type: ignore[arg-type]
    assert err.value.reason == "bad_config"


@pytest.mark.parametrize("module", ["cardnet.transport.framing", "cardnet.transport.backoff"])
def test_sans_io_modules_import_no_io_or_clock(module: str) -> None:
    import ast
    import importlib

    mod = importlib.import_module(module)
    assert mod.__file__ is not None
    with open(mod.__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "time", "selectors", "os", "threading"}
