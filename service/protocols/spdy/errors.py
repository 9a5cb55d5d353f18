"""Typed SPDY errors: each carries the wire status to send and the scope it applies to."""

from __future__ import annotations

from typing import Self

__all__ = [
    "CompressionError",
    "ConnectionStateError",
    "FrameError",
    "HeaderError",
    "ProtocolError",
    "StreamStateError",
]

# Numeric value shared by RstStatus.PROTOCOL_ERROR and GoAwayStatus.PROTOCOL_ERROR.
_PROTOCOL_ERROR = 1


class ProtocolError(Exception):
    """A SPDY protocol violation.

    ``error_code`` is the status to put on the wire. ``stream_id`` is ``None`` for a
    connection-level error (answer with GOAWAY) or the stream to answer with RST_STREAM.
    """

    error_code: int
    stream_id: int | None

    def __init__(
        self, message: str, *, error_code: int = _PROTOCOL_ERROR, stream_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = int(error_code)
        self.stream_id = stream_id

    def for_stream(self, stream_id: int, error_code: int | None = None) -> Self:
        """A copy of this error scoped to ``stream_id`` (same class and message)."""
        code = self.error_code if error_code is None else error_code
        return type(self)(self.message, error_code=code, stream_id=stream_id)

    def __str__(self) -> str:
        scope = "connection" if self.stream_id is None else f"stream {self.stream_id}"
        return f"{self.message} ({scope}, status {self.error_code})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, error_code={self.error_code}, "
            f"stream_id={self.stream_id})"
        )


class FrameError(ProtocolError):
    """A malformed frame: bad version, unknown control type, bad length or flags."""


class CompressionError(ProtocolError):
    """A header block that cannot be inflated or parsed; the shared zlib context is lost."""


class HeaderError(ProtocolError):
    """A well-formed header block whose content breaks the rules (case, duplicates, ...)."""


class StreamStateError(ProtocolError):
    """Local misuse of a stream: unknown, already closed for sending, reset, or replied."""


class ConnectionStateError(ProtocolError):
    """Local misuse: the connection cannot do this any more (GOAWAY, error, ids exhausted)."""
