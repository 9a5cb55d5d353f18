"""The clients under test ("forwarders") and the servers they forward through.

Every forwarder maps three local ports to the three target servers (source, sink, echo)
through one upstream connection: a podgate session with three ports, or one
``kubectl port-forward`` with three mappings. The forwarder *process* is what the CPU and
memory columns measure: ``podgate serve`` (the session runner lives there), the kubectl
process, or socat with its forked relays.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load import ProcStats
from bench.servers import start_socat_relay
from tests.support.kube import FORWARDING_RE, kubectl_env, kubectl_path, write_kubeconfig
from tests.support.podgate import api_client, run_agent, start_serve
from tests.support.procs import ManagedProcess

__all__ = [
    "ALL_CASES",
    "SERVE_LIMITS",
    "Client",
    "Server",
    "Unavailable",
    "direct_client",
    "kubectl_client",
    "podgate_client",
    "socat_relay_client",
    "start_agent",
    "start_cluster",
    "start_spdyserver",
]

#: The per-client cases (sessions are measured on their own podgate instance).
ALL_CASES = frozenset({"bulk", "connrate", "concurrency", "idle"})
#: podgate against its own agent also runs the 500-connection case (issue 13: h2 / SPDY).
AGENT_CASES = ALL_CASES | {"concurrency500"}
POD = "pod/echo"
READY_TIMEOUT = 20.0


class Unavailable(Exception):
    """A client that cannot run here (missing binary, unsupported transport, ...)."""


@dataclass
class Server:
    """An upstream (the "cluster"): spdyserver or the podgate agent."""

    name: str
    url: str
    kubeconfig: Path
    process: ManagedProcess
    log: Path | None = None
    #: Sessions go through this agent (``via``) rather than the kubeconfig's server.
    via: dict[str, str] | None = None
    #: The podgate transports worth running here (None: every one asked for), and
    #: whether kubectl clients run against it.
    transports: tuple[str, ...] | None = None
    kubectl: bool = True


@dataclass
class Client:
    """A forwarder ready to take connections on ``ports[target]``."""

    server: str  # "spdyserver", "agent", or "-" for server-less baselines
    name: str  # "podgate-spdy", "kubectl-1.30", "socat-relay", "direct", ...
    ports: dict[str, int]  # "source" / "sink" / "echo" -> local port
    stats: ProcStats | None  # None: no forwarder process (direct)
    server_stats: ProcStats | None = None  # the upstream server's process
    cases: frozenset[str] = ALL_CASES
    note: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.server}/{self.name}"


# --------------------------------------------------------------------------- processes


def redirect(
    args: list[str], *, stdout: Path | None = None, stderr: Path | None = None
) -> list[str]:
    """``args`` run through ``sh -c 'exec ...'`` with stdout and/or stderr going to files:
    the pid stays the program's, and a chatty stream (a log line per connection) costs
    the load generator nothing, where ManagedProcess would drain it in Python threads."""
    redirects = ""
    if stdout is not None:
        redirects += f" >{shlex.quote(str(stdout))}"
    if stderr is not None:
        redirects += f" 2>{shlex.quote(str(stderr))}"
    return ["sh", "-c", f'exec "$0" "$@"{redirects}', *args]


def wait_for_lines(
    path: Path, pattern: re.Pattern[str], count: int, proc: ManagedProcess, timeout: float
) -> list[re.Match[str]]:
    """Poll ``path`` until ``count`` lines match ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        matches = [m for line in text.splitlines() if (m := pattern.search(line))]
        if len(matches) >= count:
            return matches[:count]
        if proc.returncode is not None or time.monotonic() > deadline:
            raise Unavailable(
                f"{proc.name}: {len(matches)} of {count} lines matching {pattern.pattern!r} "
                f"(returncode {proc.returncode}):\n{text[-2000:]}\n{proc.stderr_text()[-2000:]}"
            )
        time.sleep(0.02)


# --------------------------------------------------------------------------- servers


