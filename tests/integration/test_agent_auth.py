"""`podgate agent` closed by default (issue 11): who gets in, at every entry point.

Three agents, real processes, each serving a pod in a real network namespace:

* ``token``: ``--token-file`` on plain HTTP (h2c prior knowledge for HTTP/2);
* ``cert``: TLS with ``--client-ca`` (the kubelet's ``--client-ca-file``): a client
  certificate signed by that CA for client authentication, or no TLS session at all;
* ``both``: TLS with ``--client-ca`` and ``--token-file``: a certificate *or* a token.

Each is asked, without credentials, with wrong ones and with right ones, at every entry
point: discovery (``/version``) and GET pod, the SPDY upgrade, the WebSocket tunnel, v4
channels, and HTTP/2 (the ``GET /v1/agent`` handshake and a stream pair). Wrong
credentials get a 401 (a Kubernetes Status) from HTTP, a 401 on each HTTP/2 stream, or no
TLS session. The checks are per request and per stream, not per connection.

Then real clients with real credentials: `podgate serve` sessions on every transport
(a bearer token, a client certificate, a token over TLS, and the refusals they report),
kubectl 1.30 (SPDY) and 1.33 (the WebSocket tunnel) with a token in the kubeconfig and
1.33 with a client certificate, and the official ``kubernetes`` Python client (v4
channels) with a token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websocket
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from tests.support.echo import roundtrip
from tests.support.h2link import H2Link, LinkClosed
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward, write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    Podgate,
    api_client,
    create_session,
    podgate_env,
    run_agent,
    run_serve,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.tls import CertificateAuthority, IssuedCert, make_ca

pytestmark = pytest.mark.timeout(60)

ECHO_PORT = 7000
TOKEN = "agent-token-6b1d2f"
WRONG_TOKEN = "agent-token-guessed"
POD_PATH = "/api/v1/namespaces/default/pods/echo"
PF_PATH = f"{POD_PATH}/portforward"
TUNNEL = "SPDY/3.1+portforward.k8s.io"
CHANNELS = "v4.channel.k8s.io"
TRANSPORTS = ["spdy", "websocket", "ws-channel", "h2"]


# ---------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Pki:
    serving_ca: CertificateAuthority  # signs the agents' serving certificate
    serving: IssuedCert
    client_ca: CertificateAuthority  # the agents' --client-ca
    client: IssuedCert  # signed by client_ca, for client authentication
    stranger: IssuedCert  # a client certificate from another CA
    server_usage: IssuedCert  # signed by client_ca, but a serving certificate (no clientAuth)
    token_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    serving_ca = make_ca(base / "serving-ca", "agent-serving-ca")
    client_ca = make_ca(base / "client-ca", "agent-client-ca")
    token_file = base / "tokens.csv"
    token_file.write_text(f'# static tokens\n{TOKEN},apiserver,uid-1,"system:masters"\n')
    return Pki(
        serving_ca,
        serving_ca.issue(base / "serving", "agent", dns=["localhost"], ips=["127.0.0.1"]),
        client_ca,
        client_ca.issue_client(base / "client", "kube-apiserver-kubelet-client"),
        make_ca(base / "other-ca", "not-the-client-ca").issue_client(base / "stranger", "mallory"),
        client_ca.issue(base / "server-usage", "looks-like-a-client", ips=["127.0.0.1"]),
        token_file,
    )


@dataclass(frozen=True)
class Credential:
    name: str
    token: str | None = None
    cert: str | None = None  # a Pki field

    def headers(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def tls(self, pki: Pki, alpn: list[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.serving_ca.cert))
        ctx.set_alpn_protocols(alpn)
        if self.cert is not None:
            issued: IssuedCert = getattr(pki, self.cert)
            ctx.load_cert_chain(str(issued.cert), str(issued.key))
        return ctx


NONE = Credential("none")
RIGHT_TOKEN = Credential("token", token=TOKEN)
WRONG = Credential("wrong-token", token=WRONG_TOKEN)
CERT = Credential("certificate", cert="client")
STRANGER = Credential("other-ca-certificate", cert="stranger")
SERVER_USAGE = Credential("serving-certificate", cert="server_usage")

#: What each agent makes of each credential: "ok", "401" or "no-tls" (handshake refused).
MATRIX = [
    ("token", NONE, "401"),
    ("token", WRONG, "401"),
    ("token", RIGHT_TOKEN, "ok"),
    ("cert", NONE, "no-tls"),
    ("cert", STRANGER, "no-tls"),
    ("cert", SERVER_USAGE, "no-tls"),
    ("cert", RIGHT_TOKEN, "no-tls"),  # no --token-file: a token is worth nothing here
    ("cert", CERT, "ok"),
    ("both", NONE, "401"),
    ("both", WRONG, "401"),
    ("both", STRANGER, "no-tls"),  # a certificate that is presented is verified
    ("both", CERT, "ok"),
    ("both", RIGHT_TOKEN, "ok"),
]


# ---------------------------------------------------------------------- agents and pods


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with network_namespace() as ns, echo_server_in(ns, ECHO_PORT):
        yield ns


@pytest.fixture(scope="module")
def agents(pod_netns: NetNamespace, pki: Pki) -> Iterator[dict[str, Podgate]]:
    pod = [f"default/echo={pod_netns.target}"]
    tls = ["--tls-cert", str(pki.serving.cert), "--tls-key", str(pki.serving.key)]
    client_ca = ["--client-ca", str(pki.client_ca.cert)]
    tokens = ["--token-file", str(pki.token_file)]
    with (
        run_agent(pod, extra_args=tokens) as token,
        run_agent(pod, extra_args=[*tls, *client_ca]) as cert,
        run_agent(pod, extra_args=[*tls, *client_ca, *tokens]) as both,
    ):
        running = {"token": token, "cert": cert, "both": both}
        said = {
            n: a.process.wait_for_stderr("authentication: (.*)$", 5)[1] for n, a in running.items()
        }
        assert said == {
            "token": f"bearer tokens (1 in {pki.token_file})",
            "cert": "client certificates (--client-ca)",
            "both": f"client certificates (--client-ca) and bearer tokens (1 in {pki.token_file})",
        }
        yield running
        for agent in running.values():
            assert agent.process.returncode is None, agent.process.describe()
            assert "Traceback" not in agent.process.stderr_text(), agent.process.describe()


# ---------------------------------------------------------------------- HTTP/1.1 probes


class NoAnswer(Exception):
    """The connection ended before any response: the TLS handshake was refused."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _connect(agent: Podgate, tls: ssl.SSLContext | None) -> socket.socket:
    host, port = agent.host_port
    sock = socket.create_connection((host, port), timeout=10)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, ConnectionError) as exc:
        sock.close()
        raise NoAnswer(repr(exc)) from None


