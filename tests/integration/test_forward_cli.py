"""`podgate forward` against `kubectl.1.30 port-forward` (SPDY): the same arguments against
the same `podgate agent` (pod `default/echo` is a real network namespace with echo servers;
the agent's registry file also has a Service, a Deployment, a StatefulSet and a ReplicaSet
selecting it), one after the other, and stdout and stderr compared line by line. Every
wait is on a line or a socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path, write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import PODGATE, Podgate, free_port, run_agent
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(60)

ECHO_PORT = 7000
SECOND_ECHO_PORT = 7001
WAIT = 20.0
PAYLOAD = os.urandom(2 * 1024 * 1024)

KUBECTL = "kubectl"
PODGATE_FORWARD = "podgate"
_FORWARDING = re.compile(r"^Forwarding from (127\.0\.0\.1|\[::1\]):(\d+) -> (\d+)$")


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with (
        network_namespace("podgate-cli") as ns,
        echo_server_in(ns, ECHO_PORT),
        echo_server_in(ns, SECOND_ECHO_PORT),
    ):
        yield ns


#: The Service's ports: 80 leads to the container port named echo (7000), 81 to 7001.
SERVICE_PORT, SECOND_SERVICE_PORT = 80, 81


@pytest.fixture(scope="module")
def agent(pod_netns: NetNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podgate]:
    registry = tmp_path_factory.mktemp("registry") / "registry.yaml"
    selector = {"app": "echo"}
    registry.write_text(
        yaml.safe_dump(
            {
                "pods": [
                    {
                        "namespace": "default",
                        "name": "echo",
                        "target": pod_netns.target,
                        "ports": [
                            {"name": "echo", "containerPort": ECHO_PORT},
                            {"name": "second", "containerPort": SECOND_ECHO_PORT},
                        ],
                        "labels": selector,
                    }
                ],
                "services": [
                    {
                        "namespace": "default",
                        "name": "echo",
                        "selector": selector,
                        "ports": [
                            {"name": "http", "port": SERVICE_PORT, "targetPort": "echo"},
                            {
                                "name": "other",
                                "port": SECOND_SERVICE_PORT,
                                "targetPort": SECOND_ECHO_PORT,
                            },
                        ],
                    }
                ],
                "workloads": [
                    {"namespace": "default", "kind": kind, "name": "echo", "selector": selector}
                    for kind in ("Deployment", "StatefulSet", "ReplicaSet")
                ],
            }
        )
    )
    with run_agent([], extra_args=["--pods", str(registry)]) as running:
        yield running


@pytest.fixture(scope="module")
def env(agent: Podgate, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One environment for both commands: KUBECONFIG at the agent, kubectl on SPDY."""
    kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("cli") / "kubeconfig", agent.url)
    environment = kubectl_env(kubeconfig, websockets=False)
    for key in [k for k in environment if k.startswith("PODGATE_")]:
        del environment[key]
    return environment


def _command(which: str) -> list[str]:
    if which == KUBECTL:
        return [str(kubectl_path("1.30")), "port-forward"]
    return [*PODGATE, "forward"]


@dataclass
class Run:
    returncode: int
    stdout: list[str]
    stderr: list[str]
    process: ManagedProcess


def _forward_once(
    which: str, specs: list[str], env: dict[str, str], target: str = "pod/echo"
) -> Run:
    """`... TARGET SPECS`: wait for its 2 lines per spec, round-trip PAYLOAD through the
    first listener, wait for `Handling connection for N`, then SIGINT it."""
    proc = ManagedProcess([*_command(which), target, *specs], env=env, name=which)
    with proc:
        lines = [proc.wait_for_stdout(_FORWARDING, WAIT) for _ in range(2 * len(specs))]
        first_local = int(lines[0][2])
        result = roundtrip("127.0.0.1", first_local, PAYLOAD, timeout=WAIT)
        assert result.intact, f"{which}: the transfer came back altered\n{proc.describe()}"
        proc.wait_for_stdout(rf"^Handling connection for {first_local}$", WAIT)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(WAIT)
    return Run(code, proc.stdout_text().splitlines(), proc.stderr_text().splitlines(), proc)


def _normalise(lines: list[str], fixed: set[int]) -> list[str]:
    """Replace kernel-chosen local ports by <L1>, <L2>... in order of appearance."""
    names: dict[str, str] = {}

    def name(port: str) -> str:
        if int(port) in fixed:
            return port
        return names.setdefault(port, f"<L{len(names) + 1}>")

    out = []
    for line in lines:
        if match := _FORWARDING.match(line):
            line = f"Forwarding from {match[1]}:{name(match[2])} -> {match[3]}"
        elif match := re.match(r"^Handling connection for (\d+)$", line):
            line = f"Handling connection for {name(match[1])}"
        out.append(line)
    return out


