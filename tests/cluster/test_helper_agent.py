"""`podgate agent --cluster` as a helper agent, against the real kube-apiserver v1.20.2.

The agents run here as they would in the cluster: with the ServiceAccount, RBAC and
credentials of deploy/kubernetes/agent/ (applied for real, credentials from its
credentials.sh), discovering pods from the API server.

- ``--dial pod-ip``: pods' ``status.podIPs`` are patched to loopback addresses
  (127.0.0.64/26) where the tests' echo servers listen;
- ``--dial netns``: a pod's sandbox is a process in a network namespace the test creates,
  in a cgroup named after the pod's UID, running as 65535 like ``pause``; the agent runs
  as root with only the two capabilities the DaemonSet grants. The pod's IP then points
  where nothing listens, so only its namespace can answer.

What could not be real here: no kubelet or container runtime runs, so "pods" are API
objects whose status the test writes and whose network is a namespace it made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.stream import portforward

from tests.support.cluster import ECHO_PORT, Cluster, PodSpec
from tests.support.echo import EchoServer, echo_server, roundtrip
from tests.support.kube import (
    available_kubectl_versions,
    kubectl_env,
    kubectl_path,
    run_kubectl,
    start_port_forward,
    write_kubeconfig,
)
from tests.support.netns import echo_server_in, network_namespace, pod_sandbox
from tests.support.podgate import (
    PODGATE,
    api_client,
    concurrent_roundtrips,
    create_session,
    explain_on_failure,
    podgate_env,
    run_serve,
    wait_for_session,
    wait_for_status,
)
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(180)

MB = 1_000_000
NAMESPACE = "helper"
NETNS_NODE = "node-netns"
#: The addresses pods get here; the pod-ip agent may also dial them as ip/ targets.
POD_RANGE = "127.0.0.64/26"
MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
AGENT_URL_RE = r"^Listening on (https://\S+)$"
#: The DaemonSet's capabilities (deploy/kubernetes/agent/netns/daemonset.yaml), and no more.
NETNS_CAPS = "-all,+sys_admin,+sys_ptrace"


@dataclass
class Agent:
    process: ManagedProcess
    url: str
    kubeconfig: Path  # for clients of the agent: its URL, CA and token (context podgate-agent)

    @property
    def via(self) -> dict[str, str]:
        return {"agent": self.url, "context": "podgate-agent"}


@dataclass
class Helper:
    cluster: Cluster
    credentials: Path  # what credentials.sh wrote
    ip_agent: Agent
    netns_agent: Agent
    api: httpx.Client  # a podgate serve that knows the agents' credentials
    serve: ManagedProcess


def _agent_kubeconfig(credentials: Path, url: str, path: Path) -> Path:
    """credentials.sh's kubeconfig with the agent's URL here (its certificate has
    127.0.0.1), for kubectl and the Python client."""
    text = (credentials / "kubeconfig").read_text()
    path.write_text(text.replace("https://podgate-agent.podgate.svc:10250", url))
    return path


def _start_agent(
    stack: list[ManagedProcess],
    credentials: Path,
    workdir: Path,
    args: list[str],
    *,
    prefix: list[str] = [],  # noqa: B006 - never mutated
) -> Agent:
    command = [*prefix, *PODGATE, "agent", "--listen", "127.0.0.1:0", "--cluster", *args]
    command += [
        "--tls-cert",
        str(credentials / "tls.crt"),
        "--tls-key",
        str(credentials / "tls.key"),
    ]
    command += ["--token-file", str(credentials / "tokens.csv")]
    process = ManagedProcess(command, env=podgate_env(), name=f"podgate-agent-{workdir.name}")
    stack.append(process)
    url = process.wait_for_stdout(AGENT_URL_RE, 60)[1]
    workdir.mkdir(parents=True, exist_ok=True)
    return Agent(process, url, _agent_kubeconfig(credentials, url, workdir / "kubeconfig"))


@pytest.fixture(scope="module")
def helper(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helper]:
    workdir = tmp_path_factory.mktemp("helper-agent")
    admin = cluster.kubeconfig(workdir / "admin-kubeconfig", "admin")
    # The manifests as a user deploys them: credentials first, then the shared base.
    manifests = workdir / "kubernetes"
    shutil.copytree(MANIFESTS, manifests)
    made = subprocess.run(
        [str(manifests / "agent" / "credentials.sh"), "IP:127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    applied = run_kubectl(admin, "apply", "-k", str(manifests / "agent" / "base"))
    assert applied.returncode == 0, applied.stderr
    credentials = manifests / "agent" / "base" / "credentials"
    cluster.create_namespace(NAMESPACE)
    # The agents' own credentials toward the API server: the ServiceAccount's token.
    token = cluster.service_account_token("podgate", "podgate-agent")
    sa_kubeconfig = write_kubeconfig(
        workdir / "sa-kubeconfig",
        cluster.server,
        token=token,
        certificate_authority=cluster.ca_cert,
    )
    processes: list[ManagedProcess] = []
    try:
        ip_agent = _start_agent(
            processes,
            credentials,
            workdir / "pod-ip",
            [
                *("--kubeconfig", str(sa_kubeconfig), "--dial", "pod-ip"),
                *("--allow-target", "svc", "--allow-target", POD_RANGE),
            ],
        )
        netns_agent = _start_agent(
            processes,
            credentials,
            workdir / "netns",
            ["--kubeconfig", str(sa_kubeconfig), "--dial", "netns", "--node", NETNS_NODE],
            prefix=["setpriv", f"--inh-caps={NETNS_CAPS}", f"--bounding-set={NETNS_CAPS}"],
        )
        with (
            run_serve(
                workdir / "serve-data",
                admin,
                extra_args=["--agent-kubeconfig", str(credentials / "kubeconfig")],
            ) as serve,
            api_client(serve.url) as api,
        ):
            yield Helper(cluster, credentials, ip_agent, netns_agent, api, serve.process)
    finally:
        for process in processes:
            process.stop()


def _pod(name: str, port: int, ips: tuple[str, ...] = (), **kwargs: Any) -> PodSpec:
    return PodSpec(NAMESPACE, name, ports=[("echo", port)], ips=ips, **kwargs)


def _token(helper: Helper) -> str:
    return (helper.credentials / "tokens.csv").read_text().split(",")[0]


def _agent_pod(helper: Helper, agent: Agent, name: str) -> httpx.Response:
    return httpx.get(
        f"{agent.url}/api/v1/namespaces/{NAMESPACE}/pods/{name}",
        headers={"Authorization": f"Bearer {_token(helper)}"},
        verify=ssl.create_default_context(cafile=helper.credentials / "ca.crt"),
        timeout=10,
    )


def _wait_discovered(
    helper: Helper,
    agent: Agent,
    name: str,
    predicate: Callable[[dict[str, Any] | None], bool],
    *,
    timeout: float = 30.0,
) -> None:
    """Poll the agent's GET pod until ``predicate(pod or None)`` holds (its watch is
    asynchronous to the API server's answer)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = _agent_pod(helper, agent, name)
        pod = answer.json() if answer.status_code == 200 else None
        if predicate(pod):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"agent {agent.url}: pod {name} still {answer.text[:300]}")
        time.sleep(0.05)  # polling interval, bounded by the deadline above


