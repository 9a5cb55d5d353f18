"""Sans-IO WebSocket-tunnelled SPDY (protocols.md §3), client and server roles.

After the upgrade, the concatenated payloads of all *binary* messages are the SPDY byte
stream of §1; message boundaries carry no meaning (a Go client writes a SYN_STREAM as
messages of 2, 2, 4, 4, 4, 1, 1 and n bytes). A text message is a protocol error.
Received payloads come out as one ``DataReceived`` per call; each flush of SPDY frames
goes out as one binary message (``send_pieces``: header plus chunks masked one by one,
for ``writelines``).

Kubectl-compatible fallback (§3, "How kubectl chooses"): every condition on which
kubectl falls back to plain SPDY arrives as **one** event, ``HandshakeRejected``. A
non-101 answer carries its status (403 included). A 101 that fails the WebSocket checks
(bad ``Sec-WebSocket-Accept``, ``Upgrade`` or ``Connection``, or a selected subprotocol
that is not ``SPDY/3.1+portforward.k8s.io``, or none) is reported as
``HandshakeRejected`` with ``status == 101`` and the reason in ``reason``; the caller
must drop that connection. ``TunnelError`` (raised) is never a fallback condition: a
malformed HTTP response, EOF before the response, or a violation after the tunnel was
open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Unpack

from .connection import EndpointOptions, WebSocketEndpoint
from .errors import CLOSE_UNSUPPORTED_DATA, TunnelError, WebSocketError
from .events import DataReceived, RequestReceived
from .frames import OPCODE_BINARY, Buffer, message_pieces
from .handshake import DEFAULT_MAX_REJECT_BODY, ClientHandshake

__all__ = ["SPDY_TUNNEL_PROTOCOL", "TunnelClient", "TunnelServer"]

SPDY_TUNNEL_PROTOCOL: Final = "SPDY/3.1+portforward.k8s.io"


class _TunnelEndpoint(WebSocketEndpoint):
    """Open-state behaviour common to both tunnel roles."""

    _error_type = TunnelError

    def __init__(self, client: bool, **options: Unpack[EndpointOptions]) -> None:
        super().__init__(client, **options)
        self._chunks: list[Buffer] = []  # binary payloads of this call, coalesced

    def _on_message(self, data: Buffer | str, finished: bool) -> None:
        if isinstance(data, str):
            raise self._fail(
                TunnelError("invalid message type received", error_code=CLOSE_UNSUPPORTED_DATA)
            )
        if data:  # zero-length messages are legal and mean nothing
            self._chunks.append(data)

    def _flush_bytes(self) -> None:
        """One ``DataReceived`` for the payloads gathered so far: joined in one copy (the
        SPDY parser wants a frame contiguous), no copy when one payload was a whole read."""
        chunks = self._chunks
        if chunks:
            self._chunks = []
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._events.append(DataReceived(data if isinstance(data, bytes) else bytes(data)))

    def _on_pong(self, payload: bytes) -> None:
        self._flush_bytes()
        super()._on_pong(payload)

    def _on_terminated(self, code: int, reason: str) -> None:
        self._flush_bytes()
        super()._on_terminated(code, reason)

    def _receive_open(self, data: Buffer | None) -> None:
        try:
            super()._receive_open(data)
        except WebSocketError:
            self._chunks = []  # slices of the caller's buffer: never kept past the call
            raise
        self._flush_bytes()

    def send_bytes(self, data: Buffer) -> bytes:
        """One binary message carrying ``data`` (pass whole SPDY frames)."""
        return self._message(OPCODE_BINARY, data)

    def send_chunks(self, chunks: Sequence[Buffer]) -> bytes:
        """One binary message carrying the concatenation of ``chunks``, as one bytes."""
        return b"".join(self.send_pieces(chunks))

    def send_pieces(self, chunks: Sequence[Buffer]) -> list[Buffer]:
        """``send_chunks`` for ``writelines``: the frame header, then the chunks (masked
        one by one on the client), never joined. For ``SpdyConnection.chunks_to_send()``,
        whose chunks are immutable, so that a transport may keep them queued."""
        self._require_open()
        return message_pieces(OPCODE_BINARY, chunks, mask=self.client)


class TunnelClient(_TunnelEndpoint):
    """Client of ``SPDY/3.1+portforward.k8s.io``: feed it the socket, give its
    ``DataReceived`` to a ``SpdyConnection(client_side=True)`` and wrap that
    connection's output with ``send_bytes``/``send_pieces``.

    ``receive_data(b"")`` signals EOF from the transport.
    """

    def __init__(
        self,
        host: str,
        target: str,
        extra_headers: Sequence[tuple[str, str]] = (),
        *,
        max_reject_body: int = DEFAULT_MAX_REJECT_BODY,
    ) -> None:
        super().__init__(True, max_reject_body=max_reject_body)
        self.host = host
        self.target = target
        self.extra_headers = tuple(extra_headers)

    def initiate(self) -> bytes:
        """The upgrade request (GET) offering ``SPDY/3.1+portforward.k8s.io``."""
        return self._initiate(
            ClientHandshake(
                self.host,
                self.target,
                [SPDY_TUNNEL_PROTOCOL],
                self.extra_headers,
                max_reject_body=self.max_reject_body,
            )
        )

    def _accepting(self, subprotocol: str | None) -> str | None:
        if subprotocol != SPDY_TUNNEL_PROTOCOL:
            # kubectl falls back on a 101 without the offered subprotocol (§3).
            return f"the server selected subprotocol {subprotocol!r}, not {SPDY_TUNNEL_PROTOCOL}"
        return None


class TunnelServer(_TunnelEndpoint):
    """Server of the tunnel. ``receive_data`` yields ``RequestReceived`` once; answer
    with ``accept()`` or ``reject()``. A request parsed elsewhere can be passed in
    (``request=``) together with the bytes that followed it (``trailing_data=``).

    ``receive_data`` raises ``HandshakeError`` (with the HTTP status to ``reject``
    with) for a request that is not a valid WebSocket upgrade.
    """

    def __init__(
        self,
        request: RequestReceived | None = None,
        *,
        trailing_data: bytes = b"",
    ) -> None:
        super().__init__(False, request=request, trailing_data=trailing_data)

    def accept(
        self,
        subprotocol: str | None = SPDY_TUNNEL_PROTOCOL,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The 101 answer selecting ``subprotocol`` (which the client must have offered)."""
        return self._accept(subprotocol, extra_headers)
