"""Sans-IO stream pairs over HTTP/2, podgate's own link to its agent (protocols.md §5.2).

``pairs`` maps python-hyper h2's connection to stream pairs (``H2PairClient``,
``H2PairServer``, header validation, the agent handshake), with its ``events`` and
``errors``; ``internals`` holds everything that reaches into h2 4.x's internals.
"""

from . import errors, events, pairs
from .errors import *
from .events import *
from .pairs import *

# One list of public names: each submodule's own ``__all__``.
__all__ = [*errors.__all__, *events.__all__, *pairs.__all__]
