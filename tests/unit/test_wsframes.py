"""The WebSocket frame parser of the open tunnel/channel (websocket.frames.FrameParser), with
wsproto 1.3's receive path as the oracle: same events, same errors, same close codes and
messages, however the bytes are split. Also the send side (``message_pieces``)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from service.protocols.websocket import (
    OPCODE_BINARY,
    OPCODE_TEXT,
    Buffer,
    ConnectionTerminated,
    FrameError,
    FrameParser,
    TunnelClient,
    TunnelError,
    TunnelServer,
    encode_message,
    mask_payload,
    message_pieces,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
Outcome = list[tuple[object, ...]]


# ---------------------------------------------------------------- wire building


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    masked: bool,
    fin: bool = True,
    rsv: int = 0,
    form: int | None = None,
    length: int | None = None,
) -> bytes:
    """Any frame, malformed ones included: ``form`` forces the 7/16/64-bit length
    encoding, ``length`` the encoded value."""
    n = len(payload) if length is None else length
    form = form or (7 if n < 126 else 16 if n < 0x10000 else 64)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    mbit = 0x80 if masked else 0
    if form == 7:
        head = bytes((b0, mbit | n))
    elif form == 16:
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_payload(key, payload)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def splits(wire: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    return [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]


# ---------------------------------------------------------------- both parsers, one record


class Record:
    """Normalised outcome: whole messages (pieces joined), control frames, the end."""

    def __init__(self) -> None:
        self.out: Outcome = []
        self._parts: list[Buffer | str] = []

    def data(self, piece: Buffer | str, finished: bool) -> None:
        # Pieces are only valid during the call: copy them.
        self._parts.append(piece if isinstance(piece, str) else bytes(piece))
        if finished:
            self.out.append(("message", *self._joined()))
            self._parts = []

    def _joined(self) -> tuple[str, object]:
        if any(isinstance(p, str) for p in self._parts):
            return "text", "".join(p for p in self._parts if isinstance(p, str))
        return "binary", b"".join(bytes(p) for p in self._parts if not isinstance(p, str))

    def ping(self, payload: bytes) -> None:
        self.out.append(("ping", bytes(payload)))

    def pong(self, payload: bytes) -> None:
        self.out.append(("pong", bytes(payload)))

    def close(self, code: int, reason: str) -> None:
        self.out.append(("close", int(code), reason))

    def error(self, code: int, message: str) -> None:
        self.out.append(("error", int(code), message))

    def done(self) -> Outcome:
        """The outcome; an unfinished message goes before the Close or error that ended
        the stream, since its pieces came first."""
        if self._parts:
            ended = bool(self.out) and self.out[-1][0] in ("close", "error")
            self.out.insert(len(self.out) - ended, ("partial", *self._joined()))
        return self.out


def parse(client: bool, chunks: Sequence[bytes]) -> Outcome:
    record = Record()
    parser = FrameParser(client, record.data, record.ping, record.pong, record.close)
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except FrameError as exc:
            record.error(exc.error_code, exc.message)
            break
    return record.done()


def oracle(client: bool, chunks: Sequence[bytes]) -> Outcome:
    record = Record()
    ws = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
    for chunk in chunks:
        ws.receive_data(chunk)
        for event in ws.events():
            if isinstance(event, BytesMessage | TextMessage):
                record.data(event.data, event.message_finished)
            elif isinstance(event, Ping):
                record.ping(event.payload)
            elif isinstance(event, Pong):
                record.pong(event.payload)
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.OPEN:  # a parse failure: no state change
                    record.error(event.code, event.reason or "")
                else:
                    record.close(event.code, event.reason or "")
                return record.done()
    return record.done()


def check(client: bool, chunks: Sequence[bytes]) -> Outcome:
    expected = oracle(client, chunks)
    assert parse(client, chunks) == expected
    return expected


# ---------------------------------------------------------------- splits


def sample_wire(masked: bool) -> bytes:
    """Every length form, a fragmented text message (a code point cut in two) with a
    ping between its fragments, an empty message, a pong, then Close."""
    word = "héllo wörld ✓".encode()
    return b"".join(
        [
            frame(BINARY, b"abc", masked=masked),
            frame(BINARY, bytes(range(256)) * 2, masked=masked),  # 16-bit length
            frame(TEXT, word[:2], masked=masked, fin=False),  # ends inside "é"
            frame(PING, b"are you there", masked=masked),
            frame(CONT, word[2:9], masked=masked, fin=False),
            frame(CONT, word[9:], masked=masked),
            frame(BINARY, b"", masked=masked),
            frame(BINARY, b"x", masked=masked, fin=False),
            frame(CONT, b"", masked=masked, fin=False),
            frame(PONG, b"", masked=masked),
            frame(CONT, b"yz", masked=masked),
            frame(CLOSE, close_payload(1000, "bye ✓".encode()), masked=masked),
            frame(BINARY, b"ignored after Close", masked=masked),
        ]
    )


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_every_two_way_split_matches_wsproto(client: bool) -> None:
    wire = sample_wire(masked=not client)
    whole = check(client, [wire])
    assert whole[-1] == ("close", 1000, "bye ✓")
    assert ("message", "text", "héllo wörld ✓") in whole
    for cut in range(len(wire) + 1):
        assert parse(client, splits(wire, [cut])) == whole, cut


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_bytewise_and_random_splits_match_wsproto(client: bool) -> None:
    wire = sample_wire(masked=not client)
    whole = check(client, [wire])
    assert check(client, [wire[i : i + 1] for i in range(len(wire))]) == whole
    rng = random.Random(6)
    for _ in range(200):
        cuts = rng.sample(range(1, len(wire)), rng.randint(1, 40))
        assert check(client, splits(wire, cuts)) == whole


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
def test_64_bit_length_split_anywhere_in_its_header_and_payload(client: bool) -> None:
    payload = os.urandom(70001)
    wire = frame(BINARY, payload, masked=not client) + frame(PING, b"p", masked=not client)
    expected: Outcome = [("message", "binary", payload), ("ping", b"p")]
    assert check(client, [wire]) == expected
    head = 2 + 8 + (0 if client else 4)
    for cut in [*range(head + 2), 4097, 65536, len(wire) - 7, len(wire) - 1]:
        assert parse(client, splits(wire, [cut])) == expected, cut
    assert check(client, splits(wire, [3, 9, head, 5000, 5001, 65537])) == expected


def test_binary_pieces_are_slices_not_copies() -> None:
    pieces: list[Buffer | str] = []
    parser = FrameParser(True, lambda p, f: pieces.append(p), print, print, print)
    wire = frame(BINARY, b"a" * 300, masked=False) + frame(BINARY, b"b" * 10, masked=False)
    parser.feed(wire)
    assert [type(p) for p in pieces] == [memoryview, memoryview]
    assert all(isinstance(p, memoryview) and p.obj is wire for p in pieces)
    # A read that lies wholly inside one payload is handed over as it is.
    pieces.clear()
    parser.feed(frame(BINARY, b"c" * 1000, masked=False)[:600])
    rest = b"c" * 404
    parser.feed(rest)
    assert pieces[-1] is rest


# ---------------------------------------------------------------- violations


def _violations() -> list[tuple[str, bool, bytes, int]]:
    """(name, client role, wire, close code): the wire is well masked unless the case
    is about the mask."""
    cases: list[tuple[str, bool, bytes, int]] = []
    for client in (True, False):
        m = not client

        def add(name: str, wire: bytes, code: int = 1002, *, role: bool = client) -> None:
            cases.append((f"{name}-{'client' if role else 'server'}", role, wire, code))

        add("rsv1", frame(BINARY, b"x", masked=m, rsv=4))
        add("rsv3-ping", frame(PING, b"", masked=m, rsv=1))
        add("opcode-3", frame(0x3, b"x", masked=m))
        add("opcode-b", frame(0xB, b"", masked=m))
        add("fragmented-ping", frame(PING, b"x", masked=m, fin=False))
        add("control-126", frame(PING, b"x" * 126, masked=m))
        add("close-1-byte", frame(CLOSE, b"\x03", masked=m))
        add("close-999", frame(CLOSE, close_payload(999), masked=m))
        add("close-5000", frame(CLOSE, close_payload(5000), masked=m))
        add("close-1005", frame(CLOSE, close_payload(1005), masked=m))
        add("close-1006", frame(CLOSE, close_payload(1006), masked=m))
        add("close-1015", frame(CLOSE, close_payload(1015), masked=m))
        add("close-1004", frame(CLOSE, close_payload(1004), masked=m))
        add("close-2999", frame(CLOSE, close_payload(2999), masked=m))
        add("close-bad-utf8", frame(CLOSE, close_payload(1000, b"\xff"), masked=m), 1007)
        add("text-bad-utf8", frame(TEXT, b"ok\xc3", masked=m), 1007)
        cut_point = frame(TEXT, b"\xe2\x9c", masked=m, fin=False)  # "✓" without its last byte
        add("text-bad-utf8-later", cut_point + frame(CONT, b"x", masked=m), 1007)
        add("continuation-first", frame(CONT, b"x", masked=m))
        started = frame(BINARY, b"a", masked=m, fin=False)
        add("binary-inside-message", started + frame(BINARY, b"b", masked=m))
        add("16-bit-for-5", frame(BINARY, b"12345", masked=m, form=16))
        add("64-bit-for-300", frame(BINARY, b"x" * 300, masked=m, form=64))
        add("64-bit-msb", frame(BINARY, b"", masked=m, form=64, length=1 << 63))
    cases.append(("unmasked-to-server", False, frame(BINARY, b"x", masked=False), 1002))
    cases.append(("masked-to-client", True, frame(BINARY, b"x", masked=True), 1002))
    return cases


VIOLATIONS = _violations()


@pytest.mark.parametrize(
    ("client", "wire", "code"), [c[1:] for c in VIOLATIONS], ids=[c[0] for c in VIOLATIONS]
)
def test_each_violation_has_wsprotos_code_and_message(client: bool, wire: bytes, code: int) -> None:
    whole = check(client, [wire])
    assert whole[-1][:2] == ("error", code)
    assert check(client, [wire[i : i + 1] for i in range(len(wire))])[-1][:2] == ("error", code)


@pytest.mark.parametrize(
    ("name", "client", "wire", "code"), VIOLATIONS, ids=[c[0] for c in VIOLATIONS]
)
def test_each_violation_closes_the_tunnel_with_its_code(
    name: str, client: bool, wire: bytes, code: int
) -> None:
    if name.startswith("text-bad-utf8-later"):
        code = 1003  # its first piece, valid so far, is a text message: the tunnel's error
    tunnel_client, tunnel_server = _open_tunnel()
    receiver, sender = (tunnel_client, tunnel_server) if client else (tunnel_server, tunnel_client)
    prefix = encode_message(OPCODE_BINARY, b"before", mask=not client)
    with pytest.raises(TunnelError) as info:
        receiver.receive_data(prefix + wire)
    assert info.value.error_code == code
    # Our Close carries the code and the message; the peer sees it as the end.
    assert sender.receive_data(receiver.data_to_send()) == [
        ConnectionTerminated(code, info.value.message[:100])
    ]
    assert receiver.close() == b""  # a Close was already sent
    with pytest.raises(TunnelError):
        receiver.receive_data(b"")


def test_text_message_is_1003_in_the_tunnel_and_valid_elsewhere() -> None:
    text = frame(TEXT, "ünïcode".encode(), masked=True)
    assert check(False, [text]) == [("message", "text", "ünïcode")]
    _client, server = _open_tunnel()
    with pytest.raises(TunnelError) as info:
        server.receive_data(text)
    assert info.value.error_code == 1003


# ---------------------------------------------------------------- random streams


@st.composite
def frames_for(draw: st.DrawFn, client: bool) -> bytes:
    """One frame: mostly valid, sometimes one of the violations above."""
    masked = not client
    kind = draw(
        st.sampled_from(["binary", "binary", "text", "cont", "ping", "pong", "close", "bad"])
    )
    fin = draw(st.booleans())
    size = draw(st.sampled_from([0, 1, 5, 125, 126, 127, 300, 65535, 65536]))
    if kind == "binary":
        payload = os.urandom(size) if size < 1000 else bytes(size)
        return frame(BINARY, payload, masked=masked, fin=fin)
    if kind in ("text", "cont"):
        data = draw(st.text(max_size=40)).encode()
        cut = draw(st.integers(0, len(data)))  # may cut a code point: continued later
        return frame(TEXT if kind == "text" else CONT, data[:cut], masked=masked, fin=fin)
    if kind in ("ping", "pong"):
        payload = draw(st.binary(max_size=125))
        return frame(PING if kind == "ping" else PONG, payload, masked=masked)
    if kind == "close":
        code = draw(st.sampled_from([1000, 1001, 1003, 1011, 3000, 4999, 1004, 1005, 999]))
        reason = draw(st.text(max_size=20)).encode()[:123]
        payload = draw(st.sampled_from([b"", b"\x03", close_payload(code, reason)]))
        return frame(CLOSE, payload, masked=masked)
    _name, _role, wire, _code = draw(st.sampled_from([c for c in VIOLATIONS if c[1] == client]))
    return wire


@pytest.mark.parametrize("client", [True, False], ids=["client", "server"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_streams_and_splits_match_wsproto(client: bool, data: st.DataObject) -> None:
    wire = b"".join(data.draw(st.lists(frames_for(client), min_size=1, max_size=8)))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    whole = check(client, [wire])
    split = check(client, splits(wire, cuts))
    if whole[-1][0] != "error":  # where a UTF-8 error is found depends on the pieces
        assert split == whole


# ---------------------------------------------------------------- sending


def _open_tunnel() -> tuple[TunnelClient, TunnelServer]:
    client = TunnelClient("h", "/pf")
    server = TunnelServer()
    server.receive_data(client.initiate())
    client.receive_data(server.accept())
    assert client.is_open and server.is_open
    return client, server


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 70000), max_size=6), text=st.booleans())
def test_message_pieces_mask_each_chunk_with_the_right_key_rotation(
    sizes: list[int], text: bool
) -> None:
    chunks: list[Buffer] = [os.urandom(n) for n in sizes]
    if chunks:
        chunks[0] = memoryview(chunks[0])
    opcode = OPCODE_TEXT if text else OPCODE_BINARY
    pieces = message_pieces(opcode, chunks, mask=True)
    expected = b"".join(bytes(c) for c in chunks)
    ws = Connection(ConnectionType.SERVER)  # the oracle unmasks
    ws.receive_data(b"".join(pieces))
    received = b"".join(bytes(e.data) for e in ws.events() if isinstance(e, BytesMessage))
    if not text:
        assert received == expected
    plain = message_pieces(opcode, chunks, mask=False)
    assert b"".join(plain[1:]) == expected
    assert plain[1:] == chunks  # the server's chunks are passed through, not copied
    assert b"".join(plain) == encode_message(opcode, expected, mask=False)


def test_send_pieces_is_send_chunks_unjoined() -> None:
    client, server = _open_tunnel()
    chunks: list[Buffer] = [b"\x00\x00\x00\x01", memoryview(b"\x00\x00\x00\x05"), b"hello"]
    assert b"".join(server.send_pieces(chunks)) == server.send_chunks(chunks)
    received = server.receive_data(b"".join(client.send_pieces(chunks)))
    assert b"".join(e.data for e in received if hasattr(e, "data")) == b"".join(
        bytes(c) for c in chunks
    )
