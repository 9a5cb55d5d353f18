"""Events returned by ``SpdyConnection.receive_data``; all past tense, all immutable.

The names are those of every protocol here (protocols.md, "Event names"): h2's
``DataReceived``, ``StreamEnded``, ``StreamReset``, ``ConnectionTerminated``, and
``PingAcknowledged``; codes from the wire are in ``error_code``. ``StreamEnded`` and
``ConnectionTerminated`` are the classes h2 uses too, from ``protocols.events``."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import ConnectionTerminated, StreamEnded
from .errors import ProtocolError

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "HeadersReceived",
    "PingAcknowledged",
    "PingReceived",
    "StreamEnded",
    "StreamOpened",
    "StreamRejected",
    "StreamReplied",
    "StreamReset",
]


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer sent SYN_STREAM. Answer with ``send_reply`` or ``reset_stream``."""

    stream_id: int
    headers: dict[str, str]
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class StreamReplied:
    """The peer answered our SYN_STREAM with SYN_REPLY."""

    stream_id: int
    headers: dict[str, str]
    fin: bool = False


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    stream_id: int
    headers: dict[str, str]
    fin: bool = False


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer sent RST_STREAM; the stream is gone. ``error_code`` is its status."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged us; the echo is already queued."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer echoed one of our pings."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """A stream-level error that the connection already answered with RST_STREAM.

    If ``stream_id`` was a live stream it is now gone, as after ``StreamReset``.
    """

    stream_id: int
    error: ProtocolError


Event = (
    StreamOpened
    | StreamReplied
    | HeadersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | PingReceived
    | PingAcknowledged
    | ConnectionTerminated
    | StreamRejected
)
