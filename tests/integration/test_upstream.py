"""service.upstream against real peers: the podgate agent (plain HTTP, and behind a TLS
relay that checks a bearer token and a path prefix), an exec credential plugin, and tiny
HTTP servers that give fixed answers. No mocks; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from service.protocols.spdy import (
    DataReceived,
    Event,
    PingReceived,
    SpdyConnection,
    StreamEnded,
    StreamReplied,
)
from service.upstream import (
    Cluster,
    PodNotFound,
    PodNotRunning,
    UpgradedConnection,
    UpstreamError,
)
from tests.support.echo import EchoServer, echo_server, refused_port
from tests.support.kube import write_kubeconfig
from tests.support.procs import ManagedProcess
from tests.support.tls import CertificateAuthority, IssuedCert, make_ca

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # bound for any single wait in these tests
TOKEN = "s3cret-token"
PING_FROM_SERVER = bytes.fromhex("800300060000000400000002")  # SPDY PING id 2 (server parity)


# --------------------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pods = tmp_path_factory.mktemp("agent") / "pods.yaml"
    pods.write_text(
        yaml.safe_dump(
            {
                "pods": [
                    {
                        "namespace": "default",
                        "name": "echo",
                        "target": "host:127.0.0.1",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                    },
                    {
                        "namespace": "default",
                        "name": "waiting",
                        "target": "host:127.0.0.1",
                        "phase": "Pending",
                    },
                ]
            }
        )
    )
    args = [sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0"]
    args += ["--pods", str(pods)]
    with ManagedProcess(args, name="podgate-agent") as agent:
        yield agent.wait_for_stdout(r"^Listening on (http://\S+)$", 20)[1]


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: IssuedCert
    other_ca: CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    return Pki(ca, ca.issue(root / "server", "apiserver"), make_ca(root / "other", "other-ca"))


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]


@dataclass
class TlsRelay:
    """An API-server stand-in: terminates TLS, checks the bearer token and path prefix of
    the first request of each connection, then pipes bytes to the agent."""

    agent: tuple[str, int]
    cert: IssuedCert
    token: str
    prefix: str = ""
    requests: list[SeenRequest] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> TlsRelay:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.cert.server_context()
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:  # closed sockets end every handler; wait so none is cancelled
            await asyncio.wait(self._handlers, timeout=WAIT)
        await self._server.wait_closed()

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._track(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        pairs = [line.split(":", 1) for line in lines[1:] if line]
        headers = {name.strip().lower(): value.strip() for name, value in pairs}
        self.requests.append(SeenRequest(method, target, headers))
        if not target.startswith(self.prefix + "/"):
            await self._reject(writer, 404, "NotFound", f"no such path {target}")
            return
        if headers.get("authorization") != f"Bearer {self.token}":
            await self._reject(writer, 401, "Unauthorized", "Unauthorized (relay: bad token)")
            return
        upgrade = "upgrade" in headers
        out = [f"{method} {target[len(self.prefix) :]} HTTP/1.1"]
        for name, value in pairs:
            if not upgrade and name.strip().lower() == "connection":
                continue
            out.append(f"{name}:{value}")
        if not upgrade:
            out.append("Connection: close")  # one request per connection: no re-parsing
        up_reader, up_writer = await asyncio.open_connection(*self.agent)
        self._track(up_writer)
        up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        writer.close()
        up_writer.close()

    @staticmethod
    async def _reject(writer: asyncio.StreamWriter, code: int, reason: str, message: str) -> None:
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }
        ).encode()
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except OSError:
        writer.close()


@dataclass
class FixedServer:
    """Reads one request head per connection and answers with fixed bytes (or never);
    with ``close_after`` it then closes, as a server without Content-Length must."""

    response: bytes | None
    close_after: bool = False
    heads: list[bytes] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    got_bytes: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> FixedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:  # closed sockets end every handler; wait so none is cancelled
            await asyncio.wait(self._handlers, timeout=WAIT)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            if self.response is not None:
                writer.write(self.response)
            if self.close_after:
                writer.close()
                return
            while data := await reader.read(65536):  # hold the connection; record the rest
                self.received += data
                self.got_bytes.set()


Server = TypeVar("Server", TlsRelay, FixedServer)


@contextlib.asynccontextmanager
async def running(server: Server) -> AsyncIterator[Server]:
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def loaded(kubeconfig: Path) -> AsyncIterator[Cluster]:
    cluster = await Cluster.load(str(kubeconfig))
    try:
        yield cluster
    finally:
        await cluster.close()


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- SPDY client


class SpdyClient(asyncio.Protocol):
    """A minimal port-forward client on top of the sans-IO SpdyConnection."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.conn = SpdyConnection(client_side=True)
        self.events: asyncio.Queue[Event | None] = asyncio.Queue()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.events.put_nowait(event)
        self.flush()

    def eof_received(self) -> bool:
        self.events.put_nowait(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.put_nowait(None)

    def flush(self) -> None:
        if out := self.conn.data_to_send():
            self.transport.write(out)

    async def next_event(self) -> Event:
        async with asyncio.timeout(WAIT):
            event = await self.events.get()
        assert event is not None, "connection closed"
        return event

    async def forward(self, port: int, payload: bytes, request_id: int = 0) -> bytes:
        """One stream pair to ``port`` as client-go does it (protocols.md §1.5): send
        ``payload`` with FIN, read the echo until FIN; the error stream must stay empty."""
        common = [("port", str(port)), ("requestid", str(request_id))]
        error = self.conn.open_stream([("streamtype", "error"), *common])
        self.flush()
        data = 0
        echoed, errors = bytearray(), bytearray()
        open_streams = {error}
        while open_streams:
            event = await self.next_event()
            if isinstance(event, StreamReplied) and event.stream_id == error:
                self.conn.end_stream(error)
                data = self.conn.open_stream([("streamtype", "data"), *common])
                open_streams.add(data)
            elif isinstance(event, StreamReplied) and event.stream_id == data:
                self.conn.send_data(data, payload, fin=True)  # DATA only after SYN_REPLY
            elif isinstance(event, DataReceived) and event.stream_id in (error, data):
                (echoed if event.stream_id == data else errors).extend(event.data)
            elif isinstance(event, StreamEnded):
                open_streams.discard(event.stream_id)
            self.flush()
        assert not errors, errors.decode()
        return bytes(echoed)


def _swap_by_hand(conn: UpgradedConnection) -> SpdyClient:
    """The documented manual hand-over: set_protocol, feed leftover, resume_reading."""
    client = SpdyClient(conn.transport)
    conn.transport.set_protocol(client)
    if conn.leftover:
        client.data_received(conn.leftover)
    conn.transport.resume_reading()
    return client


# --------------------------------------------------------------------------- plain HTTP


async def test_plain_http_get_pod_and_echo_through_upgrade(
    agent_url: str, echo: EchoServer, tmp_path: Path
) -> None:
    async with loaded(write_kubeconfig(tmp_path / "kubeconfig", agent_url)) as cluster:
        assert cluster.server == agent_url
        pod = await cluster.require_running("default", "echo")
        assert (pod.name, pod.namespace, pod.phase) == ("echo", "default", "Running")
        assert pod.uid
        assert pod.container_ports == [{"containerPort": 8080, "protocol": "TCP", "name": "http"}]

        conn = await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
        assert conn.protocol == "portforward.k8s.io"
        client = _swap_by_hand(conn)
        try:
            payload = b"hello through the swap " * 1000
            assert await client.forward(echo.port, payload) == payload
            assert await client.forward(echo.port, b"second pair", request_id=1) == b"second pair"
        finally:
            conn.transport.close()


async def test_unknown_pod_is_pod_not_found(agent_url: str, tmp_path: Path) -> None:
    async with loaded(write_kubeconfig(tmp_path / "kubeconfig", agent_url)) as cluster:
        with pytest.raises(PodNotFound) as caught:
            await cluster.get_pod("default", "nope")
    assert str(caught.value) == 'pod "nope" not found in namespace "default"'
    assert (caught.value.status, caught.value.retryable) == (404, False)


async def test_pending_pod_is_not_running(agent_url: str, tmp_path: Path) -> None:
    async with loaded(write_kubeconfig(tmp_path / "kubeconfig", agent_url)) as cluster:
        assert (await cluster.get_pod("default", "waiting")).phase == "Pending"
        with pytest.raises(PodNotRunning) as caught:
            await cluster.require_running("default", "waiting")
    assert str(caught.value) == (
        "unable to forward port because pod is not running. Current status=Pending"
    )
    assert caught.value.retryable


async def test_refused_port_is_retryable(tmp_path: Path) -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        async with loaded(write_kubeconfig(tmp_path / "kubeconfig", url)) as cluster:
            for call in (
                cluster.get_pod("default", "echo"),
                cluster.upgrade_spdy("default", "echo", timeout=WAIT),
            ):
                with pytest.raises(UpstreamError) as caught:
                    await call
                assert caught.value.retryable and caught.value.status is None
                assert "connection refused" in str(caught.value).lower()
                assert url in str(caught.value)


# --------------------------------------------------------------------------- HTTPS


async def test_https_bearer_token_and_path_prefix(
    agent_url: str, echo: EchoServer, pki: Pki, tmp_path: Path
) -> None:
    relay = TlsRelay(_host_port(agent_url), pki.server, TOKEN, prefix="/some/prefix")
    async with running(relay):
        server = f"https://127.0.0.1:{relay.port}/some/prefix"
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", server, token=TOKEN, certificate_authority=pki.ca.cert
        )
        async with loaded(kubeconfig) as cluster:
            assert cluster.server == server
            assert (await cluster.get_pod("default", "echo")).phase == "Running"
            conn = await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
            client = SpdyClient(conn.transport)
            conn.attach(client)
            try:
                assert await client.forward(echo.port, b"over tls") == b"over tls"
            finally:
                conn.transport.close()
    get, post = relay.requests
    assert (get.method, get.target) == ("GET", "/some/prefix/api/v1/namespaces/default/pods/echo")
    assert (post.method, post.target) == (
        "POST",
        "/some/prefix/api/v1/namespaces/default/pods/echo/portforward",
    )
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["upgrade"] == "SPDY/3.1"
    assert post.headers["connection"] == "Upgrade"
    assert post.headers["x-stream-protocol-version"] == "portforward.k8s.io"
    assert post.headers["content-length"] == "0"
    assert post.headers["host"] == f"127.0.0.1:{relay.port}"
    assert post.headers["user-agent"].startswith("podgate/")


