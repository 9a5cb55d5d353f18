"""`podgate forward` against `kubectl.1.30 port-forward` (SPDY): the same arguments against
the same `podgate agent` (pod `default/echo` is a real network namespace with echo servers),
one after the other, and stdout compared line by line. Every wait is on a line or a socket.
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


@pytest.fixture(scope="module")
def agent(pod_netns: NetNamespace) -> Iterator[Podgate]:
    with run_agent([f"default/echo={pod_netns.target}"]) as running:
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


def _forward_once(which: str, specs: list[str], env: dict[str, str]) -> Run:
    """`... pod/echo SPECS`: wait for its 2 lines per spec, round-trip PAYLOAD through the
    first listener, wait for `Handling connection for N`, then SIGINT it."""
    proc = ManagedProcess([*_command(which), "pod/echo", *specs], env=env, name=which)
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


@pytest.mark.parametrize("shape", ["0:REMOTE", "LOCAL:REMOTE", "LOCAL:REMOTE :SECOND"])
def test_output_matches_kubectl_line_by_line(shape: str, env: dict[str, str]) -> None:
    fixed = free_port()
    specs = {
        "0:REMOTE": [f"0:{ECHO_PORT}"],
        "LOCAL:REMOTE": [f"{fixed}:{ECHO_PORT}"],
        "LOCAL:REMOTE :SECOND": [f"{fixed}:{ECHO_PORT}", f":{SECOND_ECHO_PORT}"],
    }[shape]
    # One after the other, so that a fixed local port is free for each.
    kubectl = _forward_once(KUBECTL, specs, env)
    podgate = _forward_once(PODGATE_FORWARD, specs, env)

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
    assert not [line for line in podgate.stderr if "error" in line.lower()], podgate.stderr


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
