"""Sans-IO stream pairs over HTTP/2, podgate's own link to its agent (protocols.md §5.2)."""

from .pairs import *  # noqa: F403
from .pairs import __all__ as __all__