def _phase(phase: str) -> Callable[[dict[str, Any] | None], bool]:
    return lambda pod: pod is not None and pod["status"]["phase"] == phase


@contextlib.contextmanager
def _pod_at(helper: Helper, name: str, ip: str) -> Iterator[EchoServer]:
    """Pod ``helper/NAME`` whose podIP is ``ip``, where an echo server listens (its port is
    the pod's), known to the pod-ip agent; deleted afterwards."""
    with echo_server(ip) as server:
        helper.cluster.create_pod(_pod(name, server.port, (ip,)), "node-ip")
        try:
            _wait_discovered(helper, helper.ip_agent, name, _phase("Running"))
            yield server
        finally:
            helper.cluster.delete_pod(NAMESPACE, name)


def _session(helper: Helper, agent: Agent, target: str, port: int, **body: Any) -> dict[str, Any]:
    return create_session(
        helper.api, namespace=NAMESPACE, target=target, ports=[f"0:{port}"], via=agent.via, **body
    )


def _local_port(session: dict[str, Any]) -> int:
    return int(session["ports"][0]["local_port"])


def _kubectl_roundtrip(agent: Agent, version: str, target: str, port: int, size: int) -> bool:
    """kubectl ``version`` pointed at the agent (as if it were the API server)."""
    env = kubectl_env(agent.kubeconfig, cache_dir=agent.kubeconfig.parent / f"cache-{version}")
    with start_port_forward(
        kubectl_path(version), target, f"0:{port}", env=env, extra_args=["-n", NAMESPACE]
    ) as forward:
        return roundtrip("127.0.0.1", forward.local_port, os.urandom(size), timeout=60).intact


def _kubectl_versions() -> list[str]:
    """The oldest (SPDY) and newest (WebSockets) kubectl the machine has."""
    versions = available_kubectl_versions()
    return sorted({versions[0], versions[-1]})


