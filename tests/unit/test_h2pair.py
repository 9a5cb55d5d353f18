"""HTTP/2 stream pairs (protocols.md §5.2): real h2 on both sides, flow control, repr cost."""

from __future__ import annotations

import ast
import copy
import itertools
import os
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import hyperframe.frame
import pytest
from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import DataReceived as H2DataReceived
from h2.events import RequestReceived
from h2.events import StreamEnded as H2StreamEnded
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, H2StreamStateMachine, StreamInputs
from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple

from service.protocols.h2 import (
    CONNECTION_WINDOW,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
    ConnectionTerminated,
    DataReceived,
    Event,
    H2PairClient,
    H2PairServer,
    PairProtocolError,
    PairRequestError,
    PairStateError,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
    WindowOpened,
    parse_pair_path,
    validate_pair_headers,
)
from service.protocols.h2.internals import (
    _REQUEST_FLAGS,
    Connection,
    FastDecoder,
    FrameBufferOverChunks,
    MemoEncoder,
    PairConnectionStateMachine,
    PairStream,
    PairStreamStateMachine,
    _plain_request,
    new_connection,
)
from tests.support.splits import SPLIT_MODES, chunks_of, feed


def connected(mode: str = "whole") -> tuple[H2PairClient, H2PairServer]:
    client, server = H2PairClient("agent.local:10350"), H2PairServer()
    feed(server.receive_data, client.initiate(), mode)
    feed(client.receive_data, server.data_to_send(), mode)
    feed(server.receive_data, client.data_to_send(), mode)  # SETTINGS ACK
    return client, server


def opened_pair(
    mode: str = "whole",
) -> tuple[H2PairClient, H2PairServer, int, int, list[Event]]:
    client, server = connected(mode)
    error_id, data_id = client.open_pair("default", "web-0", 8080, 0)
    events = feed(server.receive_data, client.data_to_send(), mode)
    return client, server, error_id, data_id, events


