"""SpdyConnection: kubectl captures in both roles, an in-memory pair, failure vectors."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from service.protocols.spdy import (
    DICTIONARY,
    CompressionError,
    ConnectionStateError,
    ConnectionTerminated,
    DataFrame,
    DataReceived,
    Event,
    FrameError,
    GoAwayFrame,
    GoAwayStatus,
    HeaderBlock,
    HeaderCompressor,
    HeaderError,
    HeadersFrame,
    HeadersReceived,
    PingAcknowledged,
    PingFrame,
    PingReceived,
    ProtocolError,
    RstStatus,
    RstStreamFrame,
    SettingsFrame,
    SpdyConnection,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReplied,
    StreamReset,
    StreamStateError,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    encode_header_block,
    parse_frame,
)

from .spdy_vectors import (
    CAPTURES,
    CAPTURES_JSON,
    V5_SYN_STREAM_1,
    V5_SYN_STREAM_3,
    V8,
    Capture,
    normalize,
)

PAIR = [("streamtype", "error"), ("port", "8080"), ("requestid", "0")]


def frames_of(wire: bytes) -> list[object]:
    out = []
    pos = 0
    while (parsed := parse_frame(wire, pos)) is not None:
        frame, pos = parsed
        out.append(frame)
    assert pos == len(wire)
    return out


def pump(src: SpdyConnection, dst: SpdyConnection) -> list[Event]:
    return dst.receive_data(src.data_to_send())


def feed_chunks(conn: SpdyConnection, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events


def splits(wire: bytes, mode: str, seed: int = 0) -> list[bytes]:
    if mode == "whole":
        return [wire]
    if mode == "bytewise":
        return [wire[i : i + 1] for i in range(len(wire))]
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(1, 20))))
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


SPLIT_MODES = ["whole", "bytewise", *(f"random-{seed}" for seed in range(8))]


def chunked(wire: bytes, mode: str) -> list[bytes]:
    if mode.startswith("random-"):
        return splits(wire, "random", int(mode.split("-")[1]))
    return splits(wire, mode)


# ---------------------------------------------------------------- kubectl captures


def test_the_capture_file_holds_every_connection_the_tests_replay() -> None:
    # The tests below are parametrised over the file: a lost connection must not shrink them.
    assert {name: c.label.split(",")[0] for name, c in CAPTURES.items()} == {
        "vec_spdy_1.33": "kubectl 1.33.1",
        "vec_spdy_1.27": "kubectl 1.27.16",
        "vec_ws_1.33": "kubectl 1.33.1",
    }, CAPTURES_JSON
    assert [n for n, c in CAPTURES.items() if c.client_ws_messages] == ["vec_ws_1.33"]
    assert all(c.client_frames and c.server_frames for c in CAPTURES.values())


def expected_server_events(capture: Capture) -> list[Event]:
    """What a server must report for the captured client frames (from the JSON fields)."""
    events: list[Event] = []
    for f in capture.client_frames:
        fin = bool(f.flags & 1)
        if f.type == "SYN_STREAM":
            assert f.sid is not None and f.headers is not None
            events.append(StreamOpened(f.sid, dict(f.headers), fin, bool(f.flags & 2)))
        elif f.type == "DATA":
            assert f.sid is not None
            events.append(DataReceived(f.sid, f.raw[8:], fin))
        elif f.type == "PING":
            assert f.ping_id is not None
            events.append(PingReceived(f.ping_id))
        else:  # pragma: no cover - the captures hold nothing else
            raise AssertionError(f.type)
        if fin:
            events.append(StreamEnded(f.sid or 0))
    return events


def expected_client_events(capture: Capture) -> list[Event]:
    """What the client must report for the captured server frames (kubelet-like answers)."""
    events: list[Event] = []
    for raw in capture.server_frames:
        sid = int.from_bytes(raw[0:4], "big") & 0x7FFFFFFF
        fin = bool(raw[4] & 1)
        if raw[0] & 0x80:
            kind = int.from_bytes(raw[2:4], "big")
            if kind == 2:
                sid = int.from_bytes(raw[8:12], "big")
                events.append(StreamReplied(sid, {}, fin))  # kubelet replies with no headers
            else:
                assert kind == 6
                events.append(PingAcknowledged(int.from_bytes(raw[8:12], "big")))
                continue
        else:
            events.append(DataReceived(sid, raw[8:], fin))
        if fin:
            events.append(StreamEnded(sid))
    return events


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("name", list(CAPTURES))
def test_capture_client_frames_into_server(name: str, mode: str) -> None:
    capture = CAPTURES[name]
    wire = b"".join(f.raw for f in capture.client_frames)
    server = SpdyConnection(client_side=False)
    events = feed_chunks(server, chunked(wire, mode))
    assert events == expected_server_events(capture)
    pings = [f.raw for f in capture.client_frames if f.type == "PING"]
    assert server.data_to_send() == b"".join(pings)  # PINGs echoed unchanged (V9)
    assert server.last_peer_stream_id == max(f.sid or 0 for f in capture.client_frames)


@pytest.mark.parametrize("name", [n for n, c in CAPTURES.items() if c.client_ws_messages])
def test_capture_websocket_messages_into_server(name: str) -> None:
    capture = CAPTURES[name]
    assert capture.client_ws_messages is not None
    server = SpdyConnection(client_side=False)
    # A Go client writes each frame field separately: 2, 2, 4, 4, 4, 1, 1, n bytes.
    assert [len(m) for m in capture.client_ws_messages[:7]] == [2, 2, 4, 4, 4, 1, 1]
    events = feed_chunks(server, list(capture.client_ws_messages))
    assert events == expected_server_events(capture)


@pytest.mark.parametrize("name", list(CAPTURES))
def test_capture_with_trailing_partial_bytes(name: str) -> None:
    capture = CAPTURES[name]
    wire = b"".join(f.raw for f in capture.client_frames)
    extra = PingFrame(3).serialize()
    for cut in range(1, len(extra)):
        server = SpdyConnection(client_side=False)
        assert server.receive_data(wire + extra[:cut]) == expected_server_events(capture)
        assert server.receive_data(extra[cut:]) == [PingReceived(3)]


def replay_client(capture: Capture) -> SpdyConnection:
    """Drive a client through the captured client-side actions via the public API."""
    client = SpdyConnection(client_side=True)
    for f in capture.client_frames:
        if f.type == "SYN_STREAM":
            assert f.headers is not None
            assert client.open_stream(list(f.headers)) == f.sid
        elif f.type == "DATA":
            assert f.sid is not None
            client.send_data(f.sid, f.raw[8:], fin=bool(f.flags & 1))
        else:
            assert client.ping() == f.ping_id
    return client


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("name", list(CAPTURES))
def test_capture_server_frames_into_client(name: str, mode: str) -> None:
    capture = CAPTURES[name]
    client = replay_client(capture)
    # Our own client bytes mean the same as kubectl's (compressed bytes may differ).
    ours = client.data_to_send()
    assert SpdyConnection(client_side=False).receive_data(ours) == expected_server_events(capture)
    wire = b"".join(capture.server_frames)
    events = feed_chunks(client, chunked(wire, mode))
    assert events == expected_client_events(capture)
    assert client.stream_count == 0  # FIN went both ways on every stream
    assert not client.has_data_to_send


def test_capture_server_role_replays_like_the_kubelet() -> None:
    capture = CAPTURES["vec_spdy_1.33"]
    server = SpdyConnection(client_side=False)
    server.receive_data(b"".join(f.raw for f in capture.client_frames))
    server.data_to_send()
    for raw in capture.server_frames:
        frame = frames_of(raw)[0]
        if isinstance(frame, SynReplyFrame):
            server.send_reply(frame.stream_id)
        elif isinstance(frame, DataFrame):
            server.send_data(frame.stream_id, frame.data, fin=frame.fin)
    assert server.stream_count == 0
    client = replay_client(capture)
    client.data_to_send()
    events = client.receive_data(server.data_to_send())
    assert events == [e for e in expected_client_events(capture) if e != PingAcknowledged(1)]


# ---------------------------------------------------------------- in-memory pair


def open_pair(client: SpdyConnection, server: SpdyConnection) -> tuple[int, int]:
    """kubectl's sequence: error stream (half-closed at once), then the data stream."""
    err = client.open_stream(PAIR)
    (opened,) = pump(client, server)
    assert opened == StreamOpened(err, dict(PAIR))
    server.send_reply(err)
    assert pump(server, client) == [StreamReplied(err, {})]
    client.end_stream(err)
    assert pump(client, server) == [DataReceived(err, b"", True), StreamEnded(err)]
    data_headers = [("streamtype", "data"), ("port", "8080"), ("requestid", "0")]
    data = client.open_stream(data_headers)
    assert pump(client, server) == [StreamOpened(data, dict(data_headers))]
    server.send_reply(data)
    assert pump(server, client) == [StreamReplied(data, {})]
    return err, data