async def test_https_wrong_token_is_401_not_retryable(
    agent_url: str, pki: Pki, tmp_path: Path
) -> None:
    relay = TlsRelay(_host_port(agent_url), pki.server, TOKEN)
    async with running(relay):
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            f"https://127.0.0.1:{relay.port}",
            token="wrong",
            certificate_authority=pki.ca.cert,
        )
        async with loaded(kubeconfig) as cluster:
            for call in (
                cluster.get_pod("default", "echo"),
                cluster.upgrade_spdy("default", "echo", timeout=WAIT),
            ):
                with pytest.raises(UpstreamError) as caught:
                    await call
                assert (caught.value.status, caught.value.retryable) == (401, False)
                assert "Unauthorized (relay: bad token)" in str(caught.value)


async def test_https_wrong_ca_is_a_certificate_error(
    agent_url: str, pki: Pki, tmp_path: Path
) -> None:
    relay = TlsRelay(_host_port(agent_url), pki.server, TOKEN)
    async with running(relay):
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            f"https://127.0.0.1:{relay.port}",
            token=TOKEN,
            certificate_authority=pki.other_ca.cert,
        )
        async with loaded(kubeconfig) as cluster:
            for call in (
                cluster.get_pod("default", "echo"),
                cluster.upgrade_spdy("default", "echo", timeout=WAIT),
            ):
                with pytest.raises(UpstreamError) as caught:
                    await call
                message = str(caught.value)
                assert "certificate verification failed" in message, message
                assert f"https://127.0.0.1:{relay.port}" in message
                assert caught.value.status is None
    assert relay.requests == []  # nothing was sent over an unverified connection