def data_of(events: Sequence[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


# ---------------------------------------------------------------- connection set-up


def test_initiate_advertises_the_settings_and_connection_window() -> None:
    client = H2PairClient("a")
    wire = client.initiate()
    assert wire.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    observer = H2Connection(H2Configuration(client_side=False))
    observer.initiate_connection()
    events = observer.receive_data(wire)
    settings = next(e for e in events if type(e).__name__ == "RemoteSettingsChanged")
    values = {int(k): v.new_value for k, v in settings.changed_settings.items()}  # type: ignore[attr-defined]
    assert values[0x2] == 0  # ENABLE_PUSH
    assert values[0x4] == STREAM_WINDOW  # INITIAL_WINDOW_SIZE, 4 MiB
    assert values[0x5] == MAX_FRAME_SIZE  # 1 MiB
    update = next(e for e in events if type(e).__name__ == "WindowUpdated")
    assert (update.stream_id, update.delta) == (0, CONNECTION_WINDOW - 65535)  # type: ignore[attr-defined]
    with pytest.raises(PairStateError):
        client.initiate()
    with pytest.raises(PairStateError):
        H2PairClient("a").receive_data(b"")


def test_server_queues_its_preface_at_once() -> None:
    server = H2PairServer(max_concurrent_streams=1024)
    observer = H2Connection(H2Configuration(client_side=True))
    observer.initiate_connection()
    events = observer.receive_data(server.data_to_send())
    settings = next(e for e in events if type(e).__name__ == "RemoteSettingsChanged")
    values = {int(k): v.new_value for k, v in settings.changed_settings.items()}  # type: ignore[attr-defined]
    assert values[0x3] == 1024 and values[0x4] == STREAM_WINDOW
    assert values[0x5] == MAX_FRAME_SIZE
    assert observer.outbound_flow_control_window == CONNECTION_WINDOW
    assert any(type(e).__name__ == "WindowUpdated" for e in events)


# ---------------------------------------------------------------- pairs


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_open_pair(mode: str) -> None:
    client, server, error_id, data_id, events = opened_pair(mode)
    assert (error_id, data_id) == (1, 3)
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert [(e.stream_id, e.end_stream) for e in opened] == [(1, True), (3, False)]
    assert StreamEnded(1) in events and StreamEnded(3) not in events
    error_headers, data_headers = opened[0].headers, opened[1].headers
    assert error_headers[":method"] == "POST"
    assert error_headers[":path"] == "/v1/portforward/default/web-0"
    assert error_headers[":authority"] == "agent.local:10350"
    assert validate_pair_headers(error_headers) == ("error", 8080, "0")
    assert validate_pair_headers(data_headers) == ("data", 8080, "0")
    assert parse_pair_path(data_headers[":path"]) == ("default", "web-0")
    server.respond(error_id, 200)
    server.respond(data_id, 200)
    events = feed(client.receive_data, server.data_to_send(), mode)
    assert [e for e in events if isinstance(e, StreamReplied)] == [
        StreamReplied(1, 200),
        StreamReplied(3, 200),
    ]


def test_extra_headers_and_quoted_path() -> None:
    client, server = connected()
    client.open_pair("ns", "pod/x y", 1, "req-7", [("Authorization", "Bearer t")])
    events = server.receive_data(client.data_to_send())
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert opened[0].headers["authorization"] == "Bearer t"
    assert opened[0].headers[":path"] == "/v1/portforward/ns/pod%2Fx%20y"
    assert parse_pair_path(opened[0].headers[":path"]) == ("ns", "pod/x y")
    assert validate_pair_headers(opened[1].headers) == ("data", 1, "req-7")
    with pytest.raises(ValueError):
        client.open_pair("ns", "p", 0, 1)


@pytest.mark.parametrize("mode", ["whole", "bytewise", "random-1"])
def test_data_both_ways_and_half_close(mode: str) -> None:
    client, server, error_id, data_id, _ = opened_pair(mode)
    server.respond(error_id, 200)
    server.respond(data_id, 200)
    feed(client.receive_data, server.data_to_send(), mode)
    assert client.send_data(data_id, b"ping over h2") == 12
    client.end_stream(data_id)  # local EOF: half-close
    assert not client.can_send(data_id)
    events = feed(server.receive_data, client.data_to_send(), mode)
    assert data_of(events, data_id) == b"ping over h2"
    assert events[-1] == StreamEnded(data_id)
    # The agent may still answer after the client's half-close.
    assert server.can_send(data_id)
    assert server.send_data(data_id, b"pong") == 4
    server.end_stream(data_id)
    server.end_stream(error_id)  # success: the error stream ends with no data
    events = feed(client.receive_data, server.data_to_send(), mode)
    assert data_of(events, data_id) == b"pong"
    assert StreamEnded(data_id) in events and StreamEnded(error_id) in events
    with pytest.raises(PairStateError):
        client.send_data(data_id, b"late")
    with pytest.raises(PairStateError):
        client.end_stream(data_id)


def test_released_streams_are_forgotten_once_closed() -> None:
    """release() drops closed streams at once (h2 would at its next count of the open
    streams) and keeps open ones."""
    client, server, error_id, data_id, _ = opened_pair()
    server.respond(error_id, 200)
    server.respond(data_id, 200)
    client.receive_data(server.data_to_send())
    client.end_stream(data_id)
    server.receive_data(client.data_to_send())
    server.release(error_id, data_id)  # both still open on the agent's side
    assert set(server._conn.streams) == {error_id, data_id}
    server.end_stream(data_id)
    server.end_stream(error_id)
    server.release(error_id, data_id)
    assert server._conn.streams == {}
    client.receive_data(server.data_to_send())
    client.release(error_id, data_id)
    assert client._conn.streams == {}
    # Forgotten as h2 forgets them: how each closed is remembered, sending is refused.
    assert set(client._conn._closed_streams) >= {error_id, data_id}
    assert not client.can_send(data_id)
    with pytest.raises(PairStateError):
        client.end_stream(data_id)
    assert client.can_open_pair()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_flow_control_bounds_sends_and_acknowledge_releases_more(direction: str) -> None:
    client, server, _, data_id, _ = opened_pair()
    server.respond(data_id, 200)
    client.receive_data(server.data_to_send())
    sender: H2PairClient | H2PairServer = client if direction == "up" else server
    receiver: H2PairClient | H2PairServer = server if direction == "up" else client
    payload = os.urandom(3 * STREAM_WINDOW + 12345)
    # Nothing is acknowledged yet: the stream window (4 MiB) caps what is taken.
    taken = sender.send_data(data_id, payload)
    assert taken == STREAM_WINDOW
    assert sender.window(data_id) == 0
    assert sender.send_data(data_id, payload[taken:]) == 0
    received = receiver.receive_data(sender.data_to_send())
    assert len(data_of(received, data_id)) == STREAM_WINDOW
    assert all(
        e.flow_controlled_length == len(e.data) for e in received if isinstance(e, DataReceived)
    )
    # Unacknowledged bytes are not credited back, whatever is read.
    assert sender.receive_data(receiver.data_to_send()) == []
    assert sender.send_data(data_id, payload[taken:]) == 0
    got = data_of(received, data_id)
    pending = [e for e in received if isinstance(e, DataReceived)]
    rounds = 0
    while len(got) < len(payload):
        rounds += 1
        assert rounds < 100
        for ev in pending:  # "written to the local socket" now
            receiver.acknowledge(ev.stream_id, ev.flow_controlled_length)
        opened = sender.receive_data(receiver.data_to_send())
        assert WindowOpened(data_id) in opened
        more = sender.send_data(data_id, payload[taken:])
        assert 0 < more <= STREAM_WINDOW
        taken += more
        received = receiver.receive_data(sender.data_to_send())
        pending = [e for e in received if isinstance(e, DataReceived)]
        got += data_of(received, data_id)
    assert got == payload
    assert rounds > 2


def test_frames_respect_the_peers_max_frame_size() -> None:
    client = H2PairClient("a", max_frame_size=16384)
    server = H2PairServer(max_frame_size=16384)
    server.receive_data(client.initiate())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    _, data_id = client.open_pair("n", "p", 80, 0)
    assert client.send_data(data_id, b"x" * 50000) == 50000
    events = server.receive_data(client.data_to_send())
    sizes = [len(e.data) for e in events if isinstance(e, DataReceived)]
    assert sizes == [16384, 16384, 16384, 50000 - 3 * 16384]


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_256k_read_is_one_frame_between_our_two_sides(direction: str) -> None:
    client, server, _, data_id, _ = opened_pair()
    server.respond(data_id, 200)
    client.receive_data(server.data_to_send())
    sender: H2PairClient | H2PairServer = client if direction == "up" else server
    receiver: H2PairClient | H2PairServer = server if direction == "up" else client
    payload = os.urandom(256 * 1024)
    assert sender.send_data(data_id, payload) == len(payload)
    events = receiver.receive_data(sender.data_to_send())
    assert [len(e.data) for e in events if isinstance(e, DataReceived)] == [len(payload)]
    assert data_of(events, data_id) == payload


# ---------------------------------------------------------------- DATA without copies


STOCK_WINDOW = 1 << 20


def _stock(client_side: bool) -> H2Connection:
    """A plain H2Connection (16 KiB frames), with 1 MiB windows to have room to send."""
    conn = H2Connection(H2Configuration(client_side=client_side, header_encoding=None))
    conn.initiate_connection()
    conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STOCK_WINDOW})
    conn.increment_flow_control_window(STOCK_WINDOW - 65535)
    return conn


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_sent_data_frames_are_what_stock_h2_expects(mode: str) -> None:
    """Our DATA frames, interleaved with h2's own (HEADERS, PING, END_STREAM), read by a
    stock H2Connection with the default 16 KiB frames: same bytes, same order, same
    windows on both sides."""
    client, stock = H2PairClient("a"), _stock(client_side=False)
    stock.receive_data(client.initiate())
    client.receive_data(stock.data_to_send())
    rng = random.Random(mode)
    payloads = {sid: b"" for sid in client.open_pair("n", "p", 80, 0)[1:]}
    sent: list[tuple[int, bytes]] = []
    for i in range(12):
        if i == 4:
            payloads[client.open_pair("n", "p", 80, 1)[1]] = b""
        if i == 7:
            client.ping()
        sid = rng.choice(list(payloads))
        chunk = rng.randbytes(rng.choice([1, 100, 16384, 16385, 70000]))
        assert client.send_data(sid, chunk) == len(chunk)
        payloads[sid] += chunk
        sent.append((sid, chunk))
    last = sent[-1][0]
    client.end_stream(last)
    events = feed(stock.receive_data, client.data_to_send(), mode)
    got: dict[int, bytes] = {sid: b"" for sid in payloads}
    for ev in events:
        if isinstance(ev, H2DataReceived):
            assert ev.stream_id is not None and ev.data is not None
            assert len(ev.data) <= 16384
            got[ev.stream_id] += ev.data
    assert got == payloads
    assert isinstance(events[-1], H2StreamEnded) and events[-1].stream_id == last
    total = sum(len(d) for d in payloads.values())
    for sid, data in payloads.items():
        stock_window = stock._get_stream_by_id(sid)._inbound_window_manager.current_window_size
        assert stock_window == STOCK_WINDOW - len(data)
        if sid != last:  # the smaller of the stream's and the connection's window
            assert client.window(sid) == min(STOCK_WINDOW - len(data), STOCK_WINDOW - total)


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_received_data_from_stock_h2_padded_or_not(mode: str) -> None:
    """A stock client's DATA frames, padded (h2's path) and unpadded (ours), split
    anywhere: the payload, END_STREAM, and flow control counted with the padding."""
    stock, server = _stock(client_side=True), H2PairServer()
    server.receive_data(stock.data_to_send())
    stock.receive_data(server.data_to_send())
    sid = stock.get_next_available_stream_id()
    stock.send_headers(
        sid, [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "a")]
    )
    rng = random.Random(mode)
    payload, flow = b"", 0
    for i in range(10):
        chunk = rng.randbytes(rng.choice([0, 1, 5000, 16384]))
        pad = rng.choice([None, 0, 17]) if i % 2 else None
        stock.send_data(sid, chunk, end_stream=i == 9, pad_length=pad)
        payload += chunk
        flow += len(chunk) + (0 if pad is None else pad + 1)
    events = feed(server.receive_data, stock.data_to_send(), mode)
    assert data_of(events, sid) == payload
    assert sum(e.flow_controlled_length for e in events if isinstance(e, DataReceived)) == flow
    assert events[-1] == StreamEnded(sid)
    assert stock.outbound_flow_control_window == CONNECTION_WINDOW - flow
    inbound = server._conn._inbound_flow_control_window_manager.current_window_size
    assert inbound == CONNECTION_WINDOW - flow