def test_pair_data_both_ways_and_fin_frees_streams() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    err, data = open_pair(client, server)
    assert (err, data) == (1, 3)
    client.send_data(data, b"ping?")
    assert pump(client, server) == [DataReceived(data, b"ping?")]
    server.send_data(data, bytearray(b"pong!"))
    assert pump(server, client) == [DataReceived(data, b"pong!")]
    client.end_stream(data)
    assert pump(client, server) == [DataReceived(data, b"", True), StreamEnded(data)]
    server.send_data(data, b"bye", fin=True)
    server.end_stream(err)
    assert pump(server, client) == [
        DataReceived(data, b"bye", True),
        StreamEnded(data),
        DataReceived(err, b"", True),
        StreamEnded(err),
    ]
    assert client.stream_count == server.stream_count == 0
    with pytest.raises(StreamStateError) as info:
        client.send_data(data, b"late")
    assert info.value.error_code == RstStatus.STREAM_ALREADY_CLOSED


def test_send_after_fin_raises_but_receiving_continues() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    _, data = open_pair(client, server)
    client.end_stream(data)
    pump(client, server)
    assert not client.can_send(data)
    with pytest.raises(StreamStateError, match="closed for sending"):
        client.send_data(data, b"x")
    with pytest.raises(StreamStateError):
        client.end_stream(data)
    server.send_data(data, b"still flowing")
    assert pump(server, client) == [DataReceived(data, b"still flowing")]


