"""The WebSocket endpoint shared by the tunnel and the channel endpoints: the opening
handshake (``handshake.py``), messages, ping/pong and the close handshake.

Everything an endpoint can do depends on one variable, its ``State``. Once open, every
received frame goes through ``FrameParser``; the endpoint answers pings and the peer's
Close by itself (queued for ``data_to_send()``), and a violation queues our Close with
the error's ``error_code`` before the error is raised. wsproto's ``FrameProtocol``
builds the control frames we send (ping, pong, close); data messages are framed by
``frames.message_pieces``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TypedDict

from wsproto.frame_protocol import FrameProtocol

from .errors import (
    CLOSE_ABNORMAL,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    FrameError,
    HandshakeError,
    WebSocketError,
    WebSocketStateError,
)
from .events import (
    ConnectionTerminated,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    PingAcknowledged,
    RequestReceived,
)
from .frames import Buffer, FrameParser, encode_message
from .handshake import (
    DEFAULT_MAX_REJECT_BODY,
    ClientHandshake,
    ServerHandshake,
    accept_response,
    reject_response,
)

__all__ = ["State", "WebSocketEndpoint"]


class State(enum.Enum):
    """Where an endpoint is: the only state variable of ``WebSocketEndpoint``."""

    IDLE = "idle"  # client: initiate() not called yet
    HANDSHAKE = "handshake"  # waiting for the answer (client) or the request (server)
    REQUESTED = "requested"  # server: request parsed, accept() or reject() pending
    OPEN = "open"  # messages flow both ways
    CLOSING = "closing"  # our Close is sent: no more messages out, the peer's still read
    CLOSED = "closed"  # the peer's Close arrived (ours is sent or queued), or the EOF
    REJECTED = "rejected"  # the upgrade was refused, by either side
    FAILED = "failed"  # a violation; its error is raised again by every receive_data


class EndpointOptions(TypedDict, total=False):
    """``WebSocketEndpoint``'s keyword arguments, which subclasses pass through."""

    request: RequestReceived | None
    trailing_data: bytes
    max_reject_body: int


