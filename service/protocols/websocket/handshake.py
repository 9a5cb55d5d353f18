"""The WebSocket opening handshake (RFC 6455 §4) over HTTP/1.1, both roles.

The HTTP/1.1 messages are read with h11, so that a refusal keeps its status line,
headers and a bounded body, and a server can also be handed a request that another
layer already parsed (``parse_upgrade_request``). Requests are checked the way the Go
peers check them (their statuses and texts); the client checks the 101 the way
client-go does, a subprotocol it did not offer included.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Iterable, Sequence
from http import HTTPStatus
from typing import Final

import h11
from wsproto.utilities import generate_accept_token, generate_nonce

from .errors import HandshakeError, WebSocketError, WebSocketStateError
from .events import HandshakeAccepted, HandshakeRejected, HeaderList, RequestReceived
from .frames import Buffer

__all__ = [
    "DEFAULT_MAX_REJECT_BODY",
    "WS_VERSION",
    "ClientHandshake",
    "ServerHandshake",
    "accept_response",
    "parse_upgrade_request",
    "reject_response",
    "select_subprotocol",
]

WS_VERSION: Final = "13"
DEFAULT_MAX_REJECT_BODY: Final = 64 * 1024


def _decode(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _split_tokens(values: Iterable[str]) -> list[str]:
    return [p for v in values for p in (piece.strip() for piece in v.split(",")) if p]


def _header_tuple(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    return tuple((_decode(k).lower(), _decode(v)) for k, v in headers)


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} contains a line break or NUL")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)


# ---------------------------------------------------------------------- server side


def parse_upgrade_request(
    method: bytes | str, target: bytes | str, headers: Iterable[tuple[bytes | str, bytes | str]]
) -> RequestReceived:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); raise ``HandshakeError``.

    For a server whose HTTP layer already parsed the request (it must still hand over
    the bytes that followed it).
    """
    hdrs = tuple((_decode(k).lower(), _decode(v)) for k, v in headers)
    if _decode(method).upper() != "GET":
        raise HandshakeError(405, "websocket: the request method is not GET", (("Allow", "GET"),))
    connection = _split_tokens(v for k, v in hdrs if k == "connection")
    upgrade = _split_tokens(v for k, v in hdrs if k == "upgrade")
    if not any(t.lower() == "upgrade" for t in connection) or not any(
        t.lower() == "websocket" for t in upgrade
    ):
        raise HandshakeError(400, "Upgrade request required")
    versions = _split_tokens(v for k, v in hdrs if k == "sec-websocket-version")
    if WS_VERSION not in versions:
        raise HandshakeError(
            426,
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
            (("Sec-WebSocket-Version", WS_VERSION),),
        )
    key = next((v.strip() for k, v in hdrs if k == "sec-websocket-key"), "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "websocket: not a websocket handshake: 'Sec-WebSocket-Key'")
    subprotocols = tuple(_split_tokens(v for k, v in hdrs if k == "sec-websocket-protocol"))
    return RequestReceived(_decode(target), hdrs, subprotocols)


def select_subprotocol(
    offered: Sequence[str], supported: Collection[str], *, default: str | None = None
) -> str | None:
    """The server's choice (RFC 6455 §4.2.2): the first offered subprotocol that it
    supports; ``default`` when none was offered; None when nothing offered is supported
    (answer 403, as the Go servers do)."""
    if not offered:
        return default
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def accept_response(
    request: RequestReceived, subprotocol: str | None, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The ``101 Switching Protocols`` answer to ``request``."""
    if subprotocol and subprotocol not in request.subprotocols:
        raise WebSocketStateError(f"subprotocol {subprotocol!r} was not offered")
    key = (request.header("sec-websocket-key") or "").strip().encode("latin-1")
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
    ]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    headers.extend(extra_headers)
    return _status_line(101) + _header_lines(headers) + b"\r\n"


def reject_response(
    status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete HTTP/1.1 refusal; the server closes the connection after it."""
    if not 200 <= status <= 599:
        raise ValueError(f"status {status} cannot reject an upgrade")
    lines: list[tuple[str, str]] = []
    if body:
        lines.append(("Content-Type", "text/plain; charset=utf-8"))
    lines.append(("Content-Length", str(len(body))))
    lines.append(("Connection", "close"))
    lines.extend(headers)
    return _status_line(status) + _header_lines(lines) + b"\r\n" + body


class ServerHandshake:
    """Reads the upgrade request with h11 and validates it (``parse_upgrade_request``)."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.SERVER)
        self._request: RequestReceived | None = None  # its head, until its end arrives

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the request."""
        return self._h11.trailing_data[0]

    def receive_data(self, data: Buffer) -> RequestReceived | None:
        """Feed request bytes; the request once it is complete. Raises
        ``HandshakeError`` (with the status to refuse with) for a bad request."""
        self._h11.receive_data(bytes(data))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise HandshakeError(exc.error_status_hint, f"bad HTTP request: {exc}") from None
            if isinstance(event, h11.Request):
                self._request = parse_upgrade_request(event.method, event.target, event.headers)
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                request, self._request = self._request, None
                return request
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            # h11.Data: a body on an upgrade request is read and ignored


# ---------------------------------------------------------------------- client side


class ClientHandshake:
    """Builds the upgrade request (GET) and reads the answer with h11."""

    def __init__(
        self,
        host: str,
        target: str,
        subprotocols: Sequence[str],
        extra_headers: Sequence[tuple[str, str]] = (),
        *,
        max_reject_body: int = DEFAULT_MAX_REJECT_BODY,
    ) -> None:
        self.host = host
        self.target = target
        self.offered = tuple(subprotocols)
        self.extra_headers = tuple(extra_headers)
        self.max_reject_body = max_reject_body
        self._h11 = h11.Connection(h11.CLIENT)
        self._nonce = generate_nonce()
        # a refusal whose body is being read: status, reason, headers
        self._refusal: tuple[int, str, HeaderList] | None = None
        self._body = bytearray()

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the 101: the first frames."""
        return self._h11.trailing_data[0]

    def request(self) -> bytes:
        """The upgrade request."""
        headers = [
            ("Host", self.host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self._nonce.decode("ascii")),
            ("Sec-WebSocket-Version", WS_VERSION),
        ]
        if self.offered:
            headers.append(("Sec-WebSocket-Protocol", ", ".join(self.offered)))
        headers.extend(self.extra_headers)
        request = h11.Request(method="GET", target=self.target, headers=headers)
        data = self._h11.send(request) or b""
        return data + (self._h11.send(h11.EndOfMessage()) or b"")

    def receive_data(self, data: Buffer) -> HandshakeAccepted | HandshakeRejected | None:
        """Feed the answer (``b""``: EOF). ``HandshakeAccepted`` for a valid 101 (the
        bytes after it are in ``trailing_data``), ``HandshakeRejected`` for a refusal
        (with a bounded body) or a 101 that fails the checks, None while more is needed.
        A malformed answer, or EOF before one, raises ``WebSocketError``."""
        self._h11.receive_data(bytes(data))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._refusal is not None:
                    return self._rejected()  # a refusal whose body was cut short
                raise WebSocketError(f"bad HTTP response to the upgrade: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    continue  # 100 Continue and friends: the real answer follows
                headers = _header_tuple(event.headers)
                selected = next(
                    (v.strip() for k, v in headers if k == "sec-websocket-protocol"), None
                )
                problem = self._check_switch(headers, selected)
                if problem is not None:
                    return HandshakeRejected(101, problem, headers, b"")
                return HandshakeAccepted(selected or "", headers)
            if isinstance(event, h11.Response):
                reason = event.reason.decode("latin-1")
                self._refusal = (event.status_code, reason, _header_tuple(event.headers))
            elif isinstance(event, h11.Data):
                room = self.max_reject_body - len(self._body)
                self._body += event.data[:room]
                if len(event.data) >= room:
                    return self._rejected()  # bounded: the rest of the body is not awaited
            elif isinstance(event, h11.EndOfMessage):
                return self._rejected()
            else:  # ConnectionClosed after a complete response: nothing more to read
                return None

    def _check_switch(self, headers: HeaderList, selected: str | None) -> str | None:
        """What is wrong with a 101 (client-go's checks), or None."""
        connection = _split_tokens(v for k, v in headers if k == "connection")
        upgrade = _split_tokens(v for k, v in headers if k == "upgrade")
        accept = next((v.strip() for k, v in headers if k == "sec-websocket-accept"), None)
        if not any(t.lower() == "upgrade" for t in connection):
            return "missing 'Connection: Upgrade' in the 101 response"
        if not any(t.lower() == "websocket" for t in upgrade):
            return "missing 'Upgrade: websocket' in the 101 response"
        if accept != generate_accept_token(self._nonce).decode("ascii"):
            return "bad Sec-WebSocket-Accept in the 101 response"
        if any(k == "sec-websocket-extensions" for k, _ in headers):
            return "the server selected an extension that was not offered"
        if selected is not None and selected not in self.offered:
            return f"the server selected subprotocol {selected!r}, which was not offered"
        return None

    def _rejected(self) -> HandshakeRejected:
        assert self._refusal is not None
        status, reason, headers = self._refusal
        body, self._body = bytes(self._body), bytearray()
        return HandshakeRejected(status, reason, headers, body)