def test_reset_both_ways_and_in_flight_data_is_dropped() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    err, data = open_pair(client, server)
    server.send_data(data, b"in flight")  # crosses the client's RST
    client.reset_stream(data)
    assert client.data_to_send() == RstStreamFrame(data, RstStatus.CANCEL).serialize()
    assert client.receive_data(server.data_to_send()) == []  # dropped silently
    assert not client.has_data_to_send
    assert server.receive_data(RstStreamFrame(data, 5).serialize()) == [StreamReset(data, 5)]
    with pytest.raises(StreamStateError):
        server.send_data(data, b"x")
    with pytest.raises(StreamStateError):
        client.send_data(data, b"x")
    client.reset_stream(data)  # already gone: no-op
    assert not client.has_data_to_send
    server.reset_stream(err, RstStatus.INTERNAL_ERROR)
    assert pump(server, client) == [StreamReset(err, RstStatus.INTERNAL_ERROR)]
    assert client.stream_count == server.stream_count == 0


def test_reset_of_a_never_opened_stream_raises() -> None:
    conn = SpdyConnection(True)
    with pytest.raises(StreamStateError) as info:
        conn.reset_stream(1)
    assert (info.value.error_code, info.value.stream_id) == (RstStatus.INVALID_STREAM, 1)
    with pytest.raises(StreamStateError):
        conn.send_data(1, b"x")


def test_reply_misuse() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    sid = client.open_stream(PAIR)
    with pytest.raises(StreamStateError, match="only the peer replies"):
        client.send_reply(sid)
    pump(client, server)
    server.send_reply(sid)
    with pytest.raises(StreamStateError, match="already replied"):
        server.send_reply(sid)
    with pytest.raises(StreamStateError, match="never opened"):
        server.send_reply(5)


def test_ping_echo_by_parity() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    assert [client.ping(), client.ping()] == [1, 3]
    assert pump(client, server) == [PingReceived(1), PingReceived(3)]
    assert pump(server, client) == [PingAcknowledged(1), PingAcknowledged(3)]
    assert server.ping() == 2
    assert pump(server, client) == [PingReceived(2)]
    assert client.data_to_send() == PingFrame(2).serialize()


def test_ping_ids_wrap() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    client._next_ping_id = 0x7FFFFFFD
    assert [client.ping() for _ in range(3)] == [0x7FFFFFFD, 0x7FFFFFFF, 1]
    server._next_ping_id = 0x7FFFFFFC
    assert [server.ping() for _ in range(3)] == [0x7FFFFFFC, 0x7FFFFFFE, 2]


