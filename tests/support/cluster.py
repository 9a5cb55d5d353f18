"""A real kube-apiserver v1.20.2 + etcd on loopback, with `podgate agent` as the kubelet of
its Nodes, users with real RBAC, and the apiserver's request log, for tests/cluster.

The binaries come from tests/cluster/build.sh (``make cluster``), cached in
``${PODGATE_CACHE_DIR:-~/.cache/podgate}/kube-v1.20.2/bin``; :func:`kube_binaries` fails
with what to install and run when they are missing.

What :func:`start_cluster` sets up, all under one work directory, stopped on exit:

- a PKI (tests/support/tls.py): one CA signs the apiserver's serving certificate (for
  127.0.0.1) and the users' client certificates (``--client-ca-file``); a separate
  *kubelet CA* signs each agent's serving certificate (``--kubelet-certificate-authority``,
  so the apiserver verifies the agent); the apiserver's kubelet client certificate; the
  service-account signing key.
- etcd (``--unsafe-no-fsync``, throw-away data) and kube-apiserver with RBAC, static
  tokens, client certificates, service accounts, ``--endpoint-reconciler-type=none`` and
  ``--v=3``; its output goes to ``apiserver.log``, one ``httplog`` line per finished request
  (:class:`RequestLog`).
- the users of :data:`USERS`: ``admin`` (system:masters), ``alice``, ``bob``, ``carol``, each
  with a static token and a client certificate, and no rights until :meth:`Cluster.grant`.

Nodes and pods: no controller-manager and no kubelet run, so :meth:`Cluster.add_node`
starts one `podgate agent` (TLS, static registry of the pods given) per Node, creates the
Node and patches its status (InternalIP 127.0.0.1, kubelet port = the agent's, Ready), then
creates each pod with ``spec.nodeName`` and patches its status as its :class:`PodSpec`
says. A pod's network is a real network namespace (tests/support/netns.py) with an echo
server on :data:`ECHO_PORT`; by default all pods of a cluster share one. Nothing reconciles
Deployments, ReplicaSets, StatefulSets or Endpoints: create the objects with
:meth:`Cluster.create` and their pods with labels and :func:`owner_reference`.

Example::

    with start_cluster(tmp_path) as cluster:
        cluster.create_namespace("demo")
        cluster.grant("alice", "demo", PORT_FORWARD_RULES)
        node = cluster.add_node([PodSpec("demo", "echo", labels={"app": "echo"})])
        kubeconfig = cluster.kubeconfig(tmp_path / "kc", ["alice", "admin"], namespace="demo")
        ...  # podgate serve / kubectl with the kubeconfig; pod/echo answers on ECHO_PORT
        mark = cluster.apiserver.log.mark()
        cluster.apiserver.restart(signal.SIGKILL)          # same port, same etcd data
        cluster.delete_pod("demo", "echo")                  # force: gone at once
        cluster.create_pod(PodSpec("demo", "echo"), node)  # again, same name
        cluster.mark_terminating("demo", "echo")            # stays Terminating
        watches = cluster.apiserver.log.requests(mark, user_agent="podgate/", watch=True)

A request is logged when its handler ends: a watch when it closes, whoever closed it (its
status reads 0; a watch refused as too old after a restart is a 200 with one ERROR event,
410 Expired, so it shows as a watch with a short :attr:`LoggedRequest.latency_seconds`), an
upgraded port-forward once the connection is handed over (``hijacked=true``, read as status
101). The log says the HTTP method (a watch is a GET with ``watch=true``). Use
:meth:`RequestLog.wait_for` to wait for lines to appear.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import PODGATE, free_port, podgate_env
from tests.support.procs import ManagedProcess
from tests.support.tls import CertificateAuthority, IssuedCert, make_ca

__all__ = [
    "ECHO_PORT",
    "GET_PODS_RULES",
    "KUBE_VERSION",
    "PORT_FORWARD_RULES",
    "TIER_NAMESPACE",
    "TIER_POD",
    "USERS",
    "ApiServer",
    "Cluster",
    "ClusterPki",
    "KubeApi",
    "KubeApiError",
    "KubeBinaries",
    "LoggedRequest",
    "Node",
    "PodSpec",
    "RequestLog",
    "User",
    "kube_bin_dir",
    "kube_binaries",
    "make_pki",
    "owner_reference",
    "setup_tier",
    "start_cluster",
]

KUBE_VERSION = "1.20.2"
#: The port the echo server listens on inside every pod network namespace.
ECHO_PORT = 7000
#: Users every cluster has, with their groups; rights come from :meth:`Cluster.grant`.
USERS: Mapping[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "alice": ("podgate:testers",),
    "bob": ("podgate:testers",),
    "carol": ("podgate:testers",),
}
#: What `kubectl port-forward` needs: read the pod (and watch it), create the SPDY upgrade
#: (POST). A WebSocket upgrade is a GET, which a 1.20 apiserver authorizes as verb `get`
#: on pods/portforward: these rules do not allow it.
PORT_FORWARD_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"]},
]
#: Reading pods, no port-forward.
GET_PODS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
]

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
_BUILD_HINT = (
    "build them with `make cluster` (tests/cluster/build.sh; ~3 min the first time, then "
    "cached). The build needs the Debian packages golang-1.23 (from bookworm-backports), "
    "golang-github-modern-go-reflect2-dev and dpkg-dev, and a deb-src line for bookworm; "
    "`.ci/run --setup-only` adds the apt sources and installs them."
)


# --------------------------------------------------------------------------- binaries


def kube_bin_dir() -> Path:
    """Where tests/cluster/build.sh puts kube-apiserver and etcd (same rule as the script)."""
    cache = os.environ.get("PODGATE_CACHE_DIR") or str(Path.home() / ".cache" / "podgate")
    return Path(cache) / f"kube-v{KUBE_VERSION}" / "bin"


@dataclass(frozen=True)
class KubeBinaries:
    apiserver: Path
    etcd: Path


def kube_binaries() -> KubeBinaries:
    """The built binaries.

    Raises:
        FileNotFoundError: not built; the message says how to build them and what that needs.
    """
    directory = kube_bin_dir()
    found = KubeBinaries(directory / "kube-apiserver", directory / "etcd")
    missing = [str(p) for p in (found.apiserver, found.etcd) if not os.access(p, os.X_OK)]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: {_BUILD_HINT}")
    return found


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class ClusterPki:
    """Certificates and keys of one cluster (PEM files under ``directory``)."""

    directory: Path
    ca: CertificateAuthority  # the apiserver's serving cert, users' client certs
    serving: IssuedCert  # the apiserver's, for 127.0.0.1
    kubelet_ca: CertificateAuthority  # agents' serving certs
    kubelet_client_ca: CertificateAuthority  # what agents trust for client certs (--client-ca)
    kubelet_client: IssuedCert  # the apiserver's identity toward agents
    service_account_key: Path  # EC P-256 private key: signs SA tokens
    service_account_pub: Path  # its public key: verifies them


def make_pki(directory: Path) -> ClusterPki:
    ca = make_ca(directory / "ca", "podgate-test-cluster-ca")
    serving = ca.issue(
        directory / "apiserver",
        "kube-apiserver",
        dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        ips=["127.0.0.1"],
    )
    kubelet_ca = make_ca(directory / "kubelet-ca", "podgate-test-kubelet-ca")
    # A CA of its own: the agents trust the apiserver's client certificate, not users'.
    kubelet_client_ca = make_ca(directory / "kubelet-client-ca", "podgate-test-kubelet-client-ca")
    kubelet_client = kubelet_client_ca.issue_client(
        directory / "kubelet-client",
        "kube-apiserver-kubelet-client",
        organizations=["system:masters"],
    )
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    for command in (
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", sa_key],
        ["pkey", "-in", sa_key, "-pubout", "-out", sa_pub],  # the apiserver wants PUBLIC KEY
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=30)
    return ClusterPki(
        directory, ca, serving, kubelet_ca, kubelet_client_ca, kubelet_client, sa_key, sa_pub
    )


@dataclass(frozen=True)
class User:
    """A user of the cluster: a static token and a client certificate for the same name."""

    name: str
    token: str
    cert: IssuedCert
    groups: tuple[str, ...]


# --------------------------------------------------------------------------- request log

_HTTPLOG_RE = re.compile(r'httplog\.go:\d+\] "HTTP" (?P<fields>.*)$')
_FIELD_RE = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_UNESCAPE_RE = re.compile(r"\\(.)")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|µs|us|ns)")
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class LoggedRequest:
    """One finished request from the apiserver's ``--v=3`` httplog line."""

    verb: str  # the HTTP method: GET (also lists and watches), POST, PATCH, DELETE, …
    uri: str  # path and query
    #: 101 for a hijacked (upgraded) request, logged once it is handed over; 0 for a watch.
    status: int
    user_agent: str
    src_ip: str
    latency: str  # a Go duration, e.g. "1.21318ms"

    @property
    def latency_seconds(self) -> float:
        return sum(
            float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_RE.findall(self.latency)
        )

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.uri.partition("?")[2])

    @property
    def is_watch(self) -> bool:
        """A watch (``?watch=true``; the log says GET)."""
        return self.query.get("watch", [""])[0] in ("true", "1")


