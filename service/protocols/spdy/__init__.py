"""Sans-IO SPDY/3.1 (client and server roles) for Kubernetes port-forward."""

from . import connection, errors, events, frames, headers
from .connection import *
from .errors import *
from .events import *
from .frames import *
from .headers import *

# One list of public names: each submodule's own ``__all__``.
__all__ = [*connection.__all__, *errors.__all__, *events.__all__, *frames.__all__, *headers.__all__]