def test_goaway_from_client() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    client.goaway()
    client.goaway()  # only once on the wire
    wire = client.data_to_send()
    assert wire == bytes.fromhex(V8["goaway_0_ok"])
    assert client.goaway_sent
    with pytest.raises(ConnectionStateError):
        client.open_stream(PAIR)
    assert server.receive_data(wire + b"garbage after goaway") == [
        ConnectionTerminated(error_code=GoAwayStatus.OK, last_stream_id=0)
    ]
    assert server.terminated
    assert server.receive_data(bytes.fromhex(V5_SYN_STREAM_1)) == []
    with pytest.raises(ConnectionStateError):
        server.open_stream(PAIR)


def test_goaway_last_good_is_highest_accepted_peer_stream() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    open_pair(client, server)
    server.goaway(GoAwayStatus.INTERNAL_ERROR)
    assert pump(server, client) == [
        ConnectionTerminated(error_code=GoAwayStatus.INTERNAL_ERROR, last_stream_id=3)
    ]
    # New streams after our GOAWAY are ignored, but their headers still go through zlib.
    client2 = SpdyConnection(True)
    server2 = SpdyConnection(False)
    client2.open_stream(PAIR)
    pump(client2, server2)
    server2.goaway()
    server2.data_to_send()
    late = client2.open_stream(PAIR)
    client2.send_data(late, b"x")
    assert pump(client2, server2) == []
    assert not server2.has_data_to_send  # no RST for frames on an ignored stream
    assert server2.stream_count == 1 and server2.last_peer_stream_id == 1


def test_stream_memory_is_freed_over_many_streams() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    cached = HeaderBlock.encode(PAIR)
    for i in range(3000):
        sid = client.open_stream(cached)
        client.send_data(sid, b"x", fin=True)
        events = pump(client, server)
        assert events[0] == StreamOpened(sid, dict(PAIR))
        server.send_reply(sid)
        if i % 3 == 0:
            server.reset_stream(sid)
        else:
            server.end_stream(sid)
        pump(server, client)
        assert client.stream_count == server.stream_count == 0
    assert sid == 5999


def test_stream_ids_run_out() -> None:
    conn = SpdyConnection(True)
    conn._next_stream_id = 0x7FFFFFFF
    assert conn.open_stream(PAIR) == 0x7FFFFFFF
    with pytest.raises(ConnectionStateError, match="exhausted"):
        conn.open_stream(PAIR)
    server = SpdyConnection(False)
    server._next_stream_id = 0x7FFFFFFE
    assert server.open_stream(PAIR) == 0x7FFFFFFE
    with pytest.raises(ConnectionStateError):
        server.open_stream(PAIR)


def test_server_initiated_streams_are_even() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    assert [server.open_stream(PAIR) for _ in range(2)] == [2, 4]
    assert pump(server, client) == [StreamOpened(2, dict(PAIR)), StreamOpened(4, dict(PAIR))]
    client.send_reply(2, [("status", "ok")], fin=True)
    assert pump(client, server) == [StreamReplied(2, {"status": "ok"}, True), StreamEnded(2)]


def test_large_send_is_split_without_copying_bytes() -> None:
    client, server = SpdyConnection(True, max_data_frame=1000), SpdyConnection(False)
    _, data = open_pair(client, server)
    payload = bytes(range(256)) * 10  # 2560 bytes -> 1000 + 1000 + 560
    client.send_data(data, payload, fin=True)
    chunks = client.chunks_to_send()
    assert [len(c) for c in chunks] == [8, 1000, 8, 1000, 8, 560]
    assert all(isinstance(c, memoryview) and c.obj is payload for c in chunks[1::2])
    frames = frames_of(b"".join(chunks))
    assert frames == [
        DataFrame(data, payload[:1000]),
        DataFrame(data, payload[1000:2000]),
        DataFrame(data, payload[2000:], fin=True),
    ]
    small = b"abc"
    client2, server2 = SpdyConnection(True), SpdyConnection(False)
    _, d2 = open_pair(client2, server2)
    client2.send_data(d2, small)
    assert client2.chunks_to_send()[1] is small