def _exchange(sock: socket.socket, request: bytes) -> Answer:
    """Send ``request``; read one response (a 101's head only)."""
    buf = b""
    try:
        sock.sendall(request)
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (ssl.SSLError, ConnectionError) as exc:
        # TLS 1.3: the client's handshake is done before the agent has checked its
        # certificate; the refusal (an alert) comes with the first read.
        if not buf:
            raise NoAnswer(repr(exc)) from None
    if not buf:
        raise NoAnswer("EOF")
    head, _, body = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    status = int(status_line.split()[1])
    if status != 101:
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return Answer(status, headers, body)


def _request(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    if method == "POST":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _websocket(protocol: str) -> list[tuple[str, str]]:
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", protocol),
    ]


#: An HTTP/1.1 entry point: what, method, path, headers, the status when let in.
EntryPoint = tuple[str, str, str, list[tuple[str, str]], int]
ENTRY_POINTS: list[EntryPoint] = [
    ("discovery", "GET", "/version", [], 200),
    ("GET pod", "GET", POD_PATH, [], 200),
    (
        "SPDY upgrade",
        "POST",
        "/portForward/default/echo",
        [
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
        ],
        101,
    ),
    ("WebSocket tunnel", "GET", PF_PATH, _websocket(TUNNEL), 101),
    ("v4 channels", "GET", f"{PF_PATH}?ports={ECHO_PORT}", _websocket(CHANNELS), 101),
]