EXEC_PLUGIN = """\
import json, sys
from pathlib import Path
from typing import Any, TypeVar
token_file, log_file = sys.argv[1], sys.argv[2]
with open(log_file, "a") as log:
    log.write("ran\\n")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": Path(token_file).read_text().strip(),
               "expirationTimestamp": "2000-01-01T00:00:00Z"},
}))
"""


async def test_exec_plugin_token_is_read_per_dial(
    agent_url: str, echo: EchoServer, pki: Pki, tmp_path: Path
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    token_file, log_file = tmp_path / "token", tmp_path / "runs.log"
    token_file.write_text("first-token")
    relay = TlsRelay(_host_port(agent_url), pki.server, "first-token")
    async with running(relay):
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            f"https://127.0.0.1:{relay.port}",
            certificate_authority=pki.ca.cert,
        )
        config = yaml.safe_load(kubeconfig.read_text())
        config["users"][0]["user"] = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(plugin), str(token_file), str(log_file)],
                "interactiveMode": "Never",
            }
        }
        kubeconfig.write_text(yaml.safe_dump(config))
        async with loaded(kubeconfig) as cluster:
            cluster.start_refresh()  # must not interfere, and close() must stop it
            conn = await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
            conn.transport.close()

            # The plugin now hands out another token; the next dial must use it.
            token_file.write_text("second-token")
            relay.token = "second-token"
            conn = await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
            client = SpdyClient(conn.transport)
            conn.attach(client)
            try:
                assert await client.forward(echo.port, b"fresh token") == b"fresh token"
            finally:
                conn.transport.close()
    auths = [r.headers["authorization"] for r in relay.requests]
    assert auths == ["Bearer first-token", "Bearer second-token"]
    assert len(log_file.read_text().splitlines()) >= 3  # load + one run per dial