def test_received_payloads_never_hold_much_more_memory_than_they_carry() -> None:
    """A payload may be a view of the read it came in (no copy), which keeps that whole
    read alive while it waits in a buffer: only when it is at least half of it."""
    client, server, _, data_id, _ = opened_pair()
    for size in (10, 300, 120_000, 5, 200_000):
        client.send_data(data_id, os.urandom(size))
    wire = client.data_to_send()
    events = server.receive_data(wire)
    datas = [e.data for e in events if isinstance(e, DataReceived)]
    assert [len(d) for d in datas] == [10, 300, 120_000, 5, 200_000]
    assert any(isinstance(d, memoryview) for d in datas)  # the big ones: not copied
    for d in datas:
        if isinstance(d, memoryview):
            assert 2 * len(d) >= len(d.obj)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_the_client_preface_is_checked_however_it_is_split(mode: str) -> None:
    client, server = H2PairClient("a"), H2PairServer()
    wire = client.initiate()
    assert feed(server.receive_data, wire, mode)  # SETTINGS and WINDOW_UPDATE seen
    bad = wire.replace(b"SM", b"SN", 1)
    with pytest.raises(PairProtocolError):
        feed(H2PairServer().receive_data, bad, mode)


def test_an_oversized_frame_is_refused_at_its_header() -> None:
    client, server = connected()
    header = (MAX_FRAME_SIZE + 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    with pytest.raises(PairProtocolError) as info:
        server.receive_data(header)  # no body sent: refused before we would buffer it
    assert info.value.error_code == ErrorCodes.FRAME_SIZE_ERROR
    assert client.receive_data(server.data_to_send())[-1] == ConnectionTerminated(
        ErrorCodes.FRAME_SIZE_ERROR, 0
    )


def test_writable_buffers_are_copied_when_queued() -> None:
    client, server, _, data_id, _ = opened_pair()
    buffer = bytearray(b"before")
    assert client.send_data(data_id, buffer) == 6
    buffer[:] = b"AFTER!"  # the caller reuses its buffer before the frame is written
    assert data_of(server.receive_data(client.data_to_send()), data_id) == b"before"


def test_reset_stream() -> None:
    client, server, error_id, data_id, _ = opened_pair()
    client.reset_stream(data_id)
    client.reset_stream(data_id)  # already closed: a no-op
    events = server.receive_data(client.data_to_send())
    assert events == [StreamReset(data_id, ErrorCodes.CANCEL, True)]
    server.reset_stream(error_id)
    assert client.receive_data(server.data_to_send()) == [
        StreamReset(error_id, ErrorCodes.CANCEL, True)
    ]
    assert not server.can_send(data_id)
    assert server.window(data_id) == 0
    with pytest.raises(PairStateError):
        server.send_data(data_id, b"x")
    # Data the peer sent before it saw the reset is still acknowledged without error.
    server.acknowledge(data_id, 10)


def test_data_received_on_a_reset_stream_keeps_the_connection_window() -> None:
    client, server, _, data_id, _ = opened_pair()
    client.send_data(data_id, b"x" * 1000)
    server.reset_stream(data_id)
    events = server.receive_data(client.data_to_send())  # crossed the RST on the wire
    for ev in events:
        if isinstance(ev, DataReceived):
            server.acknowledge(ev.stream_id, ev.flow_controlled_length)
    client.receive_data(server.data_to_send())
    _, data2 = client.open_pair("n", "p", 80, 1)
    assert client.window(data2) >= STREAM_WINDOW - 1000


# ---------------------------------------------------------------- validation and refusal


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"streamtype": "data", "requestid": "0"}, '"port" header is required'),
        (
            {"streamtype": "data", "port": "http", "requestid": "0"},
            'unable to parse "http" as a port: invalid syntax',
        ),
        (
            {"streamtype": "data", "port": "-1", "requestid": "0"},
            'unable to parse "-1" as a port: invalid syntax',
        ),
        (
            {"streamtype": "data", "port": "70000", "requestid": "0"},
            'unable to parse "70000" as a port: value out of range',
        ),
        ({"streamtype": "data", "port": "0", "requestid": "0"}, 'port "0" must be > 0'),
        ({"port": "80", "requestid": "0"}, 'invalid stream type ""'),
        ({"streamtype": "stdin", "port": "80", "requestid": "0"}, 'invalid stream type "stdin"'),
        ({"streamtype": "data", "port": "80"}, '"requestid" header is required'),
    ],
)
def test_validate_pair_headers_errors(headers: dict[str, str], message: str) -> None:
    with pytest.raises(PairRequestError) as info:
        validate_pair_headers(headers)
    assert (info.value.error_code, info.value.message) == (400, message)