def _http11_outcome(agent: Podgate, pki: Pki, who: Credential, entry: EntryPoint) -> str:
    what, method, path, headers, allowed = entry
    tls = who.tls(pki, ["http/1.1"]) if agent.url.startswith("https") else None
    try:
        sock = _connect(agent, tls)
    except NoAnswer:
        return "no-tls"
    with sock:
        try:
            answer = _exchange(sock, _request(method, path, [*headers, *who.headers()]))
        except NoAnswer:
            return "no-tls"
    if answer.status == 401:
        assert answer.headers.get("www-authenticate", "").startswith("Bearer"), (what, answer)
        status = json.loads(answer.body)
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "Unauthorized", 401)
        return "401"
    assert answer.status == allowed, (what, answer)
    return "ok"


# ---------------------------------------------------------------------- HTTP/2 probes


async def _h2_outcome(agent: Podgate, pki: Pki, who: Credential) -> str:
    host, port = agent.host_port
    tls = who.tls(pki, ["h2"]) if agent.url.startswith("https") else None
    payload = os.urandom(300_000)
    try:
        async with H2Link.connect(host, port, ssl_context=tls, headers=who.headers()) as link:
            if tls is not None:
                assert link.alpn == "h2"
            hello = await link.query_agent()
            status = await link.status(hello)
            body = await link.read_all(hello)
            pair = await link.open_pair("default", "echo", ECHO_PORT)
            statuses = (await link.status(pair.error), await link.status(pair.data))
            if status == 401:
                assert statuses == (401, 401), statuses
                assert await link.read_all(pair.data) == b"Unauthorized"
                return "401"
            assert (status, json.loads(body)["kind"], statuses) == (200, "PodgateAgent", (200, 200))
            sender = asyncio.create_task(link.send(pair.data, payload, end=True))
            echoed = await link.read_all(pair.data)
            await sender
            assert echoed == payload
            return "ok"
    except (LinkClosed, ssl.SSLError, ConnectionError) as exc:
        assert tls is not None, f"h2c connection lost: {exc!r}"
        return "no-tls"


# ---------------------------------------------------------------------- the matrix


@pytest.mark.parametrize(
    ("agent_name", "who", "expected"),
    MATRIX,
    ids=[f"{agent}-agent:{who.name}" for agent, who, _ in MATRIX],
)
async def test_every_entry_point_lets_in_exactly_the_right_credentials(
    agents: dict[str, Podgate], pki: Pki, agent_name: str, who: Credential, expected: str
) -> None:
    agent = agents[agent_name]
    outcomes = {entry[0]: _http11_outcome(agent, pki, who, entry) for entry in ENTRY_POINTS}
    outcomes["HTTP/2"] = await _h2_outcome(agent, pki, who)
    assert outcomes == dict.fromkeys(outcomes, expected)


def test_http11_checks_every_request_not_the_connection(agents: dict[str, Podgate]) -> None:
    """A keep-alive connection whose first request had the token: the next one without
    it is refused, and one with it again is let in."""
    with _connect(agents["token"], None) as sock:
        with_token = RIGHT_TOKEN.headers()
        assert _exchange(sock, _request("GET", "/version", with_token)).status == 200
        assert _exchange(sock, _request("GET", POD_PATH, [])).status == 401
        assert _exchange(sock, _request("GET", POD_PATH, with_token)).status == 200


