"""The events whose payload is the same in several protocols: one class each, which the
protocols' own ``events`` modules re-export under that name (protocols.md, "Event names").
All past tense, all immutable; codes from the wire are in ``error_code``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConnectionTerminated", "PingAcknowledged", "StreamEnded"]


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (SPDY FIN, h2 END_STREAM); follows the event that
    carried it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer answered our ping carrying ``ping_data`` (h2 PING ACK, WebSocket pong, which
    may also come unsolicited)."""

    ping_data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The peer sent GOAWAY (``error_code``, SPDY's status); streams above
    ``last_stream_id`` (SPDY's last-good-stream-id) were not processed. SPDY ignores later
    bytes; in h2, after a graceful one (``error_code`` 0), a client's streams up to it go
    on to their end (drain)."""

    error_code: int
    last_stream_id: int