# --------------------------------------------------------------------------- pod-ip


@pytest.mark.parametrize("transport", ["h2", "spdy"])
def test_a_session_via_the_agent_20mb_and_500_concurrent_connections(
    helper: Helper, transport: str
) -> None:
    with (
        explain_on_failure(helper.serve, helper.ip_agent.process),
        _pod_at(helper, f"web-{transport}", "127.0.0.70") as server,
    ):
        session = _session(
            helper, helper.ip_agent, f"pod/web-{transport}", server.port, transport=transport
        )
        session = wait_for_status(helper.api, session["id"], "ready")
        # The session still names the pod and the transport it negotiated.
        assert (session["pod"], session["transport"]) == (f"web-{transport}", transport)
        local = _local_port(session)
        payload = os.urandom(20 * MB)
        assert roundtrip("127.0.0.1", local, payload, timeout=120).intact
        payloads = [os.urandom(4096 + i) for i in range(500)]
        results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=120)
        assert [r.intact for r in results] == [True] * 500
        assert server.connections == 501  # every one reached the pod's IP
        after = helper.api.get(f"/sessions/{session['id']}").json()
        assert after["connection_errors"] == 0, after
        helper.api.delete(f"/sessions/{session['id']}").raise_for_status()


@pytest.mark.parametrize("version", _kubectl_versions())
def test_kubectl_pointed_at_the_agent_reaches_a_pod_by_its_ip(helper: Helper, version: str) -> None:
    with (
        explain_on_failure(helper.ip_agent.process),
        _pod_at(helper, "web-kubectl", "127.0.0.71") as server,
    ):
        assert _kubectl_roundtrip(helper.ip_agent, version, "pod/web-kubectl", server.port, MB)
        assert server.connections == 1


def test_a_pod_deleted_and_recreated_with_a_new_ip_is_followed(helper: Helper) -> None:
    with (
        explain_on_failure(helper.serve, helper.ip_agent.process),
        echo_server("127.0.0.72") as first,
    ):
        port = first.port  # the new pod serves the same port on its new address
        with echo_server("127.0.0.73", port) as second:
            try:
                helper.cluster.create_pod(_pod("moving", port, ("127.0.0.72",)), "node-ip")
                _wait_discovered(helper, helper.ip_agent, "moving", _phase("Running"))
                session = _session(helper, helper.ip_agent, "pod/moving", port)
                local = _local_port(wait_for_status(helper.api, session["id"], "ready"))
                assert roundtrip("127.0.0.1", local, b"first" * 1000).intact
                assert (first.connections, second.connections) == (1, 0)

                helper.cluster.delete_pod(NAMESPACE, "moving")
                helper.cluster.create_pod(_pod("moving", port, ("127.0.0.73",)), "node-ip")
                # The session re-dials once the API server has the new pod; the agent
                # knows the new address once its watch has it: retry until both.
                deadline = time.monotonic() + 30
                while second.connections == 0:
                    assert time.monotonic() < deadline, "the new pod's IP was never dialled"
                    with contextlib.suppress(OSError):
                        roundtrip("127.0.0.1", local, b"again", timeout=10)
                assert roundtrip("127.0.0.1", local, b"second" * 1000).intact
                assert first.connections == 1  # nothing went to the old address again
                helper.api.delete(f"/sessions/{session['id']}").raise_for_status()
            finally:
                with contextlib.suppress(AssertionError, Exception):
                    helper.cluster.delete_pod(NAMESPACE, "moving")


def test_pods_that_are_not_running_are_refused(helper: Helper, tmp_path: Path) -> None:
    """Straight to the agent with the official Python client (which does not check the
    phase itself): the agent refuses, in the kubelet's shape, on the error stream."""
    with echo_server("127.0.0.74") as server:
        spec = _pod("finished", server.port, ("127.0.0.74",))
        helper.cluster.create_pod(spec, "node-ip")
        try:
            helper.cluster.set_pod_status(
                PodSpec(NAMESPACE, "finished", ports=[server.port], phase="Failed", ready=False)
            )
            _wait_discovered(helper, helper.ip_agent, "finished", _phase("Failed"))
            configuration = k8s.Configuration()
            k8s_config.load_kube_config(
                config_file=str(helper.ip_agent.kubeconfig), client_configuration=configuration
            )
            api = k8s.CoreV1Api(k8s.ApiClient(configuration))
            forward = portforward(
                api.connect_get_namespaced_pod_portforward,
                "finished",
                NAMESPACE,
                ports=str(server.port),
            )
            sock = forward.socket(server.port)
            sock.settimeout(30)
            assert sock.recv(1) == b""  # closed once the error arrived
            error = forward.error(server.port)
            assert error is not None and "is not running (phase Failed)" in error, error
            forward.close()
            assert server.connections == 0
        finally:
            helper.cluster.delete_pod(NAMESPACE, "finished")


