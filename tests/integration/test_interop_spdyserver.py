"""The Go spdyserver (tests/interop) is a faithful port-forward peer for real kubectl.

Each test starts the Go server (built from source on demand), a loopback echo
server standing in for the pod, and a real ``kubectl.1.XX port-forward`` pointed
at the Go server through a throw-away kubeconfig, then pushes data through it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.build import SpdyServer, build_spdyserver, run_spdyserver
from tests.support.echo import (
    EchoServer,
    Recording,
    echo_server,
    recording_proxy,
    refused_port,
    roundtrip,
)
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward, write_kubeconfig

PAYLOAD = os.urandom(5 * 1024 * 1024)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("spdyserver_binary")]


@pytest.fixture(scope="module")
def spdyserver_binary() -> Path:
    return build_spdyserver()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


def _kubectl_env(
    tmp_path: Path, server: SpdyServer | str, *, websockets: bool | None
) -> dict[str, str]:
    url = server if isinstance(server, str) else server.url
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    return kubectl_env(kubeconfig, cache_dir=tmp_path / "kube-cache", websockets=websockets)


def _assert_roundtrip(local_port: int) -> None:
    result = roundtrip("127.0.0.1", local_port, PAYLOAD, timeout=20)
    assert len(result.received) == result.sent
    assert result.received_sha256 == result.sent_sha256


def _wait_pair_done(server: SpdyServer, session_kind: str) -> None:
    """The server logs the end of the forwarded connection with byte counts."""
    match = server.process.wait_for_stderr(
        rf"session \d+ {session_kind}: request 0: done "
        r"\(client->pod (\d+) bytes, pod->client (\d+) bytes\)",
        timeout=10,
    )
    assert int(match[1]) == int(match[2]) == len(PAYLOAD)


def test_kubectl_1_30_plain_spdy(tmp_path: Path, echo: EchoServer) -> None:
    with run_spdyserver() as server:
        env = _kubectl_env(tmp_path, server, websockets=False)
        with start_port_forward(kubectl_path("1.30"), "pod/echo", f"0:{echo.port}", env=env) as pf:
            assert pf.remote_port == echo.port
            _assert_roundtrip(pf.local_port)
            _wait_pair_done(server, "spdy")
        log = server.process.stderr_text()
        assert re.search(r"POST /api/v1/namespaces/default/pods/echo/portforward", log)
        assert re.search(r"session \d+ spdy start: pod default/echo", log)
        assert "tunnel upgraded" not in log and 'upgrade="websocket"' not in log
        assert echo.connections == 1


def test_kubectl_1_33_websocket_tunnel(tmp_path: Path, echo: EchoServer) -> None:
    with run_spdyserver(tunnel=True) as server:
        env = _kubectl_env(tmp_path, server, websockets=None)  # 1.33 default: tunnel on
        with start_port_forward(kubectl_path("1.33"), "pod/echo", f"0:{echo.port}", env=env) as pf:
            _assert_roundtrip(pf.local_port)
            _wait_pair_done(server, "tunnel")
        log = server.process.stderr_text()
        assert 'tunnel upgraded (subprotocol "SPDY/3.1+portforward.k8s.io")' in log
        assert re.search(r"session \d+ tunnel start: pod default/echo", log)
        assert not re.search(r"session \d+ spdy start", log)
        assert "POST /api/v1/namespaces/default/pods/echo/portforward" not in log


def test_kubectl_1_33_falls_back_to_spdy_without_tunnel(tmp_path: Path, echo: EchoServer) -> None:
    with run_spdyserver(tunnel=False) as server:
        env = _kubectl_env(tmp_path, server, websockets=None)
        # Bare NAME (no "pod/") resolves to a pod too.
        with start_port_forward(kubectl_path("1.33"), "echo", f"0:{echo.port}", env=env) as pf:
            _assert_roundtrip(pf.local_port)
            _wait_pair_done(server, "spdy")
        log = server.process.stderr_text()
        ws_rejected = log.find("websocket port-forward rejected")
        spdy_session = re.search(r"session \d+ spdy start: pod default/echo", log)
        assert ws_rejected != -1, log
        assert spdy_session is not None and spdy_session.start() > ws_rejected
        assert "tunnel upgraded" not in log


@pytest.mark.parametrize(
    ("version", "tunnel", "websockets", "kind"),
    [("1.30", False, False, "spdy"), ("1.33", True, None, "tunnel")],
    ids=["1.30-spdy", "1.33-tunnel"],
)
def test_refused_pod_port_reports_server_error(
    tmp_path: Path,
    version: str,
    tunnel: bool,
    websockets: bool | None,
    kind: str,
) -> None:
    with refused_port() as dead_port, run_spdyserver(tunnel=tunnel) as server:
        env = _kubectl_env(tmp_path, server, websockets=websockets)
        with start_port_forward(kubectl_path(version), "pod/echo", f"0:{dead_port}", env=env) as pf:
            # Send nothing: kubectl drops the local socket on failure, and unread
            # bytes would turn our read into ECONNRESET.
            result = roundtrip("127.0.0.1", pf.local_port, b"", timeout=15)
            assert result.received == b""
            expected = (
                f"error forwarding port {dead_port} to pod echo, uid : "
                f"dial tcp 127.0.0.1:{dead_port}: connect: connection refused"
            )
            pf.process.wait_for_stderr(re.escape(expected), timeout=15)
        server.process.wait_for_stderr(rf"session \d+ {kind}: request 0: {re.escape(expected)}", 5)


# -- wire level: what the Go server puts on the socket ---------------------------

SPDY3_DICT = (
    Path(__file__).resolve().parents[2] / "service/protocols/spdy/spdy3_dictionary.bin"
).read_bytes()
SYN_REPLY, RST_STREAM, PING, GOAWAY = 2, 3, 6, 7
FIN, CANCEL = 0x01, 5


@dataclass(frozen=True)
class Frame:
    """A SPDY/3 frame: ``kind`` is the control type, or ``"DATA"``."""

    kind: int | str
    stream_id: int
    flags: int
    payload: bytes


def _split_frames(data: bytes) -> list[Frame]:
    frames, offset = [], 0
    while offset < len(data):
        assert len(data) - offset >= 8, f"truncated frame header at {offset}"
        head = data[offset : offset + 8]
        flags, length = head[4], int.from_bytes(head[5:8], "big")
        payload = data[offset + 8 : offset + 8 + length]
        assert len(payload) == length, f"truncated frame at {offset}"
        if head[0] & 0x80:
            assert head[0:2] == b"\x80\x03", head.hex()
            kind: int | str = int.from_bytes(head[2:4], "big")
            sid = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF if kind != PING else 0
        else:
            kind, sid = "DATA", int.from_bytes(head[0:4], "big")
        frames.append(Frame(kind, sid, flags, payload))
        offset += 8 + length
    return frames


def _spdy_portforward_connection(recording: Recording) -> bool:
    return bytes(recording.upstream).startswith(
        b"POST /api/v1/namespaces/default/pods/echo/portforward "
    )


@pytest.mark.parametrize("outcome", ["echo", "refused"])
def test_server_frames_match_kubelet(tmp_path: Path, echo: EchoServer, outcome: str) -> None:
    """Server->client frames for one forwarded connection, kubectl 1.33 over plain SPDY."""
    assert hashlib.sha256(SPDY3_DICT).hexdigest().startswith("51d27341373f923f")
    # Nothing is sent on a refused port (see test_refused_pod_port_reports_server_error).
    payload = os.urandom(100_000) if outcome == "echo" else b""
    with refused_port() as dead_port, run_spdyserver() as server:
        target_port = echo.port if outcome == "echo" else dead_port
        with recording_proxy(server.host, server.port) as proxy:
            env = _kubectl_env(tmp_path, f"http://127.0.0.1:{proxy.port}", websockets=False)
            kubectl = kubectl_path("1.33")
            with start_port_forward(kubectl, "pod/echo", f"0:{target_port}", env=env) as pf:
                result = roundtrip("127.0.0.1", pf.local_port, payload, timeout=15)
                server.process.wait_for_stderr(r"session \d+ spdy: request 0: (done|error)", 10)
            # kubectl has exited, so the relayed session ends.
            recording = proxy.wait_for_connection(_spdy_portforward_connection, timeout=5)
            assert recording.finished.wait(10)

    head, _, spdy = bytes(recording.downstream).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert {"Connection: Upgrade", "Upgrade: SPDY/3.1"} <= set(lines)
    assert "X-Stream-Protocol-Version: portforward.k8s.io" in lines

    frames = [f for f in _split_frames(spdy) if f.kind != PING]
    # When kubectl goes away the server may still get its own GOAWAY out (the
    # kubelet's deferred Close races spdystream's shutdown): last good = 3, OK.
    if frames and frames[-1].kind == GOAWAY:
        assert frames.pop().payload == (3).to_bytes(4, "big") + (0).to_bytes(4, "big")
    # SYN_REPLY: no FIN, empty header block; all blocks share one zlib context.
    inflate = zlib.decompressobj(zdict=SPDY3_DICT)
    replies = [f for f in frames if f.kind == SYN_REPLY]
    assert [(f.stream_id, f.flags) for f in replies] == [(1, 0), (3, 0)]
    for reply in replies:
        assert inflate.decompress(reply.payload[4:]) == b"\x00\x00\x00\x00"
    assert frames[:2] == replies

    rest = frames[2:]
    if outcome == "echo":
        assert result.intact
        data = [f for f in rest if f.kind == "DATA" and f.stream_id == 3 and f.payload]
        assert all(f.flags == 0 and len(f.payload) <= 32 * 1024 for f in data)
        assert b"".join(f.payload for f in data) == payload
        # then FIN on the data stream, then FIN on the error stream, nothing else
        assert [(f.kind, f.stream_id, f.flags, f.payload) for f in rest[len(data) :]] == [
            ("DATA", 3, FIN, b""),
            ("DATA", 1, FIN, b""),
        ]
    else:
        message = (
            f"error forwarding port {dead_port} to pod echo, uid : "
            f"dial tcp 127.0.0.1:{dead_port}: connect: connection refused"
        ).encode()
        cancel = CANCEL.to_bytes(4, "big")
        assert [(f.kind, f.stream_id, f.flags, f.payload) for f in rest] == [
            ("DATA", 1, 0, message),
            (RST_STREAM, 3, 0, (3).to_bytes(4, "big") + cancel),
            (RST_STREAM, 1, 0, (1).to_bytes(4, "big") + cancel),
        ]


# -- HTTP surface (no kubectl) -----------------------------------------------


def _request(
    server: SpdyServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, list[str]], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        collected: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            collected.setdefault(name.lower(), []).append(value)
        return response.status, collected, response.read()
    finally:
        conn.close()


def test_http_surface_and_sigterm() -> None:
    with run_spdyserver() as server:
        pf = "/api/v1/namespaces/ns1/pods/anything/portforward"
        upgrade = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1"}

        status, _, body = _request(server, "GET", "/api/v1/namespaces/ns1/pods/anything")
        pod = json.loads(body)
        assert status == 200
        assert (pod["kind"], pod["metadata"]["namespace"], pod["metadata"]["name"]) == (
            "Pod",
            "ns1",
            "anything",
        )
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"]
        assert pod["spec"]["containers"]

        for path, kind in [
            ("/version", None),
            ("/api", "APIVersions"),
            ("/apis", "APIGroupList"),
            ("/api/v1", "APIResourceList"),
        ]:
            status, headers, body = _request(server, "GET", path)
            assert status == 200 and headers["content-type"] == ["application/json"]
            assert json.loads(body).get("kind") == kind

        status, _, body = _request(server, "GET", "/api/v1/nodes")
        assert status == 404
        assert json.loads(body)["kind"] == "Status" and json.loads(body)["code"] == 404

        status, _, body = _request(server, "POST", pf, upgrade)
        assert status == 400 and b"X-Stream-Protocol-Version" in body

        status, headers, _ = _request(
            server, "POST", pf, {**upgrade, "X-Stream-Protocol-Version": "foo"}
        )
        assert status == 403
        assert headers["x-accepted-stream-protocol-versions"] == ["portforward.k8s.io"]

        status, _, body = _request(
            server, "POST", pf, {"X-Stream-Protocol-Version": "portforward.k8s.io"}
        )
        assert status == 400 and b"missing upgrade headers" in body

        ws = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "SPDY/3.1+portforward.k8s.io",
        }
        status, _, body = _request(server, "GET", pf, ws)
        assert status == 400 and b'query parameter "port" is required' in body

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 0