class WebSocketEndpoint:
    """Handshake and open-state plumbing shared by the tunnel and channel endpoints.

    Subclasses implement ``_on_message`` (and, for clients, may refuse the server's
    choice in ``_accepting``) and turn messages into their own events; the handshake,
    ping and close events are the same for both. Automatic replies (pong, the Close
    echo, the Close after a violation) are queued for ``data_to_send()``.
    """

    _error_type: type[WebSocketError] = WebSocketError

    def __init__(
        self,
        client: bool,
        *,
        request: RequestReceived | None = None,
        trailing_data: bytes = b"",
        max_reject_body: int = DEFAULT_MAX_REJECT_BODY,
    ) -> None:
        self.client = client
        self.max_reject_body = max_reject_body
        self.subprotocol: str | None = None
        self.request = request  # server: the upgrade request
        self._error: WebSocketError | None = None  # the violation that made it FAILED
        self._client_handshake: ClientHandshake | None = None  # client: from initiate()
        self._server_handshake: ServerHandshake | None = None
        if client:
            self._state = State.IDLE
        elif request is not None:  # a request parsed elsewhere
            self._state = State.REQUESTED
        else:
            self._state = State.HANDSHAKE
            self._server_handshake = ServerHandshake()
        self._early = bytearray(trailing_data)  # server: frames that came before our 101
        self._pending = b""  # server: those frames, parsed on the first call after accept
        self._parser: FrameParser | None = None
        self._frames: FrameProtocol | None = None  # builds our control frames
        self._out: list[bytes] = []
        self._events: list[Event] = []

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_open(self) -> bool:
        """Whether data messages may be sent now."""
        return self._state is State.OPEN

    @property
    def error(self) -> WebSocketError | None:
        return self._error

    @property
    def trailing_data(self) -> bytes:
        """Server: bytes received after the upgrade request, not yet parsed."""
        handshake = self._server_handshake
        return handshake.trailing_data if handshake is not None else b""

    def data_to_send(self) -> bytes:
        """Drain the automatic replies queued by ``receive_data``."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: Buffer) -> list[Event]:
        """Parse received bytes; ``b""`` means the transport hit EOF."""
        state = self._state
        if state is State.OPEN or state is State.CLOSING:
            self._receive_open(data if data else None)
        elif state is State.HANDSHAKE:
            if self.client:
                self._receive_response(data)
            else:
                self._receive_request(data)
        elif state is State.REQUESTED:
            self._early += data  # frames sent before our 101: parsed after accept()
        elif state is State.FAILED:
            if self._error is not None:
                raise self._error
        elif state is State.IDLE:
            raise WebSocketStateError("call initiate() first")
        events, self._events = self._events, []
        return events

    def _receive_open(self, data: Buffer | None) -> None:
        """Feed open-state bytes (None: EOF) to the frame parser; it calls the hooks."""
        if self._pending:
            pending, self._pending = self._pending, b""
            self._feed(pending)
        if data is not None:
            self._feed(data)
        elif self._state is not State.CLOSED:
            self._state = State.CLOSED
            self._on_terminated(CLOSE_ABNORMAL, "")

    def _feed(self, data: Buffer) -> None:
        parser = self._parser
        assert parser is not None
        if self._state is State.CLOSED:
            return
        try:
            parser.feed(data)
        except FrameError as exc:
            raise self._fail(self._error_type(exc.message, error_code=exc.error_code)) from None

    def _on_message(self, data: Buffer | str, finished: bool) -> None:
        """A piece of a data message: bytes (a slice of what was received) or text."""
        raise NotImplementedError

    def _on_ping(self, payload: bytes) -> None:
        if self._state is State.OPEN:
            self._out.append(bytes(self._control_frames().pong(payload)))

    def _on_pong(self, payload: bytes) -> None:
        self._events.append(PingAcknowledged(payload))

    def _on_close(self, code: int, reason: str) -> None:
        if self._state is State.OPEN:
            # The echo; no status code (1005) is echoed as an empty Close, as wsproto does.
            no_status = code == CLOSE_NO_STATUS
            self._out.append(self._close_frame(None if no_status else code, reason))
        self._state = State.CLOSED
        self._on_terminated(code, reason)

    def _on_terminated(self, code: int, reason: str) -> None:
        self._events.append(ConnectionTerminated(code, reason))

    def _fail(self, error: WebSocketError) -> WebSocketError:
        """Record ``error``, queue our Close frame if the connection is open, return it."""
        self._error = error
        if self._state is State.OPEN:
            self._out.append(self._close_frame(error.error_code, error.message[:100]))
        self._state = State.FAILED
        return error

    # ------------------------------------------------------------------ client handshake

    def _initiate(self, handshake: ClientHandshake) -> bytes:
        if self._state is not State.IDLE:
            raise WebSocketStateError("initiate() was already called")
        data = handshake.request()
        self._client_handshake = handshake
        self._state = State.HANDSHAKE
        return data

    def _receive_response(self, data: Buffer) -> None:
        """Feed the answer to our upgrade; once accepted, the frames that came with it."""
        handshake = self._client_handshake
        assert handshake is not None
        try:
            outcome = handshake.receive_data(data)
        except WebSocketError as exc:
            raise self._fail(self._error_type(exc.message, error_code=exc.error_code)) from None
        if outcome is None:
            return
        if isinstance(outcome, HandshakeAccepted):
            problem = self._accepting(outcome.subprotocol or None)
            if problem is None:
                self._open()
                self.subprotocol = outcome.subprotocol or None
                self._events.append(outcome)
                self._receive_open(handshake.trailing_data)
                if not data:
                    self._receive_open(None)
                return
            outcome = HandshakeRejected(101, problem, outcome.headers, b"")
        self._state = State.REJECTED
        self._events.append(outcome)

    def _accepting(self, subprotocol: str | None) -> str | None:
        """Client: called for a valid 101 before it counts as accepted; a reason to
        reject it instead (a ``HandshakeRejected`` with status 101), or None."""
        return None

    # ------------------------------------------------------------------ server handshake

    def _receive_request(self, data: Buffer) -> None:
        handshake = self._server_handshake
        assert handshake is not None
        if not data:
            self._state = State.CLOSED  # EOF before a complete request
            return
        try:
            request = handshake.receive_data(data)
        except HandshakeError:
            self._state = State.FAILED
            raise
        if request is not None:
            self.request = request
            self._state = State.REQUESTED
            self._events.append(request)

    def _accept(self, subprotocol: str | None, extra_headers: Sequence[tuple[str, str]]) -> bytes:
        if self._state is not State.REQUESTED or self.request is None:
            raise WebSocketStateError(f"cannot accept in state {self._state.value}")
        data = accept_response(self.request, subprotocol, extra_headers)
        self._open()
        # Parsed lazily: their events come out of the next receive_data.
        self._pending = self.trailing_data + self._early
        self._early = bytearray()
        self.subprotocol = subprotocol
        return data

    def reject(
        self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """Server: refuse the upgrade (or a request that raised ``HandshakeError``)."""
        state = self._state
        refusable = state is State.REQUESTED or state is State.HANDSHAKE
        if self.client or not (refusable or (state is State.FAILED and self._error is None)):
            raise WebSocketStateError(f"cannot reject in state {state.value}")
        data = reject_response(status, body, headers)
        self._state = State.REJECTED
        return data

    # ------------------------------------------------------------------ open state

    def _open(self) -> None:
        self._state = State.OPEN
        self._parser = FrameParser(
            self.client, self._on_message, self._on_ping, self._on_pong, self._on_close
        )
        self._frames = FrameProtocol(self.client, [])

    def _control_frames(self) -> FrameProtocol:
        frames = self._frames
        assert frames is not None
        return frames

    def _close_frame(self, code: int | None, reason: str | None) -> bytes:
        """Our Close frame (wsproto builds it); no data frame may follow it."""
        self._state = State.CLOSING
        return bytes(self._control_frames().close(code, reason))

    # ------------------------------------------------------------------ sending

    def _require_open(self) -> None:
        if self._state is not State.OPEN:
            raise WebSocketStateError(f"cannot send data in state {self._state.value}")

    def _message(self, opcode: int, payload: Buffer) -> bytes:
        self._require_open()
        return encode_message(opcode, payload, mask=self.client)

    def ping(self, payload: bytes = b"") -> bytes:
        """A WebSocket ping (at most 125 bytes); the answer is ``PingAcknowledged``."""
        self._require_open()
        return bytes(self._control_frames().ping(payload))

    def close(self, error_code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Our Close frame (1000 = EOF); b"" if one was already sent or it is too late."""
        if self._state is not State.OPEN:
            return b""
        return self._close_frame(error_code, reason or None)
