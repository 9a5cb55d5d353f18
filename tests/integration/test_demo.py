"""`podgate serve --demo` (what `make run` starts): the README's curl session works on a
machine with no cluster."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.agent.demo import PAGE
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    api_client,
    create_session,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.sse import HttpEventStream


def _http_get(port: int, host: str = "127.0.0.1") -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"Hello from podgate" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_readme_curl_session_against_the_demo_pod(tmp_path: Path) -> None:
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)]
    with ManagedProcess(args, name="podgate-serve-demo") as serve:
        url = serve.wait_for_stdout(LISTENING_RE, 30)[1]
        with api_client(url) as api:
            created = api.post(
                "/sessions",
                json={"namespace": "default", "target": "pod/hello", "ports": ["0:8080"]},
            )
            assert created.status_code == 201, created.text
            session = created.json()
            port = session["ports"][0]["local_port"]
            assert session["forwarding"] == [
                f"Forwarding from 127.0.0.1:{port} -> 8080",
                f"Forwarding from [::1]:{port} -> 8080",
            ]
            assert b"200 OK" in _http_get(port) and b"Hello from podgate" in _http_get(port)
            assert b"Hello from podgate" in _http_get(port, "::1")
            ready = wait_for_status(api, session["id"], "ready")
            assert ready["pod"] == "hello"
            listed = api.get("/sessions").json()
            assert listed["count"] == 1 and listed["data"][0]["id"] == session["id"]
            assert api.delete(f"/sessions/{session['id']}").status_code == 204
            assert api.get("/sessions").json()["count"] == 0
        serve.popen.terminate()
        assert serve.wait(20) == 0, serve.describe()


# ------------------------------------------- the demo pod answers like an HTTP server

#: How long a client may wait for the demo pod to close a connection it must close.
EOF_DEADLINE = 10.0


@pytest.fixture(scope="module")
def demo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`podgate serve --demo` with a ready session to default/hello: its local port."""
    data_dir = tmp_path_factory.mktemp("demo")
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(data_dir)]
    with ManagedProcess(args, name="podgate-serve-demo") as serve:
        url = serve.wait_for_stdout(LISTENING_RE, 30)[1]
        with api_client(url) as api:
            session = create_session(api, target="pod/hello", ports=["0:8080"])
            wait_for_status(api, session["id"], "ready")
            yield session["ports"][0]["local_port"]


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the peer closes; fails if that takes longer than EOF_DEADLINE."""
    deadline = time.monotonic() + EOF_DEADLINE
    chunks = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no EOF within {EOF_DEADLINE} s; got {b''.join(chunks)!r}")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read_response(
    sock: socket.socket, buffer: bytearray, *, has_body: bool = True
) -> tuple[bytes, bytes]:
    """One response (its body as long as Content-Length says, none for a HEAD):
    (head, body); what follows it stays in ``buffer``."""
    sock.settimeout(EOF_DEADLINE)
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"EOF inside a response head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    assert match, head
    length = int(match[1]) if has_body else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "EOF inside a response body"
        rest += chunk
    buffer[:] = rest[length:]
    return head, rest[:length]


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: demo\r\nConnection: close\r\n\r\n",
    ],
    ids=["http1.0", "connection-close", "http1.0-connection-close"],
)
def test_demo_pod_closes_when_the_request_asks(demo_port: int, request_head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", demo_port), timeout=EOF_DEADLINE) as sock:
        sock.sendall(request_head)
        response = _read_to_eof(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), response
    assert re.search(rb"(?im)^connection:\s*close\s*$", head), head
    assert body.decode() == PAGE


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: demo\r\nConnection: keep-alive\r\n\r\n",
    ],
    ids=["http1.1", "http1.0-keep-alive"],
)
def test_demo_pod_keeps_the_connection_otherwise(demo_port: int, request_head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", demo_port), timeout=EOF_DEADLINE) as sock:
        buffer = bytearray()
        for _ in range(2):  # the second answer comes on the same connection
            sock.sendall(request_head)
            head, body = _read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            assert not re.search(rb"(?im)^connection:\s*close\s*$", head), head
            assert body.decode() == PAGE
        # A HEAD with a GET pipelined behind it: a head without its body, then the GET's.
        sock.sendall(request_head.replace(b"GET", b"HEAD", 1) + request_head)
        head, body = _read_response(sock, buffer, has_body=False)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b""
        head, body = _read_response(sock, buffer)
        assert body.decode() == PAGE and not buffer


def test_stopping_ends_open_event_streams_rather_than_waiting_for_them(tmp_path: Path) -> None:
    """Ctrl-C of `make run` with the web page open: the page's event stream ends at once
    (the page resumes with Last-Event-ID), not after uvicorn's graceful-shutdown timeout,
    which then cancels the stream's task."""
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)]
    with ManagedProcess(args, name="podgate-serve-demo") as serve:
        url = serve.wait_for_stdout(LISTENING_RE, 30)[1]
        with HttpEventStream(url, "/events") as events, HttpEventStream(url, "/events"):
            assert events.status == 200
            serve.send_signal(signal.SIGINT)
            assert events.ended.wait(30), "the event stream did not end"
            assert serve.wait(30) == 0, serve.describe()
    assert "timeout graceful shutdown exceeded" not in serve.stderr_text(), serve.describe()
