"""One reused read buffer per thread for the upstream sockets (`asyncio.BufferedProtocol`).

Why: a new 256 KiB bytes object per read is a large allocation that glibc hands back to
the kernel and page-faults in again; reading into one buffer removes it. Sharing is safe
because a read is parsed, and whatever is kept of it copied, before the loop can start
the next read.
"""

from __future__ import annotations

import asyncio
import threading

READ_SIZE = 256 * 1024
_buffers = threading.local()


def shared_read_buffer() -> memoryview:
    """This thread's read buffer."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(READ_SIZE))
    return view


class SharedBufferReader(asyncio.BufferedProtocol):
    """A protocol read into `shared_read_buffer()`; `data_received` gets a view of each
    read, valid until it returns (copy what is kept)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return shared_read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(shared_read_buffer()[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        raise NotImplementedError
