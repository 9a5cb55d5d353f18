"""An API server's WebSocket port-forward endpoints that misbehave on demand, for the
client side of podgate's `websocket` (SPDY tunnelled in a WebSocket, protocols.md §3)
and `ws-channel` (v4 channels, §2) transports.

No real API server can be told to break a WebSocket in the middle of a session, so this
stands in for one, built from parts that are not podgate's:

- the WebSocket layer is the `websockets` library (handshakes, framing, the closing
  handshake, its masking and UTF-8 checks);
- the SPDY peer inside a tunnel is the Go spdystream server of tests/interop (started
  without `--tunnel`): each accepted tunnel is relayed to it as a ``POST …/portforward``
  SPDY/3.1 upgrade, the payloads of binary messages as its byte stream and what it sends
  as binary messages, which is what an API server does between a tunnelling client and a
  kubelet (KEP-4006);
- a v4 channel WebSocket (``?ports=P``) is relayed to the pod, 127.0.0.1:P, as a kubelet
  does: the two port prefixes, then channel 0 both ways; the pod's EOF ends it with a
  Close 1000, the client's Close ends the pod connection.

The `websockets` server also answers what podgate reads before it dials: GET pod (a
Running pod), a watch (400, so clients poll, as against podgate's agent) and
``GET …/portforward`` without an upgrade (400 "Upgrade request required", what an API
server answers once it has authorized the request).

A front door (`url`, a plain asyncio TCP server) sees each connection's first request
and logs it (`requests`): a SPDY ``POST`` (the fallback of `auto`) is relayed to the Go
server, anything else to the `websockets` server, except a WebSocket upgrade to a pod
named in `HANDSHAKE_FAULTS`, for which it plays a server that fails *inside* the
upgrade, writing those bytes by hand (no library would). A tunnel to the pod named
``no-subprotocol`` is accepted by `websockets` without selecting a subprotocol.

Faults in the middle of a session (`break_tunnel`, `break_channel`), on one WebSocket:

- ``close:CODE`` — `websockets`' closing handshake with that code;
- ``text`` — a text message (`websockets` sends it; a tunnel carries binary only);
- ``opcode-3``, ``close-1005``, ``ping-126``, ``masked``, ``rsv1`` — frames that break
  RFC 6455 (a reserved opcode; a Close with a code that must not be sent; a control frame
  longer than 125 bytes; a masked frame from a server; RSV1 without an extension),
  written on the WebSocket's transport by hand, since `websockets` refuses to send them;
- ``abort`` — the TCP connection is dropped, no Close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.http11 import Request, Response

from tests.support.podgate import background_loop

__all__ = ["HANDSHAKE_FAULTS", "RAW_FRAMES", "TUNNEL", "V4", "OpenSocket", "WsApiServer"]

TUNNEL = "SPDY/3.1+portforward.k8s.io"
_TUNNEL_TOKEN = "SPDY-3.1-portforward.k8s.io"  # what websockets sees of it (a token)
V4 = "v4.channel.k8s.io"
WAIT = 20.0

_KEY = os.urandom(4)

#: Frames that break RFC 6455 (server to client), each a whole frame.
RAW_FRAMES: dict[str, bytes] = {
    "opcode-3": b"\x83\x00",
    "close-1005": b"\x88\x02" + struct.pack("!H", 1005),
    "ping-126": b"\x89\x7e" + struct.pack("!H", 126) + b"p" * 126,
    "masked": b"\x82\x81" + _KEY + bytes([ord("x") ^ _KEY[0]]),
    "rsv1": b"\xc2\x01x",
}

#: Pods whose WebSocket upgrade fails inside the handshake, and how.
HANDSHAKE_FAULTS: dict[str, str] = {
    "close-at-upgrade": "the connection is closed (FIN) before any answer",
    "reset-at-upgrade": "the connection is reset (RST) before any answer",
    "truncated-101": "the 101's head is cut off after its second line, then FIN",
    "eof-after-101": "a complete 101 from websockets, then FIN before any frame",
    "silent-at-upgrade": "the request is read and never answered",
}


@dataclass
class OpenSocket:
    """One accepted WebSocket: a tunnel or a channel connection."""

    pod: str
    kind: str  # "tunnel" | "channel"
    ws: ServerConnection
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: The Close the client sent, once the connection ended (None: none came).
    close_received: Close | None = None


def _json(status: int, body: object) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _status(code: int, message: str) -> Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return _json(code, body | {"code": code})


def _pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"phase": "Running"},
    }


def _pod_name(path: str) -> str:
    """NAME in /api/v1/namespaces/NS/pods/NAME[/portforward] ("" for other paths)."""
    parts = urlsplit(path).path.split("/")
    return parts[6] if len(parts) >= 7 and parts[1:4] == ["api", "v1", "namespaces"] else ""


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        # Why: websockets parses Sec-WebSocket-Protocol as RFC 6455 tokens, which "/" is
        # not; gorilla/websocket (an API server's) takes the value as it is. The tunnel's
        # name goes through the handshake as a token and is put back in the 101.
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        if offered:
            del request.headers["Sec-WebSocket-Protocol"]
            for value in offered:
                request.headers["Sec-WebSocket-Protocol"] = value.replace(TUNNEL, _TUNNEL_TOKEN)
        return None  # the WebSocket handshake goes on
    url = urlsplit(request.path)
    parts = url.path.split("/")
    if parts[-1] == "portforward":
        return _status(400, "Upgrade request required")
    if len(parts) == 6 and parts[5] == "pods" and "watch=true" in url.query:
        return _status(400, "this stand-in serves no watch")
    if len(parts) == 7 and parts[5] == "pods":
        return _json(200, _pod(parts[4], parts[6]))
    return _status(404, f"the server could not find the requested resource ({url.path})")


def _process_response(
    connection: ServerConnection, request: Request, response: Response
) -> Response | None:
    if response.headers.get("Sec-WebSocket-Protocol") == _TUNNEL_TOKEN:
        del response.headers["Sec-WebSocket-Protocol"]
        response.headers["Sec-WebSocket-Protocol"] = TUNNEL
    return response


def _select_subprotocol(connection: ServerConnection, offered: Any) -> Any:
    assert connection.request is not None
    if _pod_name(connection.request.path) == "no-subprotocol":
        return None
    for wanted in (_TUNNEL_TOKEN, V4):
        if wanted in offered:
            return wanted
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class WsApiServer:
    """The stand-in (see the module docstring); its methods are called from the test's
    thread, the servers run on their own event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spdy_backend: tuple[str, int]) -> None:
        self.loop = loop
        self.spdy_backend = spdy_backend
        self.url = ""
        self._ws_port = 0
        self._lock = threading.Lock()
        self._requests: list[str] = []
        self.sockets: list[OpenSocket] = []  # every WebSocket accepted, in order
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------- the test's side

    @property
    def requests(self) -> list[str]:
        """``METHOD PATH`` of each connection's first request, and ``UPGRADE PATH`` for
        each WebSocket upgrade, in order."""
        with self._lock:
            return list(self._requests)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT + 5)

    def wait_sockets(self, kind: str, count: int) -> list[OpenSocket]:
        """Wait until ``count`` WebSockets of ``kind`` are open; return every open one."""

        async def wait() -> list[OpenSocket]:
            async with asyncio.timeout(WAIT):
                while True:
                    open_ = [s for s in self.sockets if s.kind == kind and not s.ended.is_set()]
                    if len(open_) >= count:
                        return open_
                    await asyncio.sleep(0.02)  # polled on the server's loop, deadline above

        result: list[OpenSocket] = self._call(wait())
        return result

    def break_socket(self, sock: OpenSocket, fault: str) -> OpenSocket:
        """Do ``fault`` on ``sock`` and wait until that WebSocket has ended."""
        self._call(self._break(sock, fault))
        return sock

    def break_tunnel(self, pod: str, fault: str) -> OpenSocket:
        """``fault`` on the open tunnel to ``pod`` (there must be exactly one)."""
        [sock] = [s for s in self.wait_sockets("tunnel", 1) if s.pod == pod]
        return self.break_socket(sock, fault)

    async def _break(self, sock: OpenSocket, fault: str) -> None:
        ws = sock.ws
        if fault.startswith("close:"):
            await ws.close(int(fault.removeprefix("close:")), "broken on purpose")
        elif fault == "text":
            await ws.send("a text message")
        elif fault == "abort":
            ws.transport.abort()
        else:
            ws.transport.write(RAW_FRAMES[fault])
        async with asyncio.timeout(WAIT):
            await sock.ended.wait()

    # ------------------------------------------------------------- the servers

    async def start(self) -> None:
        ws_server = await serve(
            self._websocket,
            "127.0.0.1",
            0,
            process_request=_process_request,
            process_response=_process_response,
            select_subprotocol=_select_subprotocol,
            compression=None,
            max_size=None,
            ping_interval=None,
        )
        self._ws_server = ws_server
        self._ws_port = next(iter(ws_server.sockets)).getsockname()[1]
        self._front = await asyncio.start_server(self._front_door, "127.0.0.1", 0)
        port = self._front.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._front.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._ws_server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)

    def _log(self, line: str) -> None:
        with self._lock:
            self._requests.append(line)

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _front_door(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        method, path = head.split(b" ", 2)[:2]
        request = f"{method.decode()} {path.decode()}"
        upgrade = b"\r\nupgrade: websocket\r\n" in head.lower()
        self._log(f"UPGRADE {path.decode()}" if upgrade else request)
        fault = _pod_name(path.decode()) if upgrade else ""
        if fault in HANDSHAKE_FAULTS and fault != "eof-after-101":
            await self._fail_handshake(fault, reader, writer)
            return
        backend = self.spdy_backend if method == b"POST" else ("127.0.0.1", self._ws_port)
        try:
            up_reader, up_writer = await asyncio.open_connection(*backend)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        up_writer.write(head)
        if fault == "eof-after-101":
            answer = await up_reader.readuntil(b"\r\n\r\n")  # the whole 101, nothing after
            writer.write(answer)
            writer.close()
            up_writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _fail_handshake(
        self, fault: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if fault == "close-at-upgrade":
            writer.close()
        elif fault == "reset-at-upgrade":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif fault == "truncated-101":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
            await writer.drain()
            writer.close()
        else:  # silent: read whatever comes, answer nothing, until the client leaves
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            writer.close()

    async def _websocket(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        pod = _pod_name(ws.request.path)
        kind = "channel" if "ports=" in urlsplit(ws.request.path).query else "tunnel"
        sock = OpenSocket(pod, kind, ws)
        try:
            if kind == "channel":
                await self._channel(ws, sock)
            elif ws.subprotocol == _TUNNEL_TOKEN:
                await self._tunnel(ws, sock)
            else:  # a tunnel accepted without its subprotocol: the client leaves
                await ws.wait_closed()
        finally:
            sock.close_received = ws.protocol.close_rcvd
            sock.ended.set()

    async def _tunnel(self, ws: ServerConnection, sock: OpenSocket) -> None:
        """Relay the tunnel to the Go spdystream server over a SPDY/3.1 upgrade."""
        assert ws.request is not None
        reader, writer = await asyncio.open_connection(*self.spdy_backend)
        self._writers.add(writer)
        host, port = self.spdy_backend
        writer.write(
            f"POST {urlsplit(ws.request.path).path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n".encode()
        )
        answer = await reader.readuntil(b"\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 101"):
            await ws.close(1011, "the kubelet refused the upgrade")
            writer.close()
            return
        self.sockets.append(sock)

        async def to_kubelet() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                async for message in ws:
                    if isinstance(message, bytes):
                        writer.write(message)
                        await writer.drain()
            writer.close()

        async def from_kubelet() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                while data := await reader.read(65536):
                    await ws.send(data)
                await ws.close(1000)

        await _first_to_end(to_kubelet(), from_kubelet())
        writer.close()

    async def _channel(self, ws: ServerConnection, sock: OpenSocket) -> None:
        """Relay a v4 channel WebSocket to the pod port named in ``?ports=``."""
        assert ws.request is not None
        port = int(parse_qs(urlsplit(ws.request.path).query)["ports"][0])
        prefix = struct.pack("<H", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            await ws.send(b"\x00" + prefix)
            await ws.send(b"\x01" + prefix)
            await ws.send(b"\x01" + f"error forwarding port {port}: {exc}".encode())
            await ws.close(1000)
            return
        self._writers.add(writer)
        await ws.send(b"\x00" + prefix)
        await ws.send(b"\x01" + prefix)
        self.sockets.append(sock)

        async def to_pod() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                async for message in ws:
                    if isinstance(message, bytes) and message[:1] == b"\x00":
                        writer.write(message[1:])
                        await writer.drain()
            writer.close()  # the client's Close ends the pod connection, as a kubelet's

        async def from_pod() -> None:
            with contextlib.suppress(ConnectionClosed, OSError):
                while data := await reader.read(65536):
                    await ws.send(b"\x00" + data)
                await ws.close(1000)

        await _first_to_end(to_pod(), from_pod())
        writer.close()


async def _first_to_end(*coros: Any) -> None:
    """Run the two directions; when one ends, give the other a moment to end too (the
    closing handshake), then cancel it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=WAIT)
    for task in pending:
        task.cancel()


@contextlib.contextmanager
def ws_apiserver(spdy_backend: tuple[str, int]) -> Iterator[WsApiServer]:
    """Run the stand-in on a loop of its own until the block ends; ``spdy_backend`` is the
    Go spdystream server's address (without ``--tunnel``)."""
    with background_loop() as loop:
        server = WsApiServer(loop, spdy_backend)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(WAIT)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(WAIT + 5)
