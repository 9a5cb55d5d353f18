"""Hand-made WebSocket traffic for tests: a blocking handshake, client frames built byte
by byte (masked, unmasked, or masked with a key other than the one declared) and a
parser for what the server sends back. For malformed-input tests, where a real client
library would refuse to misbehave::

    sock, status, headers, rest = ws_handshake(port, path, ["SPDY/3.1+portforward.k8s.io"])
    sock.sendall(client_frame(OPCODE_TEXT, b"hi"))
    frames = read_frames(sock, rest)          # until the server closes the connection
    assert frames[-1].close_code == 1003
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from service.protocols.websocket import mask_payload

__all__ = [
    "OPCODE_BINARY",
    "OPCODE_CLOSE",
    "OPCODE_TEXT",
    "ServerFrame",
    "client_frame",
    "parse_frames",
    "read_frames",
    "ws_frames",
    "ws_handshake",
]

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8


@dataclass(frozen=True)
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OPCODE_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


def ws_handshake(
    port: int,
    path: str,
    protocols: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Send a WebSocket upgrade; return the socket, status, headers and the bytes after
    the response head (for a non-101 that is the body read so far)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed during the handshake: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return sock, int(status_line.split()[1]), headers, rest


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    mask: bool = True,
    key: bytes | None = None,
    declared_key: bytes | None = None,
    fin: bool = True,
) -> bytes:
    """One frame. ``mask=False`` omits the mask (illegal from a client); with
    ``declared_key`` the header names that key while the payload is masked with ``key``."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 0x10000:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return header + payload
    key = key or os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + (declared_key or key) + masked


def parse_frames(data: bytes) -> list[ServerFrame]:
    """Server frames (unmasked) in ``data``; a trailing partial frame is ignored."""
    frames = []
    pos = 0
    while pos + 2 <= len(data):
        first, second = data[pos], data[pos + 1]
        size = second & 0x7F
        pos += 2
        if size == 126:
            if pos + 2 > len(data):
                break
            (size,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif size == 127:
            if pos + 8 > len(data):
                break
            (size,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        if second & 0x80:
            raise ValueError("the server masked a frame")
        if pos + size > len(data):
            break
        frames.append(ServerFrame(first & 0x0F, data[pos : pos + size]))
        pos += size
    return frames


def read_frames(sock: socket.socket, rest: bytes = b"", timeout: float = 10.0) -> list[ServerFrame]:
    """Read until the server closes the connection; return every frame it sent."""
    sock.settimeout(timeout)
    buf = bytearray(rest)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return parse_frames(bytes(buf))


def ws_frames(wire: bytes) -> list[tuple[bool, int, bool, bytes]]:
    """(fin, opcode, masked, unmasked payload) for every frame in ``wire``, either role;
    the whole of ``wire`` must be frames."""
    out = []
    pos = 0
    while pos < len(wire):
        b0, b1 = wire[pos], wire[pos + 1]
        size, pos = b1 & 0x7F, pos + 2
        if size == 126:
            size, pos = struct.unpack_from("!H", wire, pos)[0], pos + 2
        elif size == 127:
            size, pos = struct.unpack_from("!Q", wire, pos)[0], pos + 8
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            key, pos = wire[pos : pos + 4], pos + 4
        payload = wire[pos : pos + size]
        pos += size
        out.append(
            (bool(b0 & 0x80), b0 & 0x0F, masked, mask_payload(key, payload) if key else payload)
        )
    return out
