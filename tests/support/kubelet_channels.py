"""A stand-in for a kubelet's v4 channel port-forward (behind an API server), for what the
real API server tier cannot show: its 1.20 API server passes v4 WebSockets through to
podgate's agent, which relays the pod's last bytes after a client's Close, while a real
kubelet closes the pod connection as soon as the client's Close arrives. No kubelet can
run on these machines, so this is built on `websockets` (an independent WebSocket
implementation) and behaves as the kubelet does there:

- ``GET …/pods/NAME`` answers a Running pod; ``GET …/portforward`` without an upgrade
  answers 400 "Upgrade request required", as an API server does once it has authorized;
- a WebSocket with subprotocol ``v4.channel.k8s.io`` and ``?ports=P`` gets the two port
  prefixes, then every message on channel 0 is echoed back after ``delay`` seconds (a pod
  that takes time to answer);
- a Close from the client ends everything at once: echoes not sent yet are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

V4 = "v4.channel.k8s.io"


@dataclass
class KubeletChannels:
    url: str
    delay: float


def _json(status: int, body: object) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    parts = urlsplit(request.path).path.split("/")
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None  # the WebSocket handshake goes on
    if parts[-1] == "portforward":
        status = {"kind": "Status", "code": 400, "message": "Upgrade request required"}
        return _json(400, status)
    if len(parts) == 7 and parts[5] == "pods":
        pod = {
            "kind": "Pod",
            "metadata": {"name": parts[6], "namespace": parts[4], "uid": "u1"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 7000}]}]},
            "status": {"phase": "Running"},
        }
        return _json(200, pod)
    return _json(404, {"kind": "Status", "code": 404, "message": "not found"})


@contextlib.asynccontextmanager
async def kubelet_channels(delay: float) -> AsyncIterator[KubeletChannels]:
    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        port = int(query["ports"][0])
        prefix = struct.pack("<H", port)
        await ws.send(b"\x00" + prefix)  # data channel
        await ws.send(b"\x01" + prefix)  # error channel
        pending: set[asyncio.Task[None]] = set()

        async def echo_later(data: bytes) -> None:
            await asyncio.sleep(delay)  # the pod's think time
            await ws.send(b"\x00" + data)

        try:
            async for message in ws:  # ends when the client's Close arrives
                assert isinstance(message, bytes) and message[:1] == b"\x00"
                task = asyncio.get_running_loop().create_task(echo_later(message[1:]))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()  # the kubelet closes the pod connection at once

    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[V4],  # type: ignore[list-item]
        process_request=_process_request,
        compression=None,
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        yield KubeletChannels(f"http://{host}:{port}", delay)
