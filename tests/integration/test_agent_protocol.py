"""`podgate agent` at the wire level: the HTTP/1.1 handshake, routes, SPDY stream pairs,
half-close, isolation, back-pressure, SIGTERM and netns dial errors.

The client is tests/support/spdy_client.py (an independent HTTP parser plus the
sans-IO SpdyConnection). Most tests run the agent in-process (asyncio loop, and any
exception logged by it fails the test); tests taking the `any_agent` fixture also
run against `python -m service.cli agent` as a subprocess, which uses uvloop when it
is installed. Pods are test-owned loopback servers, so each test can check exactly
what the pod side saw. Nothing waits by sleeping: every wait is on an event, with a
timeout. Real kubectl is in test_kubectl_agent.py.

References: protocols.md §1.1 (handshake), §1.5 (pairs), §1.6 (error text), §1.7
(close), §1.8 (back-pressure), §4 (routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from service.agent.registry import ContainerPort, PodRegistry, parse_pod_flag
from service.agent.server import Agent
from service.agent.sessions import SpdyPortForwardSession
from service.protocols.spdy import (
    DataReceived,
    Frame,
    FrameType,
    GoAwayStatus,
    HeaderCompressor,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    SettingsFrame,
    StreamEnded,
    StreamReset,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    data_frame_header,
    parse_frame,
)
from tests.support.echo import echo_server, refused_port
from tests.support.netns import NetNamespace, echo_server_in
from tests.support.procs import ManagedProcess
from tests.support.spdy_client import (
    UPGRADE_HEADERS,
    HttpConnection,
    SpdyClient,
    UpgradeRefused,
    http_request,
    raw_control_frame,
    spdy_session,
)

pytestmark = pytest.mark.timeout(30)

KUBELET_PATH = "/portForward/default/echo"
CANCEL = int(RstStatus.CANCEL)
KIB = 1024
MIB = 1024 * 1024
#: Beyond this much unread pod output the agent would be buffering without bound.
UNBOUNDED = 64 * MIB
#: A socket that accepts nothing for this long is taken as stalled (back-pressure).
STALL = 1.0
#: The netns of the `ghost` pod: a path that does not exist until a test creates it.
GHOST_NETNS = f"podgate-proto-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- agents


@dataclass
class AgentUnderTest:
    """An agent to talk to; `agent` is set when it runs in this process."""

    port: int
    kind: str
    agent: Agent | None = None
    process: ManagedProcess | None = None

    def sessions(self) -> list[SpdyPortForwardSession]:
        assert self.agent is not None
        return [c.session for c in self.agent.connections if c.session is not None]


def _registry() -> PodRegistry:
    echo = dataclasses.replace(
        parse_pod_flag("default/echo=host:127.0.0.1"),
        ports=(ContainerPort(8080, "http"), ContainerPort(9090, None, "UDP")),
    )
    ghost = parse_pod_flag(f"default/ghost=netns:/run/netns/{GHOST_NETNS}")
    return PodRegistry([echo, ghost])


@contextlib.asynccontextmanager
async def inprocess_agent() -> AsyncIterator[AgentUnderTest]:
    agent = Agent(_registry(), host="127.0.0.1", port=0)
    await agent.start()
    try:
        yield AgentUnderTest(agent.port, "asyncio", agent=agent)
    finally:
        await agent.shutdown(drain_timeout=1.0)


def _assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An exception escaping a protocol callback is logged by asyncio at ERROR level
    (and kills that transport): the in-process agent must never do that."""
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(r.getMessage() for r in errors)


@pytest.fixture
async def agent(caplog: pytest.LogCaptureFixture) -> AsyncIterator[AgentUnderTest]:
    async with inprocess_agent() as running:
        yield running
    _assert_no_errors_logged(caplog)