def test_mutable_payload_is_copied() -> None:
    client, server = SpdyConnection(True, max_data_frame=4), SpdyConnection(False)
    _, data = open_pair(client, server)
    buf = bytearray(b"abcdefgh")
    client.send_data(data, buf)
    client.send_data(data, memoryview(buf)[:2])
    buf[:] = b"XXXXXXXX"
    assert pump(client, server) == [
        DataReceived(data, b"abcd"),
        DataReceived(data, b"efgh"),
        DataReceived(data, b"ab"),
    ]


def test_empty_send_without_fin_is_a_noop() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    _, data = open_pair(client, server)
    client.send_data(data, b"")
    assert not client.has_data_to_send
    assert client.data_to_send() == b""


def test_max_data_frame_is_validated() -> None:
    for bad in (0, 1 << 24):
        with pytest.raises(ValueError):
            SpdyConnection(True, max_data_frame=bad)


def test_cached_header_block_and_host_rule() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    with_host = HeaderBlock.encode([("Host", "example")])
    with pytest.raises(ValueError):
        client.open_stream(with_host)
    with pytest.raises(ValueError):
        client.open_stream([("host", "example")])
    sid = client.open_stream(HeaderBlock.encode(PAIR), fin=True)
    assert pump(client, server) == [StreamOpened(sid, dict(PAIR), True), StreamEnded(sid)]
    server.send_reply(sid, with_host)
    assert pump(server, client) == [StreamReplied(sid, {"host": "example"})]
    # A refused header must not consume a stream id or desynchronise zlib.
    assert client.open_stream(PAIR) == sid + 2
    assert pump(client, server) == [StreamOpened(sid + 2, dict(PAIR))]


def test_settings_and_window_update_are_ignored() -> None:
    server = SpdyConnection(False)
    wire = bytes.fromhex(V8["settings_initial_window"]) + WindowUpdateFrame(0, 1).serialize()
    wire += SettingsFrame(((1, 4, 100), (0, 7, 1 << 20)), clear=True).serialize()
    assert server.receive_data(wire) == []
    assert not server.has_data_to_send


def test_headers_frame_is_reported() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    _, data = open_pair(client, server)
    comp = client._compressor  # HEADERS is never sent by us; build one on the same context
    frame = HeadersFrame(data, comp.encode([("x-trailer", "1")]), fin=True)
    assert server.receive_data(frame.serialize()) == [
        HeadersReceived(data, {"x-trailer": "1"}, True),
        StreamEnded(data),
    ]


def test_unidirectional_stream_from_peer() -> None:
    client, server = SpdyConnection(True), SpdyConnection(False)
    comp = HeaderCompressor()
    wire = SynStreamFrame(1, comp.encode(PAIR), unidirectional=True).serialize()
    wire += SynStreamFrame(3, comp.encode(PAIR), fin=True, unidirectional=True).serialize()
    assert server.receive_data(wire) == [
        StreamOpened(1, dict(PAIR), False, True),
        StreamOpened(3, dict(PAIR), True, True),
        StreamEnded(3),
    ]
    assert server.stream_count == 1
    with pytest.raises(StreamStateError):
        server.send_data(1, b"x")
    with pytest.raises(StreamStateError):
        server.send_reply(1)
    assert server.receive_data(DataFrame(1, b"", True).serialize()) == [
        DataReceived(1, b"", True),
        StreamEnded(1),
    ]
    assert server.stream_count == 0
    del client


def test_data_before_reply_is_delivered() -> None:
    client = SpdyConnection(True)
    sid = client.open_stream(PAIR)
    assert client.receive_data(DataFrame(sid, b"early").serialize()) == [
        DataReceived(sid, b"early")
    ]


def test_rst_for_unknown_stream_is_ignored() -> None:
    conn = SpdyConnection(False)
    assert conn.receive_data(bytes.fromhex(V8["rst_s7_cancel"])) == []
    assert not conn.has_data_to_send


def test_empty_input_is_harmless() -> None:
    conn = SpdyConnection(False)
    assert conn.receive_data(b"") == []
    assert conn.receive_data(memoryview(b"")) == []


# ---------------------------------------------------------------- failure vectors