@pytest.mark.parametrize(
    "path", ["/", "/v1/portforward/ns", "/v1/portforward/ns/p/x", "/v2/portforward/a/b"]
)
def test_parse_pair_path_errors(path: str) -> None:
    with pytest.raises(PairRequestError) as info:
        parse_pair_path(path)
    assert info.value.error_code == 404


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_stream_without_port_gets_400_text_and_end_stream(mode: str) -> None:
    client, server = connected(mode)
    # A client that forgets the port header (our client always sends it: build by hand).
    conn = client._conn
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/v1/portforward/n/p"),
            ("streamtype", "data"),
            ("requestid", "0"),
        ],
    )
    events = feed(server.receive_data, client.data_to_send(), mode)
    [opened] = [e for e in events if isinstance(e, StreamOpened)]
    with pytest.raises(PairRequestError) as info:
        validate_pair_headers(opened.headers)
    server.reject_stream(opened.stream_id, info.value)
    events = feed(client.receive_data, server.data_to_send(), mode)
    assert events[0] == StreamReplied(sid, 400)
    assert data_of(events, sid) == b'"port" header is required'
    assert events[-1] == StreamEnded(sid)


def test_send_text_and_end_with_status() -> None:
    client, server, error_id, data_id, _ = opened_pair()
    server.respond(error_id, 200)
    assert server.send_text_and_end(error_id, "error forwarding port 8080 to pod web-0") == 39
    server.send_text_and_end(data_id, "", status=502)
    events = client.receive_data(server.data_to_send())
    assert data_of(events, error_id) == b"error forwarding port 8080 to pod web-0"
    assert StreamReplied(data_id, 502) in events
    assert StreamEnded(error_id) in events and StreamEnded(data_id) in events


# ---------------------------------------------------------------- ping, goaway, errors


