"""Every transport `podgate agent` accepts on its one port, against real peers (issue 4).

- kubectl 1.33 (its defaults) and 1.30 (``KUBECTL_PORT_FORWARD_WEBSOCKETS=true``) tunnel
  SPDY inside a WebSocket (protocols.md §3); kubectl 1.33 against an agent started with
  ``--no-websocket-tunnel`` falls back to plain SPDY (§1).
- The official ``kubernetes`` Python client speaks WebSocket v4 channels (§2).
- An HTTP/2 pair client (tests/support/h2link.py, on ``H2PairClient``) speaks §5.2 with
  h2c prior knowledge and with TLS + ALPN ``h2`` on the same port.
- Malformed input on each transport gets its documented answer while another
  connection's transfer, held half-way so that it is certainly in flight, comes through
  intact.

Pods: a real network namespace with echo servers (kubectl, Python client), or test-owned
loopback servers (e.g. a pod that stops reading). Payloads are checked with SHA-256.
Nothing waits by sleeping: every wait is on an event or a log line, with a timeout; a
stream counts as stalled when no window update arrives for ``STALL`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hyperframe.frame import Frame, GoAwayFrame
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.stream import portforward

from service.protocols.h2 import PairStateError
from service.protocols.websocket import (
    OPCODE_BINARY,
    ChannelClient,
    ConnectionTerminated,
    DataReceived,
    HandshakeAccepted,
    encode_message,
)
from tests.support.echo import EchoServer, echo_server, roundtrip
from tests.support.h2link import H2Link, StreamReset
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward, write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.procs import ManagedProcess
from tests.support.tls import IssuedCert, make_ca
from tests.support.wsraw import (
    OPCODE_CLOSE,
    OPCODE_TEXT,
    client_frame,
    parse_frames,
    read_frames,
    ws_handshake,
)

pytestmark = pytest.mark.timeout(60)

ECHO_PORT = 7000
SECOND_PORT = 7001
DEAD_PORT = 7999  # nothing listens on it inside the namespace
MB = 1_000_000
MIB = 1 << 20
STALL = 1.5
PF_PATH = "/api/v1/namespaces/default/pods/echo/portforward"
TUNNEL = "SPDY/3.1+portforward.k8s.io"
TUNNEL_LOG = r"pod default/echo: websocket tunnel \(SPDY/3\.1\+portforward\.k8s\.io\)"
SPDY_LOG = "SPDY/3.1 upgrade"
#: V8: SPDY PING id 1 (odd: a client ping, which the agent echoes).
SPDY_PING_1 = bytes.fromhex("800300060000000400000001")
REFUSED_STREAM = 0x7
CANCEL = 0x8


# ---------------------------------------------------------------------- agents and pods


@dataclass
class RunningAgent:
    proc: ManagedProcess
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextmanager
def run_agent(*pods: str, extra: tuple[str, ...] = ()) -> Iterator[RunningAgent]:
    args = [sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0", *extra]
    for pod in pods:
        args += ["--pod", pod]
    with ManagedProcess(args, name="podgate-agent") as proc:
        url = proc.wait_for_stdout(r"^Listening on (https?://\S+)$", 20)[1]
        yield RunningAgent(proc, url)


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with (
        network_namespace() as ns,
        echo_server_in(ns, ECHO_PORT),
        echo_server_in(ns, SECOND_PORT),
    ):
        yield ns


@pytest.fixture(scope="module")
def local_echo() -> Iterator[EchoServer]:
    """A loopback echo server: pod `default/local` (host:127.0.0.1) on its port."""
    with echo_server() as server:
        yield server


def _pods(ns: NetNamespace) -> tuple[str, str]:
    return f"default/echo={ns.target}", "default/local=host:127.0.0.1"


@pytest.fixture(scope="module")
def agent(pod_netns: NetNamespace) -> Iterator[RunningAgent]:
    """The shared agent, every transport on (malformed input, Python client, HTTP/2)."""
    with run_agent(*_pods(pod_netns)) as running:
        yield running
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(20) == 0, running.proc.describe()
        assert "Traceback" not in running.proc.stderr_text(), running.proc.describe()


@pytest.fixture
def fresh_agent(pod_netns: NetNamespace) -> Iterator[RunningAgent]:
    """An agent for one test, so its log shows exactly what that test's peer did."""
    with run_agent(*_pods(pod_netns)) as running:
        yield running


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[IssuedCert, Path]:
    base = tmp_path_factory.mktemp("tls")
    ca = make_ca(base / "ca")
    return ca.issue(base / "agent", "agent", dns=["localhost"], ips=["127.0.0.1"]), ca.cert


