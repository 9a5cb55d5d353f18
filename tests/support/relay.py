"""TCP relays that misbehave on command.

`FreezableRelay` stops forwarding bytes, both ways, without closing anything, like a
hung node or a NAT that silently dropped its mapping. Pings sent through it go
unanswered until it is thawed; then everything held is delivered::

    with FreezableRelay(("127.0.0.1", agent_port)) as relay:
        kubeconfig = write_kubeconfig(path, f"http://127.0.0.1:{relay.port}")
        relay.freeze(); ...; relay.thaw()

`CuttableRelay` closes its connections (a proxy restarting) and holds the new ones,
accepted but not yet connected onward, until released: what a client does meanwhile,
and what it asks for when it gets through, can be seen one step at a time::

    with CuttableRelay(("127.0.0.1", api_port)) as relay:
        relay.cut_and_hold(); ...; assert relay.held.wait(10); relay.release()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self

__all__ = ["CuttableRelay", "FreezableRelay"]

_CHUNK = 64 * 1024


class _Relay:
    """What both relays share: a listener, connections pumped onward in threads (one per
    direction), and a close that ends them all."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._accepted(client)

    def _accepted(self, client: socket.socket) -> None:
        self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        """Connect ``client`` to the target and pump both ways."""
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._pump, args=(src, dst), name="relay-pump", daemon=True
            ).start()

    def _hold(self) -> None:
        """Called with each read in hand: return when it may be passed on."""

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                self._hold()
                if self._closed.is_set():
                    return
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            self._hold()
            for sock in (src, dst):  # a reset on one side is passed on as a reset
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _release_waiters(self) -> None:
        """Let threads waiting on the relay's own events go (on close)."""

    def close(self) -> None:
        self._closed.set()
        self._release_waiters()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._cut()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FreezableRelay(_Relay):
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(target, host)
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0
        self._start()

    def freeze(self) -> None:
        """Stop forwarding (bytes already read are held, nothing is closed)."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            self.accepted += 1
        self._connect(client)

    def _hold(self) -> None:
        self._flowing.wait()  # frozen: hold what was read, forward nothing

    def _release_waiters(self) -> None:
        self._flowing.set()


class CuttableRelay(_Relay):
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(target, host)
        self._open = threading.Event()
        self._open.set()
        #: Set once a connection has arrived while holding (the client came back).
        self.held = threading.Event()
        self._start()

    def cut_and_hold(self) -> None:
        """Close every open connection (both ways); hold the ones that come next."""
        self.held.clear()
        self._open.clear()
        self._cut()

    def release(self) -> None:
        """Connect the held connections onward, and the next ones at once."""
        self._open.set()

    def _accepted(self, client: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(client,), name="relay-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if not self._open.is_set():
            self.held.set()
            self._open.wait()
        if self._closed.is_set():
            client.close()
            return
        self._connect(client)

    def _release_waiters(self) -> None:
        self._open.set()