def assert_connection_error(
    conn: SpdyConnection, wire: bytes, error: type[ProtocolError], last_good: int = 0
) -> ProtocolError:
    with pytest.raises(error) as info:
        conn.receive_data(wire)
    exc = info.value
    assert type(exc) is error
    assert (exc.error_code, exc.stream_id) == (1, None)
    out = conn.data_to_send()
    assert frames_of(out)[-1] == GoAwayFrame(last_good, GoAwayStatus.PROTOCOL_ERROR)
    with pytest.raises(error) as again:
        conn.receive_data(bytes.fromhex(V8["ping_1"]))
    assert again.value is exc
    assert conn.error is exc
    assert not conn.has_data_to_send  # GOAWAY is sent once
    with pytest.raises(ConnectionStateError):
        conn.open_stream(PAIR)
    return exc


CONNECTION_ERRORS = [
    pytest.param("8002000600000004" + "00000001", FrameError, id="wrong-version"),
    pytest.param("8003000500000000", FrameError, id="noop-type-5"),
    pytest.param("8003000a00000000", FrameError, id="credential-type-10"),
    pytest.param("8003000300000004" + "00000007", FrameError, id="rst-length-4"),
    pytest.param("8003000700000010" + "00" * 16, FrameError, id="goaway-length-16"),
    pytest.param("8003000900000004" + "00000001", FrameError, id="window-length-4"),
    pytest.param("8003000600000005" + "0000000100", FrameError, id="ping-length-5"),
    pytest.param("8003000601000004" + "00000001", FrameError, id="ping-flags"),
    pytest.param("8003000701000008" + "00" * 8, FrameError, id="goaway-flags"),
    pytest.param("8003000901000008" + "0000000100000001", FrameError, id="window-flags"),
    pytest.param("8003000100000008" + "0000000100000000", FrameError, id="syn-truncated"),
    pytest.param("8003000200000002" + "0000", FrameError, id="reply-truncated"),
    pytest.param("8003000400000008" + "0000000200000000", FrameError, id="settings-count"),
    pytest.param("0000000000000000", FrameError, id="data-stream-0"),
    pytest.param(V5_SYN_STREAM_3, CompressionError, id="V4-on-fresh-context"),
    pytest.param(
        "800300010000000e" + "00000001000000000000" + "00000000", CompressionError, id="not-zlib"
    ),
]


@pytest.mark.parametrize(("wire", "error"), CONNECTION_ERRORS)
@pytest.mark.parametrize("client_side", [False, True])
def test_connection_level_errors(wire: str, error: type[ProtocolError], client_side: bool) -> None:
    assert_connection_error(SpdyConnection(client_side), bytes.fromhex(wire), error)


def test_connection_error_after_good_frames_reports_last_good() -> None:
    server = SpdyConnection(False)
    wire = bytes.fromhex(V5_SYN_STREAM_1 + V5_SYN_STREAM_3)
    assert len(server.receive_data(wire)) == 2
    assert_connection_error(server, bytes.fromhex("8003000500000000"), FrameError, last_good=3)


def test_connection_error_split_across_calls() -> None:
    server = SpdyConnection(False)
    assert server.receive_data(bytes.fromhex("8003")) == []
    assert_connection_error(server, bytes.fromhex("000a00000000"), FrameError)


def test_syn_stream_block_that_is_not_a_whole_header_block() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    truncated = comp.compress(encode_header_block(PAIR)[:-1]) + comp.flush(zlib.Z_SYNC_FLUSH)
    exc = assert_connection_error(
        SpdyConnection(False), SynStreamFrame(1, truncated).serialize(), CompressionError
    )
    assert "truncated" in exc.message


def test_header_bomb_in_syn_stream_is_bounded() -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    bomb = comp.compress(b"\0\0\0\1\0\0\0\1a" + struct.pack(">I", 32 << 20) + bytes(32 << 20))
    bomb += comp.flush(zlib.Z_SYNC_FLUSH)
    conn = SpdyConnection(False)
    exc = assert_connection_error(conn, SynStreamFrame(1, bomb).serialize(), CompressionError)
    assert "inflates past" in exc.message


def rejected(events: list[Event]) -> list[tuple[object, ...]]:
    return [e for e in normalize(events) if isinstance(e, tuple)]


def block_of(*pairs: tuple[bytes, bytes]) -> bytes:
    parts = [struct.pack(">I", len(pairs))]
    for name, value in pairs:
        parts += [struct.pack(">I", len(name)), name, struct.pack(">I", len(value)), value]
    return b"".join(parts)


