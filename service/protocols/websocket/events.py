"""Events returned by the WebSocket endpoints (tunnel and channels); all past tense,
all immutable. The names are those of the other protocols (``DataReceived``,
``PingAcknowledged``, ``ConnectionTerminated``; protocols.md, "Event names").
``PingAcknowledged`` is h2's class, from ``protocols.events``."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import PingAcknowledged
from .errors import CLOSE_NORMAL

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "ErrorTextReceived",
    "Event",
    "HandshakeAccepted",
    "HandshakeRejected",
    "HeaderList",
    "PingAcknowledged",
    "RequestReceived",
]

HeaderList = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """An upgrade request (server side). ``headers`` has every request header with a
    lowercase name, in order; ``path`` is the request target, query included."""

    path: str
    headers: HeaderList
    subprotocols: tuple[str, ...]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    """The server switched protocols (client side); ``subprotocol`` is "" when it
    selected none."""

    subprotocol: str
    headers: HeaderList


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """The server did not accept the upgrade (client side): a non-101 answer, or a 101
    that failed the WebSocket checks (``status`` 101, the problem in ``reason``; drop
    that connection). ``body`` is bounded. For the tunnel this is kubectl's fallback
    condition (protocols.md §3)."""

    status: int
    reason: str
    headers: HeaderList
    body: bytes


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes received. In the tunnel: the next bytes of the SPDY stream (payloads of
    binary messages, in order; ``port_index`` is 0). In v4 channels: bytes on the data
    channel of port ``port_index`` (its index in the ``ports`` list)."""

    data: bytes
    port_index: int = 0


@dataclass(frozen=True, slots=True)
class ErrorTextReceived:
    """v4 channels: one message on the error channel of ``port_index``: that port's
    connection failed."""

    port_index: int
    text: str


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The WebSocket closed. ``error_code`` 1000 is a clean EOF; anything else is an
    error (1006: the transport ended without a Close frame). Our Close reply, if due,
    is queued."""

    error_code: int
    reason: str

    @property
    def clean(self) -> bool:
        return self.error_code == CLOSE_NORMAL


Event = (
    RequestReceived
    | HandshakeAccepted
    | HandshakeRejected
    | DataReceived
    | ErrorTextReceived
    | PingAcknowledged
    | ConnectionTerminated
)
