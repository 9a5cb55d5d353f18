"""Events returned by ``H2PairClient.receive_data`` and ``H2PairServer.receive_data``:
h2's events mapped to small frozen ones; all past tense, all immutable."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LinkTerminated",
    "PairData",
    "PairEnded",
    "PairEvent",
    "PairReset",
    "PairResponse",
    "PairStreamOpened",
    "PingAnswered",
    "WindowOpened",
]


@dataclass(frozen=True, slots=True)
class PairStreamOpened:
    """Server: the client opened a stream. With ``end_stream`` a ``PairEnded`` follows."""

    stream_id: int
    headers: dict[str, str]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class PairResponse:
    """Client: the agent answered a stream (200, or an error status)."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class PairData:
    """Bytes on a stream (often a slice of a received chunk: write it out, or copy it to
    keep it); acknowledge ``flow_controlled_length`` once written out."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class PairEnded:
    """The peer half-closed the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PairReset:
    """The stream is gone: RST_STREAM from the peer (``remote``), or h2 reset it."""

    stream_id: int
    code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More may be sent on ``stream_id``; 0 means the connection window or every
    stream's window (the peer's INITIAL_WINDOW_SIZE) grew: retry all blocked sends."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The peer acknowledged our ping carrying ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LinkTerminated:
    """The peer sent GOAWAY; streams above ``last_stream_id`` were not processed. After a
    graceful one (``code`` 0) a client's streams up to it go on to their end (drain)."""

    code: int
    last_stream_id: int


PairEvent = (
    PairStreamOpened
    | PairResponse
    | PairData
    | PairEnded
    | PairReset
    | WindowOpened
    | PingAnswered
    | LinkTerminated
)