def test_ping_is_answered() -> None:
    client, server = connected()
    data = client.ping()
    assert len(data) == 8
    assert server.receive_data(client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == [PingAcknowledged(data)]
    assert client.ping() != data


def test_goaway_both_ways() -> None:
    client, server, _, data_id, _ = opened_pair()
    server.goaway()
    assert client.receive_data(server.data_to_send()) == [ConnectionTerminated(0, data_id)]
    client2, server2 = connected()
    client2.close()
    assert server2.receive_data(client2.data_to_send()) == [ConnectionTerminated(0, 0)]


def test_protocol_error_queues_goaway_and_raises() -> None:
    client, server = connected()
    with pytest.raises(PairProtocolError) as info:
        server.receive_data(
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        )  # WINDOW_UPDATE 0
    assert info.value.error_code == ErrorCodes.PROTOCOL_ERROR
    events = client.receive_data(server.data_to_send())
    assert events == [ConnectionTerminated(ErrorCodes.PROTOCOL_ERROR, 0)]
    with pytest.raises(PairProtocolError):
        H2PairServer().receive_data(b"GET / HTTP/1.1\r\n\r\n")


def test_no_pair_before_the_agents_settings() -> None:
    client = H2PairClient("a")
    server = H2PairServer(max_concurrent_streams=2)
    server.receive_data(client.initiate())
    assert not client.can_open_pair()  # h2 would assume 100 streams until then
    with pytest.raises(PairStateError, match="SETTINGS"):
        client.open_pair("n", "p", 80, 0)
    client.receive_data(server.data_to_send())
    assert client.can_open_pair()


def test_too_many_streams_is_refused_locally() -> None:
    client = H2PairClient("a")
    server = H2PairServer(max_concurrent_streams=2)
    server.receive_data(client.initiate())
    client.receive_data(server.data_to_send())
    client.open_pair("n", "p", 80, 0)
    with pytest.raises(PairStateError):
        client.open_pair("n", "p", 80, 1)


# ---------------------------------------------------------------- the repr cost


@pytest.fixture
def repr_counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count every way hyperframe can render a DATA frame's payload for a repr."""
    calls = {"Frame.__repr__": 0, "_body_repr": 0, "serialize_body": 0, "_raw_data_repr": 0}

    def counting(name: str, original: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    frame_cls = hyperframe.frame.Frame
    data_cls = hyperframe.frame.DataFrame
    monkeypatch.setattr(frame_cls, "__repr__", counting("Frame.__repr__", frame_cls.__repr__))
    monkeypatch.setattr(frame_cls, "_body_repr", counting("_body_repr", frame_cls._body_repr))
    monkeypatch.setattr(
        data_cls, "serialize_body", counting("serialize_body", data_cls.serialize_body)
    )
    monkeypatch.setattr(
        hyperframe.frame,
        "_raw_data_repr",
        counting("_raw_data_repr", hyperframe.frame._raw_data_repr),
    )
    yield calls


def _many_data_frames() -> tuple[H2PairClient, H2PairServer, int, bytes]:
    client, server, _, data_id, _ = opened_pair()
    for _ in range(200):
        assert client.send_data(data_id, b"\xab" * 4096) == 4096
    return client, server, data_id, client.data_to_send()


def test_receiving_data_frames_never_reprs_the_payload(repr_counter: dict[str, int]) -> None:
    _, server, data_id, wire = _many_data_frames()
    for counter in repr_counter:
        repr_counter[counter] = 0  # sending serialises bodies legitimately
    events: list[Event] = []
    for chunk in chunks_of(wire, "random-3"):
        events += server.receive_data(chunk)
    assert len(data_of(events, data_id)) == 200 * 4096
    assert repr_counter == {
        "Frame.__repr__": 0,
        "_body_repr": 0,
        "serialize_body": 0,
        "_raw_data_repr": 0,
    }


def test_the_repr_counter_catches_plain_h2(repr_counter: dict[str, int]) -> None:
    """Control: a stock H2Connection receiving one DATA frame does take the repr path."""
    sender = H2PairClient("a")
    plain = H2Connection(H2Configuration(client_side=False))
    plain.initiate_connection()
    plain.receive_data(sender.initiate())
    sender.receive_data(plain.data_to_send())  # its SETTINGS
    _, data_id = sender.open_pair("n", "p", 80, 0)
    plain.receive_data(sender.data_to_send())
    assert sender.send_data(data_id, b"\xab" * 4096) == 4096
    wire = sender.data_to_send()
    for counter in repr_counter:
        repr_counter[counter] = 0
    plain.receive_data(wire)
    assert repr_counter == {
        "Frame.__repr__": 1,
        "_body_repr": 1,
        "serialize_body": 1,
        "_raw_data_repr": 1,
    }


# ---------------------------------------------------------------- HPACK without the search

_NAMES = [b":method", b":path", b"port", b"requestid", b"x-a", b"authorization", b"user-agent"]


def _random_fields(rng: random.Random) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for _ in range(rng.randint(0, 9)):
        name = rng.choice(_NAMES)
        value = rng.choice([b"", b"POST", b"8080", b"/v1/x", str(rng.randint(0, 30)).encode()])
        if rng.random() < 0.05:
            value = rng.randbytes(rng.choice([1, 130, 300]))  # multi-byte lengths
        sensitive = rng.random() < 0.2
        fields.append(NeverIndexedHeaderTuple(name, value) if sensitive else (name, value))
    return fields


def test_memo_encoder_encodes_as_hpack_and_keeps_the_same_table() -> None:
    """Block after block (the same fields again and again, new ones, evictions, table
    size changes from the peer), MemoEncoder's bytes are hpack's except never-indexed
    literals (no Huffman), a stock decoder reads the same fields, and the tables agree."""
    rng = random.Random(7)
    ours, stock, decoder = MemoEncoder(), Encoder(), Decoder()
    for i in range(3000):
        if i % 500 == 499:
            size = rng.choice([0, 60, 200, 4096])
            ours.header_table_size = stock.header_table_size = size
            decoder.max_allowed_table_size = max(size, decoder.max_allowed_table_size)
        repeated: list[tuple[bytes, bytes]] = [(b":method", b"POST"), (b"port", b"80")]
        fields = _random_fields(rng) if rng.random() < 0.3 else repeated
        plain = [f for f in fields if not isinstance(f, NeverIndexedHeaderTuple)]
        block = ours.encode(fields)
        expected = stock.encode(fields)
        if len(plain) == len(fields):
            assert block == expected
        assert [tuple(h) for h in decoder.decode(block, raw=True)] == [tuple(f) for f in fields]
        assert ours.header_table.dynamic_entries == stock.header_table.dynamic_entries
    assert ours._memo  # the memo was used


def _stock_blocks(rng: random.Random) -> Iterator[bytes]:
    encoder = Encoder()
    for i in range(2000):
        if i % 400 == 399:
            encoder.header_table_size = rng.choice([0, 100, 4096])
        yield encoder.encode(_random_fields(rng), huffman=rng.random() < 0.5)


def test_fast_decoder_decodes_as_hpack() -> None:
    """Blocks of every kind (indexed, literal with/without/never indexing, Huffman or
    not, size updates, long strings) decode to the same fields, tables in step."""
    rng = random.Random(11)
    fast, stock = FastDecoder(), Decoder()
    fast_calls = 0
    for block in _stock_blocks(rng):
        fast_calls += fast._decode_unchanging(block) is not None  # changes nothing
        got, expected = fast.decode(block, raw=True), stock.decode(block, raw=True)
        assert got == expected
        assert [type(h) for h in got] == [type(h) for h in expected]
        assert fast.header_table.dynamic_entries == stock.header_table.dynamic_entries
    assert fast_calls > 100


def test_fast_decoder_keeps_the_field_types() -> None:
    encoder, fast, stock = Encoder(), FastDecoder(), Decoder()
    warm = encoder.encode([(b"a", b"1")])
    fast.decode(warm, raw=True)
    stock.decode(warm, raw=True)
    block = encoder.encode([(b"a", b"1"), NeverIndexedHeaderTuple(b"b", b"2")], huffman=False)
    assert fast._decode_unchanging(block) is not None
    got, expected = fast.decode(block, raw=True), stock.decode(block, raw=True)
    assert got == expected
    assert [type(h) for h in got] == [type(h) for h in expected]


@pytest.mark.parametrize("seed", range(4))
def test_fast_decoder_refuses_what_hpack_refuses(seed: int) -> None:
    """Damaged blocks (cut short, bytes flipped, bad indexes, a size update after a
    field, over the list size limit): the same fields or the same error as hpack, and the
    same table afterwards."""
    rng = random.Random(seed)
    for block in _stock_blocks(rng):
        fast, stock = FastDecoder(), Decoder()
        fast.max_header_list_size = stock.max_header_list_size = rng.choice([100, 65536])
        damaged = bytearray(block)
        for _ in range(rng.randint(1, 3)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        for data in (bytes(damaged), block[: rng.randint(0, len(block))], b"\x80", b"\xff\x80"):
            outcomes = []
            for decoder in (fast, stock):
                try:
                    outcomes.append(decoder.decode(data, raw=True))
                except HPACKError as exc:
                    outcomes.append(type(exc))
            assert outcomes[0] == outcomes[1]
            assert fast.header_table.dynamic_entries == stock.header_table.dynamic_entries


def test_pair_requests_take_the_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first pair, a pair's requests are encoded from the memo and decoded
    without hpack's decoder."""
    slow = {"decode": 0}
    original = Decoder.decode

    def counting(self: Decoder, data: bytes, raw: bool = False) -> object:
        slow["decode"] += 1
        return original(self, data, raw)

    monkeypatch.setattr(Decoder, "decode", counting)
    client, server = connected()
    for request_id in range(50):
        client.open_pair("default", "web-0", 8080, request_id, [("user-agent", "t")])
    events = server.receive_data(client.data_to_send())
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert len(opened) == 100
    assert [e.headers["requestid"] for e in opened[-2:]] == ["49", "49"]
    assert slow["decode"] <= 2  # the first two requests add their fields to the table


# ---------------------------------------------------------------- HEADERS, lighter


def _twins(client_side: bool, frame_size: int = 16384) -> tuple[Connection, Connection]:
    """Two of our connections in the same state, the peer's SETTINGS received."""
    pair = []
    for _ in range(2):
        conn = new_connection(
            client_side,
            max_concurrent_streams=100,
            initial_window_size=65535,
            max_frame_size=16384,
            max_header_list_size=1 << 16,
        )
        conn.initiate_connection()
        peer = H2Connection(H2Configuration(client_side=not client_side))
        peer.initiate_connection()
        peer.update_settings({SettingCodes.MAX_FRAME_SIZE: frame_size})
        conn.receive_data(peer.data_to_send())  # a client peer's starts with the preface
        conn.data_to_send()
        pair.append(conn)
    return pair[0], pair[1]


def _stream_state(conn: Connection, sid: int) -> tuple[object, ...]:
    stream = conn.streams[sid]
    return (
        stream.state_machine.state,
        stream._authority,
        stream.request_method,
        conn.highest_outbound_stream_id,
        conn.state_machine.state,
    )


def _send_both(
    fast: Connection, stock: Connection, sid: int, fields: list[tuple[bytes, bytes]], end: bool
) -> None:
    outcomes = []
    for conn, send in (
        (fast, fast.send_headers),
        (stock, partial(H2Connection.send_headers, stock)),
    ):
        try:
            send(sid, fields, end_stream=end)
            outcomes.append(conn.data_to_send())
        except H2ProtocolError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    if sid in fast.streams:
        assert _stream_state(fast, sid) == _stream_state(stock, sid)


_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"a:1"),
    (b":path", b"/v1/portforward/n/p"),
    (b"streamtype", b"data"),
    (b"port", b"80"),
]


def test_sent_headers_are_what_h2_sends() -> None:
    """Requests (with END_STREAM or not, one frame or CONTINUATIONs past the peer's frame
    size, never-indexed fields), responses and trailers: the same bytes, stream states and
    errors as h2's own send_headers on a twin connection."""
    fast, stock = _twins(client_side=True)
    big = (b"x-big", b"v" * 40000)  # 3 frames of 16 KiB
    requestid = NeverIndexedHeaderTuple(b"requestid", b"7")
    for sid, fields, end in [
        (1, _REQUEST, True),
        (3, [*_REQUEST, requestid], False),
        (5, [*_REQUEST, big], False),
        (7, [(b":method", b"GET"), (b":authority", b"b"), (b":authority", b"c")], False),
        (3, [(b"x-trailer", b"1")], False),  # trailers without END_STREAM: refused
        (5, [(b"x-trailer", b"1")], True),
        (1, _REQUEST, False),  # closed
    ]:
        _send_both(fast, stock, sid, fields, end)
    server_fast, server_stock = _twins(client_side=False)
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.data_to_send()
    for sid in (1, 3, 5, 7):
        client.send_headers(sid, [(k.decode(), v.decode()) for k, v in _REQUEST])
    wire = client.data_to_send()
    server_fast.receive_data(wire)
    server_stock.receive_data(wire)
    for sid, fields, end in [
        (1, [(b":status", b"200")], False),
        (3, [(b":status", b"404"), (b"content-type", b"text/plain")], True),
        (5, [(b":status", b"100")], False),  # informational: h2's own way
        (5, [(b":status", b"200")], False),
        (7, [(b":status", b"200"), big], True),
        (1, [(b"x-trailer", b"1")], True),
    ]:
        _send_both(server_fast, server_stock, sid, fields, end)


def test_too_many_streams_is_refused_by_send_headers() -> None:
    fast, _ = _twins(client_side=True)
    fast.remote_settings.acknowledge()  # nothing pending
    fast.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1
    fast.remote_settings.acknowledge()
    fast.send_headers(1, _REQUEST)
    with pytest.raises(TooManyStreamsError):
        fast.send_headers(3, _REQUEST)


@pytest.mark.parametrize("client_side", [True, False])
def test_new_streams_are_made_as_h2_makes_them(client_side: bool) -> None:
    """Stream ids too low, of the wrong parity, or fine, for our side or the peer's: the
    same errors, streams (windows, frame size) and highest ids as h2's own."""
    ours, theirs = _twins(client_side)
    theirs_new = partial(H2Connection._begin_new_stream, theirs)
    mine, peer = AllowedStreamIDs(client_side), AllowedStreamIDs(not client_side)
    first = 1 if client_side else 2
    for sid, allowed in [
        (first, mine),
        (first, mine),
        (first + 1, mine),
        (first + 2, mine),
        (first + 1, peer),
        (first + 5, peer),
        (first + 3, peer),
    ]:
        outcomes: list[object] = []
        for conn, new in ((ours, ours._begin_new_stream), (theirs, theirs_new)):
            try:
                stream = new(sid, allowed)
                outcomes.append(
                    (
                        stream.stream_id,
                        stream.outbound_flow_control_window,
                        stream._inbound_window_manager.max_window_size,
                        stream.max_outbound_frame_size,
                    )
                )
            except H2ProtocolError as exc:
                outcomes.append(type(exc))
            outcomes.append((conn.highest_outbound_stream_id, conn.highest_inbound_stream_id))
        assert outcomes[:2] == outcomes[2:], (sid, allowed)
    assert type(ours.streams[first]) is PairStream


def _machine_outcome(machine: object, event: object) -> tuple[object, ...]:
    try:
        events = machine.process_input(event)  # type: ignore[attr-defined]
        result: object = [type(e) for e in events]
    except (H2ProtocolError, ValueError) as exc:
        result = (type(exc), str(exc))
    return result, vars(machine)


def test_connection_state_machine_is_h2s() -> None:
    """Every input in every state, and a wrong input type: the same state, events and
    errors as h2's own machine."""
    for state in ConnectionState:
        for event in [*ConnectionInputs, "not an input"]:
            ours, theirs = PairConnectionStateMachine(), H2ConnectionStateMachine()
            ours.state = theirs.state = state
            assert _machine_outcome(ours, event) == _machine_outcome(theirs, event)


def test_stream_state_machine_is_h2s() -> None:
    """Every input in every state, and from every reachable history (client and server
    streams, headers and trailers sent or received): the same state, flags, events and
    errors as h2's own machine."""
    histories: list[list[StreamInputs]] = [[]]
    for length in range(1, 4):
        histories += [list(h) for h in itertools.product(StreamInputs, repeat=length)]
    checked = 0
    for history in histories:
        ours, theirs = PairStreamStateMachine(1), H2StreamStateMachine(1)
        try:
            for event in history:
                theirs.process_input(event)
        except H2ProtocolError:
            continue  # not a history h2 allows
        for event in history:
            ours.process_input(event)
        assert vars(ours) == vars(theirs)
        for event in [*StreamInputs, "not an input"]:
            a, b = copy.copy(ours), copy.copy(theirs)
            assert _machine_outcome(a, event) == _machine_outcome(b, event), (history, event)
            checked += 1
    assert checked > 1000


def test_end_stream_is_what_h2_sends() -> None:
    fast, stock = _twins(client_side=True)
    for conn in (fast, stock):
        conn.send_headers(1, _REQUEST)
        conn.send_headers(3, _REQUEST, end_stream=True)
        conn.data_to_send()
    h2_own = partial(H2Connection.end_stream, stock)
    for sid in (1, 1, 3, 5):  # open, already ended, ended by its HEADERS, unknown
        outcomes: list[object] = []
        for conn, end in ((fast, fast.end_stream), (stock, h2_own)):
            try:
                end(sid)
                outcomes.append(b"".join(conn.take_output()))
            except H2ProtocolError as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]
        if sid in fast.streams:
            assert _stream_state(fast, sid) == _stream_state(stock, sid)


