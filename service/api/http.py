"""uvicorn's h11 protocol with a deadline for every request head (slowloris).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for
a request head that arrives a byte at a time, or not at all on a fresh connection. Here
the head of each request must be complete within ``header_timeout`` seconds of the
connection (or of the first byte after a response); then the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.aio.timer import Timer
from service.api.problems import PROBLEM_JSON, problem_bytes

__all__ = ["guarded_h11"]


class _GuardedH11Protocol(H11Protocol):
    header_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline = Timer(self._head_timed_out)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline.start(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and not self._head_deadline.pending:
            # A new request begins: its head has a deadline.
            self._head_deadline.start(self.header_timeout)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_deadline.cancel()

    def send_400_response(self, msg: str) -> None:
        # As every other error of the API: problem+json, not uvicorn's text/plain.
        body = problem_bytes(
            400,
            "not a valid HTTP/1.1 request (request line, headers, or a request head over 64 KiB)",
        )
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {"header_timeout": header_timeout})
