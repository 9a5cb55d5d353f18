"""Loopback TCP helpers: an echo server, a refused port, a bulk round trip, and a
recording relay (to look at the bytes two peers exchange).

The echo server stands in for the pod behind a port-forward. It honours
half-close: when the client shuts down its sending side, the server finishes
echoing and then closes, so ``roundtrip`` can read until EOF and compare
everything that came back.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "EchoServer",
    "Recording",
    "RecordingProxy",
    "RoundTrip",
    "echo_server",
    "recording_proxy",
    "refused_port",
    "roundtrip",
]

_CHUNK = 64 * 1024


class _EchoHandler(socketserver.BaseRequestHandler):
    server: _EchoTCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.count_connection()
        try:
            while data := sock.recv(_CHUNK):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer reset; nothing left to echo


class _EchoTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024  # tests open 100+ connections at once

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _EchoHandler)
        self._lock = threading.Lock()
        self.connections = 0

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1


class EchoServer:
    """A threaded TCP echo server on ``host`` (port chosen by the OS).

    Use :func:`echo_server` for a context-managed instance, or call
    :meth:`start` / :meth:`close` yourself.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _EchoTCPServer((host, port))
        self.host: str = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"echo-{self.port}",
            daemon=True,
        )

    @property
    def connections(self) -> int:
        """How many connections have been accepted so far."""
        return self._server.connections

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and close the listening socket (live connections finish)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def echo_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[EchoServer]:
    """Run an :class:`EchoServer` for the duration of the ``with`` block (``port`` 0: one
    the OS chooses)."""
    server = EchoServer(host, port).start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """Yield a port on which connections are refused.

    The port is bound but not listening for the whole block, so nothing else can
    grab it and every connect gets ``ECONNREFUSED`` (Linux).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


@dataclass(frozen=True)
class RoundTrip:
    """Result of :func:`roundtrip`."""

    sent: int
    received: bytes
    sent_sha256: str

    @property
    def received_sha256(self) -> str:
        return hashlib.sha256(self.received).hexdigest()

    @property
    def intact(self) -> bool:
        """True when exactly what was sent came back."""
        return len(self.received) == self.sent and self.received_sha256 == self.sent_sha256


def roundtrip(host: str, port: int, payload: bytes, *, timeout: float = 20.0) -> RoundTrip:
    """Send ``payload`` to ``host:port``, half-close, and read until EOF.

    Sending runs in a thread while the caller reads, so neither side can stall on
    full buffers. Every socket operation is bounded by ``timeout`` seconds.

    Raises:
        OSError: connecting, sending or receiving failed (``TimeoutError`` on timeout).
    """
    errors: list[BaseException] = []
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:

        def send() -> None:
            try:
                view = memoryview(payload)
                for offset in range(0, len(view), _CHUNK):
                    sock.sendall(view[offset : offset + _CHUNK])
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, name=f"roundtrip-send-{port}", daemon=True)
        sender.start()
        try:
            while data := sock.recv(_CHUNK):
                chunks.append(data)
        finally:
            sender.join(timeout)
    if errors:
        raise errors[0]
    return RoundTrip(
        sent=len(payload),
        received=b"".join(chunks),
        sent_sha256=hashlib.sha256(payload).hexdigest(),
    )


@dataclass
class Recording:
    """The bytes of one relayed connection, in each direction."""

    #: client -> target bytes
    upstream: bytearray = field(default_factory=bytearray)
    #: target -> client bytes
    downstream: bytearray = field(default_factory=bytearray)
    #: set once both directions have ended
    finished: threading.Event = field(default_factory=threading.Event)


def _relay(
    src: socket.socket, dst: socket.socket, record: bytearray, notify: Callable[[], None]
) -> None:
    try:
        while data := src.recv(_CHUNK):
            record.extend(data)
            notify()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class _RelayHandler(socketserver.BaseRequestHandler):
    server: _RelayTCPServer

    def handle(self) -> None:
        client: socket.socket = self.request
        recording = self.server.add_recording()
        try:
            with socket.create_connection(self.server.target, timeout=10) as upstream:
                upstream.settimeout(None)
                back = threading.Thread(
                    target=_relay,
                    args=(upstream, client, recording.downstream, self.server.notify),
                    daemon=True,
                )
                back.start()
                _relay(client, upstream, recording.upstream, self.server.notify)
                back.join()
        finally:
            recording.finished.set()
            self.server.notify()


class _RelayTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], target: tuple[str, int]) -> None:
        super().__init__(address, _RelayHandler)
        self.target = target
        self.cond = threading.Condition()
        self.recordings: list[Recording] = []

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def add_recording(self) -> Recording:
        recording = Recording()
        with self.cond:
            self.recordings.append(recording)
            self.cond.notify_all()
        return recording


class RecordingProxy:
    """A TCP relay on ``127.0.0.1`` to ``target`` that records every connection.

    Point a client at :attr:`port` instead of the real server, then inspect
    :attr:`recordings` (one :class:`Recording` per accepted connection, in accept order).
    """

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self._server = _RelayTCPServer((host, 0), (target_host, target_port))
        self.host: str = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"relay-{self.port}",
            daemon=True,
        )

    @property
    def recordings(self) -> list[Recording]:
        with self._server.cond:
            return list(self._server.recordings)

    def wait_for_connection(
        self, predicate: Callable[[Recording], bool], timeout: float
    ) -> Recording:
        """Return the first recording for which ``predicate`` holds.

        The predicate is re-evaluated whenever any relayed connection is accepted,
        carries bytes or ends; it usually looks at ``upstream``.

        Raises:
            TimeoutError: none matched within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._server.cond:
            while True:
                for recording in self._server.recordings:
                    if predicate(recording):
                        return recording
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no relayed connection matched within {timeout:.1f}s")
                self._server.cond.wait(remaining)

    def start(self) -> RecordingProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting (relayed connections run until their peers close)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def recording_proxy(target_host: str, target_port: int) -> Iterator[RecordingProxy]:
    """Run a :class:`RecordingProxy` to ``target_host:target_port`` for the block."""
    proxy = RecordingProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