def start_spdyserver(stack: ExitStack, workdir: Path) -> Server:
    """The independent Go server (spdystream), with the WebSocket tunnel enabled: SPDY
    clients upgrade as usual, kubectl 1.31+ uses the tunnel. Its per-request log goes
    to a file, not through a pipe this process would have to drain."""
    from tests.interop.build import SpdyServerBuildError, build_spdyserver

    try:
        binary = build_spdyserver()
    except SpdyServerBuildError as exc:
        raise Unavailable(f"spdyserver: {exc}") from exc
    args = [str(binary), "--listen", "127.0.0.1:0", "--target-host", "127.0.0.1", "--tunnel"]
    log = workdir / "spdyserver" / "stderr.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(redirect(args, stderr=log), name="spdyserver")
    stack.callback(proc.stop)
    match = proc.wait_for_stdout(r"^Listening on (http://\S+)$", READY_TIMEOUT)
    kubeconfig = write_kubeconfig(workdir / "spdyserver" / "kubeconfig", match[1])
    return Server("spdyserver", match[1], kubeconfig, proc, log)


def start_agent(stack: ExitStack, workdir: Path) -> Server:
    """podgate's own agent, forwarding pod default/echo to 127.0.0.1."""
    agent = stack.enter_context(run_agent(["default/echo=host:127.0.0.1"]))
    kubeconfig = write_kubeconfig(workdir / "agent" / "kubeconfig", agent.url)
    return Server("agent", agent.url, kubeconfig, agent.process)


def start_cluster(stack: ExitStack, workdir: Path) -> list[Server]:
    """The kubelet path and the helper-agent path to the same pod (issue 14):

    - ``cluster``: a real kube-apiserver + etcd (tests/support/cluster.py, ``make
      cluster``) whose node's kubelet is `podgate agent`, serving pod default/echo on
      127.0.0.1; sessions go serve → API server → kubelet → pod;
    - ``helper-agent``: `podgate agent --cluster --dial pod-ip` beside it, which finds the
      pod (podIP 127.0.0.1) in the API server; sessions go serve → agent → pod (h2).
    """
    from tests.support.cluster import PodSpec
    from tests.support.cluster import start_cluster as start_kube

    try:
        cluster = stack.enter_context(start_kube(workdir / "cluster"))
    except FileNotFoundError as exc:
        raise Unavailable(f"cluster: {exc}") from exc
    cluster.create_namespace("default", exist_ok=True)  # the apiserver's, soon after ready
    node = cluster.add_node([PodSpec("default", "echo", ports=[], target="host:127.0.0.1")])
    kubeconfig = cluster.kubeconfig(workdir / "cluster" / "kubeconfig", "admin")
    helper = stack.enter_context(
        run_agent([], extra_args=["--cluster", "--kubeconfig", str(kubeconfig), "--dial", "pod-ip"])
    )
    return [
        Server("cluster", cluster.server, kubeconfig, node.agent, transports=("spdy",)),
        Server(
            "helper-agent",
            helper.url,
            kubeconfig,
            helper.process,
            via={"agent": helper.url},
            transports=("h2",),
            kubectl=False,
        ),
    ]


# --------------------------------------------------------------------------- clients

Started = tuple[Client, Callable[[], None]]

#: The bench measures podgate's costs, not its safety limits: the idle case holds 2000
#: connections in one session and the sessions case makes 1000 sessions, at or beyond the
#: defaults (1000 each) that `serve` keeps for real use.
SERVE_LIMITS = ("--max-connections-per-session", "100000", "--max-sessions", "100000")


def podgate_client(
    server: Server, transport: str, targets: dict[str, int], workdir: Path
) -> Started:
    """A fresh ``podgate serve`` with one session (three ports) using ``transport``."""
    data_dir = workdir / server.name / f"podgate-{transport}"
    data_dir.mkdir(parents=True, exist_ok=True)
    serve = start_serve(data_dir, server.kubeconfig, extra_args=SERVE_LIMITS)
    try:
        names = list(targets)
        with api_client(serve.url, timeout=30.0) as api:
            response = api.post(
                "/sessions",
                json={
                    "namespace": "default",
                    "target": POD,
                    "ports": [f"0:{targets[n]}" for n in names],
                    "addresses": ["127.0.0.1"],
                    "transport": transport,
                    **({"via": server.via} if server.via else {}),
                },
            )
            if response.status_code != 201:
                raise Unavailable(
                    f"POST /sessions: {response.status_code} {response.text}\n"
                    f"{serve.process.stderr_text()[-3000:]}"
                )
            session = _wait_ready(api, response.json()["id"])
        negotiated = session.get("transport")
        if transport != "auto" and negotiated not in (None, transport):
            raise Unavailable(f"asked for transport {transport!r}, got {negotiated!r}")
        session_ports: list[dict[str, Any]] = session["ports"]
        ports = {n: int(p["local_port"]) for n, p in zip(names, session_ports, strict=True)}
        client = Client(
            server.name,
            f"podgate-{transport}",
            ports,
            ProcStats([serve.process.pid]),
            ProcStats([server.process.pid]),
            cases=AGENT_CASES if server.name == "agent" else ALL_CASES,
            note=f"transport {negotiated}",
            processes=[serve.process],
        )
    except BaseException:
        serve.process.stop()
        raise
    return client, _stopper(serve.process)