@pytest.fixture(scope="module")
def tls_agent(pod_netns: NetNamespace, tls_cert: tuple[IssuedCert, Path]) -> Iterator[RunningAgent]:
    cert, _ = tls_cert
    extra = ("--tls-cert", str(cert.cert), "--tls-key", str(cert.key))
    with run_agent(*_pods(pod_netns), extra=extra) as running:
        assert running.url.startswith("https://")
        yield running


def _client_tls(ca: Path, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.fixture(scope="module")
def tunnel_forward(agent: RunningAgent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """kubectl 1.33 forwarding through the tunnel of the shared agent: its local port."""
    kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("kc") / "kubeconfig", agent.url)
    with start_port_forward(
        kubectl_path("1.33"), "pod/echo", f"0:{ECHO_PORT}", env=kubectl_env(kubeconfig)
    ) as pf:
        yield pf.local_port


class GatedTransfer:
    """A round trip through ``port`` that sends half its payload, waits until that half
    came back, and sends the rest only on ``finish()``: so it is certainly in flight
    while the test misbehaves on other connections."""

    def __init__(self, port: int, size: int = 8 * MB) -> None:
        self.payload = os.urandom(size)
        self.half = size // 2
        self.received = bytearray()
        self.errors: list[BaseException] = []
        self._release = threading.Event()
        self._halfway = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]

    def _send(self) -> None:
        try:
            self.sock.sendall(self.payload[: self.half])
            self._release.wait(30)
            self.sock.sendall(self.payload[self.half :])
            self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            self.errors.append(exc)

    def _receive(self) -> None:
        try:
            while data := self.sock.recv(256 * 1024):
                self.received += data
                if len(self.received) >= self.half:
                    self._halfway.set()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self._halfway.set()

    def __enter__(self) -> GatedTransfer:
        for thread in self._threads:
            thread.start()
        assert self._halfway.wait(30), "the transfer did not get going"
        assert len(self.received) >= self.half and not self.errors, self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        for thread in self._threads:
            thread.join(30)
        self.sock.close()

    def finish(self) -> None:
        self.__exit__()
        assert not self.errors, self.errors
        assert hashlib.sha256(self.received).digest() == hashlib.sha256(self.payload).digest()


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds


def _bulk_and_concurrent(port: int, label: str) -> None:
    """20 MB each way on one connection, then 50 concurrent connections."""
    payload = os.urandom(20 * MB)
    started = time.perf_counter()
    result = roundtrip("127.0.0.1", port, payload, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.intact, f"sent {result.sent} bytes, got {len(result.received)}"
    print(f"{label}: 20 MB each way, {_mbps(40 * MB, elapsed):.0f} MB/s")
    payloads = [os.urandom(200_000 + i) for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda p: roundtrip("127.0.0.1", port, p, timeout=60), payloads))
    assert all(r.intact for r in results)


# ---------------------------------------------------------------------- kubectl


@pytest.mark.parametrize(
    ("version", "websockets"), [("1.33", None), ("1.30", True)], ids=["1.33", "1.30-env-true"]
)
def test_kubectl_tunnels_spdy_in_a_websocket(
    version: str, websockets: bool | None, fresh_agent: RunningAgent, tmp_path: Path
) -> None:
    env = kubectl_env(
        write_kubeconfig(tmp_path / "kubeconfig", fresh_agent.url), websockets=websockets
    )
    with start_port_forward(kubectl_path(version), "pod/echo", f"0:{ECHO_PORT}", env=env) as pf:
        _bulk_and_concurrent(pf.local_port, f"kubectl {version} tunnel")
        fresh_agent.proc.wait_for_stderr(TUNNEL_LOG, 10)
        assert "error" not in pf.process.stderr_text().lower(), pf.process.describe()
    log = fresh_agent.proc.stderr_text()
    assert SPDY_LOG not in log, "kubectl fell back to SPDY:\n" + log


