"""An HTTP/2 server that is not a podgate agent, for the h2 handshake tests: hypercorn (a
real, independent HTTP/2 implementation) serving this ASGI app, which answers every
request but GET pod as a Kubernetes API server answers a user who may read pods and do
nothing else: 403 and a JSON Status. GET pod answers a Running pod. It prints one line
per request (`REQUEST <method> <path> <user-agent>`)::

    python -m hypercorn tests.support.not_an_agent:app --bind 127.0.0.1:0
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    user_agent = headers.get("user-agent", "-")
    print(f"REQUEST {scope['method']} {scope['path']} {user_agent}", flush=True)
    path = scope["path"]
    parts = path.split("/")
    is_pod = len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods"
    if scope["method"] == "GET" and is_pod:
        await _reply(send, 200, _pod(parts[4], parts[6]))
        return
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f'forbidden: User "alice" cannot {scope["method"].lower()} path "{path}"',
            "reason": "Forbidden",
            "code": 403,
        }
    ).encode()
    await _reply(send, 403, body)


def _pod(namespace: str, name: str) -> bytes:
    return json.dumps(
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": "u-1",
                "resourceVersion": "1",
            },
            "spec": {"containers": [{"name": "main", "ports": [{"containerPort": 7000}]}]},
            "status": {"phase": "Running"},
        }
    ).encode()


async def _reply(send: Callable[[Message], Awaitable[None]], status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
