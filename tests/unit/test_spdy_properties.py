"""Property tests: frame round trips, split invariance, hostile input."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.protocols.spdy import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeaderCompressor,
    HeadersFrame,
    PingFrame,
    ProtocolError,
    RstStreamFrame,
    SettingsFrame,
    SpdyConnection,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    parse_frame,
)

from .spdy_vectors import normalize

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u31 = st.integers(0, 0x7FFFFFFF)
sid = st.integers(1, 0x7FFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
block = st.binary(max_size=64)

FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.builds(DataFrame, sid, st.binary(max_size=256), st.booleans()),
    st.builds(
        SynStreamFrame,
        sid,
        block,
        st.booleans(),
        st.booleans(),
        u31,
        st.integers(0, 7),
        st.integers(0, 255),
    ),
    st.builds(SynReplyFrame, sid, block, st.booleans()),
    st.builds(HeadersFrame, sid, block, st.booleans()),
    st.builds(RstStreamFrame, sid, st.integers(1, 0xFFFFFFFF)),
    st.builds(
        SettingsFrame,
        st.lists(st.tuples(st.integers(0, 255), st.integers(0, 0xFFFFFF), u32), max_size=8).map(
            tuple
        ),
        st.booleans(),
    ),
    st.builds(PingFrame, st.integers(1, 0xFFFFFFFF)),
    st.builds(GoAwayFrame, u31, u32),
    st.builds(WindowUpdateFrame, u31, u31),
)


@PROPS
@given(FRAMES, st.binary(max_size=8), st.sampled_from([bytes, bytearray, memoryview]))
def test_parse_of_serialise_is_identity(frame: Frame, prefix: bytes, kind: type) -> None:
    wire = frame.serialize()
    assert parse_frame(wire) == (frame, len(wire))
    buf = kind(prefix + wire + b"\x80")
    assert parse_frame(buf, len(prefix)) == (frame, len(prefix) + len(wire))
    assert parse_frame(wire[:-1]) is None


# ---------------------------------------------------------------- split invariance

headers = st.lists(
    st.tuples(
        st.sampled_from(["port", "streamtype", "requestid", "X-Custom", "a"]),
        st.text(max_size=12),
    ),
    max_size=4,
)
_DATA = st.tuples(st.just("data"), st.integers(0, 9), st.binary(max_size=300), st.booleans())
OPS = st.tuples(
    st.lists(
        st.one_of(
            st.tuples(st.just("open"), headers, st.booleans()),
            _DATA,
            _DATA,
            _DATA,
            st.tuples(st.just("reset"), st.integers(0, 9)),
            st.tuples(st.just("ping")),
        ),
        max_size=25,
    ),
    st.lists(st.just(("goaway",)), max_size=1),  # GOAWAY last: later bytes are ignored
).map(lambda parts: [("open", [], False), *parts[0], *parts[1]])


def run_ops(conn: SpdyConnection, ops: list[tuple[object, ...]]) -> bytes:
    """Apply random operations to one side, skipping the ones that are misuse."""
    opened: list[int] = []
    for op in ops:
        try:
            match op:
                case ("open", list(pairs), bool(fin)):
                    opened.append(conn.open_stream(pairs, fin=fin))
                case ("data", int(i), bytes(payload), bool(fin)) if opened:
                    conn.send_data(opened[i % len(opened)], payload, fin=fin)
                case ("reset", int(i)) if opened:
                    conn.reset_stream(opened[i % len(opened)])
                case ("ping",):
                    conn.ping()
                case ("goaway",):
                    conn.goaway()
        except ProtocolError:  # StreamStateError, ConnectionStateError: skipped misuse
            pass
    return conn.data_to_send()


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(wire) + 1) for p in points})
    edges = [0, *marks, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(edges)]


@PROPS
@given(OPS, st.lists(st.integers(0, 1 << 16), max_size=30), st.booleans())
def test_any_split_gives_the_same_events(
    ops: list[tuple[object, ...]], points: list[int], client_side: bool
) -> None:
    sender = SpdyConnection(client_side, max_data_frame=128)
    wire = run_ops(sender, ops)
    whole = SpdyConnection(not client_side)
    expected = normalize(whole.receive_data(wire))
    split = SpdyConnection(not client_side)
    events = []
    for chunk in cut(wire, points):
        events += split.receive_data(chunk)
    assert normalize(events) == expected
    assert split.data_to_send() == whole.data_to_send()
    bytewise = SpdyConnection(not client_side)
    events = []
    for i in range(len(wire)):
        events += bytewise.receive_data(wire[i : i + 1])
    assert normalize(events) == expected


# ---------------------------------------------------------------- hostile input


@dataclass
class Outcome:
    events: int = 0
    error: ProtocolError | None = None


def feed_hostile(client_side: bool, chunks: list[bytes]) -> Outcome:
    conn = SpdyConnection(client_side)
    outcome = Outcome()
    for chunk in chunks:
        try:
            outcome.events += len(conn.receive_data(chunk))
        except ProtocolError as exc:
            assert exc.stream_id is None
            outcome.error = exc
            break
        conn.data_to_send()
    if outcome.error is not None:
        try:
            conn.receive_data(b"\0" * 8)
        except ProtocolError as again:
            assert again is outcome.error
        else:
            raise AssertionError("a failed connection accepted more bytes")
    return outcome


@PROPS
@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_random_garbage_only_raises_protocol_error(chunks: list[bytes], client_side: bool) -> None:
    feed_hostile(client_side, chunks)


def _serialise_all(frames: list[Frame]) -> bytes:
    return b"".join(f.serialize() for f in frames)


@PROPS
@given(st.lists(FRAMES, max_size=12), st.lists(st.integers(0, 1 << 12), max_size=8), st.booleans())
def test_random_valid_frames_only_raise_protocol_error(
    frames: list[Frame], points: list[int], client_side: bool
) -> None:
    # Structurally valid frames with random content reach the deeper state machine.
    feed_hostile(client_side, cut(_serialise_all(frames), points))


@PROPS
@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 8]), sid, headers, st.booleans()), max_size=10),
    st.booleans(),
)
def test_well_compressed_random_header_frames(
    specs: list[tuple[int, int, list[tuple[str, str]], bool]], client_side: bool
) -> None:
    # Real zlib on one context, random ids and frame kinds: only stream-level trouble.
    comp = HeaderCompressor()
    frames: list[Frame] = []
    for kind, stream_id, pairs, fin in specs:
        raw = comp.encode(pairs)
        if kind == 1:
            frames.append(SynStreamFrame(stream_id, raw, fin))
        elif kind == 2:
            frames.append(SynReplyFrame(stream_id, raw, fin))
        else:
            frames.append(HeadersFrame(stream_id, raw, fin))
    outcome = feed_hostile(client_side, [_serialise_all(frames)])
    assert outcome.error is None


@PROPS
@given(st.binary(min_size=1, max_size=64), st.booleans())
def test_garbage_after_a_valid_control_header(tail: bytes, client_side: bool) -> None:
    for head in ("80030001", "80030002", "80030004", "80030008"):
        header = bytes.fromhex(head) + len(tail).to_bytes(4, "big")
        feed_hostile(client_side, [header + tail])
