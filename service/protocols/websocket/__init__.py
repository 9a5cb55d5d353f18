"""Sans-IO WebSocket port-forward, split like wsproto: ``errors``, ``events``, ``frames``
(the incremental parser, headers, masking), ``handshake`` (the HTTP/1.1 upgrade),
``connection`` (the endpoint: messages, ping/pong, the close handshake), and the two
protocols on top: ``tunnel`` (SPDY tunnelled in a WebSocket, protocols.md §3) and
``channel`` (v4 channels, §2)."""

from . import channel, connection, errors, events, frames, handshake, tunnel
from .channel import *
from .connection import *
from .errors import *
from .events import *
from .frames import *
from .handshake import *
from .tunnel import *

# One list of public names: each submodule's own ``__all__``.
__all__ = [
    *channel.__all__,
    *connection.__all__,
    *errors.__all__,
    *events.__all__,
    *frames.__all__,
    *handshake.__all__,
    *tunnel.__all__,
]