def _headers_frame(sid: int, block: bytes, flags: set[str], pad: int = 0) -> bytes:
    frame = hyperframe.frame.HeadersFrame(sid, block)
    for flag in flags:
        frame.flags.add(flag)
    if pad:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    if "PRIORITY" in flags:
        frame.depends_on, frame.stream_weight = 0, 15
    return frame.serialize()


@pytest.mark.parametrize(
    ("frame", "flags"),
    [
        (hyperframe.frame.DataFrame(3, b"payload"), ()),
        (hyperframe.frame.DataFrame(3, b""), ("END_STREAM",)),
        (hyperframe.frame.HeadersFrame(5, b"\x82\x86"), ("END_HEADERS",)),
        (hyperframe.frame.HeadersFrame(5, b"\x82"), ("END_HEADERS", "END_STREAM")),
        (hyperframe.frame.HeadersFrame(7, b""), ("END_HEADERS",)),
    ],
)
def test_frames_built_without_hyperframe_are_what_it_parses(
    frame: hyperframe.frame.Frame, flags: tuple[str, ...]
) -> None:
    """The frames FrameBufferOverChunks builds itself have the attributes hyperframe's
    parse gives them (a guard for a hyperframe upgrade)."""
    for flag in flags:
        frame.flags.add(flag)
    wire = frame.serialize()
    parsed, _ = hyperframe.frame.Frame.parse_frame_header(memoryview(wire[:9]))
    parsed.parse_body(memoryview(wire[9:]))
    buffer = FrameBufferOverChunks(server=False)
    buffer.max_frame_size = 1 << 14
    buffer.add_data(wire)
    built = next(buffer)
    assert type(built).__mro__[1] is type(parsed)
    mine, theirs = dict(vars(built)), dict(vars(parsed))
    assert set(mine.pop("flags")) == set(theirs.pop("flags"))
    assert bytes(mine.pop("data")) == theirs.pop("data")
    assert mine == theirs
    built.flags.add("END_STREAM")  # a Flags of its own, that knows its frame's flags
    with pytest.raises(ValueError, match="Unexpected flag"):
        built.flags.add("ACK")