def test_kubectl_falls_back_to_spdy_when_the_tunnel_is_off(
    pod_netns: NetNamespace, tmp_path: Path
) -> None:
    with run_agent(*_pods(pod_netns), extra=("--no-websocket-tunnel",)) as agent:
        # What kubectl's tunnel request gets: the 400 of a kubelet without the tunnel.
        sock, status, _, _ = ws_handshake(agent.port, PF_PATH, [TUNNEL])
        sock.close()
        assert status == 400
        env = kubectl_env(write_kubeconfig(tmp_path / "kubeconfig", agent.url))
        with start_port_forward(kubectl_path("1.33"), "pod/echo", f"0:{ECHO_PORT}", env=env) as pf:
            _bulk_and_concurrent(pf.local_port, "kubectl 1.33 fallback to SPDY")
            agent.proc.wait_for_stderr(SPDY_LOG, 10)
        assert "websocket tunnel" not in agent.proc.stderr_text()


# ---------------------------------------------------------------------- Python client (v4)


def _core_api(agent: RunningAgent, tmp_path: Path) -> k8s.CoreV1Api:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return k8s.CoreV1Api(k8s.ApiClient(configuration))


def _through_python_socket(sock: socket.socket, payload: bytes, window: int = MIB) -> bytes:
    """Send ``payload`` and read as much back, at most ``window`` bytes in flight.

    Unbounded, this client deadlocks against any agent that bounds its buffers: its
    proxy thread writes everything it has to the WebSocket with one blocking send and
    reads nothing meanwhile, so once the agent stops reading it (back-pressure from the
    pod) nobody reads the agent's output either. A real kubelet bounds its buffers too.
    """
    got = bytearray()
    view = memoryview(payload)
    for start in range(0, len(payload), window):
        piece = view[start : start + window]
        sock.sendall(piece)
        target = start + len(piece)
        while len(got) < target:
            data = sock.recv(1 << 20)
            if not data:
                return bytes(got)
            got += data
    return bytes(got)


def test_python_client_two_ports_20mb_each(agent: RunningAgent, tmp_path: Path) -> None:
    api = _core_api(agent, tmp_path)
    pf = portforward(
        api.connect_get_namespaced_pod_portforward,
        "echo",
        "default",
        ports=f"{ECHO_PORT},{SECOND_PORT}",
    )
    payloads = {ECHO_PORT: os.urandom(20 * MB), SECOND_PORT: os.urandom(20 * MB)}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        echoed = dict(
            zip(
                payloads,
                pool.map(lambda p: _through_python_socket(pf.socket(p), payloads[p]), payloads),
                strict=True,
            )
        )
    elapsed = time.perf_counter() - started
    for port, payload in payloads.items():
        assert hashlib.sha256(echoed[port]).digest() == hashlib.sha256(payload).digest(), port
        assert pf.error(port) is None
    print(f"kubernetes Python client v4: 2 x 20 MB each way, {_mbps(80 * MB, elapsed):.0f} MB/s")
    pf.close()
    agent.proc.wait_for_stderr(
        rf"websocket channels \(v4\.channel\.k8s\.io\) for ports {ECHO_PORT},{SECOND_PORT}", 10
    )


def test_python_client_dead_port_gets_the_error_text(
    agent: RunningAgent, tmp_path: Path, pod_netns: NetNamespace
) -> None:
    api = _core_api(agent, tmp_path)
    pf = portforward(
        api.connect_get_namespaced_pod_portforward, "echo", "default", ports=f"{DEAD_PORT}"
    )
    sock = pf.socket(DEAD_PORT)
    sock.settimeout(30)
    assert sock.recv(1) == b""  # the client closes the port once the error text arrived
    error = pf.error(DEAD_PORT)
    assert error is not None and error.startswith(f"error forwarding port {DEAD_PORT} to pod echo")
    assert f'network namespace "{pod_netns.path}"' in error
    assert f"dial tcp4 127.0.0.1:{DEAD_PORT}: connect: connection refused" in error


# ---------------------------------------------------------------------- v4 channels, raw


def _channel_client(
    port: int, ports: list[int], base64: bool = False
) -> tuple[ChannelClient, socket.socket]:
    cc = ChannelClient(f"127.0.0.1:{port}", PF_PATH, ports, base64=base64)
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(cc.initiate())
    return cc, sock


def _channel_events(cc: ChannelClient, sock: socket.socket) -> list[object]:
    data = sock.recv(256 * 1024)
    events: list[object] = list(cc.receive_data(data))
    if not data:
        events.append(None)  # EOF
    return events


