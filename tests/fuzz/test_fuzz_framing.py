"""Fuzz the framing decoder: any bytes in any chunking raise only DecodeError and always terminate."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.transport import PREFIX_BYTES, FrameDecoder, FrameRefused, RecvLimit, SkippedFrame, encode_frame
from cardnet.wire import DecodeError, Message, Uid

MAX_FRAME = 4096


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_arbitrary_stream_only_decode_error(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_frame=MAX_FRAME)
    got = 0
    try:
        for chunk in chunked(data, cuts):
            got += len(dec.feed(chunk))
            assert dec.buffered < PREFIX_BYTES + MAX_FRAME
        dec.eof()
    except DecodeError:
        assert dec.failed is not None
        assert dec.buffered == 0
    assert got <= len(data) // (PREFIX_BYTES + 34)


uids = st.builds(Uid, st.binary(min_size=12, max_size=12), st.integers(min_value=0, max_value=2**32 - 1))
messages = st.builds(Message, uids, uids, st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=200))


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(messages, max_size=10), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_valid_stream_any_chunking_round_trips(msgs: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder(max_frame=MAX_FRAME)
    out: list[Message] = []
    for chunk in chunked(stream, cuts):
        out += dec.feed(chunk)
    dec.eof()
    assert out == msgs


@settings(max_examples=200, deadline=None)
@given(
    msgs=st.lists(messages, min_size=1, max_size=5),
    junk=st.binary(min_size=1, max_size=100),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_valid_prefix_then_junk(msgs: list[Message], junk: bytes, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs) + junk
    dec = FrameDecoder(max_frame=MAX_FRAME)
    out: list[Message] = []
    try:
        for chunk in chunked(stream, cuts):
            out += dec.feed(chunk)
        dec.eof()
    except DecodeError:
        pass
    assert out[: len(msgs)] == msgs[: len(out)]


SMALL_LIMIT = 150
mixed = st.builds(Message, uids, uids, st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=400))


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(mixed, max_size=10), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_frames_above_the_limit_are_read_past_in_any_chunking(msgs: list[Message], cuts: list[int]) -> None:
    """A peer with a larger frame limit: what fits arrives in order, what does not is reported by its header."""
    stream = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder(max_frame=SMALL_LIMIT)
    out: list[Message] = []
    skipped: list[SkippedFrame] = []
    for chunk in chunked(stream, cuts):
        out += dec.feed(chunk)
        skipped += dec.take_skipped()
        assert dec.buffered < PREFIX_BYTES + SMALL_LIMIT
    dec.eof()
    assert out == [m for m in msgs if m.size <= SMALL_LIMIT]
    # each one read past is told with its place: after how many of the messages that fit
    places = [sum(x.size <= SMALL_LIMIT for x in msgs[:i]) for i, m in enumerate(msgs) if m.size > SMALL_LIMIT]
    big = [m for m in msgs if m.size > SMALL_LIMIT]
    want = [SkippedFrame(m.src, m.dst, m.mtype, m.size, SMALL_LIMIT, at) for m, at in zip(big, places, strict=True)]
    assert skipped == want


BIG_MTYPE = 7  # the mtype a RecvLimit lets in up to BIG_LIMIT
BIG_LIMIT = 300
limited = st.builds(
    Message, uids, uids, st.sampled_from([1, BIG_MTYPE, 0xFFFF]), st.binary(max_size=400)
)  # some within SMALL_LIMIT, some within BIG_LIMIT for BIG_MTYPE, some above both


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(limited, max_size=10), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_a_receive_limit_refuses_the_first_frame_above_it_in_any_chunking(msgs: list[Message], cuts: list[int]) -> None:
    """A server's RecvLimit: the frames before the first one above the limit of its mtype arrive in order (some of
    them with the error), that one is refused by its header, and nothing more than the limit is ever held."""
    limit = RecvLimit(SMALL_LIMIT, ((BIG_MTYPE, BIG_LIMIT),))
    stream = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder(recv_limit=limit)
    out: list[Message] = []
    refused: FrameRefused | None = None
    try:
        for chunk in chunked(stream, cuts):
            out += dec.feed(chunk)
            assert dec.buffered < PREFIX_BYTES + BIG_LIMIT
        dec.eof()
    except FrameRefused as exc:
        refused = exc
        out += exc.decoded
    first_big = next((i for i, m in enumerate(msgs) if m.size > limit.for_mtype(m.mtype)), None)
    if first_big is None:
        assert refused is None and out == msgs
    else:
        m = msgs[first_big]
        assert refused is not None and refused.frame == SkippedFrame(
            m.src, m.dst, m.mtype, m.size, limit.for_mtype(m.mtype)
        )
        assert out == msgs[:first_big]