def _stopper(proc: ManagedProcess) -> Callable[[], None]:
    def stop() -> None:
        proc.stop()

    return stop


def _wait_ready(api: httpx.Client, session_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    session: dict[str, Any] = {}
    while time.monotonic() < deadline:
        session = api.get(f"/sessions/{session_id}").json()
        if session["status"] == "ready":
            return session
        if session["status"] in ("failed", "stopped") or (
            session["status"] == "reconnecting" and session.get("last_error")
        ):
            raise Unavailable(f"session {session['status']}: {session.get('last_error')}")
        time.sleep(0.05)
    raise Unavailable(f"session not ready within {READY_TIMEOUT}s: {session}")


def kubectl_client(
    server: Server, version: str, websockets: bool | None, targets: dict[str, int], workdir: Path
) -> Started:
    """``kubectl.VERSION port-forward --address 127.0.0.1 pod/echo 0:P ...``; its stdout
    (a "Handling connection" line per connection) goes to a file."""
    try:
        binary = kubectl_path(version)
    except FileNotFoundError as exc:
        raise Unavailable(str(exc)) from exc
    env = kubectl_env(
        server.kubeconfig,
        cache_dir=server.kubeconfig.parent / f"cache-{version}",
        websockets=websockets,
    )
    names = list(targets)
    args = [str(binary), "port-forward", "--address", "127.0.0.1", POD]
    args += [f"0:{targets[n]}" for n in names]
    out = workdir / server.name / f"kubectl-{version}.stdout"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(redirect(args, stdout=out), env=env, name=f"kubectl-{version}")
    try:
        matches = wait_for_lines(out, FORWARDING_RE, len(names), proc, READY_TIMEOUT)
        by_remote = {int(m[2]): int(m[1]) for m in matches}
        ports = {n: by_remote[targets[n]] for n in names}
    except BaseException:
        proc.stop()
        raise
    if websockets is False:
        note = "SPDY (websockets off)"
    elif server.name == "spdyserver":
        note = "WebSocket tunnel (default)"
    else:
        note = "default; falls back to SPDY"
    client = Client(
        server.name,
        f"kubectl-{version}",
        ports,
        ProcStats([proc.pid]),
        ProcStats([server.process.pid]),
        note=note,
        processes=[proc],
    )
    return client, _stopper(proc)


def socat_relay_client(targets: dict[str, int]) -> Started:
    """``socat TCP-LISTEN:0,fork,reuseaddr TCP:127.0.0.1:PORT`` per bulk target (baseline)."""
    relays = []
    try:
        for name in ("source", "sink"):
            relays.append((name, start_socat_relay(targets[name])))
    except BaseException:
        for _, relay in relays:
            _stop_group(relay.process)
        raise
    client = Client(
        "-",
        "socat-relay",
        {name: relay.port for name, relay in relays},
        ProcStats([relay.process.pid for _, relay in relays], group=True),
        cases=frozenset({"bulk"}),
        note="socat default options (8 KiB buffer), fork per connection",
        processes=[relay.process for _, relay in relays],
    )

    def stop() -> None:
        for _, relay in relays:
            _stop_group(relay.process)

    return client, stop


def direct_client(targets: dict[str, int]) -> Started:
    """No forwarder: the ceiling of the load generator and target servers."""
    client = Client(
        "-",
        "direct",
        dict(targets),
        None,
        cases=frozenset({"bulk", "connrate", "concurrency"}),
        note="no forwarder: load generator + servers ceiling",
    )
    return client, lambda: None


def _stop_group(proc: ManagedProcess) -> None:
    """Stop a process that forks (socat): its children share its process group."""
    if proc.returncode is None:  # the group id is the pid (ManagedProcess starts a session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    proc.stop()


@contextlib.contextmanager
def running(started: Started) -> Iterator[Client]:
    client, stop = started
    try:
        yield client
    finally:
        stop()