def _start_cli_agent(*extra: str) -> ManagedProcess:
    args = [sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0", *extra]
    return ManagedProcess(args, name="podgate-agent")


def _listening_port(proc: ManagedProcess) -> int:
    match = proc.wait_for_stdout(r"^Listening on http://127\.0\.0\.1:(\d+)$", 20)
    return int(match[1])


def _stop_cli_agent(proc: ManagedProcess) -> None:
    """SIGTERM must give exit status 0, and nothing may have crashed in between."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, proc.describe()
    assert "Traceback" not in proc.stderr_text(), proc.describe()
    assert "Fatal error" not in proc.stderr_text(), proc.describe()


@pytest.fixture(scope="module")
def cli_agent() -> Iterator[AgentUnderTest]:
    """`python -m service.cli agent` (uvloop when installed), default timeouts."""
    with _start_cli_agent("--pod", "default/echo=host:127.0.0.1") as proc:
        yield AgentUnderTest(_listening_port(proc), "cli", process=proc)
        _stop_cli_agent(proc)


@pytest.fixture(scope="module")
def file_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentUnderTest]:
    """A subprocess agent with its pods in a YAML file and a 0.5 s pair timeout."""
    pods = tmp_path_factory.mktemp("pods") / "pods.yaml"
    pods.write_text(
        "pods:\n"
        "  - namespace: web\n"
        "    name: frontend\n"
        "    target: host:127.0.0.1\n"
        "    uid: 11111111-2222-3333-4444-555555555555\n"
        "    labels: {app: frontend}\n"
        "    ports:\n"
        "      - containerPort: 8080\n"
        "        name: http\n"
        "      - 8443\n"
        "      - {containerPort: 5353, protocol: udp}\n"
    )
    with _start_cli_agent("--pods", str(pods), "--stream-creation-timeout", "0.5") as proc:
        yield AgentUnderTest(_listening_port(proc), "cli", process=proc)
        _stop_cli_agent(proc)


@pytest.fixture(params=["asyncio", "cli"])
async def any_agent(
    request: pytest.FixtureRequest, cli_agent: AgentUnderTest, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[AgentUnderTest]:
    """The same test against the in-process agent and the subprocess (uvloop) agent."""
    if request.param == "cli":
        yield cli_agent
        return
    async with inprocess_agent() as running:
        yield running
    _assert_no_errors_logged(caplog)


# ----------------------------------------------------------------------------- pods


@dataclass
class PodConn:
    """What the pod saw on one accepted connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_to_eof(self) -> bytes:
        while chunk := await self.reader.read(256 * KIB):
            self.received += chunk
        self.eof.set()
        return bytes(self.received)


Behaviour = Callable[[PodConn], Awaitable[None]]


class PodServer:
    """A pod port on 127.0.0.1 whose connections run `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.conns: list[PodConn] = []
        self._accepted = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = PodConn(reader, writer)
        self.conns.append(conn)
        self._accepted.set()
        try:
            await self.behaviour(conn)
        except (ConnectionError, OSError):
            conn.eof.set()
        finally:
            writer.close()
            conn.done.set()

    async def connection(self, index: int = 0, timeout: float = 10.0) -> PodConn:
        async with asyncio.timeout(timeout):
            while len(self.conns) <= index:
                self._accepted.clear()
                await self._accepted.wait()
        return self.conns[index]

    async def __aenter__(self) -> PodServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.close()
        async with asyncio.timeout(10):
            for conn in self.conns:
                await conn.done.wait()  # every handler has returned


async def answer_after_eof(conn: PodConn) -> None:
    """Read the whole request (until the client's half-close), then answer and close."""
    request = await conn.read_to_eof()
    conn.writer.write(b"reply to " + request[:16] + b": " + b"R" * (MIB))
    conn.writer.write(b"<end>")
    await conn.writer.drain()


async def greet_and_half_close(conn: PodConn) -> None:
    """Speak first and half-close, then keep reading until the client's EOF."""
    conn.writer.write(b"hello from the pod")
    conn.writer.write_eof()
    await conn.writer.drain()
    await conn.read_to_eof()


async def echo_then_bye(conn: PodConn) -> None:
    """Echo every byte; after the client's EOF, say bye and close."""
    while chunk := await conn.reader.read(256 * KIB):
        conn.received += chunk
        conn.writer.write(chunk)
        await conn.writer.drain()
    conn.eof.set()
    conn.writer.write(b"bye")
    await conn.writer.drain()


async def reset_midway(conn: PodConn) -> None:
    """Send a little, wait for the client's go-ahead, then reset the connection."""
    conn.writer.write(b"partial")
    await conn.writer.drain()
    conn.received += await conn.reader.readexactly(3)
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()  # close with SO_LINGER 0: RST


async def answer_and_close(conn: PodConn) -> None:
    """Answer the first 3 bytes and close the socket at once (no half-close), like an
    HTTP/1.0 server; later bytes from the client make the pod's kernel send RST."""
    conn.received += await conn.reader.readexactly(3)
    conn.writer.write(b"HTTP/1.0 200 OK\r\n\r\nbody")
    await conn.writer.drain()


async def hold_open(conn: PodConn) -> None:
    """Read until the agent closes the connection (EOF or reset)."""
    await conn.read_to_eof()


# -------------------------------------------------------------------------- helpers


async def pod_uid(port: int, namespace: str = "default", name: str = "echo") -> str:
    response = await http_request(port, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    assert response.status == 200, response
    uid: str = response.json()["metadata"]["uid"]
    return uid


async def echo_pair(
    client: SpdyClient,
    port: int,
    payload: bytes,
    requestid: int | str | None = None,
    *,
    pipelined: bool = False,
) -> bytes:
    """One pair through an echo pod: send `payload` + FIN, return what came back."""
    error_sid, data_sid = await client.open_pair(port, requestid, pipelined=pipelined)
    received = await _transfer(client, data_sid, payload)
    assert await client.wait_ended(error_sid) == b""
    return received


async def _transfer(client: SpdyClient, data_sid: int, payload: bytes) -> bytes:
    sender = asyncio.create_task(client.send_all(data_sid, payload, fin=True))
    try:
        received = await client.read_stream(data_sid, timeout=20)
    finally:
        await sender
    return received


def _assert_status(response_json: dict[str, object], code: int, reason: str) -> None:
    assert response_json["kind"] == "Status"
    assert response_json["apiVersion"] == "v1"
    assert response_json["status"] == "Failure"
    assert response_json["code"] == code
    assert response_json["reason"] == reason


# ------------------------------------------------------------------- 1. handshake


async def test_101_carries_the_three_headers(agent: AgentUnderTest) -> None:
    conn = await HttpConnection.open(agent.port)
    client = await conn.upgrade(KUBELET_PATH)
    try:
        response = client.response
        assert response is not None
        assert response.status == 101
        assert response.header_list("connection") == ["Upgrade"]
        assert response.header_list("upgrade") == ["SPDY/3.1"]
        assert response.header_list("x-stream-protocol-version") == ["portforward.k8s.io"]
    finally:
        await client.close()


async def test_no_protocol_header_is_400_plain_text(agent: AgentUnderTest) -> None:
    headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    response = await http_request(agent.port, "POST", KUBELET_PATH, headers)
    assert response.status == 400
    assert (response.header("content-type") or "").startswith("text/plain")
    assert response.text.startswith(
        "unable to upgrade: header X-Stream-Protocol-Version does not exist in request with "
    )


async def test_unknown_protocol_is_403_with_accepted_versions(agent: AgentUnderTest) -> None:
    headers = [*UPGRADE_HEADERS[:2], ("X-Stream-Protocol-Version", "foo")]
    response = await http_request(agent.port, "POST", KUBELET_PATH, headers)
    assert response.status == 403
    assert response.header_list("x-accepted-stream-protocol-versions") == ["portforward.k8s.io"]
    assert "unable to negotiate protocol" in response.text


@pytest.mark.parametrize(
    "protocol_headers",
    [
        [("X-Stream-Protocol-Version", "foo, portforward.k8s.io")],
        [("X-Stream-Protocol-Version", "foo"), ("X-Stream-Protocol-Version", "portforward.k8s.io")],
    ],
    ids=["comma-list", "repeated-header"],
)
async def test_protocol_value_lists_are_accepted(
    agent: AgentUnderTest, protocol_headers: list[tuple[str, str]]
) -> None:
    headers = [*UPGRADE_HEADERS[:2], *protocol_headers]
    async with spdy_session(agent.port, KUBELET_PATH, headers=headers) as client:
        assert client.response is not None
        assert client.response.header("x-stream-protocol-version") == "portforward.k8s.io"
        await client.wait_ping(client.ping())  # the session is live


@pytest.mark.parametrize(
    "upgrade_headers",
    [
        [("Connection", "Upgrade"), ("Upgrade", "h2c")],
        [("Connection", "keep-alive"), ("Upgrade", "SPDY/3.1")],
    ],
    ids=["upgrade-h2c", "connection-without-upgrade"],
)
async def test_non_spdy_upgrade_is_400_missing_upgrade_headers(
    agent: AgentUnderTest, upgrade_headers: list[tuple[str, str]]
) -> None:
    headers = [*upgrade_headers, ("X-Stream-Protocol-Version", "portforward.k8s.io")]
    response = await http_request(agent.port, "POST", KUBELET_PATH, headers)
    assert response.status == 400
    assert response.text.startswith("unable to upgrade: missing upgrade headers in request")


async def test_plain_post_is_400_upgrade_required_status(agent: AgentUnderTest) -> None:
    response = await http_request(
        agent.port, "POST", "/api/v1/namespaces/default/pods/echo/portforward"
    )
    assert response.status == 400
    assert response.header("content-type") == "application/json"
    body = response.json()
    _assert_status(body, 400, "BadRequest")
    assert body["message"] == "Upgrade request required"


@pytest.mark.parametrize(
    "path",
    [
        "/portForward/default/nope",
        "/api/v1/namespaces/default/pods/nope/portforward",
        "/portForward/default/echo/00000000-0000-0000-0000-000000000000",
    ],
    ids=["unknown-pod-kubelet", "unknown-pod-apiserver", "wrong-uid"],
)
async def test_unknown_pod_or_wrong_uid_is_404_status(agent: AgentUnderTest, path: str) -> None:
    with pytest.raises(UpgradeRefused) as refused:
        await SpdyClient.connect(agent.port, path)
    response = refused.value.response
    assert response.status == 404
    body = response.json()
    _assert_status(body, 404, "NotFound")
    name = path.split("/")[3] if path.startswith("/portForward") else path.split("/")[6]
    assert body["message"] == f'pods "{name}" not found'


@pytest.mark.parametrize("path", [KUBELET_PATH, "/api/v1/namespaces/default/pods/echo/portforward"])
async def test_put_is_405(agent: AgentUnderTest, path: str) -> None:
    response = await http_request(agent.port, "PUT", path, UPGRADE_HEADERS)
    assert response.status == 405


# ----------------------------------------------------------------------- 2. routes


ROUTES = [
    "/portForward/default/echo",
    "/portForward/default/echo/{uid}",
    "/proxy/nodes/node-1/portForward/default/echo",
    "/api/v1/nodes/node-1/proxy/portForward/default/echo",
    "/api/v1/namespaces/default/pods/echo/portforward",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_form_accepts_the_upgrade(
    agent: AgentUnderTest, route: str, method: str
) -> None:
    path = route.format(uid=await pod_uid(agent.port))
    with echo_server() as pod:
        async with spdy_session(agent.port, path, method=method) as client:
            assert await echo_pair(client, pod.port, b"via " + path.encode(), 0) == (
                b"via " + path.encode()
            )


async def test_discovery_documents(agent: AgentUnderTest) -> None:
    version = (await http_request(agent.port, "GET", "/version")).json()
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    api = (await http_request(agent.port, "GET", "/api")).json()
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    apis = (await http_request(agent.port, "GET", "/apis")).json()
    assert apis["kind"] == "APIGroupList"
    v1 = (await http_request(agent.port, "GET", "/api/v1")).json()
    assert v1["kind"] == "APIResourceList" and v1["groupVersion"] == "v1"
    names = {r["name"]: r for r in v1["resources"]}
    assert "pods" in names and {"create", "get"} <= set(names["pods/portforward"]["verbs"])
    missing = await http_request(agent.port, "GET", "/api/v1/nodes")
    assert missing.status == 404
    _assert_status(missing.json(), 404, "NotFound")


async def test_get_pod_json_from_the_registry(agent: AgentUnderTest) -> None:
    response = await http_request(agent.port, "GET", "/api/v1/namespaces/default/pods/echo")
    assert response.status == 200
    pod = response.json()
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["name"] == "echo" and pod["metadata"]["namespace"] == "default"
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"]
    assert pod["spec"]["containers"][0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"},
        {"containerPort": 9090, "protocol": "UDP"},
    ]
    missing = await http_request(agent.port, "GET", "/api/v1/namespaces/default/pods/nope")
    assert missing.status == 404
    _assert_status(missing.json(), 404, "NotFound")


async def test_pod_file_in_yaml(file_agent: AgentUnderTest) -> None:
    response = await http_request(file_agent.port, "GET", "/api/v1/namespaces/web/pods/frontend")
    assert response.status == 200
    pod = response.json()
    assert pod["metadata"]["uid"] == "11111111-2222-3333-4444-555555555555"
    assert pod["metadata"]["labels"] == {"app": "frontend"}
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["containers"][0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"},
        {"containerPort": 8443, "protocol": "TCP"},
        {"containerPort": 5353, "protocol": "UDP"},
    ]
    path = "/portForward/web/frontend/11111111-2222-3333-4444-555555555555"
    with echo_server() as pod_port:
        async with spdy_session(file_agent.port, path) as client:
            received = await echo_pair(client, pod_port.port, b"from the file", 0, pipelined=True)
            assert received == b"from the file"


async def test_keep_alive_two_gets_then_an_upgrade(agent: AgentUnderTest) -> None:
    conn = await HttpConnection.open(agent.port)
    first = await conn.request("GET", "/version")
    second = await conn.request("GET", "/api/v1/namespaces/default/pods/echo")
    assert (first.status, second.status) == (200, 200)
    assert second.json()["kind"] == "Pod"
    client = await conn.upgrade(KUBELET_PATH)  # still the same TCP connection
    try:
        with echo_server() as pod:
            assert await echo_pair(client, pod.port, b"after two GETs", 0) == b"after two GETs"
    finally:
        await client.close()


async def test_spdy_bytes_pipelined_behind_the_upgrade_request(agent: AgentUnderTest) -> None:
    """Bytes after the request's blank line are already SPDY (§1.1), even in one segment."""
    conn = await HttpConnection.open(agent.port)
    head = f"POST {KUBELET_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS)
    conn.writer.write(head.encode() + b"\r\n" + PingFrame(1).serialize())
    response = await conn.read_response()
    assert response.status == 101
    client = SpdyClient(conn.reader, conn.writer, response)
    try:
        await client.wait_ping(1)
    finally:
        await client.close()


# ------------------------------------------------------------------ 3. stream pairs


async def test_valid_streams_get_an_empty_syn_reply(agent: AgentUnderTest) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            error_sid, data_sid = await client.open_pair(pod.port, 0)
            assert client.streams[error_sid].reply_headers == {}
            assert client.streams[data_sid].reply_headers == {}
            assert await _transfer(client, data_sid, b"x") == b"x"


@pytest.mark.parametrize(
    "headers",
    [
        {"streamtype": "data", "port": "0", "requestid": "1"},
        {"streamtype": "data", "port": "70000", "requestid": "1"},
        {"streamtype": "data", "port": "abc", "requestid": "1"},
        {"streamtype": "data", "port": "", "requestid": "1"},
        {"streamtype": "data", "port": "-1", "requestid": "1"},
        {"streamtype": "data", "port": "\u00b2", "requestid": "1"},  # int() rejects it
        {"streamtype": "data", "port": "\u0661", "requestid": "1"},  # int() reads 1
        {"streamtype": "data", "requestid": "1"},
        {"streamtype": "error", "requestid": "1"},
        {"port": "80", "requestid": "1"},
        {"streamtype": "bogus", "port": "80", "requestid": "1"},
    ],
    ids=[
        "port-0",
        "port-70000",
        "port-abc",
        "port-empty",
        "port-negative",
        "port-superscript-two",
        "port-arabic-indic-one",
        "data-without-port",
        "error-without-port",
        "no-streamtype",
        "bad-streamtype",
    ],
)
async def test_invalid_stream_headers_get_rst_cancel_and_no_reply(
    agent: AgentUnderTest, headers: dict[str, str]
) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            sid = client.open_stream(headers)
            assert await client.wait_reset(sid) == CANCEL
            assert client.streams[sid].reply_headers is None
            # Only that stream was refused: the session still works.
            assert await echo_pair(client, pod.port, b"still fine", 1) == b"still fine"


async def test_pairing_by_requestid_data_first_and_interleaved(agent: AgentUnderTest) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            # Two pairs, each with its data stream first, opened interleaved.
            data_a = client.open_stream(
                {"streamtype": "data", "port": str(pod.port), "requestid": "a"}
            )
            data_b = client.open_stream(
                {"streamtype": "data", "port": str(pod.port), "requestid": "b"}
            )
            error_b = client.open_stream(
                {"streamtype": "error", "port": str(pod.port), "requestid": "b"}
            )
            error_a = client.open_stream(
                {"streamtype": "error", "port": str(pod.port), "requestid": "a"}
            )
            for sid in (data_a, data_b, error_b, error_a):
                assert await client.wait_reply(sid) == {}
            client.end_stream(error_a)
            client.end_stream(error_b)
            got_a, got_b = await asyncio.gather(
                _transfer(client, data_a, b"A" * 100_000), _transfer(client, data_b, b"B" * 70_000)
            )
            assert (got_a, got_b) == (b"A" * 100_000, b"B" * 70_000)
            assert await client.wait_ended(error_a) == b""
            assert await client.wait_ended(error_b) == b""


async def test_requestid_is_derived_when_missing(agent: AgentUnderTest) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            # error stream N and data stream N+2 without requestid pair up (N == N+2-2).
            for round_ in range(2):
                payload = f"no requestid, round {round_}".encode()
                assert await echo_pair(client, pod.port, payload, requestid=None) == payload


@pytest.mark.parametrize("kind", ["error", "data"])
async def test_duplicate_stream_is_reported_on_the_error_stream(
    agent: AgentUnderTest, kind: str
) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            port = str(pod.port)
            error_sid = client.open_stream({"streamtype": "error", "port": port, "requestid": "5"})
            await client.wait_reply(error_sid)
            client.end_stream(error_sid)
            data_sid = None
            if kind == "data":
                data_sid = client.open_stream(
                    {"streamtype": "data", "port": port, "requestid": "5"}
                )
                await client.wait_reply(data_sid)
            client.open_stream({"streamtype": kind, "port": port, "requestid": "5"})
            expected = f"error processing stream for request 5: {kind} stream already assigned"
            assert await client.wait_data(error_sid, len(expected)) == expected.encode()
            # The original pair is not disturbed by the duplicate.
            if data_sid is None:
                data_sid = client.open_stream(
                    {"streamtype": "data", "port": port, "requestid": "5"}
                )
                await client.wait_reply(data_sid)
            assert await _transfer(client, data_sid, b"pair 5") == b"pair 5"
            assert await client.wait_ended(error_sid) == expected.encode()


async def test_pair_timeout_on_a_lone_error_stream(file_agent: AgentUnderTest) -> None:
    async with spdy_session(file_agent.port, "/portForward/web/frontend") as client:
        error_sid = client.open_stream({"streamtype": "error", "port": "8080", "requestid": "9"})
        data_sid = client.open_stream({"streamtype": "data", "port": "8080", "requestid": "8"})
        await client.wait_reply(error_sid)
        await client.wait_reply(data_sid)
        client.end_stream(error_sid)
        record = await client.wait_finished(error_sid, timeout=10)
        text = record.data.decode()
        assert text.endswith("request=9) timed out waiting for streams"), text
        assert text.startswith("(conn=0x")
        # A lone data stream has no error stream to write on: it is just reset.
        assert await client.wait_reset(data_sid) == CANCEL
        assert client.streams[data_sid].data == b""
        # The session outlives the abandoned pair.
        with echo_server() as pod:
            received = await echo_pair(client, pod.port, b"after timeout", 10, pipelined=True)
            assert received == b"after timeout"


async def test_refused_pod_port(any_agent: AgentUnderTest) -> None:
    uid = await pod_uid(any_agent.port)
    with refused_port() as dead:
        async with spdy_session(any_agent.port, KUBELET_PATH) as client:
            error_sid, data_sid = await client.open_pair(dead, 0)
            if client.conn.can_send(data_sid):  # unless the RST is already here
                client.send(data_sid, b"x")  # may be sent before the error; discarded
            await client.wait_reset(error_sid)
            expected = (
                f"error forwarding port {dead} to pod echo, uid {uid}: "
                f"dial tcp4 127.0.0.1:{dead}: connect: connection refused"
            )
            assert client.streams[error_sid].data.decode() == expected
            assert client.streams[data_sid].reset_status == CANCEL
            assert client.streams[error_sid].reset_status == CANCEL
            assert client.streams[data_sid].data == b""
            assert not client.streams[data_sid].ended
            # Wire order (§1.5 step 5): text on the error stream, RST data, RST error.
            text_at = client.index_of(
                lambda e: isinstance(e, DataReceived) and e.stream_id == error_sid and e.data != b""
            )
            rst_data_at = client.index_of(
                lambda e: isinstance(e, StreamReset) and e.stream_id == data_sid
            )
            rst_error_at = client.index_of(
                lambda e: isinstance(e, StreamReset) and e.stream_id == error_sid
            )
            assert 0 <= text_at < rst_data_at < rst_error_at
            # The next pair on the same session still works.
            with echo_server() as pod:
                assert await echo_pair(client, pod.port, b"next", 1) == b"next"


# ------------------------------------------------------------------ 4. half-close


async def test_client_half_close_reaches_the_pod_and_the_reply_still_arrives(
    any_agent: AgentUnderTest,
) -> None:
    async with (
        PodServer(answer_after_eof) as pod,
        spdy_session(any_agent.port, KUBELET_PATH) as client,
    ):
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        await client.send_all(data_sid, b"GET /thing\n" * 1000)
        conn = await pod.connection()
        assert not conn.eof.is_set()
        client.end_stream(data_sid)  # the client half-closes first
        async with asyncio.timeout(10):
            await conn.eof.wait()  # ... and the pod's socket sees EOF (SHUT_WR)
        assert conn.received == b"GET /thing\n" * 1000
        reply = await client.read_stream(data_sid)  # the full reply, then FIN
        assert reply == b"reply to GET /thing\nGET /: " + b"R" * MIB + b"<end>"
        assert await client.wait_ended(error_sid) == b""  # FIN, no text, no RST
        data_fin = client.index_of(lambda e: isinstance(e, StreamEnded) and e.stream_id == data_sid)
        error_fin = client.index_of(
            lambda e: isinstance(e, StreamEnded) and e.stream_id == error_sid
        )
        assert 0 <= data_fin < error_fin
        assert client.streams[data_sid].reset_status is None
        if any_agent.agent is not None:
            (session,) = any_agent.sessions()
            async with asyncio.timeout(5):
                await session.wait_drained()
            assert session.pairs == {} and session.by_stream == {}


async def test_pod_half_close_first_then_the_client(any_agent: AgentUnderTest) -> None:
    async with (
        PodServer(greet_and_half_close) as pod,
        spdy_session(any_agent.port, KUBELET_PATH) as client,
    ):
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        # The pod's EOF becomes FIN on the data stream ...
        assert await client.read_stream(data_sid) == b"hello from the pod"
        # ... but the pair lives on: the error stream is not ended yet, and the client's
        # bytes still reach the pod.
        assert not client.streams[error_sid].finished
        await client.send_all(data_sid, b"late words", fin=True)
        conn = await pod.connection()
        async with asyncio.timeout(10):
            await conn.eof.wait()
        assert conn.received == b"late words"
        assert await client.wait_ended(error_sid) == b""


async def test_streams_opened_with_fin(agent: AgentUnderTest) -> None:
    """A data stream half-closed in its SYN_STREAM: the pod sees EOF at once, and its
    reply still comes back."""
    async with PodServer(answer_after_eof) as pod, spdy_session(agent.port, KUBELET_PATH) as client:
        headers = {"port": str(pod.port), "requestid": "0"}
        error_sid = client.open_stream({"streamtype": "error", **headers}, fin=True)
        data_sid = client.open_stream({"streamtype": "data", **headers}, fin=True)
        assert await client.wait_reply(error_sid) == {}
        assert await client.wait_reply(data_sid) == {}
        reply = await client.read_stream(data_sid)
        assert reply == b"reply to : " + b"R" * MIB + b"<end>"
        assert await client.wait_ended(error_sid) == b""
        assert (await pod.connection()).received == b""


async def test_data_sent_before_the_pair_is_complete_is_delivered(agent: AgentUnderTest) -> None:
    with echo_server() as pod:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            headers = {"port": str(pod.port), "requestid": "early"}
            data_sid = client.open_stream({"streamtype": "data", **headers})
            await client.wait_reply(data_sid)
            early = os.urandom(512 * KIB)
            await client.send_all(data_sid, early)  # no pod connection exists yet
            error_sid = client.open_stream({"streamtype": "error", **headers})
            await client.wait_reply(error_sid)
            client.end_stream(error_sid)
            late = os.urandom(100 * KIB)
            assert await _transfer(client, data_sid, late) == early + late
            assert await client.wait_ended(error_sid) == b""


async def test_pod_reset_midway_is_reported_and_resets_the_pair(
    any_agent: AgentUnderTest,
) -> None:
    uid = await pod_uid(any_agent.port)
    async with PodServer(reset_midway) as pod, spdy_session(any_agent.port, KUBELET_PATH) as client:
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        assert await client.wait_data(data_sid, 7) == b"partial"
        client.send(data_sid, b"go!")
        assert await client.wait_reset(error_sid) == CANCEL
        text = client.streams[error_sid].data.decode()
        assert text.startswith(f"error forwarding port {pod.port} to pod echo, uid {uid}: "), text
        assert client.streams[data_sid].reset_status == CANCEL
        assert not client.streams[data_sid].ended
        with echo_server() as echo:
            assert await echo_pair(client, echo.port, b"next", 1) == b"next"


@pytest.mark.parametrize("late_writes", [0, 1, 3])
async def test_pod_that_closes_after_answering_ends_the_pair_normally(
    any_agent: AgentUnderTest, late_writes: int
) -> None:
    async with (
        PodServer(answer_and_close) as pod,
        spdy_session(any_agent.port, KUBELET_PATH) as client,
    ):
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        client.send(data_sid, b"GET")
        assert await client.read_stream(data_sid) == b"HTTP/1.0 200 OK\r\n\r\nbody"
        async with asyncio.timeout(10):
            await (await pod.connection()).done.wait()
        # Bytes the closed pod will never read: the first draws an RST from the pod's
        # kernel, writing the next fails (EPIPE/ECONNRESET), and so does the half-close
        # (shutdown(2) on a reset socket: ENOTCONN).
        for _ in range(late_writes):
            client.send(data_sid, b"more" * 1000)
            await client.wait_ping(client.ping())  # the agent has processed them
        client.end_stream(data_sid)
        # Not a forwarding error: FIN on the error stream and no text, which client-go
        # would take as a failure and close the whole session for.
        assert await client.wait_ended(error_sid) == b""
        assert client.streams[data_sid].reset_status is None
        await client.wait_ping(client.ping())  # and the session is alive


@pytest.mark.parametrize("how", ["tcp-close", "goaway"])
async def test_client_going_away_closes_its_pod_connections(
    any_agent: AgentUnderTest, how: str
) -> None:
    async with PodServer(hold_open) as pod:
        client = await SpdyClient.connect(any_agent.port, KUBELET_PATH)
        try:
            await client.open_pair(pod.port, 0)
            await client.open_pair(pod.port, 1)
            conns = [await pod.connection(0), await pod.connection(1)]
            if how == "goaway":
                client.send_goaway()
                await client.wait_closed()  # the agent ends the session
        finally:
            await client.close()
        async with asyncio.timeout(10):
            for conn in conns:
                await conn.done.wait()


async def test_client_reset_of_the_data_stream_closes_the_pod_side(agent: AgentUnderTest) -> None:
    async with PodServer(hold_open) as pod, spdy_session(agent.port, KUBELET_PATH) as client:
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        client.send(data_sid, b"some bytes")
        conn = await pod.connection()
        client.reset_stream(data_sid)  # what client-go does once its local side is done
        async with asyncio.timeout(10):
            await conn.done.wait()
        assert conn.received == b"some bytes"
        assert await client.wait_ended(error_sid) == b""  # a normal end for client-go


# -------------------------------------------------------- 5. isolation, robustness


async def test_refused_pair_does_not_disturb_a_2mb_transfer(agent: AgentUnderTest) -> None:
    payload = os.urandom(2 * MIB)
    half = MIB
    with echo_server() as pod, refused_port() as dead:
        async with spdy_session(agent.port, KUBELET_PATH) as client:
            error_sid, data_sid = await client.open_pair(pod.port, "big")
            await client.send_all(data_sid, payload[:half])
            await client.wait_data(data_sid, half)  # the transfer is under way
            bad_error, _ = await client.open_pair(dead, "dead")
            await client.wait_reset(bad_error)
            assert b"connection refused" in client.streams[bad_error].data
            assert await _transfer(client, data_sid, payload[half:]) == payload
            assert await client.wait_ended(error_sid) == b""


MALFORMED = {
    "unknown-control-type": raw_control_frame(5, 0, b""),  # NOOP, gone in SPDY/3
    "ping-with-flags": raw_control_frame(int(FrameType.PING), 0x01, b"\x00\x00\x00\x01"),
    "garbage": b"\xff" * 16,
}


@pytest.mark.parametrize("malformed", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_frame_closes_only_its_connection(
    any_agent: AgentUnderTest, malformed: bytes
) -> None:
    payload = os.urandom(2 * MIB)
    with echo_server() as pod:
        async with (
            PodServer(hold_open) as victim_pod,
            spdy_session(any_agent.port, KUBELET_PATH) as bad,
            spdy_session(any_agent.port, KUBELET_PATH) as good,
        ):
            await bad.open_pair(victim_pod.port, 0)
            victim = await victim_pod.connection()
            error_sid, data_sid = await good.open_pair(pod.port, 0)
            await good.send_all(data_sid, payload[:MIB])
            await good.wait_data(data_sid, MIB)

            bad.send_raw(malformed)
            goaway = await bad.wait_goaway()
            assert goaway.error_code == GoAwayStatus.PROTOCOL_ERROR
            await bad.wait_closed()
            async with asyncio.timeout(10):
                await victim.done.wait()  # the broken connection's pod socket is closed

            assert await _transfer(good, data_sid, payload[MIB:]) == payload
            assert await good.wait_ended(error_sid) == b""
            assert good.goaway is None


async def test_ping_is_echoed_with_the_same_id(agent: AgentUnderTest) -> None:
    async with spdy_session(agent.port, KUBELET_PATH) as client:
        # SETTINGS and WINDOW_UPDATE are parsed and ignored (§1.8), never fatal.
        client.send_raw(SettingsFrame(((0, 7, 65536),)).serialize())
        client.send_raw(WindowUpdateFrame(1, 65536).serialize())
        first, second = client.ping(), client.ping()
        assert (first, second) == (1, 3)
        await client.wait_ping(first)
        await client.wait_ping(second)
        assert client.pings == [1, 3]
        assert client.goaway is None and not client.closed


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _flood_until_stalled(sock: socket.socket, pattern: bytes) -> int:
    """Send `pattern` cyclically without blocking until the socket stays full for STALL
    seconds; return how much was sent. Fails if UNBOUNDED bytes go out first."""
    loop = asyncio.get_running_loop()
    sent = 0
    view = memoryview(pattern)
    while sent < UNBOUNDED:
        offset = sent % len(pattern)
        try:
            sent += sock.send(view[offset : offset + 64 * KIB])
            continue
        except BlockingIOError:
            pass
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), _resolve, writable)
        try:
            await asyncio.wait_for(writable, STALL)
        except TimeoutError:
            return sent  # nobody drains the pod socket: back-pressure reached the pod
        finally:
            loop.remove_writer(sock.fileno())
    raise AssertionError(f"the pod sent {sent} bytes and was never blocked: unbounded buffering")


async def test_slow_client_back_pressures_the_pod(any_agent: AgentUnderTest) -> None:
    loop = asyncio.get_running_loop()
    pattern = os.urandom(MIB + 7)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        async with spdy_session(any_agent.port, KUBELET_PATH) as client:
            client_sock = client.writer.get_extra_info("socket")
            client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KIB)
            error_sid, data_sid = await client.open_pair(listener.getsockname()[1], 0)
            async with asyncio.timeout(10):
                pod_sock, _ = await loop.sock_accept(listener)
            with pod_sock:
                pod_sock.setblocking(False)
                pod_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * KIB)
                client.pause_reading()  # the client stops reading; the pod keeps sending
                sent = await _flood_until_stalled(pod_sock, pattern)
                print(f"{any_agent.kind}: the pod was blocked after sending {sent} bytes")
                if any_agent.agent is not None:
                    (session,) = any_agent.sessions()
                    buffered = session.transport.get_write_buffer_size()
                    assert buffered < 2 * MIB, f"agent holds {buffered} bytes for the client"
                # Reading again drains everything, intact and in order.
                pod_sock.shutdown(socket.SHUT_WR)
                client.resume_reading()
                received = await client.read_stream(data_sid, timeout=20)
                assert len(received) == sent
                assert received == (pattern * (sent // len(pattern) + 1))[:sent]
                client.end_stream(data_sid)
                assert await client.wait_ended(error_sid) == b""


async def test_slow_pod_back_pressures_the_client(any_agent: AgentUnderTest) -> None:
    loop = asyncio.get_running_loop()
    chunk = os.urandom(256 * KIB)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        async with spdy_session(any_agent.port, KUBELET_PATH) as client:
            error_sid, data_sid = await client.open_pair(listener.getsockname()[1], 0)
            async with asyncio.timeout(10):
                pod_sock, _ = await loop.sock_accept(listener)
            with pod_sock:
                pod_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KIB)
                # The pod reads nothing; the client writes until its writes stall.
                sent = 0
                while True:
                    assert sent < UNBOUNDED, (
                        "the agent accepted 64 MiB for a pod that reads nothing"
                    )
                    client.send(data_sid, chunk)
                    sent += len(chunk)
                    try:
                        await asyncio.wait_for(client.writer.drain(), STALL)
                    except TimeoutError:
                        break
                print(f"{any_agent.kind}: the client was blocked after sending {sent} bytes")
                if any_agent.agent is not None:
                    (session,) = any_agent.sessions()
                    pair = next(iter(session.pairs.values()))
                    assert pair.pod is not None and pair.pod.transport is not None
                    buffered = pair.pod.transport.get_write_buffer_size()
                    assert buffered < 4 * MIB, f"agent holds {buffered} bytes for the pod"
                # The pod reads again: everything arrives.
                client.end_stream(data_sid)
                got = 0
                async with asyncio.timeout(20):
                    while data := await loop.sock_recv(pod_sock, 256 * KIB):
                        assert data == (chunk * 2)[got % len(chunk) : got % len(chunk) + len(data)]
                        got += len(data)
                assert got == sent
                pod_sock.shutdown(socket.SHUT_WR)
                assert await client.read_stream(data_sid) == b""
                assert await client.wait_ended(error_sid) == b""


# ---------------------------------------------------------------------- 6. SIGTERM


async def test_sigterm_sends_goaway_drains_the_pair_and_exits_0() -> None:
    async with PodServer(echo_then_bye) as pod:
        proc = _start_cli_agent("--pod", "default/echo=host:127.0.0.1", "--drain-timeout", "10")
        with proc:
            port = await asyncio.to_thread(_listening_port, proc)
            async with (
                spdy_session(port, KUBELET_PATH) as client,
                spdy_session(port, KUBELET_PATH) as idle,
            ):
                error_sid, data_sid = await client.open_pair(pod.port, 0)
                client.send(data_sid, b"before;")
                await client.wait_data(data_sid, len(b"before;"))

                proc.send_signal(signal.SIGTERM)
                goaway = await client.wait_goaway()
                assert goaway.error_code == GoAwayStatus.OK
                assert goaway.last_stream_id == data_sid
                await idle.wait_goaway()  # every session is told, busy or not
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", port)  # no longer listening

                # The in-flight pair finishes normally after the GOAWAY.
                await client.send_all(data_sid, b"after", fin=True)
                assert await client.read_stream(data_sid) == b"before;afterbye"
                assert await client.wait_ended(error_sid) == b""
                await client.wait_closed()  # drained: the agent closes every connection
                await idle.wait_closed()
            assert await asyncio.to_thread(proc.wait, 15) == 0, proc.describe()
        assert (await pod.connection()).received == b"before;after"


async def test_sigterm_drain_timeout_ends_a_stuck_pair_and_exits_0() -> None:
    async with PodServer(hold_open) as pod:
        with _start_cli_agent(
            "--pod", "default/echo=host:127.0.0.1", "--drain-timeout", "0.5"
        ) as proc:
            port = await asyncio.to_thread(_listening_port, proc)
            async with spdy_session(port, KUBELET_PATH) as client:
                await client.open_pair(pod.port, 0)
                conn = await pod.connection()
                proc.send_signal(signal.SIGTERM)
                await client.wait_goaway()
                await client.wait_closed()  # the pair never ends: closed after 0.5 s
                async with asyncio.timeout(10):
                    await conn.done.wait()
            assert await asyncio.to_thread(proc.wait, 15) == 0, proc.describe()


# ----------------------------------------------------------------- 7. network namespace


async def test_missing_netns_is_reported_and_the_next_pair_works(agent: AgentUnderTest) -> None:
    uid = await pod_uid(agent.port, name="ghost")
    path = f"/run/netns/{GHOST_NETNS}"
    async with spdy_session(agent.port, "/portForward/default/ghost") as client:
        error_sid, data_sid = await client.open_pair(7000, 0)
        await client.wait_reset(error_sid)
        assert client.streams[error_sid].data.decode() == (
            f"error forwarding port 7000 to pod ghost, uid {uid}: "
            f'failed to execute portforward in network namespace "{path}": '
            "cannot enter namespace: no such file or directory"
        )
        assert client.streams[data_sid].reset_status == CANCEL

        # Now the namespace appears, with a server on port 7000: same session, next pair.
        await asyncio.to_thread(_create_netns, GHOST_NETNS)
        try:
            with echo_server_in(NetNamespace(GHOST_NETNS), 7000):
                payload = os.urandom(300 * KIB)
                assert await echo_pair(client, 7000, payload, 1) == payload
        finally:
            await asyncio.to_thread(_delete_netns, GHOST_NETNS)


def _create_netns(name: str) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def _delete_netns(name: str) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "del", name], check=False)