async def test_h2_checks_every_stream_not_the_connection(agents: dict[str, Podgate]) -> None:
    """On an HTTP/2 connection whose handshake had the token, a pair without it is
    refused; a pair with a wrong one too; the token's pairs go on."""
    host, port = agents["token"].host_port
    async with H2Link.connect(host, port, headers=RIGHT_TOKEN.headers()) as link:
        assert await link.status(await link.query_agent()) == 200
        for headers in ([], WRONG.headers()):
            link.headers = headers
            pair = await link.open_pair("default", "echo", ECHO_PORT)
            assert (await link.status(pair.error), await link.status(pair.data)) == (401, 401)
        link.headers = RIGHT_TOKEN.headers()
        pair = await link.open_pair("default", "echo", ECHO_PORT)
        await link.send(pair.data, b"still me", end=True)
        assert await link.read_all(pair.data) == b"still me"


# ---------------------------------------------------------------------- podgate sessions


@pytest.fixture(scope="module")
def serve_api(
    agents: dict[str, Podgate], pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """`podgate serve` with one kubeconfig context per way to reach an agent."""
    ca = str(pki.serving_ca.cert)
    contexts = {
        "token": (agents["token"].url, {"token": TOKEN}),
        "cert": (
            agents["cert"].url,
            {"client-certificate": str(pki.client.cert), "client-key": str(pki.client.key)},
        ),
        "token-over-tls": (agents["both"].url, {"token": TOKEN}),
        "wrong-token": (agents["token"].url, {"token": WRONG_TOKEN}),
        "anonymous": (agents["both"].url, {}),
        "no-certificate": (agents["cert"].url, {}),
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": url, "certificate-authority": ca}}
            for name, (url, _) in contexts.items()
        ],
        "users": [{"name": name, "user": user} for name, (_, user) in contexts.items()],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}
            for name in contexts
        ],
        "current-context": "token",
    }
    kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    with (
        run_serve(tmp_path_factory.mktemp("data"), kubeconfig) as serve,
        api_client(serve.url) as api,
    ):
        yield api


