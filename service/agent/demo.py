"""The demo pod `default/hello` for `podgate serve --demo` on a machine with no cluster.

Its port 8080 answers any HTTP request with a short text page. It lives in-process: the
agent is built with a dialer for the ``demo`` target kind (``dial_demo``), which hands out
one end of a socket pair while this module serves the other end, so no extra port is
opened. This is a stand-in for a pod, and says so in its page.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import cast

import yaml

from service.agent.dialer import DialError, PodDialer
from service.agent.registry import ContainerPort, PodEntry, PodRegistry, PodTarget
from service.agent.server import Agent

DEMO_PORT = 8080
PAGE = (
    "Hello from podgate!\n"
    "This is the demo pod default/hello (served in-process by `podgate serve --demo`).\n"
)
MAX_REQUEST = 64 * 1024


class HelloHttp(asyncio.Protocol):
    """Answers every HTTP/1.x request with PAGE; keeps the connection for the next one."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            method = head.split(b" ", 1)[0]
            body = b"" if method == b"HEAD" else PAGE.encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + f"Content-Length: {len(PAGE.encode())}\r\n\r\n".encode()
                + body
            )
        if len(self.buffer) > MAX_REQUEST:
            self.transport.close()

    def eof_received(self) -> bool:
        return False


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
