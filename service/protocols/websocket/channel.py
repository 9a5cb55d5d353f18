"""Sans-IO WebSocket v4 channel port-forward (protocols.md §2), client and server roles.

For the i-th port of the ``ports`` query (0-based), channel ``2i`` carries data both
ways and channel ``2i+1`` carries error text from the server. A binary message is
``[channel] + payload``; in ``v4.base64.channel.k8s.io`` a message is the text
``chr(ord('0') + channel) + base64(payload)``. Right after the 101 the server sends,
for each port in order, the port as 2 little-endian bytes on the data channel and then
on the error channel; the client strips and checks that first message on every
channel. There is no half-close: only the whole WebSocket closes.

Like the Go server (x/net/websocket reads a message as bytes whatever its opcode), the
subprotocol decides how a message is read, not its opcode. Binary-mode messages are
streamed (a large message yields several ``DataReceived``); base64 messages, error-text
messages and port prefixes are collected whole, bounded by ``max_message``.

The handshake and the open-state plumbing come from ``connection.WebSocketEndpoint``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Final, Unpack
from urllib.parse import parse_qsl

from .connection import EndpointOptions, WebSocketEndpoint
from .errors import (
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    ChannelError,
    ChannelRequestError,
)
from .events import DataReceived, ErrorTextReceived, RequestReceived
from .frames import OPCODE_BINARY, OPCODE_TEXT, Buffer, encode_message, frame_header
from .handshake import DEFAULT_MAX_REJECT_BODY, ClientHandshake, select_subprotocol

__all__ = [
    "MAX_MESSAGE_PAYLOAD",
    "V4_BASE64",
    "V4_BINARY",
    "V4_PROTOCOLS",
    "ChannelClient",
    "ChannelServer",
    "parse_ports_query",
]

V4_BINARY: Final = "v4.channel.k8s.io"
V4_BASE64: Final = "v4.base64.channel.k8s.io"
#: What the kubelet accepts besides no subprotocol at all (which means binary framing).
V4_PROTOCOLS: Final = (V4_BINARY, V4_BASE64)

# client-go and the kubelet copy with 32 KiB buffers: one message = channel byte + 32 KiB.
MAX_MESSAGE_PAYLOAD: Final = 32 * 1024
# x/net/websocket DefaultMaxPayloadBytes: the bound for messages collected whole.
DEFAULT_MAX_MESSAGE: Final = 32 << 20

_DIGITS = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------- request helpers


def parse_ports_query(query: str) -> list[int]:
    """Ports from a query string: ``ports`` (API server) or ``port`` (kubelet), repeated
    and/or comma-separated, each an unsigned 16-bit integer > 0. Kubelet texts on error.
    """
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k in ("ports", "port")]
    if not values:
        raise ChannelRequestError(400, 'query parameter "port" is required')
    ports: list[int] = []
    for value in values:
        for item in value.split(","):
            if not _DIGITS.fullmatch(item):
                raise ChannelRequestError(
                    400, f'unable to parse "{item}" as a port: invalid syntax'
                )
            port = int(item)
            if port > 0xFFFF:
                raise ChannelRequestError(
                    400, f'unable to parse "{item}" as a port: value out of range'
                )
            if port < 1:
                raise ChannelRequestError(400, f'port "{item}" must be > 0')
            ports.append(port)
    return ports


def _check_ports(ports: Sequence[int]) -> tuple[int, ...]:
    if not ports:
        raise ValueError("at least one port is required")
    for port in ports:
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port {port} is not in 1..65535")
    return tuple(ports)


# ---------------------------------------------------------------------- shared framing


class _ChannelEndpoint(WebSocketEndpoint):
    """Message encoding and decoding common to both roles."""

    _error_type = ChannelError

    def __init__(
        self,
        client: bool,
        ports: Sequence[int],
        *,
        max_message: int,
        **options: Unpack[EndpointOptions],
    ) -> None:
        super().__init__(client, **options)
        self.ports = _check_ports(ports)
        self.max_message = max_message
        self.base64 = False
        # the message being received
        self._channel: int | None = None  # None: its first byte is still to come
        self._whole = bytearray()  # base64 text, error text or a port prefix
        self._collect = False  # this message is collected whole (see _on_message)

    # ------------------------------------------------------------------ receiving

    def _on_message(self, data: Buffer | str, finished: bool) -> None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if self.base64:
            self._append(raw)
            if finished:
                self._finish_base64()
            return
        pos = 0
        if self._channel is None:
            if not raw:
                return  # an empty message names no channel: ignored
            self._channel = raw[0]
            self._collect = self._collects(self._channel)
            pos = 1
        if self._collect:
            self._append(raw[pos:] if pos else raw)
            if finished:
                self._dispatch_whole(self._channel, bytes(self._whole))
        elif len(raw) > pos:
            self._on_stream(self._channel, bytes(raw[pos:]) if pos else bytes(raw))
        if finished:
            self._channel = None
            self._whole = bytearray()

    def _append(self, raw: Buffer) -> None:
        if len(self._whole) + len(raw) > self.max_message:
            raise self._fail(
                ChannelError(
                    f"message larger than {self.max_message} bytes",
                    error_code=CLOSE_MESSAGE_TOO_BIG,
                )
            )
        self._whole += raw

    def _finish_base64(self) -> None:
        whole, self._whole = bytes(self._whole), bytearray()
        if not whole:
            return
        channel = whole[0] - 0x30
        try:
            payload = base64.b64decode(whole[1:], validate=True)
        except (binascii.Error, ValueError):
            raise self._fail(
                ChannelError("invalid base64 in a channel message", error_code=CLOSE_INVALID_DATA)
            ) from None
        if channel < 0:
            return  # below '0': no such channel
        if self._collects(channel):
            self._dispatch_whole(channel, payload)
        elif payload:
            self._on_stream(channel, payload)

    def _collects(self, channel: int) -> bool:
        raise NotImplementedError

    def _dispatch_whole(self, channel: int, payload: bytes) -> None:
        raise NotImplementedError

    def _on_stream(self, channel: int, payload: bytes) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ sending

    def _encode(self, channel: int, payload: Buffer) -> bytes:
        if self.base64:
            text = bytes((0x30 + channel,)) + base64.b64encode(payload)
            return encode_message(OPCODE_TEXT, text, mask=self.client)
        if self.client:
            return encode_message(OPCODE_BINARY, bytes((channel,)) + payload, mask=True)
        # Server: no mask, so header, channel byte and payload are joined once.
        header = frame_header(OPCODE_BINARY, 1 + len(payload), 0)
        return b"".join((header, bytes((channel,)), payload))

    def _port_channel(self, port_index: int) -> int:
        if not 0 <= port_index < len(self.ports):
            raise IndexError(f"port index {port_index} out of range")
        return 2 * port_index

    def send_data(self, port_index: int, data: Buffer) -> bytes:
        """``data`` on the port's data channel: unfragmented messages of at most
        32 KiB of payload each (b"" for empty data)."""
        self._require_open()
        channel = self._port_channel(port_index)
        size = len(data)
        if size <= MAX_MESSAGE_PAYLOAD:
            return self._encode(channel, data) if size else b""
        view = memoryview(data)
        return b"".join(
            self._encode(channel, view[i : i + MAX_MESSAGE_PAYLOAD])
            for i in range(0, size, MAX_MESSAGE_PAYLOAD)
        )


# ---------------------------------------------------------------------- client


class ChannelClient(_ChannelEndpoint):
    """One v4 port-forward WebSocket (one connection per listed port).

    ``receive_data(b"")`` signals EOF from the transport. A 101 without a subprotocol
    is taken as binary framing (what the server does when none is negotiated).
    """

    def __init__(
        self,
        host: str,
        target: str,
        ports: Sequence[int],
        base64: bool = False,
        extra_headers: Sequence[tuple[str, str]] = (),
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_reject_body: int = DEFAULT_MAX_REJECT_BODY,
    ) -> None:
        super().__init__(True, ports, max_message=max_message, max_reject_body=max_reject_body)
        self.host = host
        self.target = target
        self.offer_base64 = base64
        self.extra_headers = tuple(extra_headers)
        # channels whose first message (the port prefix) has not been seen yet
        self._awaiting_prefix = set(range(2 * len(self.ports)))

    def initiate(self) -> bytes:
        """The upgrade request: GET ``target?ports=a,b`` offering v4 or v4.base64."""
        sep = "&" if "?" in self.target else "?"
        target = f"{self.target}{sep}ports={','.join(str(p) for p in self.ports)}"
        protocol = V4_BASE64 if self.offer_base64 else V4_BINARY
        return self._initiate(
            ClientHandshake(
                self.host,
                target,
                [protocol],
                self.extra_headers,
                max_reject_body=self.max_reject_body,
            )
        )

    def _accepting(self, subprotocol: str | None) -> str | None:
        self.base64 = subprotocol == V4_BASE64
        return None

    def _collects(self, channel: int) -> bool:
        # Port prefixes and error text are read whole; data channels are streamed.
        return channel in self._awaiting_prefix or channel & 1 == 1

    def _dispatch_whole(self, channel: int, payload: bytes) -> None:
        port_index = channel >> 1
        if port_index >= len(self.ports):
            return  # unknown channel: ignored
        if channel in self._awaiting_prefix:
            self._awaiting_prefix.discard(channel)
            port = self.ports[port_index]
            if len(payload) != 2 or int.from_bytes(payload, "little") != port:
                raise self._fail(
                    ChannelError(
                        f"channel {channel}: expected port prefix {port} (2 bytes LE), "
                        f"got {payload[:8].hex()!r} ({len(payload)} bytes)",
                        error_code=CLOSE_PROTOCOL_ERROR,
                    )
                )
            return
        if channel & 1:
            if payload:
                text = payload.decode("utf-8", errors="replace")
                self._events.append(ErrorTextReceived(port_index, text))
            return
        if payload:
            self._events.append(DataReceived(payload, port_index))

    def _on_stream(self, channel: int, payload: bytes) -> None:
        port_index = channel >> 1
        if port_index < len(self.ports):
            self._events.append(DataReceived(payload, port_index))


# ---------------------------------------------------------------------- server


class ChannelServer(_ChannelEndpoint):
    """The server side, for a request parsed by ``TunnelServer.receive_data`` (or
    ``handshake.parse_upgrade_request``); ``from_request`` also applies the kubelet's
    checks. Pass the bytes that followed the request as ``trailing_data``.
    """

    def __init__(
        self,
        ports: Sequence[int],
        subprotocol: str,
        request: RequestReceived,
        *,
        trailing_data: bytes = b"",
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        if subprotocol and subprotocol not in V4_PROTOCOLS:
            raise ValueError(f"subprotocol {subprotocol!r} is not a v4 channel protocol")
        super().__init__(
            False, ports, max_message=max_message, request=request, trailing_data=trailing_data
        )
        self.selected = subprotocol
        self.base64 = subprotocol == V4_BASE64

    @classmethod
    def from_request(
        cls,
        request: RequestReceived,
        *,
        trailing_data: bytes = b"",
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> ChannelServer:
        """Ports from the query (400 if missing or bad), then the subprotocol (403)."""
        query = request.path.partition("?")[2]
        ports = parse_ports_query(query)
        subprotocol = select_subprotocol(request.subprotocols, V4_PROTOCOLS, default="")
        if subprotocol is None:
            raise ChannelRequestError(403, "")
        return cls(
            ports, subprotocol, request, trailing_data=trailing_data, max_message=max_message
        )

    def accept(self, extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The 101, then each port's prefix on its data channel and its error channel."""
        data = self._accept(self.selected or None, extra_headers)
        prefixes = []
        for index, port in enumerate(self.ports):
            prefix = port.to_bytes(2, "little")
            prefixes.append(self._encode(2 * index, prefix))
            prefixes.append(self._encode(2 * index + 1, prefix))
        return data + b"".join(prefixes)

    def send_error(self, port_index: int, text: str) -> bytes:
        """``text`` on the port's error channel (one message)."""
        self._require_open()
        return self._encode(self._port_channel(port_index) + 1, text.encode("utf-8"))

    def _collects(self, channel: int) -> bool:
        return False  # the client sends no prefixes; its error-channel bytes are dropped

    def _dispatch_whole(self, channel: int, payload: bytes) -> None:  # pragma: no cover
        self._on_stream(channel, payload)

    def _on_stream(self, channel: int, payload: bytes) -> None:
        port_index = channel >> 1
        if channel & 1 == 0 and port_index < len(self.ports):
            self._events.append(DataReceived(payload, port_index))