def _channel_echo(cc: ChannelClient, sock: socket.socket, expected: int) -> bytes:
    got = bytearray()
    while len(got) < expected:
        for event in _channel_events(cc, sock):
            assert event is not None, "connection closed early"
            if isinstance(event, DataReceived):
                assert event.port_index == 0
                got += event.data
    return bytes(got)


@pytest.mark.parametrize("base64", [False, True], ids=["v4", "v4.base64"])
def test_channels_ignore_unknown_channels_and_client_error_channel_bytes(
    base64: bool, agent: RunningAgent, tunnel_forward: int
) -> None:
    with GatedTransfer(tunnel_forward) as other:
        cc, sock = _channel_client(agent.port, [ECHO_PORT], base64=base64)
        with sock:
            accepted = False
            while not accepted:
                accepted = any(isinstance(e, HandshakeAccepted) for e in _channel_events(cc, sock))
            # Channel 9 does not exist, channel 1 is the (server→client) error channel.
            if base64:
                sock.sendall(encode_message(OPCODE_TEXT, b"9anVuaw==", mask=True))
                sock.sendall(encode_message(OPCODE_TEXT, b"1anVuaw==", mask=True))
            else:
                sock.sendall(encode_message(OPCODE_BINARY, b"\x09junk", mask=True))
                sock.sendall(encode_message(OPCODE_BINARY, b"\x01junk", mask=True))
                sock.sendall(encode_message(OPCODE_BINARY, b"", mask=True))  # no channel
            payload = os.urandom(300_000)
            sock.sendall(cc.send_data(0, payload))
            assert _channel_echo(cc, sock, len(payload)) == payload
            # Close right behind more data: the agent half-closes the pod connection,
            # relays the rest of the echo, then answers the Close and hangs up.
            payload = os.urandom(3 * MB)
            sock.sendall(cc.send_data(0, payload) + cc.close())
            echoed, closed = bytearray(), []
            while not closed:
                for event in _channel_events(cc, sock):
                    assert event is not None, "EOF before the agent's Close"
                    if isinstance(event, DataReceived):
                        echoed += event.data
                    elif isinstance(event, ConnectionTerminated):
                        closed.append(event.error_code)
            assert closed == [1000]
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert sock.recv(1) == b""
        other.finish()


def test_channel_handshake_rejections_and_repeated_ports(agent: RunningAgent) -> None:
    sock, status, _, body = ws_handshake(agent.port, PF_PATH, ["v4.channel.k8s.io"])
    sock.close()
    assert status == 400 and b'query parameter "port" is required' in body
    sock, status, _, _ = ws_handshake(agent.port, f"{PF_PATH}?ports=80", ["v5.channel.k8s.io"])
    sock.close()
    assert status == 403
    # `ports` repeated: two ports, prefixes on channels 0..3, then both dialled.
    path = f"{PF_PATH}?ports={ECHO_PORT}&ports={SECOND_PORT}"
    sock, status, headers, rest = ws_handshake(agent.port, path, ["v4.channel.k8s.io"])
    with sock:
        assert status == 101 and headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
        while len(rest) < 4 * 5:
            rest += sock.recv(4096)
        prefixes = [f.payload for f in parse_frames(rest)][:4]
        lo, hi = ECHO_PORT.to_bytes(2, "little"), SECOND_PORT.to_bytes(2, "little")
        assert prefixes == [b"\x00" + lo, b"\x01" + lo, b"\x02" + hi, b"\x03" + hi]
        sock.sendall(client_frame(OPCODE_CLOSE, (1000).to_bytes(2, "big")))
        assert read_frames(sock)[-1].close_code == 1000


# ---------------------------------------------------------------------- tunnel, malformed


def _tunnel_session(port: int) -> tuple[socket.socket, bytes]:
    """A live tunnel: 101, then a SPDY PING sent in two messages comes back (V11)."""
    sock, status, headers, rest = ws_handshake(port, PF_PATH, [TUNNEL])
    assert status == 101 and headers["sec-websocket-protocol"] == TUNNEL
    sock.sendall(client_frame(OPCODE_BINARY, SPDY_PING_1[:5]))
    sock.sendall(client_frame(OPCODE_BINARY, b""))  # zero-length messages are legal
    sock.sendall(client_frame(OPCODE_BINARY, SPDY_PING_1[5:]))
    while not parse_frames(rest):
        rest += sock.recv(4096)
    [pong] = parse_frames(rest)
    assert (pong.opcode, pong.payload) == (OPCODE_BINARY, SPDY_PING_1)
    return sock, b""


