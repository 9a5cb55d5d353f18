"""The demo pod `default/hello` for `podgate serve --demo` on a machine with no cluster.

Its port 8080 answers any HTTP/1.x request with a short text page, and keeps or closes
the connection as the request asks (h11 parses the requests). It lives in-process: the
agent is built with a dialer for the ``demo`` target kind (``dial_demo``), which hands out
one end of a socket pair while this module serves the other end, so no extra port is
opened. This is a stand-in for a pod, and says so in its page.
"""

from __future__ import annotations

import asyncio
import socket
from http import HTTPStatus
from pathlib import Path
from typing import cast

import h11
import yaml

from service.agent.dialer import DialError, PodDialer
from service.agent.registry import ContainerPort, PodEntry, PodRegistry, PodTarget
from service.agent.server import Agent

DEMO_PORT = 8080
PAGE = (
    "Hello from podgate!\n"
    "This is the demo pod default/hello (served in-process by `podgate serve --demo`).\n"
)
BODY = PAGE.encode()
MAX_REQUEST = 64 * 1024


class HelloHttp(asyncio.Protocol):
    """Answers every HTTP/1.x request with PAGE, as an HTTP server would: the connection
    stays open for the next request unless the request says ``Connection: close`` or is
    HTTP/1.0 without ``Connection: keep-alive``; then it is closed after the answer."""

    def __init__(self) -> None:
        self.http = _parser()
        self.request: h11.Request | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.http.receive_data(data)
        self._answer()

    def eof_received(self) -> bool:
        self.http.receive_data(b"")
        self._answer()
        return False  # closed once what was written is out

    def _answer(self) -> None:
        assert self.transport is not None
        while not self.transport.is_closing():
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._reply(exc.error_status_hint, b"", "close")
                self.transport.close()
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self.request = event
                if self.http.client_is_waiting_for_100_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                request, self.request = self.request, None
                keep = _keep_alive(request)
                if not keep:
                    connection = "close"
                elif request.http_version == b"1.0":
                    connection = "keep-alive"  # an HTTP/1.0 client must be told
                else:
                    connection = ""  # HTTP/1.1's default
                body = b"" if request.method == b"HEAD" else BODY
                self._reply(200, body, connection)
                if not keep:
                    self.transport.close()
                    return
                # The answer bypasses h11 (which never keeps an HTTP/1.0 connection), so
                # its state machine cannot move on: a new parser reads the next request.
                rest, closed = self.http.trailing_data
                self.http = _parser()
                if rest:
                    self.http.receive_data(bytes(rest))
                if closed:
                    self.http.receive_data(b"")  # b"" is EOF to h11
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _reply(self, status: int, body: bytes, connection: str) -> None:
        assert self.transport is not None
        head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        if status == 200:
            head += "Content-Type: text/plain; charset=utf-8\r\n"
            head += f"Content-Length: {len(BODY)}\r\n"  # a HEAD's too
        else:
            head += "Content-Length: 0\r\n"
        if connection:
            head += f"Connection: {connection}\r\n"
        self.transport.write(head.encode() + b"\r\n" + body)


def _parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)


def _keep_alive(request: h11.Request) -> bool:
    """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked to."""
    tokens = {
        token.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    }
    if b"close" in tokens:
        return False
    return request.http_version != b"1.0" or b"keep-alive" in tokens


async def serve_demo_connection() -> socket.socket:
    """One end of a socket pair whose other end is served by HelloHttp."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    await asyncio.get_running_loop().connect_accepted_socket(HelloHttp, theirs)
    ours.setblocking(False)
    return ours


async def dial_demo(pod: PodEntry, port: int) -> socket.socket:
    """The dial function of the ``demo`` target kind: only DEMO_PORT answers."""
    if port != DEMO_PORT:
        raise DialError(f"dial tcp4 127.0.0.1:{port}: connect: connection refused")
    return await serve_demo_connection()


def demo_dialer() -> PodDialer:
    """A pod dialer that also reaches ``demo:`` targets."""
    return PodDialer(kinds={"demo": dial_demo})


def demo_pod() -> PodEntry:
    return PodEntry(
        namespace="default",
        name="hello",
        target=PodTarget("demo", "hello"),
        uid="00000000-0000-4000-8000-000000000001",
        ports=(ContainerPort(DEMO_PORT, "http"),),
        labels={"app": "hello"},
    )


async def start_demo_agent(data_dir: Path) -> tuple[Agent, str]:
    """Start an in-process agent serving `default/hello`; returns it and a kubeconfig."""
    agent = Agent(PodRegistry([demo_pod()]), host="127.0.0.1", port=0, dialer=demo_dialer())
    await agent.start()
    path = data_dir / "demo-kubeconfig.yaml"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "podgate-demo", "cluster": {"server": agent.url}}],
        "users": [{"name": "podgate-demo", "user": {}}],
        "contexts": [
            {
                "name": "podgate-demo",
                "context": {"cluster": "podgate-demo", "user": "podgate-demo"},
            }
        ],
        "current-context": "podgate-demo",
    }
    await asyncio.to_thread(_write_file, path, yaml.safe_dump(config, sort_keys=False))
    return agent, str(path)


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
