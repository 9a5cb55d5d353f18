"""SPDY/3 frame parse/serialise: §7 vectors both ways, incomplete input, failure vectors."""

from __future__ import annotations

import pytest

from service.protocols.spdy import (
    DataFrame,
    Frame,
    FrameError,
    GoAwayFrame,
    GoAwayStatus,
    HeadersFrame,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    data_frame_header,
    parse_frame,
)

from .spdy_vectors import (
    V3_GO_BLOCK,
    V4_GO_BLOCK,
    V5_SYN_STREAM_1,
    V5_SYN_STREAM_3,
    V6_SYN_REPLY_1,
    V6_SYN_REPLY_3,
    V8,
)

# (frame, wire hex): checked in both directions.
FRAME_TABLE = [
    pytest.param(SynStreamFrame(1, bytes.fromhex(V3_GO_BLOCK)), V5_SYN_STREAM_1, id="V5-syn1"),
    pytest.param(SynStreamFrame(3, bytes.fromhex(V4_GO_BLOCK)), V5_SYN_STREAM_3, id="V5-syn3"),
    pytest.param(
        SynReplyFrame(1, bytes.fromhex("78f9e3c6a7c26260606000000000ffff")),
        V6_SYN_REPLY_1,
        id="V6-reply1",
    ),
    pytest.param(
        SynReplyFrame(3, bytes.fromhex("026100000000ffff")), V6_SYN_REPLY_3, id="V6-reply3"
    ),
    pytest.param(DataFrame(3, b"hello"), V8["data_s3_hello"], id="V8-data-hello"),
    pytest.param(DataFrame(1, b"", fin=True), V8["data_s1_fin_empty"], id="V8-data-fin"),
    pytest.param(RstStreamFrame(7, RstStatus.CANCEL), V8["rst_s7_cancel"], id="V8-rst"),
    pytest.param(PingFrame(1), V8["ping_1"], id="V8-ping"),
    pytest.param(GoAwayFrame(0, GoAwayStatus.OK), V8["goaway_0_ok"], id="V8-goaway"),
    pytest.param(SettingsFrame(((0, 7, 65536),)), V8["settings_initial_window"], id="V8-settings"),
    pytest.param(
        SynStreamFrame(5, b"xy", fin=True, unidirectional=True, assoc_stream_id=3, priority=7),
        "800300010300000c0000000500000003e000" + "7879",
        id="syn-flags-priority",
    ),
    pytest.param(HeadersFrame(9, b"ab", fin=True), "800300080100000600000009" + "6162", id="hdrs"),
    pytest.param(WindowUpdateFrame(0, 65536), "800300090000000800000000" + "00010000", id="wu"),
    pytest.param(SettingsFrame((), clear=True), "800300040100000400000000", id="settings-clear"),
    pytest.param(
        GoAwayFrame(7, GoAwayStatus.INTERNAL_ERROR),
        "8003000700000008" + "0000000700000002",
        id="goaway2",
    ),
]