# --------------------------------------------------------------------------- fixed answers


@pytest.mark.parametrize(
    ("response", "status", "retryable", "expected"),
    [
        (
            b"HTTP/1.1 403 Forbidden\r\nX-Accepted-Stream-Protocol-Versions: portforward.k8s.io"
            b"\r\nContent-Type: text/plain\r\nContent-Length: 45\r\n\r\n"
            b"unable to upgrade: unable to negotiate proto.",
            403,
            False,
            [
                "403 Forbidden",
                "unable to upgrade: unable to negotiate proto.",
                "server accepts stream protocols: portforward.k8s.io",
            ],
        ),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n\r\n"
            b'{"kind":"Status","apiVersion":"v1","status":"Failure",'
            b'"message":"the kubelet is restarting","code":503}',
            503,
            True,
            ["503 Service Unavailable: the kubelet is restarting"],
        ),
    ],
    ids=["403-text", "503-status-json-until-close"],
)
async def test_non_101_answers(
    tmp_path: Path, response: bytes, status: int, retryable: bool, expected: list[str]
) -> None:
    close_after = b"Connection: close" in response  # body runs until EOF
    async with running(FixedServer(response, close_after=close_after)) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with loaded(write_kubeconfig(tmp_path / "kubeconfig", url)) as cluster:
            with pytest.raises(UpstreamError) as caught:
                await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    message = str(caught.value)
    assert f"{url}/api/v1/namespaces/default/pods/echo/portforward" in message
    for text in expected:
        assert text in message


async def test_101_with_wrong_stream_protocol(tmp_path: Path) -> None:
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
    async with running(FixedServer(response)) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with loaded(write_kubeconfig(tmp_path / "kubeconfig", url)) as cluster:
            with pytest.raises(UpstreamError) as caught:
                await cluster.upgrade_spdy("default", "echo", timeout=WAIT)
    assert "unable to negotiate protocol" in str(caught.value)
    assert "v4.channel.k8s.io" in str(caught.value)
    assert not caught.value.retryable


async def test_bytes_after_the_101_are_kept_and_delivered(tmp_path: Path) -> None:
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n" + PING_FROM_SERVER
    )
    async with running(FixedServer(response)) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with loaded(write_kubeconfig(tmp_path / "kubeconfig", url)) as cluster:
            conn = await cluster.upgrade_spdy("default", "pod/with space", timeout=WAIT)
            try:
                assert conn.leftover == PING_FROM_SERVER
                client = SpdyClient(conn.transport)
                conn.attach(client)
                assert await client.next_event() == PingReceived(2)
                async with asyncio.timeout(WAIT):
                    await server.got_bytes.wait()
                assert bytes(server.received) == PING_FROM_SERVER  # our echo of the ping
            finally:
                conn.transport.close()
    (head,) = server.heads
    assert head.startswith(b"POST /api/v1/namespaces/default/pods/pod%2Fwith%20space/portforward ")


async def test_silent_server_times_out(tmp_path: Path) -> None:
    async with running(FixedServer(None)) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with loaded(write_kubeconfig(tmp_path / "kubeconfig", url)) as cluster:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                await cluster.upgrade_spdy("default", "echo", timeout=1.0)
            elapsed = time.monotonic() - started
    assert elapsed < 5
    assert caught.value.retryable and caught.value.status is None
    assert "timed out after 1 s" in str(caught.value)
    assert url in str(caught.value)


# --------------------------------------------------------------------------- configuration


@pytest.fixture
def no_incluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


@pytest.mark.usefixtures("no_incluster")
async def test_no_cluster_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing" / "config"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(UpstreamError) as caught:
        await Cluster.load()
    assert not caught.value.retryable
    assert str(caught.value).startswith("no cluster configured:")
    assert str(missing) in str(caught.value)


@pytest.mark.usefixtures("no_incluster")
async def test_explicit_missing_kubeconfig(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UpstreamError) as caught:
        await Cluster.load(str(missing))
    assert not caught.value.retryable
    assert str(caught.value) == f"kubeconfig {missing} does not exist"


async def test_unknown_context(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")
    with pytest.raises(UpstreamError) as caught:
        await Cluster.load(str(kubeconfig), context="elsewhere")
    assert not caught.value.retryable
    assert "'elsewhere'" in str(caught.value)
