"""What an agent connection switches to once it is upgraded: one session per transport.

The modules have the same names as the runner's ``runner/links/``:

* ``spdy``: SPDY/3.1 (protocols.md §1), ``SpdyPortForwardSession``;
* ``wstunnel``: SPDY/3.1 tunnelled in a WebSocket (§3), ``WsTunnelSession``, which runs
  the SPDY session on the unwrapped bytes;
* ``wschannel``: v4 WebSocket channels (§2), ``WsChannelSession``;
* ``h2``: podgate's HTTP/2 stream pairs (§5.2), ``H2Session``.

``server.py`` feeds each one the bytes of its connection through ``ClientSession``.
"""

from __future__ import annotations

from typing import Protocol

from service.agent.sessions.h2 import H2Session
from service.agent.sessions.spdy import SpdyPortForwardSession
from service.agent.sessions.wschannel import WsChannelSession
from service.agent.sessions.wstunnel import WsTunnelSession

__all__ = [
    "ClientSession",
    "H2Session",
    "SpdyPortForwardSession",
    "WsChannelSession",
    "WsTunnelSession",
]


class ClientSession(Protocol):
    """What a connection switches to: SPDY, tunnelled SPDY, v4 channels or HTTP/2."""

    def receive(self, data: bytes) -> None:
        """Bytes from the client connection, as they arrive."""

    def client_eof(self) -> None:
        """The client closed its side of the connection."""

    def close(self) -> None:
        """End everything now: the pod sockets, the dials, the client connection."""

    def pause_writing(self) -> None:
        """The client connection's write buffer is full: stop reading the pods."""

    def resume_writing(self) -> None:
        """It has drained: read the pods again."""

    def goaway(self) -> None:
        """Graceful shutdown: accept no new forwarded connections."""

    @property
    def busy(self) -> bool:
        """Whether any forwarded connection is open."""

    async def wait_drained(self) -> None:
        """Return once no forwarded connection is left."""