BAD_HEADER_BLOCKS = [
    pytest.param(block_of((b"Port", b"80")), "not lowercase", id="uppercase"),
    pytest.param(block_of((b"port", b"80"), (b"port", b"81")), "duplicate", id="duplicate"),
    pytest.param(block_of((b"host", b"x")), "not allowed", id="forbidden-host"),
    pytest.param(block_of((b"connection", b"x")), "not allowed", id="forbidden-connection"),
    pytest.param(block_of((b"transfer-encoding", b"x")), "not allowed", id="forbidden-te"),
    pytest.param(struct.pack(">I", 1001) + bytes(8 * 1001), "limit", id="too-many"),
]


@pytest.mark.parametrize(("raw_block", "fragment"), BAD_HEADER_BLOCKS)
def test_bad_headers_in_syn_stream_reject_only_that_stream(raw_block: bytes, fragment: str) -> None:
    server = SpdyConnection(False)
    comp = HeaderCompressor()
    wire = SynStreamFrame(1, comp.compress(raw_block)).serialize()
    wire += SynStreamFrame(3, comp.encode(PAIR)).serialize()
    events = server.receive_data(wire)
    ((_, sid, cls, code, err_sid, message),) = rejected(events)
    assert (sid, cls, code, err_sid) == (1, HeaderError, RstStatus.PROTOCOL_ERROR, 1)
    assert fragment in message
    assert events[-1] == StreamOpened(3, dict(PAIR))  # zlib context still in step
    assert frames_of(server.data_to_send()) == [RstStreamFrame(1, RstStatus.PROTOCOL_ERROR)]
    assert server.stream_count == 1
    assert server.last_peer_stream_id == 3


def test_forbidden_headers_in_syn_reply() -> None:
    client = SpdyConnection(True)
    a = client.open_stream(PAIR)
    b = client.open_stream(PAIR)
    client.data_to_send()
    comp = HeaderCompressor()
    wire = SynReplyFrame(a, comp.compress(block_of((b"host", b"h")))).serialize()
    wire += SynReplyFrame(b, comp.compress(block_of((b"keep-alive", b"1")))).serialize()
    events = client.receive_data(wire)
    assert events[0] == StreamReplied(a, {"host": "h"})
    assert rejected(events) == [
        ("rejected", b, HeaderError, 1, b, "header 'keep-alive' is not allowed in this frame")
    ]
    assert frames_of(client.data_to_send()) == [RstStreamFrame(b, 1)]
    assert client.stream_count == 1


def test_stream_id_going_backwards_or_repeating() -> None:
    server = SpdyConnection(False)
    comp = HeaderCompressor()
    wire = b"".join(SynStreamFrame(sid, comp.encode(PAIR)).serialize() for sid in (5, 3, 5, 7))
    events = server.receive_data(wire)
    assert [type(e).__name__ for e in events] == [
        "StreamOpened",
        "StreamRejected",
        "StreamRejected",
        "StreamOpened",
    ]
    assert [r[1:5] for r in rejected(events)] == [
        (3, ProtocolError, 1, 3),
        (5, ProtocolError, 1, 5),
    ]
    # The repeated id 5 was reset on the wire, so the original stream 5 is gone too.
    assert frames_of(server.data_to_send()) == [RstStreamFrame(3, 1), RstStreamFrame(5, 1)]
    assert server.stream_count == 1
    assert server.receive_data(DataFrame(3, b"late").serialize()) == []  # 3 < last id: drop


def test_wrong_parity_from_peer() -> None:
    server = SpdyConnection(False)
    comp = HeaderCompressor()
    events = server.receive_data(SynStreamFrame(2, comp.encode(PAIR)).serialize())
    assert [r[1:5] for r in rejected(events)] == [(2, ProtocolError, 1, 2)]
    assert frames_of(server.data_to_send()) == [RstStreamFrame(2, RstStatus.PROTOCOL_ERROR)]
    # Still usable: the next stream is accepted.
    assert server.receive_data(SynStreamFrame(1, comp.encode(PAIR)).serialize()) == [
        StreamOpened(1, dict(PAIR))
    ]


