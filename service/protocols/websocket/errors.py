"""Typed WebSocket errors; each carries the code to send in ``error_code``.

For a violation on an open WebSocket that is the status of the Close frame queued for
``data_to_send()``; for a refused upgrade it is the HTTP status to answer with.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_NO_STATUS",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "ChannelError",
    "ChannelRequestError",
    "FrameError",
    "HandshakeError",
    "TunnelError",
    "WebSocketError",
    "WebSocketStateError",
]

# Close status codes (RFC 6455 §7.4.1).
CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005  # a Close frame without a status code (never sent as one)
CLOSE_ABNORMAL: Final = 1006  # no Close frame: the transport ended (never sent on the wire)
CLOSE_INVALID_DATA: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009


class WebSocketError(Exception):
    """A WebSocket-level violation by the peer (or an unusable handshake answer).

    ``error_code`` is the status of the Close frame that was queued for
    ``data_to_send()`` (1002 protocol error, 1003 unsupported data, 1007 invalid
    payload, 1009 too big) when the connection was open.
    """

    def __init__(self, message: str, *, error_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code})"


class FrameError(WebSocketError):
    """A frame that breaks RFC 6455 (raised by ``FrameParser``).

    The messages are wsproto's, so that a Close reason reads as wsproto's would.
    """

    def __init__(self, message: str, error_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message, error_code=error_code)


class TunnelError(WebSocketError):
    """The tunnel cannot go on; never a reason to fall back to plain SPDY."""


class ChannelError(WebSocketError):
    """A violation of the channel protocol (bad port prefix, bad base64, ...)."""


class WebSocketStateError(Exception):
    """Local misuse: the endpoint cannot do this in its current state."""


class HandshakeError(Exception):
    """An upgrade request that must be refused with HTTP status ``error_code`` (server
    side). Answer it with ``reject(err.error_code, err.message.encode(), err.headers)``.
    """

    def __init__(
        self, error_code: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"


class ChannelRequestError(HandshakeError):
    """A port-forward WebSocket request to refuse: 400 (ports) or 403 (subprotocol)."""