@pytest.mark.parametrize(
    ("target", "shape"),
    [
        ("pod/echo", "0:REMOTE"),
        ("pod/echo", "LOCAL:REMOTE"),
        ("pod/echo", "LOCAL:REMOTE :SECOND"),
        ("pod/echo", "0:NAME"),
        ("svc/echo", "0:REMOTE"),  # the lines show the container port, 7000, not 80
        ("svc/echo", "LOCAL:REMOTE :SECOND"),
        ("svc/echo", "0:NAME"),  # a service port by name
        ("deploy/echo", "0:REMOTE"),
        ("sts/echo", "0:REMOTE"),
        ("rs/echo", "0:REMOTE"),
    ],
)
def test_output_matches_kubectl_line_by_line(target: str, shape: str, env: dict[str, str]) -> None:
    fixed = free_port()
    service = target.startswith("svc/")
    remote, second = (
        (SERVICE_PORT, SECOND_SERVICE_PORT) if service else (ECHO_PORT, SECOND_ECHO_PORT)
    )
    specs = {
        "0:REMOTE": [f"0:{remote}"],
        "LOCAL:REMOTE": [f"{fixed}:{remote}"],
        "LOCAL:REMOTE :SECOND": [f"{fixed}:{remote}", f":{second}"],
        "0:NAME": ["0:http" if service else "0:echo"],
    }[shape]
    # One after the other, so that a fixed local port is free for each.
    kubectl = _forward_once(KUBECTL, specs, env, target)
    podgate = _forward_once(PODGATE_FORWARD, specs, env, target)

    assert kubectl.returncode == 0, kubectl.process.describe()
    assert podgate.returncode == 0, podgate.process.describe()  # SIGINT is a clean end
    expected = _normalise(kubectl.stdout, {fixed})
    assert _normalise(podgate.stdout, {fixed}) == expected, (
        f"kubectl:\n{kubectl.process.describe()}\npodgate:\n{podgate.process.describe()}"
    )
    # The lines we compared are the ones we meant to compare.
    assert len(expected) == 2 * len(specs) + 1
    assert expected[-1].startswith("Handling connection for ")
    if fixed in {int(m[2]) for line in kubectl.stdout if (m := _FORWARDING.match(line))}:
        assert f"Forwarding from 127.0.0.1:{fixed} -> {ECHO_PORT}" in podgate.stdout
    # Nothing else, on either stream: no log lines of podgate's own (kubectl prints none).
    assert kubectl.stderr == [], kubectl.process.describe()
    assert podgate.stderr == [], podgate.process.describe()
    # Every remote port shown is the pod's (a Service port is translated, as kubectl does).
    assert {line.rsplit(" ", 1)[1] for line in expected[:-1]} <= {
        str(ECHO_PORT),
        str(SECOND_ECHO_PORT),
    }


def test_sigint_with_a_connection_open_exits_0(env: dict[str, str]) -> None:
    with ManagedProcess([*_command(PODGATE_FORWARD), "pod/echo", f"0:{ECHO_PORT}"], env=env) as pf:
        local = int(pf.wait_for_stdout(_FORWARDING, WAIT)[2])
        with socket.create_connection(("127.0.0.1", local), timeout=WAIT) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"  # the pair is up and idle
            pf.send_signal(signal.SIGINT)
            assert pf.wait(WAIT) == 0, pf.describe()
            with contextlib.suppress(ConnectionResetError):  # a reset is also an end
                assert sock.recv(1) == b"", "the open connection outlived the forwarder"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", local), timeout=WAIT).close()


@pytest.mark.parametrize("spec", ["0", "70000", "x:7000"])
def test_bad_spec_exits_1_with_an_error_line(spec: str, env: dict[str, str]) -> None:
    runs = {}
    for which in (KUBECTL, PODGATE_FORWARD):
        with ManagedProcess([*_command(which), "pod/echo", spec], env=env, name=which) as proc:
            runs[which] = (proc.wait(WAIT), proc)
    code, kubectl = runs[KUBECTL]
    assert code == 1, kubectl.describe()  # the reference refuses it too
    code, podgate = runs[PODGATE_FORWARD]
    assert code == 1, podgate.describe()
    assert podgate.stdout_text() == ""
    errors = [line for line in podgate.stderr_text().splitlines() if line.startswith("error: ")]
    assert errors, podgate.describe()
    assert f'"{spec}"' in errors[0], errors  # names the bad spec