@pytest.mark.parametrize(("frame", "wire"), FRAME_TABLE)
def test_frame_parses_and_serialises(frame: Frame, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert parse_frame(raw) == (frame, len(raw))
    assert frame.serialize() == raw


@pytest.mark.parametrize(("frame", "wire"), FRAME_TABLE)
def test_every_proper_prefix_is_incomplete(frame: Frame, wire: str) -> None:
    raw = bytes.fromhex(wire)
    for cut in range(len(raw)):
        assert parse_frame(raw[:cut]) is None
        assert parse_frame(bytearray(raw[:cut])) is None


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_at_offsets_in_any_buffer(kind: type) -> None:
    wires = [bytes.fromhex(p.values[1]) for p in FRAME_TABLE]
    frames = [p.values[0] for p in FRAME_TABLE]
    stream = b"".join(wires) + b"\x80\x03"  # trailing partial header
    buf = kind(stream)
    pos = 0
    parsed = []
    while (result := parse_frame(buf, pos)) is not None:
        frame, pos = result
        parsed.append(frame)
    assert parsed == frames
    assert pos == len(stream) - 2
    assert all(type(getattr(f, "data", b"")) is bytes for f in parsed)


def test_data_frame_header() -> None:
    assert data_frame_header(3, 5, False) == bytes.fromhex("0000000300000005")
    assert data_frame_header(1, 0, True) == bytes.fromhex(V8["data_s1_fin_empty"])
    assert data_frame_header(0x7FFFFFFF, 0xFFFFFF, True) == bytes.fromhex("7fffffff01ffffff")
    for bad in [(0, 1, False), (1, 1 << 24, False), (1 << 31, 1, False), (1, -1, False)]:
        with pytest.raises(ValueError):
            data_frame_header(*bad)


def test_reserved_bits_are_masked_on_parse() -> None:
    raw = bytes.fromhex("8003000300000008" + "8000000700000005")
    assert parse_frame(raw) == (RstStreamFrame(7, 5), 16)
    raw = bytes.fromhex("8003000700000008" + "ffffffff00000000")
    assert parse_frame(raw) == (GoAwayFrame(0x7FFFFFFF, 0), 16)


def test_unknown_syn_stream_flags_are_ignored() -> None:
    raw = bytes.fromhex("80030001f000000a0000000100000000" + "0000")
    assert parse_frame(raw) == (SynStreamFrame(1, b""), 18)


def test_serialise_refuses_oversized_control_frame() -> None:
    with pytest.raises(ValueError):
        SynReplyFrame(1, bytes(0xFFFFFF)).serialize()


# (wire hex, message fragment): each must raise FrameError, connection-level, status 1.
BAD_FRAMES = [
    ("8002000100000000", "version 2"),
    ("8004000600000004" + "00000001", "version 4"),
    ("8003000500000000", "type 5"),  # NOOP
    ("8003000a00000000", "type 10"),  # CREDENTIAL
    ("8003000000000000", "type 0"),
    ("8003ffff00000000", "type 65535"),
    ("8003000300000004" + "00000001", "RST_STREAM length 4"),
    ("800300030000000c" + "000000010000000500000000", "RST_STREAM length 12"),
    ("8003000700000004" + "00000000", "GOAWAY length 4"),
    ("800300070000000c" + "000000000000000000000000", "GOAWAY length 12"),
    ("8003000900000004" + "00000001", "WINDOW_UPDATE length 4"),
    ("8003000600000008" + "0000000100000000", "PING length 8"),
    ("8003000600000000", "PING length 0"),
    ("8003000100000009" + "000000010000000000", "SYN_STREAM length 9"),
    ("8003000200000003" + "000000", "SYN_REPLY length 3"),
    ("8003000800000000", "HEADERS length 0"),
    ("8003000400000000", "SETTINGS length 0"),
    ("800300040000000c" + "00000002" + "0000000700010000", "does not match 2 entries"),
    ("8003000400000004" + "00000001", "does not match 1 entries"),
    ("8003000400000008" + "0000000000000000", "does not match 0 entries"),
    ("800300040000000c" + "00002000" + "0000000700010000", "does not match 8192 entries"),
    ("8003000601000004" + "00000001", "PING with flags"),
    ("8003000780000008" + "0000000000000000", "GOAWAY with flags"),
    ("8003000901000008" + "0000000100000001", "WINDOW_UPDATE with flags"),
    ("0000000000000001" + "00", "DATA with stream id 0"),
    ("800300010000000a" + "00000000000000000000", "SYN_STREAM with stream id 0"),
    ("8003000200000004" + "80000000", "SYN_REPLY with stream id 0"),
    ("8003000800000004" + "00000000", "HEADERS with stream id 0"),
    ("8003000300000008" + "0000000000000005", "RST_STREAM with stream id 0"),
    ("8003000300000008" + "0000000100000000", "RST_STREAM with status 0"),
    ("8003000600000004" + "00000000", "PING with id 0"),
]


@pytest.mark.parametrize(("wire", "fragment"), BAD_FRAMES)
def test_bad_frame_raises_typed_error(wire: str, fragment: str) -> None:
    raw = bytes.fromhex(wire)
    with pytest.raises(FrameError) as info:
        parse_frame(raw)
    assert fragment in info.value.message
    assert info.value.error_code == 1
    assert info.value.stream_id is None
    with pytest.raises(FrameError):  # at an offset and in a mutable buffer too
        parse_frame(bytearray(b"\0" * 3 + raw), 3)


@pytest.mark.parametrize(
    "header",
    [
        "8002000100ffffff",  # wrong version
        "8003000500ffffff",  # unknown type
        "8003000600ffffff",  # PING with a huge length
        "8003000701000008",  # GOAWAY with flags
        "8003000100000002",  # SYN_STREAM too short
    ],
)
def test_bad_control_header_fails_before_payload_arrives(header: str) -> None:
    with pytest.raises(FrameError):
        parse_frame(bytes.fromhex(header))


def test_settings_count_checked_before_payload_arrives() -> None:
    with pytest.raises(FrameError):
        parse_frame(bytes.fromhex("8003000400ffffff" + "00000001"))


def test_large_data_frame_waits_for_payload() -> None:
    assert parse_frame(bytes.fromhex("00000001" + "00ffffff") + bytes(100)) is None