# The payload of "wrong-key" is a SPDY PING masked with one key while the header declares
# another: the agent unmasks it to a control frame of SPDY version 2.
_KEY = b"\x11\x22\x33\x44"
_WRONG_KEY = bytes(a ^ b for a, b in zip(_KEY, b"\x00\x01\x00\x00", strict=True))
MALFORMED_TUNNEL = {
    "unmasked-frame": (client_frame(OPCODE_BINARY, SPDY_PING_1, mask=False), 1002),
    "text-message": (client_frame(OPCODE_TEXT, b"hello"), 1003),
    "wrong-key": (
        client_frame(OPCODE_BINARY, SPDY_PING_1, key=_KEY, declared_key=_WRONG_KEY),
        1002,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_TUNNEL))
def test_malformed_tunnel_input_closes_only_that_connection(
    case: str, agent: RunningAgent, tunnel_forward: int
) -> None:
    frame, close_code = MALFORMED_TUNNEL[case]
    with GatedTransfer(tunnel_forward) as other:
        sock, rest = _tunnel_session(agent.port)
        with sock:
            sock.sendall(frame)
            frames = read_frames(sock, rest)  # until the agent closes the connection
        assert frames and frames[-1].opcode == OPCODE_CLOSE, frames
        assert frames[-1].close_code == close_code
        other.finish()


# ---------------------------------------------------------------------- HTTP/2


async def _h2_roundtrip(
    link: H2Link, payload: bytes, pod: str = "echo", port: int = ECHO_PORT
) -> bytes:
    pair = await link.open_pair("default", pod, port)
    sender = asyncio.create_task(link.send(pair.data, payload, end=True))
    assert await link.status(pair.error) == 200
    assert await link.status(pair.data) == 200
    echoed = await link.read_all(pair.data)
    await sender
    assert await link.read_all(pair.error) == b""  # END_STREAM, no text
    return echoed


@contextmanager
def _h2_target(
    mode: str, agent: RunningAgent, tls_agent: RunningAgent, ca: Path
) -> Iterator[tuple[int, ssl.SSLContext | None]]:
    if mode == "h2c":
        yield agent.port, None
    else:
        # What podgate's h2 transport offers: h2 alone (a client offering http/1.1 too
        # gets HTTP/1.1, the agent's preference: kubectl's discovery).
        yield tls_agent.port, _client_tls(ca, ["h2"])


@pytest.mark.parametrize("mode", ["h2c", "tls-alpn"])
async def test_h2_20mb_each_way_and_50_concurrent_pairs(
    mode: str, agent: RunningAgent, tls_agent: RunningAgent, tls_cert: tuple[IssuedCert, Path]
) -> None:
    with _h2_target(mode, agent, tls_agent, tls_cert[1]) as (port, ctx):
        async with H2Link.connect("127.0.0.1", port, ssl_context=ctx) as link:
            if ctx is not None:
                assert link.alpn == "h2"
            payload = os.urandom(20 * MB)
            started = time.perf_counter()
            echoed = await _h2_roundtrip(link, payload)
            elapsed = time.perf_counter() - started
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            print(f"HTTP/2 {mode}: 20 MB each way, {_mbps(40 * MB, elapsed):.0f} MB/s")
            payloads = [os.urandom(200_000 + i) for i in range(50)]
            results = await asyncio.gather(*(_h2_roundtrip(link, p) for p in payloads))
            assert results == payloads