# --------------------------------------------------------------------------- svc/ and ip/


def test_ip_targets_inside_the_allowed_range_and_refused_outside(helper: Helper) -> None:
    with (
        explain_on_failure(helper.serve, helper.ip_agent.process),
        echo_server("127.0.0.75") as inside,
        echo_server("127.0.1.75") as outside,
    ):
        allowed = _session(helper, helper.ip_agent, "ip/127.0.0.75", inside.port)
        allowed = wait_for_status(helper.api, allowed["id"], "ready")
        assert allowed["pod"] is None and allowed["transport"] == "h2"  # via: h2 by default
        assert roundtrip("127.0.0.1", _local_port(allowed), os.urandom(MB)).intact

        _refused_target(helper, helper.ip_agent, "ip/127.0.1.75", outside.port)
        assert outside.connections == 0
        helper.api.delete(f"/sessions/{allowed['id']}").raise_for_status()


@contextlib.contextmanager
def _address_on_loopback(address: str) -> Iterator[None]:
    """``address`` on the host's ``lo`` for the block: the API server refuses loopback
    addresses for Endpoints, and a Service's ClusterIP comes from its range."""
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


def _service(helper: Helper, name: str, cluster_ip: str, port: int) -> None:
    helper.cluster.create(
        f"/api/v1/namespaces/{NAMESPACE}/services",
        {
            "metadata": {"name": name},
            "spec": {
                "clusterIP": cluster_ip,
                "ports": [{"name": "sql", "port": 5432, "targetPort": port}],
            },
        },
    )


def _refused_target(helper: Helper, agent: Agent, target: str, port: int) -> None:
    """A session through ``agent`` to ``target``: its connection is closed and the
    session says why."""
    session = _session(helper, agent, target, port)
    local = _local_port(wait_for_status(helper.api, session["id"], "ready"))
    # Closed: an end, or a reset or ENOTCONN when it closes before reading "hello".
    with contextlib.suppress(OSError):
        assert roundtrip("127.0.0.1", local, b"hello").received == b""
    session = wait_for_session(helper.api, session["id"], lambda s: s["connection_errors"] == 1)
    kind, _, value = target.partition("/")
    assert f"target {kind}/{value} is not allowed by this agent" in session["last_error"]
    helper.api.delete(f"/sessions/{session['id']}").raise_for_status()


def test_svc_targets_at_the_cluster_ip_or_a_headless_services_endpoint(helper: Helper) -> None:
    """A Service at its ClusterIP on the Service port; a headless one at its ready endpoint
    (no endpoints controller runs: the test writes the Endpoints) on the port the Service
    port names. The netns agent has no ``--allow-target svc``."""
    with (
        _address_on_loopback("10.96.77.7"),
        _address_on_loopback("10.97.77.8"),
        echo_server("10.96.77.7", 5432) as virtual,
        echo_server("10.97.77.8") as endpoint,
        explain_on_failure(helper.serve, helper.ip_agent.process),
    ):
        _service(helper, "db", "10.96.77.7", 5432)
        _service(helper, "db-headless", "None", endpoint.port)
        helper.cluster.create(
            f"/api/v1/namespaces/{NAMESPACE}/endpoints",
            {
                "metadata": {"name": "db-headless"},
                "subsets": [
                    {
                        "addresses": [{"ip": "10.97.77.8"}],
                        "ports": [{"name": "sql", "port": endpoint.port}],
                    }
                ],
            },
        )
        for target, server in (("svc/db", virtual), ("svc/db-headless", endpoint)):
            session = _session(helper, helper.ip_agent, target, 5432)
            local = _local_port(wait_for_status(helper.api, session["id"], "ready"))
            assert roundtrip("127.0.0.1", local, os.urandom(MB)).intact, target
            assert server.connections == 1, target
            helper.api.delete(f"/sessions/{session['id']}").raise_for_status()
        _refused_target(helper, helper.netns_agent, "svc/db", 5432)
        assert virtual.connections == 1


# --------------------------------------------------------------------------- netns