def test_missing_pod_exits_1_naming_the_pod(env: dict[str, str]) -> None:
    for which in (KUBECTL, PODGATE_FORWARD):
        args = [*_command(which), "pod/no-such-pod", f"0:{ECHO_PORT}"]
        with ManagedProcess(args, env=env, name=which) as proc:
            assert proc.wait(WAIT) == 1, proc.describe()
        assert proc.stdout_text() == "", proc.describe()
        assert '"no-such-pod"' in proc.stderr_text(), proc.describe()
        if which == PODGATE_FORWARD:
            assert proc.stderr_text().splitlines()[-1] == (
                'error: pod "no-such-pod" not found in namespace "default"'
            )


def test_forward_in_another_namespace_flag(env: dict[str, str]) -> None:
    """`-n NS` is honoured: the agent only knows default/echo, so -n other fails naming it."""
    args = [*_command(PODGATE_FORWARD), "-n", "other", "echo", f"0:{ECHO_PORT}"]
    with ManagedProcess(args, env=env) as proc:
        assert proc.wait(WAIT) == 1, proc.describe()
    assert 'error: pod "echo" not found in namespace "other"' in proc.stderr_text()


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


@pytest.mark.parametrize(
    ("before", "after", "level"),
    [([], ["-v"], "INFO"), ([], ["-vv"], "DEBUG"), (["--log-level", "info"], [], "INFO")],
)
def test_more_on_stderr_when_asked(
    before: list[str], after: list[str], level: str, env: dict[str, str]
) -> None:
    """-v / -vv (or the global --log-level) add podgate's log lines on stderr; stdout keeps
    kubectl's lines only."""
    args = [*PODGATE, *before, "forward", *after, "pod/echo", f"0:{ECHO_PORT}"]
    with ManagedProcess(args, env=env) as proc:
        local = int(proc.wait_for_stdout(_FORWARDING, WAIT)[2])
        # The agent refuses the pod watch: an INFO line of the runner says it polls instead.
        proc.wait_for_stderr(r" INFO podgate\.runner: pod default/echo: .*polling every", WAIT)
        assert roundtrip("127.0.0.1", local, PAYLOAD, timeout=WAIT).intact
        proc.wait_for_stdout(rf"^Handling connection for {local}$", WAIT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, proc.describe()
    out = proc.stdout_text().splitlines()
    assert all(_FORWARDING.match(line) or line.startswith("Handling ") for line in out), out
    levels = {m[1] for line in proc.stderr_text().splitlines() if (m := _LOG_LINE.match(line))}
    assert level in levels and (level == "DEBUG") == ("DEBUG" in levels), levels


@pytest.mark.parametrize(
    ("transport", "negotiated"),
    [
        ("auto", "websocket"),
        ("spdy", "spdy"),
        ("websocket", "websocket"),
        ("ws-channel", "ws-channel"),
        ("h2", "h2"),
    ],
)
def test_transport(transport: str, negotiated: str, env: dict[str, str]) -> None:
    """--transport picks how forward reaches the agent (-v says which it got); the output
    is kubectl's whichever it is."""
    args = [*_command(PODGATE_FORWARD), "-v", "--transport", transport, "pod/echo"]
    with ManagedProcess([*args, f"0:{ECHO_PORT}"], env=env) as proc:
        lines = [proc.wait_for_stdout(_FORWARDING, WAIT) for _ in range(2)]
        proc.wait_for_stderr(
            rf"INFO podgate: connected to pod default/echo over {negotiated}$", WAIT
        )
        local = int(lines[0][2])
        assert roundtrip("127.0.0.1", local, PAYLOAD, timeout=WAIT).intact
        proc.wait_for_stdout(rf"^Handling connection for {local}$", WAIT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, proc.describe()
    assert _normalise(proc.stdout_text().splitlines(), set()) == [
        f"Forwarding from 127.0.0.1:<L1> -> {ECHO_PORT}",
        f"Forwarding from [::1]:<L1> -> {ECHO_PORT}",
        "Handling connection for <L1>",
    ]


def test_an_unknown_transport_is_a_usage_error(env: dict[str, str]) -> None:
    args = [*_command(PODGATE_FORWARD), "--transport", "pigeon", "pod/echo", f"0:{ECHO_PORT}"]
    with ManagedProcess(args, env=env) as proc:
        assert proc.wait(WAIT) == 2
    assert "invalid choice: 'pigeon'" in proc.stderr_text()