def test_data_on_unknown_stream_gets_invalid_stream() -> None:
    server = SpdyConnection(False)
    wire = bytes.fromhex(V8["data_s3_hello"]) + bytes.fromhex(V5_SYN_STREAM_1)
    events = server.receive_data(wire)
    assert isinstance(events[0], StreamRejected)
    assert rejected(events)[0][1:5] == (3, ProtocolError, RstStatus.INVALID_STREAM, 3)
    assert isinstance(events[1], StreamOpened)  # the connection continues
    assert frames_of(server.data_to_send()) == [RstStreamFrame(3, RstStatus.INVALID_STREAM)]
    # Even ids are the server's own: never opened either.
    events = server.receive_data(DataFrame(4, b"x").serialize())
    assert rejected(events)[0][1:5] == (4, ProtocolError, RstStatus.INVALID_STREAM, 4)


def test_data_after_peer_fin() -> None:
    server = SpdyConnection(False)
    wire = bytes.fromhex(V5_SYN_STREAM_1) + DataFrame(1, b"", True).serialize()
    server.receive_data(wire)
    events = server.receive_data(DataFrame(1, b"more").serialize())
    assert rejected(events)[0][1:5] == (1, ProtocolError, RstStatus.STREAM_ALREADY_CLOSED, 1)
    assert server.stream_count == 0


def test_reply_problems() -> None:
    client = SpdyConnection(True)
    sid = client.open_stream(PAIR)
    client.data_to_send()
    comp = HeaderCompressor()
    wire = SynReplyFrame(sid, comp.encode([])).serialize()
    wire += SynReplyFrame(sid, comp.encode([])).serialize()  # second reply
    wire += SynReplyFrame(9, comp.encode([])).serialize()  # never opened
    events = client.receive_data(wire)
    assert events[0] == StreamReplied(sid, {})
    assert [r[1:5] for r in rejected(events)] == [
        (sid, ProtocolError, RstStatus.STREAM_IN_USE, sid),
        (9, ProtocolError, RstStatus.INVALID_STREAM, 9),
    ]
    # A reply for a stream we already closed is dropped quietly.
    assert client.receive_data(SynReplyFrame(sid, comp.encode([])).serialize()) == []
    # A SYN_REPLY for a stream the peer opened.
    client, server = SpdyConnection(True), SpdyConnection(False)
    pump_sid = client.open_stream(PAIR)
    pump(client, server)
    reply = SynReplyFrame(pump_sid, client._compressor.encode([])).serialize()
    events = server.receive_data(reply)
    assert rejected(events)[0][1:5] == (1, ProtocolError, 1, 1)
    assert frames_of(server.data_to_send()) == [RstStreamFrame(1, RstStatus.PROTOCOL_ERROR)]


def test_headers_on_unknown_stream() -> None:
    server = SpdyConnection(False)
    comp = HeaderCompressor()
    events = server.receive_data(HeadersFrame(1, comp.encode([("a", "b")])).serialize())
    assert rejected(events)[0][1:5] == (1, ProtocolError, RstStatus.INVALID_STREAM, 1)


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_merge_data_joins_runs_of_one_stream_and_keeps_order(mode: str) -> None:
    client = SpdyConnection(True, merge_data=True)
    server = SpdyConnection(False, max_data_frame=4)
    err, data = open_pair(client, server)
    server.send_data(data, b"abcdefghij")  # 3 frames
    server.send_data(err, b"oops")
    server.send_data(data, b"klmn", fin=True)
    server.ping()
    events = feed_chunks(client, chunked(server.data_to_send(), mode))
    # Whatever the read boundaries, payloads per stream and event order are preserved.
    got: list[tuple[str, int, bytes | bool]] = []
    for event in events:
        if isinstance(event, DataReceived):
            if got and got[-1][0] == "data" and got[-1][1] == event.stream_id:
                prev = got.pop()
                assert isinstance(prev[2], bytes)
                got.append(("data", event.stream_id, prev[2] + event.data))
            else:
                got.append(("data", event.stream_id, event.data))
            if event.fin:
                got.append(("fin", event.stream_id, True))
        else:
            got.append((type(event).__name__, getattr(event, "stream_id", 0), False))
    assert got == [
        ("data", data, b"abcdefghij"),
        ("data", err, b"oops"),
        ("data", data, b"klmn"),
        ("fin", data, True),
        ("StreamEnded", data, False),
        ("PingReceived", 0, False),
    ]
    assert all(type(e.data) is bytes for e in events if isinstance(e, DataReceived))
    if mode == "whole":
        assert [e for e in events if isinstance(e, DataReceived)] == [
            DataReceived(data, b"abcdefghij"),
            DataReceived(err, b"oops"),
            DataReceived(data, b"klmn", True),
        ]