@pytest.mark.parametrize("offer", [["http/1.1"], ["h2", "http/1.1"]], ids=["http11", "both"])
def test_tls_alpn_http11_keeps_the_http11_path(
    tls_agent: RunningAgent, tls_cert: tuple[IssuedCert, Path], offer: list[str]
) -> None:
    """A client offering http/1.1, alone or after h2 as Go clients (kubectl) do, gets
    HTTP/1.1, where discovery is answered."""
    ctx = _client_tls(tls_cert[1], offer)
    with (
        socket.create_connection(("127.0.0.1", tls_agent.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"gitVersion"' in answer


def _h2_frames(data: bytes) -> list[Frame]:
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        if pos + 9 + length > len(data):
            break
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


async def test_malformed_h2_streams_get_their_answer_and_disturb_nothing(
    agent: RunningAgent,
) -> None:
    payload = os.urandom(8 * MB)
    half = len(payload) // 2
    async with (
        H2Link.connect("127.0.0.1", agent.port) as link,
        H2Link.connect("127.0.0.1", agent.port) as other,
    ):
        # In flight on another connection: half sent and echoed.
        busy = await other.open_pair("default", "echo", ECHO_PORT)
        await other.send(busy.data, payload[:half])
        echoed = bytearray()
        while len(echoed) < half:
            echoed += await other.read(busy.data)
        # ... and a pair in flight on this very connection.
        mine = await link.open_pair("default", "echo", ECHO_PORT)
        await link.send(mine.data, b"first ")
        assert await link.read(mine.data) == b"first "

        base = [(":method", "POST"), (":scheme", "http"), (":authority", "agent")]
        path = ("/v1/portforward/default/echo",)
        no_port = await link.open_stream(
            [*base, (":path", path[0]), ("streamtype", "data"), ("requestid", "x")], False
        )
        assert await link.status(no_port) == 400
        assert await link.read_all(no_port) == b'"port" header is required'
        bad_type = await link.open_stream(
            [*base, (":path", path[0]), ("streamtype", "x"), ("port", "7000"), ("requestid", "y")],
            True,
        )
        assert await link.status(bad_type) == 400
        assert b"invalid stream type" in await link.read_all(bad_type)
        unknown = await link.open_pair("default", "nosuchpod", ECHO_PORT)
        for sid in (unknown.error, unknown.data):
            assert await link.status(sid) == 404
            assert await link.read_all(sid) == b'pods "nosuchpod" not found'
        wrong_path = await link.open_stream(
            [*base, (":path", "/portForward/default/echo"), ("streamtype", "error"),
             ("port", "7000"), ("requestid", "z")],
            True,
        )  # fmt: skip
        assert await link.status(wrong_path) == 404
        duplicate = await link.open_stream(
            [*base, (":path", path[0]), ("streamtype", "data"), ("port", "7000"),
             ("requestid", mine.request_id)],
            False,
        )  # fmt: skip
        assert await link.status(duplicate) == 409
        assert b"data stream already assigned" in await link.read_all(duplicate)
        cancelled = await link.open_pair("default", "echo", ECHO_PORT)
        assert await link.status(cancelled.data) == 200
        await link.reset(cancelled.data)  # RST_STREAM CANCEL: the pair is aborted
        with pytest.raises(StreamReset) as aborted:
            await link.read_all(cancelled.error)
        assert aborted.value.code == CANCEL
        dead = await link.open_pair("default", "echo", DEAD_PORT)
        assert await link.status(dead.error) == 200
        assert await link.status(dead.data) == 502
        assert b"connection refused" in await link.read_all(dead.error)

        # Not HTTP/2 after the preface: GOAWAY and the end of that connection only.
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        writer.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd"
        )
        async with asyncio.timeout(10):
            answer = await reader.read()  # until the agent closes
        writer.close()
        goaways = [f for f in _h2_frames(answer) if isinstance(f, GoAwayFrame)]
        assert goaways and goaways[-1].error_code != 0

        # Both transfers carry on untouched.
        await link.send(mine.data, b"second", end=True)
        assert await link.read_all(mine.data) == b"second"
        assert await link.read_all(mine.error) == b""
        await other.send(busy.data, payload[half:], end=True)
        echoed += await other.read_all(busy.data)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


class StallingPod:
    """A pod port that accepts one connection and reads nothing until ``release``."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.done = threading.Event()
        self.sha = hashlib.sha256()
        self.count = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                self.release.wait(60)
                while data := conn.recv(256 * 1024):
                    self.sha.update(data)
                    self.count += len(data)
        finally:
            self.done.set()

    def close(self) -> None:
        self.release.set()
        self.listener.close()


async def test_h2_a_pod_that_stops_reading_stalls_only_its_own_stream(
    agent: RunningAgent, local_echo: EchoServer
) -> None:
    pod = StallingPod()
    try:
        async with H2Link.connect("127.0.0.1", agent.port) as link:
            stalled = await link.open_pair("default", "local", pod.port)
            assert await link.status(stalled.data) == 200
            sent, sha = 0, hashlib.sha256()
            chunk = os.urandom(256 * 1024)
            while True:  # send until the agent stops opening the window
                taken = link.send_nowait(stalled.data, chunk)
                if taken:
                    sha.update(chunk[:taken])
                    sent += taken
                    continue
                try:
                    async with asyncio.timeout(STALL):
                        await link.wait_window_event()
                except TimeoutError:
                    break
            assert link.window(stalled.data) == 0
            assert sent < 64 * MIB, f"the agent took {sent} bytes for a pod that reads nothing"
            updates = link.streams[stalled.data].window_events
            print(f"HTTP/2: the stalled stream took {sent / MIB:.1f} MiB, then its window closed")

            # Another stream of the same connection flows meanwhile.
            payload = os.urandom(8 * MB)
            assert await _h2_roundtrip(link, payload, "local", local_echo.port) == payload
            assert link.window(stalled.data) == 0
            assert link.streams[stalled.data].window_events == updates  # no credit given

            # Released, the pod gets every byte, in order; the window opens again.
            pod.release.set()
            rest = os.urandom(2 * MB)
            await link.send(stalled.data, rest, end=True)
            sha.update(rest)
            sent += len(rest)
            assert await asyncio.to_thread(pod.done.wait, 30)
            assert (pod.count, pod.sha.hexdigest()) == (sent, sha.hexdigest())
            assert await link.read_all(stalled.data) == b""  # the pod closed: END_STREAM
            assert await link.read_all(stalled.error) == b""
    finally:
        pod.close()


async def test_h2_sigterm_sends_goaway_and_drains_open_pairs(
    local_echo: EchoServer,
) -> None:
    with run_agent("default/local=host:127.0.0.1") as agent:
        async with H2Link.connect("127.0.0.1", agent.port) as link:
            payload = os.urandom(4 * MB)
            half = len(payload) // 2
            pair = await link.open_pair("default", "local", local_echo.port)
            await link.send(pair.data, payload[:half])
            echoed = bytearray()
            while len(echoed) < half:
                echoed += await link.read(pair.data)
            agent.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await link.goaway_received.wait()
            assert link.goaway is not None
            assert (link.goaway.error_code, link.goaway.last_stream_id) == (0, pair.data)
            # H2PairClient opens no pair after a GOAWAY; streams a client had opened before
            # it learnt of the GOAWAY are sent raw here. The agent refuses them.
            with pytest.raises(PairStateError):
                await link.open_pair("default", "local", local_echo.port)
            base = [(":method", "POST"), (":scheme", "http"), (":authority", "agent")]
            base += [(":path", "/v1/portforward/default/local"), ("port", str(local_echo.port))]
            late = await link.open_stream(
                [*base, ("streamtype", "data"), ("requestid", "x")], False
            )
            with pytest.raises(StreamReset) as refused:
                await link.status(late)
            assert refused.value.code == REFUSED_STREAM
            # The open pair finishes normally.
            await link.send(pair.data, payload[half:], end=True)
            echoed += await link.read_all(pair.data)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert await link.read_all(pair.error) == b""
            # Drained, the agent still reads and leaves the close to the client: closing
            # first, with frames of the client unread, would reset the connection and
            # discard what the client had not read yet.
            async with asyncio.timeout(10):
                await link.ping()
        assert agent.proc.wait(20) == 0, agent.proc.describe()


async def test_h2_pair_timeout(local_echo: EchoServer) -> None:
    with run_agent(
        "default/local=host:127.0.0.1", extra=("--stream-creation-timeout", "0.5")
    ) as agent:
        async with H2Link.connect("127.0.0.1", agent.port) as link:
            base = [(":method", "POST"), (":scheme", "http"), (":authority", "agent")]
            base += [(":path", "/v1/portforward/default/local"), ("port", str(local_echo.port))]
            lone_error = await link.open_stream(
                [*base, ("streamtype", "error"), ("requestid", "a")], True
            )
            lone_data = await link.open_stream(
                [*base, ("streamtype", "data"), ("requestid", "b")], False
            )
            assert await link.status(lone_error) == 200
            text = await link.read_all(lone_error)  # the text, then END_STREAM
            assert text.endswith(b"request=a) timed out waiting for streams"), text
            with pytest.raises(StreamReset) as reset:
                await link.status(lone_data)  # never answered: RST_STREAM CANCEL
            assert reset.value.code == CANCEL
            # The connection is fine for the next pair.
            assert await _h2_roundtrip(link, b"after", "local", local_echo.port) == b"after"
