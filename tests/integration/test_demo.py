"""`podgate serve --demo` (what `make run` starts): the README's curl session works on a
machine with no cluster."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.podgate import LISTENING_RE, PODGATE, api_client, wait_for_status
from tests.support.procs import ManagedProcess


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