def _parse_httplog(line: str) -> LoggedRequest | None:
    match = _HTTPLOG_RE.search(line)
    if match is None:
        return None
    fields: dict[str, str] = {}
    for key, quoted, bare in _FIELD_RE.findall(match["fields"]):
        fields[key] = _UNESCAPE_RE.sub(r"\1", quoted) if quoted else bare
    hijacked = fields.get("hijacked") == "true"
    try:
        status = 101 if hijacked else int(fields.get("resp", "0"))
    except ValueError:
        status = 0
    return LoggedRequest(
        verb=fields.get("verb", ""),
        uri=fields.get("URI", ""),
        status=status,
        user_agent=fields.get("userAgent", ""),
        src_ip=fields.get("srcIP", ""),
        latency=fields.get("latency", ""),
    )


class RequestLog:
    """The apiserver's log file (kept across restarts), read as finished requests.

    ``mark()`` is a position in the file; ``requests(mark, ...)`` parses the lines after it.
    Filters: ``user_agent`` is a prefix (``"podgate/"``), ``verb`` the exact HTTP method
    (``"POST"``), ``uri`` a regular expression searched in the URI (path and query),
    ``status`` exact, ``watch`` whether it is a watch (``?watch=true``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """The end of the last complete line of the log."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(0, size - 256 * 1024)
                f.seek(start)
                tail = f.read()
        except FileNotFoundError:
            return 0
        return start + tail.rfind(b"\n") + 1

    def lines(self, since: int = 0) -> list[str]:
        """Complete lines written after position ``since``."""
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return complete.decode("utf-8", errors="replace").splitlines()

    def requests(
        self,
        since: int = 0,
        *,
        user_agent: str | None = None,
        verb: str | None = None,
        uri: str | re.Pattern[str] | None = None,
        status: int | None = None,
        watch: bool | None = None,
    ) -> list[LoggedRequest]:
        pattern = re.compile(uri) if isinstance(uri, str) else uri
        found = []
        for line in self.lines(since):
            request = _parse_httplog(line)
            if request is None:
                continue
            if user_agent is not None and not request.user_agent.startswith(user_agent):
                continue
            if verb is not None and request.verb != verb:
                continue
            if pattern is not None and not pattern.search(request.uri):
                continue
            if status is not None and request.status != status:
                continue
            if watch is not None and request.is_watch != watch:
                continue
            found.append(request)
        return found

    def count(self, since: int = 0, **filters: Any) -> int:
        return len(self.requests(since, **filters))

    def wait_for(
        self, since: int = 0, *, count: int = 1, timeout: float = 20.0, **filters: Any
    ) -> list[LoggedRequest]:
        """Wait until at least ``count`` matching requests were logged after ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(since, **filters)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{len(found)} of {count} requests matching {filters} logged within "
                    f"{timeout}s; the log since the mark:\n" + "\n".join(self.lines(since)[-40:])
                )
            time.sleep(0.05)  # polling interval, bounded by the deadline above


# --------------------------------------------------------------------------- REST client


class KubeApiError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.body = response.text
        request = response.request
        super().__init__(f"{request.method} {request.url.path}: {self.status} {self.body}")


class KubeApi:
    """A minimal synchronous JSON client for one user of the apiserver (httpx)."""

    def __init__(
        self,
        server: str,
        ca: Path,
        *,
        cert: IssuedCert | None = None,
        token: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        headers = {"User-Agent": "podgate-tests"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            context.load_cert_chain(cert.cert, cert.key)
        self.client = httpx.Client(
            base_url=server, verify=context, headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        ok: Sequence[int] = (),
    ) -> httpx.Response:
        """Send a request; a status >= 400 not listed in ``ok`` raises :class:`KubeApiError`."""
        content = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": content_type}
        response = self.client.request(
            method, path, content=content, params=params, headers=headers
        )
        if response.status_code >= 400 and response.status_code not in ok:
            raise KubeApiError(response)
        return response

    def get(self, path: str, **params: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", path, params=params or None).json()
        return result

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", path, body).json()
        return result

    def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386)."""
        response = self.request("PATCH", path, body, content_type="application/merge-patch+json")
        result: dict[str, Any] = response.json()
        return result

    def delete(self, path: str, *, grace_period: int | None = None) -> httpx.Response:
        body = None if grace_period is None else {"gracePeriodSeconds": grace_period}
        return self.request("DELETE", path, body, ok=(404,))