def _session(api: httpx.Client, context: str, transport: str) -> dict[str, object]:
    session = create_session(
        api,
        target="pod/echo",
        ports=[f"0:{ECHO_PORT}"],
        context=context,
        transport=transport,
        reconnect={"enabled": False},
    )
    return wait_for_status(api, str(session["id"]), ["ready", "failed"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_podgate_sessions_with_a_token_or_a_certificate(
    serve_api: httpx.Client, transport: str
) -> None:
    for context in ("token", "cert", "token-over-tls"):
        session = _session(serve_api, context, transport)
        assert (session["status"], session["transport"]) == ("ready", transport), session
        local = session["ports"][0]["local_port"]  # type: ignore[index]
        assert roundtrip("127.0.0.1", local, os.urandom(500_000), timeout=30).intact, context
        serve_api.delete(f"/sessions/{session['id']}").raise_for_status()


def test_podgate_sessions_without_credentials_fail_with_the_401(serve_api: httpx.Client) -> None:
    """serve looks the pod up before it upgrades, so a refused session reports that GET's
    401 whatever its transport (the matrix above refuses each upgrade itself)."""
    for context in ("wrong-token", "anonymous"):
        session = _session(serve_api, context, "auto")
        assert session["status"] == "failed", session
        assert "401: Unauthorized" in str(session["last_error"]), session
        serve_api.delete(f"/sessions/{session['id']}").raise_for_status()
    # No client certificate for an agent that requires one: no TLS session. (TLS 1.3: the
    # agent's alert arrives as the end of the connection, which is what the client says.)
    session = _session(serve_api, "no-certificate", "auto")
    assert session["status"] == "failed", session
    assert "Server disconnected" in str(session["last_error"]), session
    serve_api.delete(f"/sessions/{session['id']}").raise_for_status()


# ---------------------------------------------------------------------- kubectl


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_kubectl_with_a_token(
    version: str, agents: dict[str, Podgate], pki: Pki, tmp_path: Path
) -> None:
    """1.30 upgrades to SPDY, 1.33 tunnels it in a WebSocket: the token goes either way.
    kubectl sends a kubeconfig's token over TLS only, and offers ALPN h2 there: the agent
    must answer its discovery over HTTP/1.1 (tls_context)."""
    url, ca = agents["both"].url, pki.serving_ca.cert
    kubeconfig = write_kubeconfig(tmp_path / "kc", url, token=TOKEN, certificate_authority=ca)
    env = kubectl_env(kubeconfig)
    with start_port_forward(kubectl_path(version), "pod/echo", f"0:{ECHO_PORT}", env=env) as pf:
        assert roundtrip("127.0.0.1", pf.local_port, os.urandom(2_000_000), timeout=30).intact
    wrong = write_kubeconfig(tmp_path / "wrong", url, token=WRONG_TOKEN, certificate_authority=ca)
    args = [str(kubectl_path(version)), "port-forward", "pod/echo", f"0:{ECHO_PORT}"]
    with ManagedProcess(args, env=kubectl_env(wrong), name=f"kubectl-{version}") as refused:
        assert refused.wait(30) != 0
    assert "Unauthorized" in refused.stderr_text(), refused.describe()


def test_kubectl_with_a_client_certificate(
    agents: dict[str, Podgate], pki: Pki, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        agents["cert"].url,
        certificate_authority=pki.serving_ca.cert,
        client_certificate=pki.client.cert,
        client_key=pki.client.key,
    )
    env = kubectl_env(kubeconfig)
    with start_port_forward(kubectl_path("1.33"), "pod/echo", f"0:{ECHO_PORT}", env=env) as pf:
        assert roundtrip("127.0.0.1", pf.local_port, os.urandom(2_000_000), timeout=30).intact


# ---------------------------------------------------------------------- the Python client


def _python_client(url: str, token: str, tmp_path: Path) -> k8s.CoreV1Api:
    kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{token}", url, token=token)
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return k8s.CoreV1Api(k8s.ApiClient(configuration))


def test_python_client_get_pod_and_v4_channels_with_a_token(
    agents: dict[str, Podgate], tmp_path: Path
) -> None:
    url = agents["token"].url
    api = _python_client(url, TOKEN, tmp_path)
    assert api.read_namespaced_pod("echo", "default").metadata.name == "echo"
    forward = portforward(
        api.connect_get_namespaced_pod_portforward, "echo", "default", ports=str(ECHO_PORT)
    )
    sock = forward.socket(ECHO_PORT)
    sock.settimeout(10)
    sock.sendall(b"v4 with a token")
    assert sock.recv(100) == b"v4 with a token"
    sock.close()
    forward.close()
    refused = _python_client(url, WRONG_TOKEN, tmp_path)
    with pytest.raises(ApiException) as read:
        refused.read_namespaced_pod("echo", "default")
    assert read.value.status == 401
    with pytest.raises(ApiException, match="401"):
        portforward(
            refused.connect_get_namespaced_pod_portforward, "echo", "default", ports=str(ECHO_PORT)
        )


# ---------------------------------------------------------------------- the listen policy


def _agent_command(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`podgate agent ARGS` run to its end (for flag checks that end it at once)."""
    return subprocess.run(
        [*PODGATE, "agent", "--pod", "default/echo=host:127.0.0.1", *args],
        env=podgate_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"])
def test_no_authentication_beyond_loopback_exits_2(listen: str) -> None:
    """Refused before anything is bound (192.0.2.1 is not even an address of this host)."""
    done = _agent_command("--listen", listen)
    assert done.returncode == 2, done
    assert "--client-ca" in done.stderr and "--token-file" in done.stderr, done.stderr
    assert "refusing to listen on" in done.stderr and "Listening" not in done.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--client-ca", "ca.crt"], "--client-ca needs TLS"),
        (["--token-file", "/nonexistent/tokens.csv"], "cannot read the token file"),
        (["--header-timeout", "0"], "not a positive number of seconds"),
        (["--keepalive-timeout", "-1"], "not a positive number of seconds"),
        (["--streaming-connection-idle-timeout", "nan"], "not a positive number of seconds"),
    ],
    ids=["client-ca-without-tls", "unreadable-token-file", "header", "keepalive", "streaming"],
)
def test_unusable_security_flags_exit_2(args: list[str], complaint: str) -> None:
    done = _agent_command("--listen", "0.0.0.0:0", *args)
    assert done.returncode == 2, done
    assert complaint in done.stderr, done.stderr


def test_authenticated_agent_listens_beyond_loopback(pki: Pki, pod_netns: NetNamespace) -> None:
    extra = ["--listen", "0.0.0.0:0", "--token-file", str(pki.token_file)]
    args = [*PODGATE, "agent", "--pod", f"default/echo={pod_netns.target}", *extra]
    with ManagedProcess(args, env=podgate_env(), name="podgate-agent") as proc:
        url = proc.wait_for_stdout(LISTENING_RE, 20)[1]
        assert url.startswith("http://0.0.0.0:")
        agent = Podgate(proc, url.replace("0.0.0.0", "127.0.0.1"))
        with _connect(agent, None) as sock:
            assert _exchange(sock, _request("GET", "/version", [])).status == 401
            assert _exchange(sock, _request("GET", "/version", RIGHT_TOKEN.headers())).status == 200


@pytest.mark.parametrize("listen", ["localhost:0", "127.0.0.2:0", "[::1]:0"])
def test_loopback_needs_no_authentication(listen: str, pod_netns: NetNamespace) -> None:
    with run_agent([f"default/echo={pod_netns.target}"], extra_args=["--listen", listen]) as agent:
        assert (
            agent.process.wait_for_stderr("authentication: (.*)$", 5)[1] == "none (loopback only)"
        )
        host, port = agent.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(10)
            sock.connect((host, port))
            assert _exchange(sock, _request("GET", "/version", [])).status == 200


def test_help_names_every_security_flag() -> None:
    done = subprocess.run(
        [*PODGATE, "agent", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    for flag in (
        "--client-ca",
        "--token-file",
        "--header-timeout",
        "--keepalive-timeout",
        "--streaming-connection-idle-timeout",
    ):
        assert flag in done.stdout, flag


# ---------------------------------------------------------------------- browsers


def _browser_channel(port: int, origin: str, host: str | None = None) -> websocket.WebSocket:
    """What a web page's ``new WebSocket(url, ["v4.channel.k8s.io"])`` sends: its
    Origin (and, after DNS rebinding, its own host name as Host)."""
    url = f"ws://127.0.0.1:{port}{PF_PATH}?ports={ECHO_PORT}"
    return websocket.create_connection(
        url, subprotocols=[CHANNELS], origin=origin, host=host, timeout=10
    )


@pytest.mark.parametrize(
    ("origin", "host"),
    [("https://evil.example", None), ("http://rebound.example:{port}", "rebound.example:{port}")],
    ids=["cross-site", "dns-rebinding"],
)
def test_a_web_page_cannot_forward_through_a_loopback_agent(
    origin: str, host: str | None, pod_netns: NetNamespace
) -> None:
    """An agent without authentication trusts whoever reaches loopback, and a browser
    on this machine does: any page may open a WebSocket to 127.0.0.1 (no CORS for
    WebSockets), and a page whose name was rebound to 127.0.0.1 may read the answers.
    Its Origin or its Host says where it comes from, so a foreign one is refused (403); a
    client on this machine (no Origin, or a loopback one like websocket-client's default,
    which the Python client sends) is let in."""
    with run_agent([f"default/echo={pod_netns.target}"]) as agent:
        port = agent.host_port[1]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            _browser_channel(port, origin.format(port=port), host and host.format(port=port))
        assert refused.value.status_code == 403
        for local in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", "http://[::1]"):
            channel = _browser_channel(port, local)
            channel.send_binary(b"\x00from this machine")
            frames = [channel.recv() for _ in range(3)]  # two port frames, then the echo
            assert frames[-1] == b"\x00from this machine", frames
            channel.close()
        # A rebound page reading the pod (a same-origin GET carries no Origin): its Host.
        with _connect(agent, None) as sock:
            for host, status in (("rebound.example", 403), ("localhost", 200), ("[::1]", 200)):
                request = f"GET {POD_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                assert _exchange(sock, request.encode()).status == status, host
