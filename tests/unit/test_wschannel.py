"""WebSocket v4 channel port-forward (protocols.md §2): real wsproto on both sides, V10, V12."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

import pytest

from service.protocols.websocket import (
    MAX_MESSAGE_PAYLOAD,
    OPCODE_BINARY,
    OPCODE_TEXT,
    V4_BASE64,
    V4_BINARY,
    V4_PROTOCOLS,
    ChannelClient,
    ChannelError,
    ChannelRequestError,
    ChannelServer,
    ConnectionTerminated,
    DataReceived,
    ErrorTextReceived,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    PingAcknowledged,
    RequestReceived,
    TunnelServer,
    WebSocketStateError,
    encode_message,
    parse_ports_query,
    select_subprotocol,
)
from tests.support.splits import SPLIT_MODES, feed
from tests.support.wsraw import ws_frames

TARGET = "/api/v1/namespaces/default/pods/web-0/portforward"


def data_of(events: Sequence[Event], port_index: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.port_index == port_index
    )


def request_for(client: ChannelClient) -> tuple[RequestReceived, bytes]:
    parser = TunnelServer()
    [request] = parser.receive_data(client.initiate())
    assert isinstance(request, RequestReceived)
    return request, parser.trailing_data


def open_pair(
    ports: Sequence[int] = (80, 443), use_base64: bool = False, mode: str = "whole"
) -> tuple[ChannelClient, ChannelServer]:
    client = ChannelClient("apiserver:6443", TARGET, list(ports), base64=use_base64)
    request, trailing = request_for(client)
    server = ChannelServer.from_request(request, trailing_data=trailing)
    events = feed(client.receive_data, server.accept(), mode)
    expected = V4_BASE64 if use_base64 else V4_BINARY
    assert events == [HandshakeAccepted(expected, events[0].headers)]  # type: ignore[union-attr]
    return client, server


# ---------------------------------------------------------------- request helpers


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        ([], ""),
        ([V4_BINARY], V4_BINARY),
        ([V4_BASE64], V4_BASE64),
        (["v5.channel.k8s.io", V4_BINARY], V4_BINARY),
        ([V4_BASE64, V4_BINARY], V4_BASE64),
        (["v5.channel.k8s.io"], None),
        (["channel.k8s.io", "base64.channel.k8s.io"], None),
        (["SPDY/3.1+portforward.k8s.io"], None),
    ],
)
def test_select_subprotocol(offered: list[str], selected: str | None) -> None:
    # The kubelet's choice: no subprotocol at all means binary framing.
    assert select_subprotocol(offered, V4_PROTOCOLS, default="") == selected


@pytest.mark.parametrize(
    ("query", "ports"),
    [
        ("ports=8080", [8080]),
        ("ports=8080&ports=9090", [8080, 9090]),
        ("ports=8080,9090", [8080, 9090]),
        ("ports=80,443&ports=8080", [80, 443, 8080]),
        ("port=8080,9090", [8080, 9090]),  # the kubelet's name, as the API server forwards it
        ("ports=65535&x=1", [65535]),
        ("ports=80%2C443", [80, 443]),
    ],
)
def test_parse_ports_query(query: str, ports: list[int]) -> None:
    assert parse_ports_query(query) == ports


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", 'query parameter "port" is required'),
        ("portz=1", 'query parameter "port" is required'),
        ("ports=", 'unable to parse "" as a port: invalid syntax'),
        ("ports=http", 'unable to parse "http" as a port: invalid syntax'),
        ("ports=80,", 'unable to parse "" as a port: invalid syntax'),
        ("ports=+80", 'unable to parse " 80" as a port: invalid syntax'),
        ("ports=-1", 'unable to parse "-1" as a port: invalid syntax'),
        ("ports=65536", 'unable to parse "65536" as a port: value out of range'),
        ("ports=0", 'port "0" must be > 0'),
    ],
)
def test_parse_ports_query_errors(query: str, message: str) -> None:
    with pytest.raises(ChannelRequestError) as info:
        parse_ports_query(query)
    assert info.value.error_code == 400
    assert info.value.message == message


# ---------------------------------------------------------------- V10: port prefixes


def _after_101(wire: bytes) -> bytes:
    head, sep, rest = wire.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 101 ")
    return rest


@pytest.mark.parametrize(
    ("port", "binary_hex", "b64"),
    [
        (80, ("005000", "015000"), ("0UAA=", "1UAA=")),
        (443, ("00bb01", "01bb01"), ("0uwE=", "1uwE=")),
        (8080, ("00901f", "01901f"), ("0kB8=", "1kB8=")),
    ],
)
def test_v10_prefixes_single_port(
    port: int, binary_hex: tuple[str, str], b64: tuple[str, str]
) -> None:
    client = ChannelClient("h", TARGET, [port])
    request, _ = request_for(client)
    frames = ws_frames(_after_101(ChannelServer([port], V4_BINARY, request).accept()))
    assert frames == [(True, OPCODE_BINARY, False, bytes.fromhex(h)) for h in binary_hex]
    client = ChannelClient("h", TARGET, [port], base64=True)
    request, _ = request_for(client)
    frames = ws_frames(_after_101(ChannelServer([port], V4_BASE64, request).accept()))
    assert frames == [(True, OPCODE_TEXT, False, t.encode()) for t in b64]


def test_v10_second_port_uses_channels_2_and_3() -> None:
    client = ChannelClient("h", TARGET, [80, 443])
    request, _ = request_for(client)
    assert request.path == TARGET + "?ports=80,443"
    accept = ChannelServer.from_request(request).accept()
    assert b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n" in accept
    payloads = [f[3] for f in ws_frames(_after_101(accept))]
    assert payloads == [bytes.fromhex(h) for h in ("005000", "015000", "02bb01", "03bb01")]


def test_v10_base64_hello_on_channel_0() -> None:
    _, server = open_pair([8080], use_base64=True)
    assert ws_frames(server.send_data(0, b"hello")) == [(True, OPCODE_TEXT, False, b"0aGVsbG8=")]


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("use_base64", [False, True])
def test_client_strips_and_checks_every_prefix(mode: str, use_base64: bool) -> None:
    client = ChannelClient("h", TARGET, [80, 443], base64=use_base64)
    request, _ = request_for(client)
    server = ChannelServer.from_request(request)
    wire = server.accept() + server.send_data(1, b"to-443") + server.send_data(0, b"to-80")
    events = feed(client.receive_data, wire, mode)
    assert isinstance(events[0], HandshakeAccepted)
    assert data_of(events, 0) == b"to-80"
    assert data_of(events, 1) == b"to-443"
    assert not any(isinstance(e, ErrorTextReceived) for e in events)


def _hand_made_client(
    ports: Sequence[int], use_base64: bool = False
) -> tuple[ChannelClient, ChannelServer]:
    """A client that is open, and a server whose accept() bytes were not delivered."""
    client = ChannelClient("h", TARGET, list(ports), base64=use_base64)
    request, _ = request_for(client)
    server = ChannelServer.from_request(request)
    head = server.accept().partition(b"\r\n\r\n")
    client.receive_data(head[0] + head[1])
    return client, server


@pytest.mark.parametrize(
    "prefix",
    [
        bytes.fromhex("005100"),
        bytes.fromhex("0050"),
        bytes.fromhex("00500000"),
        bytes.fromhex("00"),
    ],
)
def test_wrong_port_prefix_is_a_typed_error(prefix: bytes) -> None:
    client, _ = _hand_made_client([80])
    with pytest.raises(ChannelError) as info:
        client.receive_data(encode_message(OPCODE_BINARY, prefix, mask=False))
    assert "port prefix" in info.value.message
    assert client.data_to_send()  # our Close frame
    with pytest.raises(ChannelError):
        client.receive_data(b"")


def test_wrong_error_channel_prefix_in_base64_is_a_typed_error() -> None:
    client, _ = _hand_made_client([80], use_base64=True)
    client.receive_data(encode_message(OPCODE_TEXT, b"0UAA=", mask=False))
    with pytest.raises(ChannelError):
        client.receive_data(encode_message(OPCODE_TEXT, b"1uwE=", mask=False))


def test_prefix_split_over_frames_of_one_message() -> None:
    client, _ = _hand_made_client([80])
    # A fragmented message (two frames) still forms one message for the client.
    first = bytes((0x02, 2)) + b"\x00\x50"  # BINARY, not FIN
    second = bytes((0x80, 1)) + b"\x00"  # CONTINUATION, FIN
    assert client.receive_data(first + second) == []
    client.receive_data(encode_message(OPCODE_BINARY, b"\x01\x50\x00", mask=False))
    events = client.receive_data(encode_message(OPCODE_BINARY, b"\x00data", mask=False))
    assert events == [DataReceived(b"data", 0)]


# ---------------------------------------------------------------- data, errors, channels


@pytest.mark.parametrize("mode", SPLIT_MODES)
@pytest.mark.parametrize("use_base64", [False, True])
def test_data_both_ways(mode: str, use_base64: bool) -> None:
    client, server = open_pair([80, 443], use_base64=use_base64, mode=mode)
    wire = client.send_data(0, b"GET / HTTP/1.0\r\n\r\n") + client.send_data(1, b"\x16\x03\x01")
    events = feed(server.receive_data, wire, mode)
    assert data_of(events, 0) == b"GET / HTTP/1.0\r\n\r\n"
    assert data_of(events, 1) == b"\x16\x03\x01"
    answer = server.send_data(0, b"HTTP/1.0 200 OK\r\n\r\n") + server.send_error(
        1, "error forwarding port 443 to pod web-0"
    )
    events = feed(client.receive_data, answer, mode)
    assert data_of(events, 0) == b"HTTP/1.0 200 OK\r\n\r\n"
    assert [e for e in events if isinstance(e, ErrorTextReceived)] == [
        ErrorTextReceived(1, "error forwarding port 443 to pod web-0")
    ]


@pytest.mark.parametrize("use_base64", [False, True])
def test_large_sends_are_unfragmented_messages_of_at_most_32k_plus_1(use_base64: bool) -> None:
    client, server = open_pair([80], use_base64=use_base64)
    data = os.urandom(100_000)
    for sender, receiver, masked in ((client, server, True), (server, client, False)):
        wire = sender.send_data(0, data)
        frames = ws_frames(wire)
        assert len(frames) == 4
        for fin, opcode, is_masked, payload in frames:
            assert fin and is_masked == masked
            assert opcode == (OPCODE_TEXT if use_base64 else OPCODE_BINARY)
            raw = base64.b64decode(payload[1:]) if use_base64 else payload[1:]
            assert len(raw) <= MAX_MESSAGE_PAYLOAD
            assert payload[:1] == (b"0" if use_base64 else b"\x00")
        assert data_of(receiver.receive_data(wire), 0) == data
    assert client.send_data(0, b"") == b""


def test_memoryview_payloads() -> None:
    client, server = open_pair([80])
    view = memoryview(b"abcdef")[1:4]
    assert data_of(server.receive_data(client.send_data(0, view)), 0) == b"bcd"
    assert data_of(client.receive_data(server.send_data(0, view)), 0) == b"bcd"


def test_unknown_channels_are_ignored_by_both_roles() -> None:
    client, server = open_pair([80, 443])
    # Server side: channel 9 (port index 4), channel 1 (error channel of port 0), ch 255.
    wire = b"".join(
        encode_message(OPCODE_BINARY, bytes((ch,)) + b"junk", mask=True) for ch in (9, 1, 3, 255)
    )
    wire += client.send_data(1, b"kept")
    assert server.receive_data(wire) == [DataReceived(b"kept", 1)]
    # Client side: channels past the ports, even and odd.
    wire = b"".join(
        encode_message(OPCODE_BINARY, bytes((ch,)) + b"junk", mask=False) for ch in (4, 5, 200)
    )
    wire += server.send_data(0, b"kept")
    assert client.receive_data(wire) == [DataReceived(b"kept", 0)]


def test_empty_and_unknown_messages_in_base64_mode() -> None:
    client, server = open_pair([80], use_base64=True)
    wire = encode_message(OPCODE_TEXT, b"", mask=True) + encode_message(
        OPCODE_TEXT, b"9aGk=", mask=True
    )
    wire += encode_message(OPCODE_TEXT, b"!aGk=", mask=True) + encode_message(
        OPCODE_TEXT, b"0", mask=True
    )
    wire += client.send_data(0, b"hi")
    assert server.receive_data(wire) == [DataReceived(b"hi", 0)]


def test_invalid_base64_is_a_typed_error() -> None:
    _, server = open_pair([80], use_base64=True)
    with pytest.raises(ChannelError) as info:
        server.receive_data(encode_message(OPCODE_TEXT, b"0!!!!", mask=True))
    assert info.value.error_code == 1007


def test_unmasked_client_frame_is_a_typed_error() -> None:
    client, server = open_pair([80])
    with pytest.raises(ChannelError) as info:
        server.receive_data(encode_message(OPCODE_BINARY, b"\x00x", mask=False))
    assert info.value.error_code == 1002
    assert client.receive_data(server.data_to_send()) == [
        ConnectionTerminated(1002, info.value.message)
    ]


def test_oversized_collected_message_is_a_typed_error() -> None:
    client = ChannelClient("h", TARGET, [80], base64=True, max_message=64)
    request, _ = request_for(client)
    server = ChannelServer.from_request(request, max_message=64)
    client.receive_data(server.accept())
    with pytest.raises(ChannelError) as info:
        server.receive_data(client.send_data(0, b"x" * 100))
    assert info.value.error_code == 1009


def test_ping_pong_and_close() -> None:
    client, server = open_pair([80])
    assert server.receive_data(client.ping(b"k")) == []
    assert client.receive_data(server.data_to_send()) == [PingAcknowledged(b"k")]
    # The kubelet closes with 1000 once every port has finished.
    [closed] = client.receive_data(server.close())
    assert isinstance(closed, ConnectionTerminated)
    assert closed == ConnectionTerminated(1000, "") and closed.clean
    assert server.receive_data(client.data_to_send()) == [ConnectionTerminated(1000, "")]
    with pytest.raises(WebSocketStateError):
        client.send_data(0, b"late")
    client2, _ = open_pair([80])
    assert client2.receive_data(b"") == [ConnectionTerminated(1006, "")]


def test_send_error_and_port_index_bounds() -> None:
    client, server = open_pair([80])
    with pytest.raises(IndexError):
        server.send_error(1, "x")
    with pytest.raises(IndexError):
        client.send_data(-1, b"x")
    with pytest.raises(ValueError, match="at least one port"):
        ChannelClient("h", TARGET, [])
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        ChannelClient("h", TARGET, [0])


def test_server_without_subprotocol_means_binary() -> None:
    client = ChannelClient("h", TARGET, [80], base64=True)
    request, _ = request_for(client)
    server = ChannelServer([80], "", request)
    accept = server.accept()
    assert b"Sec-WebSocket-Protocol" not in accept
    events = client.receive_data(accept + server.send_data(0, b"bin"))
    assert events == [HandshakeAccepted("", events[0].headers), DataReceived(b"bin", 0)]  # type: ignore[union-attr]
    assert not client.base64


def test_client_frames_sent_before_the_101_are_parsed_after_accept() -> None:
    client = ChannelClient("h", TARGET, [80])
    parser = TunnelServer()
    [request] = parser.receive_data(client.initiate())
    assert isinstance(request, RequestReceived)
    server = ChannelServer.from_request(request, trailing_data=parser.trailing_data)
    client.receive_data(server.accept())
    early = client.send_data(0, b"early")
    server2 = ChannelServer.from_request(request, trailing_data=early)
    assert server2.receive_data(client.send_data(0, b"-mid")) == []  # before the 101: kept
    server2.accept()
    assert data_of(server2.receive_data(client.send_data(0, b"!")), 0) == b"early-mid!"


# ---------------------------------------------------------------- V12 negatives


def _request(path: str, protocols: Sequence[str]) -> tuple[ChannelClient, RequestReceived]:
    client = ChannelClient("h", TARGET, [80])
    raw = client.initiate()
    raw = raw.replace(f"GET {TARGET}?ports=80 ".encode(), f"GET {path} ".encode())
    raw = raw.replace(b"Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n", b"")
    if protocols:
        raw = raw.replace(
            b"\r\n\r\n", f"\r\nSec-WebSocket-Protocol: {', '.join(protocols)}\r\n\r\n".encode()
        )
    [request] = TunnelServer().receive_data(raw)
    assert isinstance(request, RequestReceived)
    return client, request


def test_v12_v4_without_ports_is_400() -> None:
    client, request = _request(TARGET, [V4_BINARY])
    with pytest.raises(ChannelRequestError) as info:
        ChannelServer.from_request(request)
    assert (info.value.error_code, info.value.message) == (
        400,
        'query parameter "port" is required',
    )
    answer = TunnelServer(request).reject(info.value.error_code, info.value.message.encode())
    [rejected] = client.receive_data(answer)
    assert isinstance(rejected, HandshakeRejected)
    assert (rejected.status, rejected.body) == (400, b'query parameter "port" is required')


def test_v12_only_v5_is_403() -> None:
    client, request = _request(TARGET + "?ports=80", ["v5.channel.k8s.io"])
    with pytest.raises(ChannelRequestError) as info:
        ChannelServer.from_request(request)
    assert info.value.error_code == 403
    [rejected] = client.receive_data(TunnelServer(request).reject(403))
    assert rejected == HandshakeRejected(
        403, "Forbidden", (("content-length", "0"), ("connection", "close")), b""
    )


def test_no_subprotocol_offered_selects_binary() -> None:
    _, request = _request(TARGET + "?ports=80&ports=443", [])
    server = ChannelServer.from_request(request)
    assert (server.selected, server.base64, server.ports) == ("", False, (80, 443))


def test_101_with_a_subprotocol_not_offered_is_rejected() -> None:
    client = ChannelClient("h", TARGET, [80])
    request, _ = request_for(client)
    accept = ChannelServer.from_request(request).accept().replace(b"v4.channel", b"v5.channel")
    events = client.receive_data(accept)
    assert len(events) == 1 and isinstance(events[0], HandshakeRejected)
    assert events[0].status == 101
