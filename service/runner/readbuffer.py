"""One reused read buffer per thread for the upstream sockets (`asyncio.BufferedProtocol`).

Why: a new 256 KiB bytes object per read is a large allocation that glibc hands back to
the kernel and page-faults in again; reading into one buffer removes it. Sharing is safe
because a read is parsed, and whatever is kept of it copied, before the loop can start
the next read.
"""

from __future__ import annotations

import threading

READ_SIZE = 256 * 1024
_buffers = threading.local()


def shared_read_buffer() -> memoryview:
    """This thread's read buffer."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_SIZE))
    return view