# --------------------------------------------------------------- more robustness


async def test_data_after_fin_resets_only_that_pair(any_agent: AgentUnderTest) -> None:
    async with (
        PodServer(echo_then_bye) as pod,
        spdy_session(any_agent.port, KUBELET_PATH) as client,
    ):
        error_sid, data_sid = await client.open_pair(pod.port, 0)
        client.send(data_sid, b"hi", fin=True)
        conn = await pod.connection()
        # DATA after our own FIN breaks the stream's rules: the agent's SPDY layer
        # answers RST_STREAM (STREAM_ALREADY_CLOSED) for that stream.
        client.send_raw(data_frame_header(data_sid, 3, False) + b"bad")
        assert await client.wait_reset(data_sid) == RstStatus.STREAM_ALREADY_CLOSED
        async with asyncio.timeout(10):
            await conn.done.wait()
        # The pair ends cleanly: no error text (the agent must not keep writing on the
        # dead data stream), FIN on the error stream.
        assert await client.wait_ended(error_sid) == b""
        with echo_server() as echo:
            assert await echo_pair(client, echo.port, b"next pair", 1) == b"next pair"


async def test_unidirectional_stream_is_refused(agent: AgentUnderTest) -> None:
    conn = await HttpConnection.open(agent.port)
    try:
        await conn.request("POST", KUBELET_PATH, UPGRADE_HEADERS)
        block = HeaderCompressor().encode(
            [("streamtype", "data"), ("port", "80"), ("requestid", "0")]
        )
        conn.writer.write(SynStreamFrame(1, block, unidirectional=True).serialize())
        conn.writer.write(PingFrame(1).serialize())
        frames: list[Frame] = []
        buf = bytearray()
        async with asyncio.timeout(10):
            while not (PingFrame(1) in frames and RstStreamFrame(1, CANCEL) in frames):
                chunk = await conn.reader.read(65536)
                assert chunk, f"connection closed; frames: {frames}"
                buf += chunk
                while (parsed := parse_frame(buf)) is not None:
                    frame, end = parsed
                    del buf[:end]
                    frames.append(frame)
        assert not any(isinstance(f, SynReplyFrame) for f in frames), frames
    finally:
        await conn.close()
