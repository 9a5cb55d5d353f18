"""The words every layer shares: a session's status and its transports.

Store, runner and API schemas use these enums (they are `str`s, so they compare and
serialise as their values); nothing here imports anything of the project.
"""

from __future__ import annotations

import enum

__all__ = ["SessionStatus", "Transport"]


class SessionStatus(enum.StrEnum):
    """What a client reads in ``status``; stored as plain text (no database enum type)."""

    PENDING = "pending"
    READY = "ready"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


class Transport(enum.StrEnum):
    """How a session reaches the cluster: requested (``auto`` too) or negotiated."""

    AUTO = "auto"  # the WebSocket tunnel, else SPDY on a refused upgrade (kubectl 1.31+)
    SPDY = "spdy"
    WEBSOCKET = "websocket"  # SPDY tunnelled in a WebSocket
    WS_CHANNEL = "ws-channel"  # one v4.channel.k8s.io WebSocket per connection
    H2 = "h2"  # podgate's own HTTP/2 link to a podgate agent