def test_streams_past_the_agents_limit_are_refused_as_h2_refuses_them() -> None:
    """A client that opens more streams than the agent allows (it ignored the SETTINGS):
    our server ends the connection with the error a stock h2 server raises."""
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
    for sid in (1, 3, 5):
        client.send_headers(sid, request)
    wire = client.data_to_send()
    stock = H2Connection(H2Configuration(client_side=False))
    stock.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 2,
        },
    )
    stock.local_settings.acknowledge()
    with pytest.raises(H2ProtocolError) as theirs:
        stock.receive_data(wire)
    ours = H2PairServer(max_concurrent_streams=2)
    ours._conn.local_settings.acknowledge()
    with pytest.raises(PairProtocolError) as mine:
        ours.receive_data(wire)
    assert type(mine.value.__cause__) is type(theirs.value)
    assert str(mine.value.__cause__) == str(theirs.value)


def test_received_responses_are_read_as_h2_reads_them() -> None:
    """Responses of every shape (informational first, END_STREAM, cookies to join, a
    repeated or missing :status, trailers): our client's fields are those of a stock h2
    client configured as ours (inbound validation off)."""
    config = H2Configuration(client_side=True, validate_inbound_headers=False)
    ours, stock = H2PairClient("a"), H2Connection(config)  # h2 configured as ours
    server = H2Connection(H2Configuration(client_side=False, validate_outbound_headers=False))
    server.initiate_connection()
    ours.initiate()  # the server hears the stock client only; both hear the server
    stock.initiate_connection()
    server.receive_data(stock.data_to_send())
    settings = server.data_to_send()
    ours.receive_data(settings)
    stock.receive_data(settings)
    responses: list[tuple[list[tuple[str, str]], bool]] = [
        ([(":status", "200")], False),
        ([(":status", "404"), ("content-type", "text/plain")], True),
        ([(":status", "200"), ("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")], False),
        ([(":status", "200"), (":status", "201")], False),
        ([("x", "no status")], False),
    ]
    sids = []
    for _ in responses:
        sids.append(ours._conn.get_next_available_stream_id())
        request = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
        ours._conn.send_headers(sids[-1], request)
        stock.send_headers(sids[-1], request)
    ours.data_to_send()
    server.receive_data(stock.data_to_send())
    server.send_headers(sids[0], [(":status", "100")])
    for sid, (fields, end) in zip(sids, responses, strict=True):
        server.send_headers(sid, fields, end_stream=end)
    server.send_headers(sids[0], [("x-trailer", "1")], end_stream=True)
    wire = server.data_to_send()
    mine = ours._conn.receive_data(wire)
    theirs = stock.receive_data(wire)
    assert [type(e) for e in mine] == [type(e) for e in theirs]
    for a, b in zip(mine, theirs, strict=True):
        if hasattr(b, "headers"):
            assert [tuple(h) for h in a.headers] == [tuple(h) for h in b.headers]
    replies = [e for e in ours._translate(mine) if isinstance(e, StreamReplied)]
    assert [e.status for e in replies] == [200, 404, 200, 0, 0]