@contextlib.contextmanager
def _netns_pod(helper: Helper, name: str, *, sandbox: bool = True) -> Iterator[None]:
    """Pod ``helper/NAME`` on the netns agent's node: created Pending (the kubelet makes
    the sandbox before the pod runs), then its sandbox (a process as 65535 in a new
    network namespace with an echo server on :data:`ECHO_PORT`), then Running with an IP
    where nothing listens."""
    cluster = helper.cluster
    pending = _pod(name, ECHO_PORT, phase="Pending", ready=False)
    with network_namespace("podgate-helper") as ns, echo_server_in(ns, ECHO_PORT):
        uid = cluster.create_pod(pending, NETNS_NODE)["metadata"]["uid"]
        try:
            with contextlib.ExitStack() as stack:
                if sandbox:
                    stack.enter_context(pod_sandbox(uid, ns, user=65535))
                cluster.set_pod_status(_pod(name, ECHO_PORT, ("127.0.0.77",)))
                _wait_discovered(helper, helper.netns_agent, name, _phase("Running"))
                yield
        finally:
            cluster.delete_pod(NAMESPACE, name)


@pytest.mark.parametrize("version", _kubectl_versions())
def test_kubectl_pointed_at_the_netns_agent_reaches_the_pods_own_localhost(
    helper: Helper, version: str
) -> None:
    with explain_on_failure(helper.netns_agent.process), _netns_pod(helper, "inside"):
        assert _kubectl_roundtrip(helper.netns_agent, version, "pod/inside", ECHO_PORT, MB)


def test_a_session_via_the_netns_agent(helper: Helper) -> None:
    with (
        explain_on_failure(helper.serve, helper.netns_agent.process),
        _netns_pod(helper, "inside-session"),
    ):
        session = _session(helper, helper.netns_agent, "pod/inside-session", ECHO_PORT)
        session = wait_for_status(helper.api, session["id"], "ready")
        assert (session["pod"], session["transport"]) == ("inside-session", "h2")
        local = _local_port(session)
        assert roundtrip("127.0.0.1", local, os.urandom(20 * MB), timeout=120).intact
        payloads = [os.urandom(4096 + i) for i in range(100)]
        results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=120)
        assert [r.intact for r in results] == [True] * 100
        helper.api.delete(f"/sessions/{session['id']}").raise_for_status()


def test_without_its_sandbox_a_pod_is_dialled_by_ip_and_the_reason_logged(
    helper: Helper,
) -> None:
    agent = helper.netns_agent
    with (
        echo_server("127.0.0.77", port=ECHO_PORT) as by_ip,
        explain_on_failure(helper.serve, agent.process),
        _netns_pod(helper, "no-sandbox", sandbox=False),
    ):
        session = _session(helper, agent, "pod/no-sandbox", ECHO_PORT)
        local = _local_port(wait_for_status(helper.api, session["id"], "ready"))
        for _ in range(2):
            assert roundtrip("127.0.0.1", local, os.urandom(MB)).intact
        assert by_ip.connections == 2
        agent.process.wait_for_stderr(
            r"pod helper/no-sandbox: no process of pod \S+ is visible .*; dialling its IP", 10
        )
        assert agent.process.stderr_text().count("dialling its IP") == 1  # once per pod
        helper.api.delete(f"/sessions/{session['id']}").raise_for_status()


def test_the_netns_agent_knows_only_the_pods_of_its_node(helper: Helper) -> None:
    with _pod_at(helper, "elsewhere", "127.0.0.78"):
        assert _agent_pod(helper, helper.ip_agent, "elsewhere").status_code == 200
        answer = _agent_pod(helper, helper.netns_agent, "elsewhere")
        assert answer.status_code == 404, answer.text
        assert answer.json()["message"] == 'pods "elsewhere" not found'


def test_serve_with_a_default_agent_sends_every_session_through_it(
    helper: Helper, tmp_path: Path
) -> None:
    """`serve --default-agent URL --default-agent-context NAME --agent-kubeconfig FILE` (the
    manifests' serve overlay): sessions that name no `via` go through the agent."""
    admin = helper.cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    args = [
        *("--default-agent", helper.ip_agent.url, "--default-agent-context", "podgate-agent"),
        *("--agent-kubeconfig", str(helper.credentials / "kubeconfig")),
    ]
    with (
        run_serve(tmp_path / "data", admin, extra_args=args) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process, helper.ip_agent.process),
        _pod_at(helper, "web-default", "127.0.0.79") as server,
    ):
        session = create_session(
            api, namespace=NAMESPACE, target="pod/web-default", ports=[f"0:{server.port}"]
        )
        assert session["via"] == helper.ip_agent.via
        session = wait_for_status(api, session["id"], "ready")
        assert (session["pod"], session["transport"]) == ("web-default", "h2")
        assert roundtrip("127.0.0.1", _local_port(session), os.urandom(MB)).intact
        assert server.connections == 1  # by the agent, at the pod's IP