# --------------------------------------------------------------------------- processes


@dataclass
class Etcd:
    process: ManagedProcess
    url: str
    data_dir: Path


def start_etcd(binaries: KubeBinaries, data_dir: Path, *, timeout: float = 30.0) -> Etcd:
    """Start etcd on a free loopback port; the caller stops ``process``."""
    args = [str(binaries.etcd), "--data-dir", str(data_dir), "--unsafe-no-fsync"]
    proc = ManagedProcess(args, name="etcd")
    try:
        url = proc.wait_for_stdout(r"^etcd ready: client (http://\S+)$", timeout)[1]
    except BaseException:
        proc.stop()
        raise
    return Etcd(proc, url, data_dir)


class ApiServer:
    """kube-apiserver as a restartable process: same port, same etcd, same log file.

    Its stdout and stderr go straight to ``log_path`` (appended across restarts), so
    :attr:`log` sees each request as soon as it is logged.
    """

    def __init__(self, binary: Path, args: Sequence[str], *, port: int, log_path: Path, ca: Path):
        self.binary = binary
        self.args = list(args)
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.ca = ca
        self.log_path = log_path
        self.log = RequestLog(log_path)
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, *, timeout: float = 90.0) -> None:
        """Start it and wait until ``/readyz`` answers ``ok``."""
        if self.running:
            raise RuntimeError("kube-apiserver is already running")
        self._log_file = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [str(self.binary), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Poll ``/readyz`` until it answers 200; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        context = ssl.create_default_context(cafile=str(self.ca))
        with httpx.Client(verify=context, timeout=5.0) as client:
            while True:
                if self.popen is None or self.popen.poll() is not None:
                    code = None if self.popen is None else self.popen.returncode
                    raise RuntimeError(
                        f"kube-apiserver exited ({code}) before it was ready:\n{self.tail()}"
                    )
                try:
                    response = client.get(f"{self.url}/readyz")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[-500:]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"kube-apiserver not ready within {timeout}s (last /readyz: {last}):\n"
                        + self.tail()
                    )
                time.sleep(0.1)  # polling interval, bounded by the deadline above

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 90.0) -> int | None:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); the exit status.

        On SIGTERM a 1.20 apiserver waits up to 60 s for open long-running requests.
        """
        code = None
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.send_signal(sig)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(10)
            code = self.popen.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def restart(self, sig: int = signal.SIGKILL, *, timeout: float = 90.0) -> None:
        """Stop with ``sig``, start again on the same port with the same etcd, wait ready."""
        self.stop(sig, timeout=timeout)
        self.start(timeout=timeout)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.lines()[-lines:])


# --------------------------------------------------------------------------- pods and nodes


def owner_reference(obj: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to ``obj`` (as the apiserver returned it)."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


@dataclass(frozen=True)
class PodSpec:
    """A pod to create on a Node, and the status to patch in (no kubelet does it).

    ``ready_since`` is the Ready condition's lastTransitionTime (default: now);
    ``restarts`` the containers' restartCount; ``ports`` the container ports, a number or
    ``(name, number)``; ``network`` the namespace the agent dials it in (default: the
    cluster's shared pod network), or ``target`` the agent's pod target instead (e.g.
    ``host:127.0.0.1``); ``ips`` its ``status.podIPs`` while Running.
    """

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owner: Mapping[str, Any] | None = None
    ports: Sequence[int | tuple[str, int]] = (ECHO_PORT,)
    phase: str = "Running"
    ready: bool = True
    ready_since: datetime.datetime | None = None
    restarts: int = 0
    network: NetNamespace | None = None
    ips: Sequence[str] = ("127.0.0.1",)
    target: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Node:
    """A Node whose kubelet endpoint is a running `podgate agent`."""

    name: str
    agent: ManagedProcess
    port: int
    pods: tuple[PodSpec, ...]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- cluster

#: The namespace and pod :func:`setup_tier` creates (tests/cluster fixtures start from it).
TIER_NAMESPACE = "tier"
TIER_POD = "echo"


class Cluster:
    """A running etcd + kube-apiserver; see the module docstring. Use :func:`start_cluster`."""

    def __init__(
        self,
        workdir: Path,
        pki: ClusterPki,
        users: Mapping[str, User],
        etcd: Etcd,
        apiserver: ApiServer,
        stack: contextlib.ExitStack,
    ) -> None:
        self.workdir = workdir
        self.pki = pki
        self.users = dict(users)
        self.etcd = etcd
        self.apiserver = apiserver
        self.admin = KubeApi(apiserver.url, pki.ca.cert, cert=users["admin"].cert)
        self._stack = stack
        self._stack.callback(self.admin.close)
        self._pod_network: NetNamespace | None = None
        self._nodes = 0

    # ---------------------------------------------------------------- basics

    @property
    def server(self) -> str:
        """The apiserver URL, ``https://127.0.0.1:PORT``."""
        return self.apiserver.url

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the apiserver's certificate (for clients' kubeconfigs)."""
        return self.pki.ca.cert

    def api(self, user: str) -> KubeApi:
        """A client authenticated as ``user`` with its token (closed with the cluster)."""
        client = KubeApi(self.server, self.ca_cert, token=self.users[user].token)
        self._stack.callback(client.close)
        return client

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` as admin, e.g. ``/apis/apps/v1/namespaces/x/deployments``."""
        return self.admin.create(path, body)

    def pod_network(self) -> NetNamespace:
        """The network namespace shared by pods that name none (created on first use),
        with an echo server on :data:`ECHO_PORT`."""
        if self._pod_network is None:
            ns = self._stack.enter_context(network_namespace("podgate-tier"))
            self._stack.enter_context(echo_server_in(ns, ECHO_PORT))
            self._pod_network = ns
        return self._pod_network

    # ---------------------------------------------------------------- namespaces, RBAC

    def create_namespace(self, name: str, *, exist_ok: bool = False) -> None:
        """The namespace and its ``default`` ServiceAccount (no controller makes it).

        ``exist_ok`` for a namespace the apiserver itself makes, at a moment of its own
        after it is ready (``default``): created here if it is not there yet.
        """
        try:
            self.admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
        except KubeApiError as exc:
            if not (exist_ok and exc.status == 409):
                raise
        self.create_service_account(name, "default")

    def create_service_account(self, namespace: str, name: str) -> dict[str, Any]:
        return self.admin.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}}
        )

    def grant(
        self,
        subject: str,
        namespace: str,
        rules: Sequence[Mapping[str, Any]],
        *,
        kind: str = "User",
        name: str | None = None,
    ) -> None:
        """A Role with ``rules`` in ``namespace`` and a RoleBinding of it to ``subject``: a
        user name, or for ``kind="ServiceAccount"`` a service account of that namespace."""
        role = name or f"{subject}-{secrets.token_hex(3)}"
        base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        self.admin.create(f"{base}/roles", {"metadata": {"name": role}, "rules": list(rules)})
        if kind == "ServiceAccount":
            who = {"kind": kind, "name": subject, "namespace": namespace}
        else:
            who = {"kind": kind, "name": subject, "apiGroup": "rbac.authorization.k8s.io"}
        self.admin.create(
            f"{base}/rolebindings",
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [who],
            },
        )

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A token for the service account from the TokenRequest API."""
        answer = self.admin.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        return str(answer["status"]["token"])

    # ---------------------------------------------------------------- nodes

    def add_node(
        self,
        pods: Sequence[PodSpec] = (),
        *,
        name: str | None = None,
        serving_cert: IssuedCert | None = None,
        agent_args: Sequence[str] = (),
        extra_registry: Sequence[PodSpec] = (),
        timeout: float = 30.0,
    ) -> Node:
        """Start a `podgate agent` serving ``pods`` (plus ``extra_registry``: names it
        serves without creating them in the apiserver), create the Node pointing at it and
        create the pods on it.

        ``serving_cert`` replaces the agent's certificate (default: one for 127.0.0.1 signed
        by the kubelet CA, which the apiserver trusts). The agent stops with the cluster,
        or earlier with ``node.agent.stop()``.
        """
        self._nodes += 1
        node_name = name or f"node-{self._nodes}"
        directory = self.workdir / "nodes" / node_name
        cert = serving_cert or self.pki.kubelet_ca.issue(
            directory, "kubelet", dns=["localhost", node_name], ips=["127.0.0.1"]
        )
        registry = directory / "pods.yaml"
        entries = [
            {
                "namespace": pod.namespace,
                "name": pod.name,
                "target": pod.target or (pod.network or self.pod_network()).target,
            }
            for pod in [*pods, *extra_registry]
        ]
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text(yaml.safe_dump({"pods": entries}))
        args = [*PODGATE, "agent", "--listen", "127.0.0.1:0", "--pods", str(registry)]
        args += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
        # As a kubelet: only the apiserver's kubelet client certificate gets in.
        args += ["--client-ca", str(self.pki.kubelet_client_ca.cert), *agent_args]
        agent = self._stack.enter_context(
            ManagedProcess(args, env=podgate_env(), name=f"podgate-agent-{node_name}")
        )
        url = agent.wait_for_stdout(r"^Listening on (https://\S+)$", timeout)[1]
        port = int(url.rpartition(":")[2])
        self.admin.create("/api/v1/nodes", {"metadata": {"name": node_name}})
        now = _rfc3339(datetime.datetime.now(datetime.UTC))
        self.admin.patch(
            f"/api/v1/nodes/{node_name}/status",
            {
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": node_name},
                    ],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "podgate agent",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            },
        )
        node = Node(node_name, agent, port, tuple(pods))
        for pod in pods:
            self.create_pod(pod, node)
        return node

    # ---------------------------------------------------------------- pods

    def create_pod(self, spec: PodSpec, node: Node | str | None) -> dict[str, Any]:
        """Create the pod on ``node`` and patch its status; returns the pod as stored.

        The agent of ``node`` must serve ``spec.key`` for port-forwards to reach it.
        ``None`` leaves the pod unscheduled (no ``spec.nodeName``).
        """
        ports: list[dict[str, Any]] = []
        for port in spec.ports:
            if isinstance(port, tuple):
                ports.append({"name": port[0], "containerPort": port[1], "protocol": "TCP"})
            else:
                ports.append({"containerPort": port, "protocol": "TCP"})
        metadata: dict[str, Any] = {"name": spec.name, "labels": dict(spec.labels)}
        if spec.owner is not None:
            metadata["ownerReferences"] = [dict(spec.owner)]
        self.admin.create(
            f"/api/v1/namespaces/{spec.namespace}/pods",
            {
                "metadata": metadata,
                "spec": {
                    "nodeName": node.name if isinstance(node, Node) else node,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "echo", "image": "podgate/echo", "ports": ports}],
                },
            },
        )
        return self.set_pod_status(spec)

    def set_pod_status(self, spec: PodSpec) -> dict[str, Any]:
        """Patch the pod's status to what ``spec`` says (phase, Ready, restarts)."""
        now = datetime.datetime.now(datetime.UTC)
        ready_since = _rfc3339(spec.ready_since or now)
        started = _rfc3339(now)
        running = spec.phase == "Running"
        state: dict[str, Any] = (
            {"running": {"startedAt": started}}
            if running
            else {"waiting": {"reason": "ContainerCreating"}}
        )
        return self.admin.patch(
            f"/api/v1/namespaces/{spec.namespace}/pods/{spec.name}/status",
            {
                "status": {
                    "phase": spec.phase,
                    "hostIP": "127.0.0.1",
                    "podIP": spec.ips[0] if running and spec.ips else None,
                    "podIPs": [{"ip": ip} for ip in spec.ips] if running else None,
                    "startTime": started,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if spec.ready else "False",
                            "lastTransitionTime": ready_since,
                        },
                        {
                            "type": "ContainersReady",
                            "status": "True" if spec.ready else "False",
                            "lastTransitionTime": ready_since,
                        },
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                    ],
                    "containerStatuses": [
                        {
                            "name": "echo",
                            "image": "podgate/echo",
                            "imageID": "",
                            "ready": spec.ready,
                            "started": running,
                            "restartCount": spec.restarts,
                            "state": state,
                        }
                    ],
                }
            },
        )

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        response = self.admin.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{name}", ok=[404]
        )
        if response.status_code == 404:
            return None
        pod: dict[str, Any] = response.json()
        return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        """Force-delete (grace period 0): the pod is gone when this returns."""
        self.admin.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", grace_period=0)
        deadline = time.monotonic() + 20
        while self.get_pod(namespace, name) is not None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"pod {namespace}/{name} still exists 20 s after deletion")
            time.sleep(0.05)  # polling interval, bounded by the deadline above

    def mark_terminating(
        self, namespace: str, name: str, *, grace_period: int = 30
    ) -> dict[str, Any]:
        """A graceful delete: with no kubelet to finish it, the pod stays Terminating
        (``metadata.deletionTimestamp`` set) until :meth:`delete_pod`. Returns the pod."""
        self.admin.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", grace_period=grace_period)
        pod = self.get_pod(namespace, name)
        assert pod is not None and pod["metadata"].get("deletionTimestamp"), pod
        return pod

    def wait_for_server_second_after(self, timestamp: str, *, timeout: float = 5.0) -> None:
        """Wait until the apiserver's clock (its ``Date`` header) has passed ``timestamp``
        (RFC 3339, second precision), so an object created next has a later
        ``creationTimestamp``."""
        after = datetime.datetime.fromisoformat(timestamp)
        deadline = time.monotonic() + timeout
        while True:
            date = self.admin.request("GET", "/version").headers["date"]
            now = datetime.datetime.strptime(date, "%a, %d %b %Y %H:%M:%S GMT").replace(
                tzinfo=datetime.UTC
            )
            if now > after:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"apiserver clock still at {date} after {timeout}s")
            time.sleep(0.05)  # polling interval, bounded by the deadline above

    # ---------------------------------------------------------------- kubeconfigs

    def kubeconfig(
        self,
        path: Path,
        users: str | Sequence[str] = "admin",
        *,
        auth: str = "token",
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig with one context per user, named after the user (the first is
        current), and return ``path``.

        ``auth``: ``"token"`` (static bearer token), ``"cert"`` (client certificate) or
        ``"exec"`` (an exec credential plugin, ``<path>.exec-<user>.sh``, that prints the
        user's token as an ExecCredential and appends a line to ``<path>.exec-<user>.calls``
        each time it runs).
        """
        names = [users] if isinstance(users, str) else list(users)
        entries = []
        for name in names:
            user = self.users[name]
            if auth == "token":
                credentials: dict[str, Any] = {"token": user.token}
            elif auth == "cert":
                credentials = {
                    "client-certificate": str(user.cert.cert),
                    "client-key": str(user.cert.key),
                }
            elif auth == "exec":
                credentials = {"exec": self._exec_plugin(path, user)}
            else:
                raise ValueError(f"unknown auth {auth!r}: token, cert or exec")
            entries.append({"name": name, "user": credentials})
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tier",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": entries,
            "contexts": [
                {"name": n, "context": {"cluster": "tier", "user": n, "namespace": namespace}}
                for n in names
            ],
            "current-context": names[0],
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _exec_plugin(self, kubeconfig: Path, user: User) -> dict[str, Any]:
        script = kubeconfig.with_name(f"{kubeconfig.name}.exec-{user.name}.sh")
        calls = kubeconfig.with_name(f"{kubeconfig.name}.exec-{user.name}.calls")
        script.write_text(
            "#!/bin/sh\n"
            "# An exec credential plugin: the token comes from the kubeconfig's env list.\n"
            f'echo "called" >> "{calls}"\n'
            'printf \'{"apiVersion": "client.authentication.k8s.io/v1beta1", '
            '"kind": "ExecCredential", "status": {"token": "%s"}}\\n\' '
            '"$PODGATE_TEST_TOKEN"\n'
        )
        script.chmod(0o755)
        return {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": str(script),
            "env": [{"name": "PODGATE_TEST_TOKEN", "value": user.token}],
            "interactiveMode": "Never",
        }


@contextlib.contextmanager
def start_cluster(workdir: Path, *, apiserver_args: Sequence[str] = ()) -> Iterator[Cluster]:
    """etcd + kube-apiserver (ready) under ``workdir``; everything stops when the block ends.

    Raises FileNotFoundError (with what to do) when the binaries are not built.
    """
    binaries = kube_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir / "pki")
    users = {
        name: User(
            name,
            secrets.token_hex(16),
            pki.ca.issue_client(workdir / "users", name, organizations=groups),
            groups,
        )
        for name, groups in USERS.items()
    }
    tokens = workdir / "tokens.csv"
    tokens.write_text(
        "".join(f'{u.token},{u.name},uid-{u.name},"{",".join(u.groups)}"\n' for u in users.values())
    )
    with contextlib.ExitStack() as stack:
        etcd = start_etcd(binaries, workdir / "etcd")
        stack.callback(etcd.process.stop)
        common = [
            f"--etcd-servers={etcd.url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--insecure-port=0",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--kubelet-client-certificate={pki.kubelet_client.cert}",
            f"--kubelet-client-key={pki.kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.kubelet_ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--profiling=false",
            "--v=3",
            *apiserver_args,
        ]
        # The port is free_port()'s guess: another process may take it before the
        # apiserver binds it; then try another.
        for attempt in range(1, 4):
            port = free_port()
            apiserver = ApiServer(
                binaries.apiserver,
                [*common, f"--secure-port={port}"],
                port=port,
                log_path=workdir / "apiserver.log",
                ca=pki.ca.cert,
            )
            try:
                apiserver.start()
                break
            except RuntimeError as exc:
                if attempt == 3 or "address already in use" not in str(exc):
                    raise
        stack.callback(apiserver.stop, signal.SIGKILL)
        # Agents, network namespaces and clients registered later stop first.
        yield Cluster(workdir, pki, users, etcd, apiserver, stack)


def setup_tier(cluster: Cluster) -> Node:
    """The starting point of the tests/cluster fixtures: namespace :data:`TIER_NAMESPACE`
    where ``alice`` may port-forward (:data:`PORT_FORWARD_RULES`), ``bob`` may only get pods
    (:data:`GET_PODS_RULES`) and ``carol`` may do nothing; a Node ``node-1`` whose agent
    serves pod :data:`TIER_POD` (labels ``app=echo``, port :data:`ECHO_PORT`). Returns it."""
    cluster.create_namespace(TIER_NAMESPACE)
    cluster.grant("alice", TIER_NAMESPACE, PORT_FORWARD_RULES, name="alice-port-forward")
    cluster.grant("bob", TIER_NAMESPACE, GET_PODS_RULES, name="bob-get-pods")
    pod = PodSpec(TIER_NAMESPACE, TIER_POD, labels={"app": "echo"}, ports=[("echo", ECHO_PORT)])
    return cluster.add_node([pod], name="node-1")
