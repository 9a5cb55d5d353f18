"""Helpers for driving real ``kubectl`` binaries in tests.

The test image ships several kubectl releases side by side with the ``kubectl``
found on ``PATH`` (``kubectl.1.27`` … ``kubectl.1.33``). These helpers find them,
write a throw-away kubeconfig, build an isolated environment and run
``kubectl port-forward`` until it reports its local port::

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:8001")
    env = kubectl_env(kubeconfig, cache_dir=tmp_path / "cache", websockets=False)
    with start_port_forward(kubectl_path("1.30"), "pod/echo", f"0:{port}", env=env) as pf:
        roundtrip("127.0.0.1", pf.local_port, payload)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.procs import ManagedProcess

__all__ = [
    "FORWARDING_RE",
    "PortForward",
    "available_kubectl_versions",
    "kubectl_dir",
    "kubectl_env",
    "kubectl_path",
    "run_kubectl",
    "start_port_forward",
    "write_kubeconfig",
]

#: The line kubectl prints on stdout for each local listener, e.g.
#: ``Forwarding from 127.0.0.1:40123 -> 8080``. Groups: local port, remote port.
FORWARDING_RE = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$")

_VERSIONED = re.compile(r"^kubectl\.(\d+)\.(\d+)$")


def kubectl_dir() -> Path:
    """The directory of the real ``kubectl`` on ``PATH`` (symlinks resolved).

    Raises:
        FileNotFoundError: no ``kubectl`` on ``PATH``.
    """
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl is not on PATH")
    return Path(os.path.realpath(found)).parent


def available_kubectl_versions() -> list[str]:
    """Versions ``"1.27"`` … of the ``kubectl.X.Y`` binaries beside kubectl, sorted."""
    versions = []
    for entry in kubectl_dir().iterdir():
        match = _VERSIONED.match(entry.name)
        if match and os.access(entry, os.X_OK):
            versions.append((int(match[1]), int(match[2])))
    return [f"{major}.{minor}" for major, minor in sorted(versions)]


def kubectl_path(version: str | None = None) -> Path:
    """Path of ``kubectl.<version>`` (e.g. ``"1.30"``), or of plain kubectl if ``None``.

    Raises:
        FileNotFoundError: that binary does not exist; the message lists what does.
    """
    directory = kubectl_dir()
    path = directory / ("kubectl" if version is None else f"kubectl.{version}")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{path} not found; available versions: {available_kubectl_versions()}"
        )
    return path


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    namespace: str = "default",
    token: str | None = None,
    certificate_authority: Path | None = None,
    insecure_skip_tls_verify: bool = False,
    context: str = "podgate-test",
    client_certificate: Path | None = None,
    client_key: Path | None = None,
) -> Path:
    """Write a single-cluster kubeconfig and return ``path``.

    Args:
        path: file to write (parents are created).
        server: API server URL, e.g. ``http://127.0.0.1:8001``.
        namespace: the context's default namespace.
        token: bearer token for the user; ``None`` writes a user with no credentials.
        certificate_authority: CA bundle for an ``https`` server.
        insecure_skip_tls_verify: skip TLS verification for an ``https`` server.
        context: name used for the cluster, user and context entries.
        client_certificate, client_key: the user's TLS client certificate and its key.
    """
    cluster: dict[str, object] = {"server": server}
    if certificate_authority is not None:
        cluster["certificate-authority"] = str(certificate_authority)
    if insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    user: dict[str, object] = {} if token is None else {"token": token}
    if client_certificate is not None:
        user["client-certificate"] = str(client_certificate)
    if client_key is not None:
        user["client-key"] = str(client_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": user}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": namespace},
            }
        ],
        "current-context": context,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def kubectl_env(
    kubeconfig: Path,
    *,
    cache_dir: Path | None = None,
    websockets: bool | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An environment for running kubectl against ``kubeconfig`` only.

    Args:
        kubeconfig: value for ``KUBECONFIG``.
        cache_dir: discovery cache (``KUBECACHEDIR``); defaults to ``cache`` beside
            the kubeconfig so tests never touch ``~/.kube``.
        websockets: set ``KUBECTL_PORT_FORWARD_WEBSOCKETS`` to ``"true"``/``"false"``;
            ``None`` removes it so the binary's default applies (off before 1.31, on after).
        base: environment to start from (defaults to ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    env["KUBECONFIG"] = str(kubeconfig)
    env["KUBECACHEDIR"] = str(cache_dir if cache_dir is not None else kubeconfig.parent / "cache")
    env.pop("KUBECTL_PORT_FORWARD_WEBSOCKETS", None)
    if websockets is not None:
        env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = "true" if websockets else "false"
    return env


def run_kubectl(
    kubeconfig: Path, *args: str, version: str = "1.33", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` against ``kubeconfig`` only, its output captured as text."""
    return subprocess.run(
        [str(kubectl_path(version)), *args],
        env=kubectl_env(kubeconfig),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class PortForward:
    """A running ``kubectl port-forward`` and the local port of its first mapping."""

    process: ManagedProcess
    local_port: int
    remote_port: int


@contextmanager
def start_port_forward(
    kubectl: Path,
    target: str,
    *ports: str,
    env: Mapping[str, str],
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
) -> Iterator[PortForward]:
    """Run ``kubectl port-forward TARGET PORTS...`` and wait for its first listener.

    Only the IPv4 listener (``--address 127.0.0.1``) is opened. ``ports`` use kubectl
    syntax (``"0:8080"``, ``"9000:80"``). The process is stopped when the block exits.

    Raises:
        LineTimeout / ProcessFailed: no ``Forwarding from`` line within ``timeout``
            (the error includes kubectl's output).
    """
    args = [
        str(kubectl),
        "port-forward",
        "--address",
        "127.0.0.1",
        *extra_args,
        target,
        *ports,
    ]
    with ManagedProcess(args, env=env, name=kubectl.name) as proc:
        match = proc.wait_for_stdout(FORWARDING_RE, timeout)
        yield PortForward(proc, int(match[1]), int(match[2]))
