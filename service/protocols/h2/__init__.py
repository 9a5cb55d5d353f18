"""Sans-IO stream pairs over HTTP/2, podgate's own link to its agent (protocols.md §5.2).

``pairs`` maps python-hyper h2's connection to stream pairs (``H2PairClient``,
``H2PairServer``, header validation, the agent handshake), with its ``events`` and
``errors``; ``internals`` holds everything that reaches into h2 4.x's internals.
"""

from .errors import PairLimitReached, PairProtocolError, PairRequestError, PairStateError
from .events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
    WindowOpened,
)
from .pairs import (
    AGENT_KIND,
    AGENT_PATH,
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
    H2PairClient,
    H2PairServer,
    agent_identity,
    parse_pair_path,
    validate_pair_headers,
)

__all__ = [
    "AGENT_KIND",
    "AGENT_PATH",
    "CONNECTION_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME_SIZE",
    "STREAM_WINDOW",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "H2PairClient",
    "H2PairServer",
    "PairLimitReached",
    "PairProtocolError",
    "PairRequestError",
    "PairStateError",
    "PingAcknowledged",
    "StreamEnded",
    "StreamOpened",
    "StreamReplied",
    "StreamReset",
    "WindowOpened",
    "agent_identity",
    "parse_pair_path",
    "validate_pair_headers",
]
