"""WebSocket-tunnelled SPDY (protocols.md §3): real wsproto/h11 on both sides, V11, V12."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

import pytest
from wsproto.frame_protocol import XorMaskerSimple

from service.protocols.spdy import Event as SpdyEvent
from service.protocols.spdy import SpdyConnection
from service.protocols.websocket import (
    OPCODE_BINARY,
    OPCODE_TEXT,
    SPDY_TUNNEL_PROTOCOL,
    ClientHandshake,
    ConnectionTerminated,
    DataReceived,
    Event,
    HandshakeAccepted,
    HandshakeError,
    HandshakeRejected,
    PingAcknowledged,
    RequestReceived,
    ServerHandshake,
    State,
    TunnelClient,
    TunnelError,
    TunnelServer,
    WebSocketStateError,
    accept_response,
    encode_message,
    mask_payload,
    parse_upgrade_request,
    select_subprotocol,
)
from tests.support.splits import SPLIT_MODES, chunks_of, feed
from tests.support.wsraw import ws_frames

from .spdy_vectors import V5_SYN_STREAM_1, V5_SYN_STREAM_3, V6_SYN_REPLY_1, V6_SYN_REPLY_3, V8

TARGET = "/api/v1/namespaces/default/pods/web-0/portforward"


def stream_of(events: Sequence[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def open_pair(mode: str = "whole") -> tuple[TunnelClient, TunnelServer]:
    client = TunnelClient("apiserver:6443", TARGET, [("Authorization", "Bearer t0ken")])
    server = TunnelServer()
    events = feed(server.receive_data, client.initiate(), mode)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    events = feed(client.receive_data, server.accept(), mode)
    assert events and isinstance(events[0], HandshakeAccepted)
    return client, server


# ---------------------------------------------------------------- handshake


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_handshake_in_memory(mode: str) -> None:
    client = TunnelClient("apiserver:6443", TARGET, [("Authorization", "Bearer t0ken")])
    request = client.initiate()
    assert request.startswith(f"GET {TARGET} HTTP/1.1\r\n".encode())
    assert b"\r\nSec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n" in request
    server = TunnelServer()
    [requested] = feed(server.receive_data, request, mode)
    assert isinstance(requested, RequestReceived)
    assert requested.path == TARGET
    assert requested.subprotocols == (SPDY_TUNNEL_PROTOCOL,)
    assert requested.header("authorization") == "Bearer t0ken"
    assert requested.header("host") == "apiserver:6443"
    # The 101 and the first frames arrive in the same reads.
    wire = server.accept() + server.send_bytes(b"\x80\x03") + server.send_bytes(b"\x00\x02")
    events = feed(client.receive_data, wire, mode)
    assert events[0] == HandshakeAccepted(SPDY_TUNNEL_PROTOCOL, events[0].headers)  # type: ignore[union-attr]
    assert stream_of(events) == b"\x80\x03\x00\x02"
    assert client.is_open and server.is_open
    assert client.subprotocol == server.subprotocol == SPDY_TUNNEL_PROTOCOL


def test_client_frames_pipelined_with_the_request_are_parsed_after_accept() -> None:
    client = TunnelClient("h", TARGET)
    server = TunnelServer()
    request = client.initiate()
    assert server.receive_data(request[:-1]) == []
    [requested] = server.receive_data(request[-1:])
    assert isinstance(requested, RequestReceived)
    client.receive_data(server.accept())
    late = TunnelServer()
    late.receive_data(TunnelClient("h", TARGET).initiate())
    assert late.receive_data(b"") == []  # EOF while the caller decides: the caller's business
    # A request parsed elsewhere, with the bytes that followed it.
    c2 = TunnelClient("h", TARGET)
    raw = c2.initiate()
    head, _, _ = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    parsed = parse_upgrade_request(method, target, headers)  # type: ignore[arg-type]
    server2 = TunnelServer(parsed, trailing_data=b"")
    accepted = server2.accept()
    assert isinstance(c2.receive_data(accepted)[0], HandshakeAccepted)
    early = c2.send_bytes(b"early")
    server3 = TunnelServer(parsed, trailing_data=early)
    server3.accept()
    assert stream_of(server3.receive_data(c2.send_bytes(b"-late"))) == b"early-late"


def test_frames_before_the_101_are_delivered_before_an_eof() -> None:
    client = TunnelClient("h", TARGET)
    server = TunnelServer()
    server.receive_data(client.initiate())
    early = encode_message(OPCODE_BINARY, b"early", mask=True)  # before the 101 came
    assert server.receive_data(early) == []
    client.receive_data(server.accept())
    assert server.receive_data(b"") == [DataReceived(b"early"), ConnectionTerminated(1006, "")]


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_stream_bytes_own_their_memory_when_fed_from_a_reused_buffer(mode: str) -> None:
    # A BufferedProtocol reads every chunk into the same buffer: nothing handed out may
    # point into it.
    client, server = open_pair()
    payloads = [os.urandom(n) for n in (1, 70000, 3, 125, 126, 65536, 9)]
    wire = b"".join(server.send_bytes(p) for p in payloads) + server.ping(b"p")
    buffer = bytearray(len(wire))
    events: list[Event] = []
    for chunk in chunks_of(wire, mode):
        view = memoryview(buffer)[: len(chunk)]
        view[:] = chunk
        events += client.receive_data(view)
        view[:] = bytes(len(chunk))  # the next read overwrites it
    assert stream_of(events) == b"".join(payloads)
    assert all(type(e.data) is bytes for e in events if isinstance(e, DataReceived))


def test_extra_headers_and_subprotocol_offer() -> None:
    client = TunnelClient("h:1", "/x", [("X-Forwarded-For", "1.2.3.4")])
    [req] = TunnelServer().receive_data(client.initiate())
    assert isinstance(req, RequestReceived)
    assert req.header("x-forwarded-for") == "1.2.3.4"
    assert req.header("sec-websocket-version") == "13"
    assert req.header("upgrade") == "websocket"


def test_state_errors() -> None:
    client = TunnelClient("h", "/")
    with pytest.raises(WebSocketStateError):
        client.receive_data(b"HTTP/1.1 101 x\r\n\r\n")
    with pytest.raises(WebSocketStateError):
        client.send_bytes(b"x")
    client.initiate()
    with pytest.raises(WebSocketStateError):
        client.initiate()
    server = TunnelServer()
    with pytest.raises(WebSocketStateError):
        server.accept()
    server.receive_data(TunnelClient("h", "/").initiate())
    with pytest.raises(WebSocketStateError):
        server.accept("v4.channel.k8s.io")  # not offered
    assert client.close() == b""


# ---------------------------------------------------------------- V11: reassembly


def _go_syn_stream_messages(frame: bytes) -> list[bytes]:
    """How a Go client writes a SYN_STREAM: 2, 2, 4, 4, 4, 1, 1 and n bytes (§3)."""
    sizes = [2, 2, 4, 4, 4, 1, 1]
    out, pos = [], 0
    for size in sizes:
        out.append(frame[pos : pos + size])
        pos += size
    out.append(frame[pos:])
    return out


def _go_data_messages(frame: bytes) -> list[bytes]:
    return [frame[:4], frame[4:8], frame[8:]]


CLIENT_SPDY = (
    bytes.fromhex(V5_SYN_STREAM_1)
    + bytes.fromhex(V8["data_s1_fin_empty"])
    + bytes.fromhex(V5_SYN_STREAM_3)
    + bytes.fromhex(V8["data_s3_hello"])
    + bytes.fromhex(V8["ping_1"])
    + bytes.fromhex(V8["rst_s7_cancel"])
)
SERVER_SPDY = (
    bytes.fromhex(V6_SYN_REPLY_1)
    + bytes.fromhex(V6_SYN_REPLY_3)
    + bytes.fromhex(V8["settings_initial_window"])
    + bytes.fromhex(V8["data_s3_hello"])
    + bytes.fromhex(V8["ping_1"])
    + bytes.fromhex(V8["goaway_0_ok"])
)


def _spdy_events(client_side: bool, chunks: Sequence[bytes]) -> list[SpdyEvent]:
    conn = SpdyConnection(client_side=client_side)
    if client_side:  # the streams that SERVER_SPDY replies to
        conn.open_stream([("streamtype", "error"), ("port", "8080"), ("requestid", "0")])
        conn.open_stream([("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
    events: list[SpdyEvent] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events


def _random_messages(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice([0, 1, 2, 3, 5, 8, 13, 40, 200])
        out.append(data[pos : pos + size])
        pos += size
    return out


def _go_client_messages() -> list[bytes]:
    """CLIENT_SPDY as a Go client writes it: one message per frame field."""
    fin1 = bytes.fromhex(V8["data_s1_fin_empty"])
    rest = bytes.fromhex(V8["ping_1"]) + bytes.fromhex(V8["rst_s7_cancel"])
    return [
        *_go_syn_stream_messages(bytes.fromhex(V5_SYN_STREAM_1)),
        *_go_data_messages(fin1),
        *_go_syn_stream_messages(bytes.fromhex(V5_SYN_STREAM_3)),
        *_go_data_messages(bytes.fromhex(V8["data_s3_hello"])),
        rest[:4],
        rest[4:],
    ]


def test_go_message_pattern_is_the_v5_frame() -> None:
    messages = _go_syn_stream_messages(bytes.fromhex(V5_SYN_STREAM_1))
    assert [len(m) for m in messages][:7] == [2, 2, 4, 4, 4, 1, 1]
    assert b"".join(_go_client_messages()) == CLIENT_SPDY


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("split", ["go", *(f"random-{seed}" for seed in range(4))])
def test_v11_client_frames_split_across_messages_reassemble(mode: str, split: str) -> None:
    client, server = open_pair()
    if split == "go":
        messages = _go_client_messages()
    else:
        messages = _random_messages(CLIENT_SPDY, int(split.split("-")[1]))
    wire = b"".join(client.send_bytes(m) for m in messages)
    events = feed(server.receive_data, wire, mode)
    reassembled = stream_of(events)
    assert reassembled == CLIENT_SPDY
    # The SPDY parser sees the same frames as from the unsplit stream.
    expected = _spdy_events(False, [CLIENT_SPDY])
    assert [type(e).__name__ for e in expected] == [
        "StreamOpened",
        "DataReceived",
        "StreamEnded",
        "StreamOpened",
        "DataReceived",
        "PingReceived",
    ]
    assert _spdy_events(False, [reassembled]) == expected
    assert _spdy_events(False, [e.data for e in events if isinstance(e, DataReceived)]) == expected
    assert not any(isinstance(e, DataReceived) and not e.data for e in events)


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_v11_server_frames_split_across_messages_reassemble(mode: str) -> None:
    client, server = open_pair()
    # The API server relays kubelet bytes in arbitrary chunks.
    wire = b"".join(server.send_bytes(m) for m in _random_messages(SERVER_SPDY, 7))
    events = feed(client.receive_data, wire, mode)
    reassembled = stream_of(events)
    assert reassembled == SERVER_SPDY
    expected = _spdy_events(True, [SERVER_SPDY])
    assert [type(e).__name__ for e in expected] == [
        "StreamReplied",
        "StreamReplied",
        "DataReceived",
        "PingAcknowledged",
        "ConnectionTerminated",
    ]
    assert _spdy_events(True, [reassembled]) == expected
    assert _spdy_events(True, [e.data for e in events if isinstance(e, DataReceived)]) == expected


def test_spdy_session_through_the_tunnel() -> None:
    client, server = open_pair()
    c_spdy, s_spdy = SpdyConnection(client_side=True), SpdyConnection(client_side=False)
    sid = c_spdy.open_stream([("streamtype", "data"), ("port", "80"), ("requestid", "0")])
    c_spdy.send_data(sid, b"payload" * 1000)
    s_events = s_spdy.receive_data(
        stream_of(server.receive_data(client.send_chunks(c_spdy.chunks_to_send())))
    )
    assert [type(e).__name__ for e in s_events] == ["StreamOpened", "DataReceived"]
    s_spdy.send_reply(sid)
    s_spdy.send_data(sid, b"answer", fin=True)
    c_events = c_spdy.receive_data(
        stream_of(client.receive_data(server.send_chunks(s_spdy.chunks_to_send())))
    )
    assert [type(e).__name__ for e in c_events] == ["StreamReplied", "DataReceived", "StreamEnded"]


def test_zero_length_binary_messages_are_accepted() -> None:
    client, server = open_pair()
    wire = client.send_bytes(b"") + client.send_bytes(b"ab") + client.send_bytes(b"")
    assert feed(server.receive_data, wire) == [DataReceived(b"ab")]
    assert server.receive_data(client.send_bytes(b"")) == []
    assert client.receive_data(server.send_bytes(b"")) == []


def test_send_chunks_is_one_message_of_the_joined_chunks() -> None:
    client, server = open_pair()
    chunks: list[bytes | memoryview] = [
        b"\x00\x00\x00\x03",
        memoryview(b"\x00\x00\x00\x05"),
        b"hello",
    ]
    wire = server.send_chunks(chunks)
    assert wire == server.send_bytes(b"".join(chunks))
    assert ws_frames(wire) == [(True, OPCODE_BINARY, False, b"".join(chunks))]
    masked = client.send_chunks(chunks)
    [(fin, opcode, is_masked, payload)] = ws_frames(masked)
    assert (fin, opcode, is_masked, payload) == (True, OPCODE_BINARY, True, b"".join(chunks))
    big = [os.urandom(70000), os.urandom(3)]
    assert stream_of(server.receive_data(client.send_chunks(big))) == b"".join(big)
    assert stream_of(client.receive_data(server.send_chunks(big))) == b"".join(big)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "size", [0, 1, 3, 4, 5, 125, 126, 127, 4095, 4096, 4097, 8195, 65535, 65536, 70001]
)
def test_mask_payload_matches_wsproto_and_round_trips(size: int) -> None:
    key = os.urandom(4)
    data = os.urandom(size)
    masked = mask_payload(key, data)
    assert masked == bytes(XorMaskerSimple(key).process(bytearray(data)))
    assert mask_payload(key, masked) == data
    assert mask_payload(key, memoryview(data)) == masked


def test_client_frames_are_masked_and_server_frames_are_not() -> None:
    client, server = open_pair()
    [(fin, opcode, masked, payload)] = ws_frames(client.send_bytes(b"secret"))
    assert (fin, opcode, masked, payload) == (True, OPCODE_BINARY, True, b"secret")
    [(fin, opcode, masked, payload)] = ws_frames(server.send_bytes(b"plain"))
    assert (fin, opcode, masked, payload) == (True, OPCODE_BINARY, False, b"plain")
    for size in (0, 125, 126, 65535, 65536, 100000):
        data = os.urandom(size)
        assert stream_of(server.receive_data(client.send_bytes(data))) == data
        assert stream_of(client.receive_data(server.send_bytes(data))) == data


def test_unmasked_client_frame_is_a_typed_error() -> None:
    client, server = open_pair()
    with pytest.raises(TunnelError) as info:
        server.receive_data(encode_message(OPCODE_BINARY, b"x", mask=False))
    assert info.value.error_code == 1002
    # Our Close(1002) is queued; the connection stays failed.
    assert client.receive_data(server.data_to_send()) == [
        ConnectionTerminated(1002, info.value.message)
    ]
    with pytest.raises(TunnelError):
        server.receive_data(b"")


def test_masked_server_frame_is_a_typed_error() -> None:
    client, _ = open_pair()
    with pytest.raises(TunnelError) as info:
        client.receive_data(encode_message(OPCODE_BINARY, b"x", mask=True))
    assert info.value.error_code == 1002


# ---------------------------------------------------------------- text, ping, close


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_text_message_in_the_tunnel_is_an_error(mode: str) -> None:
    client, server = open_pair()
    with pytest.raises(TunnelError) as info:
        feed(
            server.receive_data,
            client.send_bytes(b"ok") + encode_message(OPCODE_TEXT, b"hi", mask=True),
            mode,
        )
    assert info.value.message == "invalid message type received"
    assert info.value.error_code == 1003
    assert server.error is info.value
    events = client.receive_data(server.data_to_send())
    assert events == [ConnectionTerminated(1003, "invalid message type received")]
    with pytest.raises(TunnelError):
        server.receive_data(b"")
    # Client side too.
    client2, _server2 = open_pair()
    with pytest.raises(TunnelError, match="invalid message type received"):
        client2.receive_data(encode_message(OPCODE_TEXT, b"hi", mask=False))


def test_ping_is_answered_automatically_both_ways() -> None:
    client, server = open_pair()
    assert server.receive_data(client.ping(b"c1")) == []
    assert client.receive_data(server.data_to_send()) == [PingAcknowledged(b"c1")]
    assert client.receive_data(server.ping(b"s1")) == []
    assert server.receive_data(client.data_to_send()) == [PingAcknowledged(b"s1")]
    assert client.data_to_send() == b""


def test_bytes_around_a_pong_keep_their_order() -> None:
    client, server = open_pair()
    server.receive_data(client.ping())
    wire = server.send_bytes(b"a") + server.data_to_send() + server.send_bytes(b"b")
    assert client.receive_data(wire) == [
        DataReceived(b"a"),
        PingAcknowledged(b""),
        DataReceived(b"b"),
    ]


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_close_1000_is_eof_and_is_echoed(mode: str) -> None:
    client, server = open_pair()
    events = feed(server.receive_data, client.send_bytes(b"last") + client.close(), mode)
    assert stream_of(events) == b"last"
    assert events[-1] == ConnectionTerminated(1000, "")
    assert all(isinstance(e, DataReceived) for e in events[:-1])
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].clean
    echo = server.data_to_send()
    assert ws_frames(echo)[0][1] == 0x8
    assert client.receive_data(echo) == [ConnectionTerminated(1000, "")]
    assert server.receive_data(b"more") == []  # closed: ignored
    with pytest.raises(WebSocketStateError):
        server.send_bytes(b"x")


def test_one_state_through_the_close_handshake() -> None:
    client, server = open_pair()
    assert client.state is server.state is State.OPEN
    close = client.close()
    assert client.state is State.CLOSING and not client.is_open
    assert client.close() == b""  # one Close only
    with pytest.raises(WebSocketStateError):
        client.send_bytes(b"x")
    # After our Close the peer's data is still read, and its pings are not answered.
    assert client.receive_data(server.send_bytes(b"tail") + server.ping(b"p")) == [
        DataReceived(b"tail")
    ]
    assert client.data_to_send() == b""
    assert server.receive_data(close) == [ConnectionTerminated(1000, "")]
    assert server.state is State.CLOSED
    assert client.receive_data(server.data_to_send()) == [ConnectionTerminated(1000, "")]
    assert client.state is State.CLOSED
    assert client.receive_data(b"") == []  # the EOF after a closing handshake: nothing more


def test_a_violation_fails_the_endpoint_for_good() -> None:
    client, server = open_pair()
    with pytest.raises(TunnelError) as info:
        server.receive_data(encode_message(OPCODE_BINARY, b"x", mask=False))
    assert server.state is State.FAILED and server.error is info.value
    with pytest.raises(TunnelError) as again:
        server.receive_data(client.send_bytes(b"y"))
    assert again.value is info.value
    assert server.close() == b""  # its Close(1002) is already queued
    assert ws_frames(server.data_to_send())[0][1] == 0x8


def test_handshake_helpers_on_their_own() -> None:
    client = ClientHandshake("h:1", TARGET, [SPDY_TUNNEL_PROTOCOL, "other"], [("X-A", "1")])
    server = ServerHandshake()
    request = server.receive_data(client.request() + b"early")
    assert isinstance(request, RequestReceived)
    assert request.subprotocols == (SPDY_TUNNEL_PROTOCOL, "other")
    assert server.trailing_data == b"early"
    assert select_subprotocol(request.subprotocols, ["other"]) == "other"
    assert select_subprotocol(request.subprotocols, ["v4.channel.k8s.io"]) is None
    assert select_subprotocol((), ["other"], default="") == ""
    accepted = client.receive_data(accept_response(request, "other") + b"\x82\x00")
    assert isinstance(accepted, HandshakeAccepted) and accepted.subprotocol == "other"
    assert client.trailing_data == b"\x82\x00"


def test_other_close_codes_are_errors_and_eof_is_1006() -> None:
    client, server = open_pair()
    [closed] = client.receive_data(server.close(1011, "kubelet went away"))
    assert isinstance(closed, ConnectionTerminated)
    assert closed == ConnectionTerminated(1011, "kubelet went away") and not closed.clean
    client2, server2 = open_pair()
    assert client2.receive_data(b"") == [ConnectionTerminated(1006, "")]
    assert server2.receive_data(b"") == [ConnectionTerminated(1006, "")]


# ---------------------------------------------------------------- V12 and fallback


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("status", [400, 403, 404, 500])
def test_non_101_is_rejected_with_status_and_body(mode: str, status: int) -> None:
    client = TunnelClient("h", TARGET)
    server = TunnelServer()
    server.receive_data(client.initiate())
    body = b'{"kind":"Status","message":"nope"}'
    events = feed(client.receive_data, server.reject(status, body), mode)
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, HandshakeRejected)
    assert (rejected.status, rejected.body) == (status, body)
    assert rejected.reason  # the reason phrase, e.g. "Forbidden"
    assert ("content-length", str(len(body))) in rejected.headers
    assert client.receive_data(b"trailing junk") == []


def test_rejection_body_is_bounded_and_close_delimited_bodies_work() -> None:
    client = TunnelClient("h", TARGET, max_reject_body=8)
    client.initiate()
    wire = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\n" + b"x" * 20
    assert client.receive_data(wire) == [
        HandshakeRejected(403, "Forbidden", (("content-length", "100"),), b"x" * 8)
    ]
    client = TunnelClient("h", TARGET)
    client.initiate()
    assert client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\nno port") == []
    [rejected] = client.receive_data(b"")  # EOF ends a close-delimited body
    assert rejected == HandshakeRejected(400, "Bad Request", (), b"no port")
    client = TunnelClient("h", TARGET)
    client.initiate()
    assert client.receive_data(b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\nabc") == []
    assert client.receive_data(b"") == [
        HandshakeRejected(500, "Oops", (("content-length", "10"),), b"abc")
    ]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda r: r.replace(b"Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n", b""),
            "None",
        ),
        (
            lambda r: r.replace(b"SPDY/3.1+portforward.k8s.io", b"v4.channel.k8s.io"),
            "not offered",
        ),
        (lambda r: r.replace(b"Sec-WebSocket-Accept: ", b"Sec-WebSocket-Accept: x"), "Accept"),
        (lambda r: r.replace(b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n"), "Upgrade"),
        (
            lambda r: r.replace(
                b"Connection: Upgrade\r\n",
                b"Connection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
            ),
            "extension",
        ),
    ],
)
def test_bad_101_is_a_fallback_rejection(mutate: Callable[[bytes], bytes], reason: str) -> None:
    client = TunnelClient("h", TARGET)
    server = TunnelServer()
    server.receive_data(client.initiate())
    response = mutate(server.accept())
    events = client.receive_data(response + b"\x82\x00")
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.status == 101 and reason in rejected.reason
    assert not client.is_open
    assert client.receive_data(b"more") == []


def test_malformed_response_and_early_eof_are_errors_not_fallbacks() -> None:
    client = TunnelClient("h", TARGET)
    client.initiate()
    with pytest.raises(TunnelError):
        client.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")
    client = TunnelClient("h", TARGET)
    client.initiate()
    with pytest.raises(TunnelError):
        client.receive_data(b"")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
            405,
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
            426,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            400,
        ),
        (b"\x00\x01garbage\r\n\r\n", 400),
    ],
)
def test_invalid_upgrade_requests_raise_handshake_error(request_bytes: bytes, status: int) -> None:
    server = TunnelServer()
    with pytest.raises(HandshakeError) as info:
        server.receive_data(request_bytes)
    assert info.value.error_code == status
    answer = server.reject(info.value.error_code, info.value.message.encode(), info.value.headers)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer


def test_server_reject_after_request() -> None:
    client = TunnelClient("h", TARGET)
    server = TunnelServer()
    server.receive_data(client.initiate())
    answer = server.reject(403)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert client.receive_data(answer) == [
        HandshakeRejected(403, "Forbidden", (("content-length", "0"), ("connection", "close")), b"")
    ]
    with pytest.raises(WebSocketStateError):
        server.accept()


def test_response_headers_cannot_inject_lines() -> None:
    server = TunnelServer()
    server.receive_data(TunnelClient("h", TARGET).initiate())
    with pytest.raises(ValueError, match="line break"):
        server.reject(400, b"", [("X-Evil", "a\r\nSet-Cookie: x")])
    with pytest.raises(ValueError, match="line break"):
        server.accept(extra_headers=[("X-Evil\n", "a")])


@pytest.mark.parametrize("size", [0, 1, 3, 4, 4095, 4096, 4097, 100_003])
def test_c_masker_matches_the_int_xor_oracle(size: int) -> None:
    from service.protocols.websocket import frames

    assert frames._c_apply_mask is not None, "websockets' C masker is a declared dependency"
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    key = b"\x01\x80\xfe\x37"
    assert b"".join(frames._masked_pieces(key, data)) == b"".join(
        frames._int_masked_pieces(key, data)
    )
