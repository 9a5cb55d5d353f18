"""Events returned by ``H2PairClient.receive_data`` and ``H2PairServer.receive_data``:
h2's events mapped to small frozen ones; all past tense, all immutable.

The names are those of every protocol here (protocols.md, "Event names"), h2's own
where it has one; codes from the wire are in ``error_code``. ``StreamEnded``,
``PingAcknowledged`` and ``ConnectionTerminated`` are shared, from ``protocols.events``."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import ConnectionTerminated, PingAcknowledged, StreamEnded

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "PingAcknowledged",
    "StreamEnded",
    "StreamOpened",
    "StreamReplied",
    "StreamReset",
    "WindowOpened",
]


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """Server: the client opened a stream. With ``end_stream`` a ``StreamEnded`` follows."""

    stream_id: int
    headers: dict[str, str]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReplied:
    """Client: the agent answered a stream (200, the SYN_REPLY equivalent, or an error
    status)."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes on a stream (often a slice of a received chunk: write it out, or copy it to
    keep it); acknowledge ``flow_controlled_length`` once written out."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: RST_STREAM(``error_code``) from the peer (``remote``), or h2
    reset it."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More may be sent on ``stream_id``; 0 means the connection window or every
    stream's window (the peer's INITIAL_WINDOW_SIZE) grew: retry all blocked sends."""

    stream_id: int


Event = (
    StreamOpened
    | StreamReplied
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | PingAcknowledged
    | ConnectionTerminated
)