@pytest.mark.parametrize("mode", SPLIT_MODES)
def test_received_headers_frames_are_read_as_h2_reads_them(mode: str) -> None:
    """HEADERS of every shape (END_STREAM, CONTINUATION, PRIORITY, PADDED), cut anywhere:
    our server's events carry what a stock h2 server's do."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    wire = client.data_to_send()
    encoder = Encoder()
    request = [(k.decode(), v.decode()) for k, v in _REQUEST]
    client.send_headers(1, request, end_stream=True)
    client.send_headers(3, [*request, ("x-big", "v" * 40000)])  # HEADERS + CONTINUATIONs
    wire += client.data_to_send()
    encoder.header_table = client.encoder.header_table  # go on with the client's context
    block = encoder.encode(request)
    wire += _headers_frame(5, block, {"END_HEADERS", "PRIORITY"})
    wire += _headers_frame(7, encoder.encode(request), {"END_HEADERS", "END_STREAM"}, pad=9)
    wire += _headers_frame(9, encoder.encode(request), {"END_HEADERS"}, pad=1)
    ours, stock = H2PairServer(), H2Connection(H2Configuration(client_side=False))
    stock.initiate_connection()
    got = [e for e in feed(ours.receive_data, wire, mode) if isinstance(e, StreamOpened)]
    expected = [e for e in stock.receive_data(wire) if isinstance(e, RequestReceived)]
    assert [(e.stream_id, e.end_stream) for e in got] == [
        (e.stream_id, e.stream_ended is not None) for e in expected
    ]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.headers == {k.decode(): v.decode() for k, v in theirs.headers}


_VALID_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"agent:1"),
    (b":path", b"/v1/portforward/n/p"),
    (b"streamtype", b"data"),
    (b"port", b"80"),
    NeverIndexedHeaderTuple(b"requestid", b"1"),
    (b"user-agent", b"podgate/1 (x)"),
]


def _variants() -> Iterator[list[tuple[bytes, bytes]]]:
    """The pair request, and each way h2's inbound validation can refuse (or let through)
    a request."""
    yield list(_VALID_REQUEST)
    rng = random.Random(3)
    edits: list[Callable[[list[tuple[bytes, bytes]]], None]] = [
        lambda f: f.append((b"X-Upper", b"1")),
        lambda f: f.append((b"", b"1")),
        lambda f: f.append((b"a b", b"1")),
        lambda f: f.append((b"a:b", b"1")),
        lambda f: f.append((b"\x7f", b"1")),
        lambda f: f.append((b"te", b"trailers")),
        lambda f: f.append((b"te", b"gzip")),
        lambda f: f.append((b"connection", b"close")),
        lambda f: f.append((b"keep-alive", b"1")),
        lambda f: f.append((b"host", b"agent:1")),
        lambda f: f.append((b"host", b"other")),
        lambda f: f.append((b"cookie", b"a=1")),
        lambda f: f.extend([(b"cookie", b"a=1"), (b"cookie", b"b=2")]),
        lambda f: f.append((b"x", b"a\nb")),
        lambda f: f.append((b"x", b"a\rb")),
        lambda f: f.append((b"x", b"a\x00b")),
        lambda f: f.append((b"x", b" a")),
        lambda f: f.append((b"x", b"a\t")),
        lambda f: f.append((b"x", b"")),
        lambda f: f.append((b":path", b"/again")),
        lambda f: f.append((b":status", b"200")),
        lambda f: f.insert(0, (b":protocol", b"websocket")),
        lambda f: f.insert(0, (b":custom", b"1")),
        lambda f: f.insert(5, (b"x", b"1")) or f.insert(6, (b":method", b"GET")),
        lambda f: f.__setitem__(0, (b":method", b"CONNECT")),
        lambda f: f.__setitem__(3, (b":path", b"")),
        lambda f: f.__setitem__(2, (b":authority", b" a")),
        lambda f: f.pop(2),
        lambda f: f.pop(1),
        lambda f: f.pop(0),
        lambda f: f.pop(3),
        lambda f: f.append((b"x-\xff", b"1")),
        lambda f: f.append((b"x", b"\xff\x01 ok")),
    ]
    for edit in edits:
        fields = list(_VALID_REQUEST)
        edit(fields)
        yield fields
    for _ in range(300):
        fields = list(_VALID_REQUEST)
        for edit in rng.sample(edits, rng.randint(1, 3)):
            edit(fields)
        yield fields


def test_vouched_requests_are_what_h2_validation_accepts() -> None:
    """For every variant, PairStream's result is h2's validation pipeline's result (the
    same fields, or the same refusal), and the pair request takes the short way."""
    config = H2Configuration(client_side=False, header_encoding=None)
    ours, stock = PairStream(1, config, 65535, 65535), H2Stream(1, config, 65535, 65535)
    for fields in _variants():
        outcomes = []
        for stream in (ours, stock):
            try:
                outcomes.append(
                    stream._process_received_headers(list(fields), _REQUEST_FLAGS, None)
                )
            except H2ProtocolError as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], fields
    assert _plain_request(list(_VALID_REQUEST))


# h2 modules whose use ties us to h2 4.x (subclassed, or private): the h2>=4.4,<5 pin in
# pyproject.toml is for service/protocols/h2/internals.py alone, so only it may import them.
_H2_INTERNAL_MODULES = ("h2.config", "h2.connection", "h2.frame_buffer", "h2.stream", "h2._")


def test_only_internals_reaches_into_h2() -> None:
    root = Path(__file__).resolve().parents[2] / "service"
    allowed = root / "protocols" / "h2" / "internals.py"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith(_H2_INTERNAL_MODULES) and path != allowed:
                    offenders.append(f"{path.relative_to(root)}: {name}")
    assert offenders == []
