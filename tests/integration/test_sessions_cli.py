"""`podgate sessions ls|get|create|rm|watch` against a real `podgate serve`: the demo
server (`--demo`, what `make run` starts), one with a token file, and serve + `podgate
agent` for a Service target. What the client prints is checked against what the API
answers to the same question; every wait is on a line, an event or a process.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.echo import roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    api_client,
    create_session,
    free_port,
    host_echo_server,
    podgate_env,
    run_agent,
    run_serve,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.relay import CuttableRelay

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0
TOKEN = "s3cret-token-for-the-cli"
DEMO_PAGE = b"Hello from podgate"
_FORWARDING = re.compile(r"^Forwarding from (127\.0\.0\.1|\[::1\]):(\d+) -> (\w+)$")


@dataclass
class Server:
    url: str
    process: ManagedProcess
    headers: dict[str, str]

    def api(self) -> httpx.Client:
        client = api_client(self.url)
        client.headers.update(self.headers)
        return client


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`podgate serve --demo --port 0`: pod default/hello, port 8080 (named http)."""
    data_dir = tmp_path_factory.mktemp("sessions-cli")
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(data_dir)]
    with ManagedProcess(args, env=podgate_env(), name="podgate-serve-demo") as proc:
        yield Server(proc.wait_for_stdout(LISTENING_RE, 30)[1], proc, {})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo server with `--token-file`: every request needs `Bearer TOKEN`."""
    directory = tmp_path_factory.mktemp("sessions-cli-token")
    tokens = directory / "tokens.csv"
    tokens.write_text(f"{TOKEN},alice,1000\n")
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(directory)]
    args += ["--token-file", str(tokens)]
    with ManagedProcess(args, env=podgate_env(), name="podgate-serve-token") as proc:
        url = proc.wait_for_stdout(LISTENING_RE, 30)[1]
        yield Server(url, proc, {"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def api(demo: Server) -> Iterator[httpx.Client]:
    """The demo server's API; every session is deleted after the test."""
    with demo.api() as client:
        yield client
        for session in client.get("/sessions").json()["data"]:
            client.delete(f"/sessions/{session['id']}")


def cli(
    *args: str, server: str | None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`podgate sessions ARGS --server URL`, run to its end."""
    command = [*PODGATE, "sessions", *args]
    if server is not None:
        command += ["--server", server]
    environment = podgate_env()
    environment.update(env or {})
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# ----------------------------------------------------------------------------- create


def test_create_prints_the_forwarding_lines_of_the_session(demo: Server, api: httpx.Client) -> None:
    result = cli("create", "default/hello", "0:8080", "--name", "c1", server=demo.url)
    lines = _ok(result).splitlines()
    session = api.get("/sessions").json()["data"][0]
    assert session["name"] == "c1" and session["target"] == "hello"
    assert lines == session["forwarding"]
    port = session["ports"][0]["local_port"]
    assert lines == [
        f"Forwarding from 127.0.0.1:{port} -> 8080",
        f"Forwarding from [::1]:{port} -> 8080",
    ]
    assert result.stderr == 'session "c1" created\n'
    assert DEMO_PAGE in _http_get(port)
    # The same name and spec again: the same session, the same lines.
    again = cli("create", "hello", "0:8080", "-n", "default", "--name", "c1", server=demo.url)
    assert _ok(again).splitlines() == lines
    assert again.stderr == 'session "c1" unchanged\n'
    # The name with another spec (pod/hello is not written as hello): the API's 409.
    other = cli("create", "pod/hello", "0:8080", "--name", "c1", server=demo.url)
    assert (other.returncode, other.stdout) == (1, "")
    assert other.stderr == 'error: a session named "c1" already exists with a different spec\n'
    assert api.get("/sessions").json()["count"] == 1


def test_create_takes_every_port_form_of_forward(demo: Server, api: httpx.Client) -> None:
    fixed, bare = free_port(), free_port()
    specs = [f"{fixed}:8080", ":8080", "0:8080", str(bare), ":http"]
    result = cli("create", "pod/hello", *specs, "--address", "127.0.0.1", server=demo.url)
    lines = _ok(result).splitlines()
    (session,) = api.get("/sessions").json()["data"]
    assert [p["spec"] for p in session["ports"]] == specs
    # The last one names a port: it may have been resolved since the CLI printed it.
    assert lines[:4] == session["forwarding"][:4]
    shown = [(int(m[2]), m[3]) for m in map(_FORWARDING.match, lines) if m]
    assert len(shown) == len(specs)  # one address: one line per spec
    assert shown[0] == (fixed, "8080")
    assert shown[3] == (bare, str(bare))
    assert shown[4][1] in ("http", "8080")  # the name until the pod is resolved
    ready = wait_for_status(api, session["id"], "ready")
    assert ready["forwarding"][4].endswith("-> 8080")  # then the pod's port


def test_create_wait_prints_the_lines_once_ready(demo: Server, api: httpx.Client) -> None:
    result = cli(
        "create",
        "hello",
        "0:http",
        "--transport",
        "spdy",
        "--wait",
        "-o",
        "json",
        server=demo.url,
    )
    session = json.loads(_ok(result))
    assert session["status"] == "ready" and session["transport"] == "spdy"
    assert session["forwarding"][0].endswith("-> 8080")
    assert api.get(f"/sessions/{session['id']}").json()["status"] == "ready"


def test_create_wait_fails_with_the_sessions_error(demo: Server, api: httpx.Client) -> None:
    result = cli("create", "pod/nohello", "0:8080", "--name", "w1", "--wait", server=demo.url)
    assert result.returncode == 1, result
    session = api.get("/sessions").json()["data"][0]
    assert session["status"] == "failed"
    assert result.stderr.splitlines()[-1] == (
        f'error: session "w1" is failed: {session["last_error"]} '
        "(it stays until `podgate sessions rm w1`)"
    )


# ----------------------------------------------------------------------------- ls / get


def _two_ready_sessions(api: httpx.Client) -> list[dict[str, Any]]:
    first = create_session(api, target="pod/hello", ports=["0:8080"], name="alpha")
    second = create_session(api, target="hello", ports=["0:http", "0:8080"], name="beta")
    return [wait_for_status(api, s["id"], "ready") for s in (first, second)]


def test_ls_table(demo: Server, api: httpx.Client) -> None:
    alpha, beta = _two_ready_sessions(api)
    lines = _ok(cli("ls", server=demo.url)).splitlines()
    assert re.fullmatch(r"NAME +TARGET +PORTS +STATUS +TRANSPORT +AGE", lines[0]), lines
    rows = [line.split() for line in lines[1:]]
    alpha_port = alpha["ports"][0]["local_port"]
    beta_ports = [p["local_port"] for p in beta["ports"]]
    assert rows[0][:5] == ["alpha", "pod/hello", f"{alpha_port}->8080", "ready", "websocket"]
    assert rows[1][:5] == [
        "beta",
        "hello",
        f"{beta_ports[0]}->8080,{beta_ports[1]}->8080",
        "ready",
        "websocket",
    ]
    assert all(re.fullmatch(r"\d+s", row[5]) for row in rows), rows
    # The columns line up under the header, as kubectl's do.
    for header in ("TARGET", "PORTS", "STATUS", "TRANSPORT", "AGE"):
        column = lines[0].index(header)
        assert all(line[column - 3 : column] == "   " for line in lines[1:]), (header, lines)


def test_ls_wide(demo: Server, api: httpx.Client) -> None:
    alpha, _ = _two_ready_sessions(api)
    lines = _ok(cli("ls", "-o", "wide", server=demo.url)).splitlines()
    assert lines[0].split()[6:] == [
        *("NAMESPACE", "POD", "ACTIVE", "CONNECTIONS", "ERRORS", "IN", "OUT", "RECONNECTS"),
        *("ID", "LAST", "ERROR"),
    ]
    row = lines[1].split()
    assert row[0] == "alpha" and row[6:8] == ["default", "hello"]
    assert row[-2:] == [alpha["id"], "<none>"]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_ls_json_and_yaml_are_get_sessions(output: str, demo: Server, api: httpx.Client) -> None:
    _two_ready_sessions(api)
    printed = _ok(cli("ls", "-o", output, server=demo.url))
    parsed = json.loads(printed) if output == "json" else yaml.safe_load(printed)
    assert parsed == api.get("/sessions").json()
    assert parsed["count"] == 2


def test_ls_without_sessions(demo: Server, api: httpx.Client) -> None:
    result = cli("ls", server=demo.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "No sessions found.\n")
    assert json.loads(_ok(cli("ls", "-o", "json", server=demo.url))) == {"data": [], "count": 0}


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_by_name_or_id(output: str, demo: Server, api: httpx.Client) -> None:
    alpha, beta = _two_ready_sessions(api)
    load = json.loads if output == "json" else yaml.safe_load
    by_name = load(_ok(cli("get", "alpha", "-o", output, server=demo.url)))
    by_id = load(_ok(cli("get", alpha["id"], "-o", output, server=demo.url)))
    assert by_name == by_id == api.get(f"/sessions/{alpha['id']}").json()
    both = load(_ok(cli("get", "alpha", beta["id"], "-o", output, server=demo.url)))
    assert both == api.get("/sessions").json()
    table = _ok(cli("get", "beta", server=demo.url)).splitlines()
    assert len(table) == 2 and table[1].startswith("beta ")
    assert _ok(cli("get", "beta", "-o", "name", server=demo.url)) == "session/beta\n"


# ----------------------------------------------------------------------------- rm


def test_rm_by_name_and_id(demo: Server, api: httpx.Client) -> None:
    alpha, beta = _two_ready_sessions(api)
    result = cli("rm", "alpha", beta["id"], server=demo.url)
    assert _ok(result).splitlines() == ['session "alpha" deleted', 'session "beta" deleted']
    assert api.get("/sessions").json()["count"] == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", alpha["ports"][0]["local_port"]), 5).close()


def test_rm_all_and_an_unknown_one(demo: Server, api: httpx.Client) -> None:
    _two_ready_sessions(api)
    unknown = cli("rm", "alpha", "nope", server=demo.url)
    assert unknown.returncode == 1
    assert unknown.stdout == 'session "alpha" deleted\n'  # the others are still deleted
    detail = api.get("/sessions/nope").json()["detail"]
    assert unknown.stderr == f"error: {detail}\n"
    assert _ok(cli("rm", "--all", server=demo.url)) == 'session "beta" deleted\n'
    assert api.get("/sessions").json()["count"] == 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("spec", ["0:70000", "x:8080", "0"])
def test_a_bad_port_spec_prints_the_apis_detail(spec: str, demo: Server, api: httpx.Client) -> None:
    result = cli("create", "pod/hello", spec, server=demo.url)
    answer = api.post("/sessions", json={"target": "pod/hello", "ports": [spec]})
    assert answer.status_code == 422
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {answer.json()['detail']}\n"
    assert f'"{spec}"' in result.stderr  # the detail names the spec
    assert api.get("/sessions").json()["count"] == 0


def test_a_local_port_in_use_is_a_conflict(demo: Server, api: httpx.Client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = cli("create", "pod/hello", f"{port}:8080", server=demo.url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: local port {port} is already in use"), result


def test_an_unknown_session_is_not_found(demo: Server, api: httpx.Client) -> None:
    detail = api.get("/sessions/no-such-session").json()["detail"]
    for verb in ("get", "rm"):
        result = cli(verb, "no-such-session", server=demo.url)
        assert (result.returncode, result.stdout) == (1, ""), result
        assert result.stderr == f"error: {detail}\n"
        assert 'session "no-such-session"' in detail


def test_an_unreachable_server_says_so() -> None:
    port = free_port()  # nothing listens there
    for verb in (["ls"], ["watch"], ["create", "hello", "0:8080"]):
        result = cli(*verb, server=f"http://127.0.0.1:{port}")
        assert (result.returncode, result.stdout) == (1, ""), result
        assert result.stderr.startswith(
            f"error: cannot reach the podgate server at http://127.0.0.1:{port}: connection refused"
        ), result.stderr
    # PODGATE_SERVER is used when --server is not given.
    result = cli("ls", server=None, env={"PODGATE_SERVER": f"127.0.0.1:{port}"})
    assert f"at http://127.0.0.1:{port}: connection refused" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["create", "hello"],
        ["rm"],
        ["create", "hello", "80", "--transport", "pigeon"],
        ["ls", "-o", "xml"],
        ["create", "a/b/c/d", "80"],
        ["create", "prod/hello", "80", "-n", "dev"],
    ],
)
def test_usage_errors_exit_2(args: list[str], demo: Server) -> None:
    result = cli(*args, server=demo.url)
    assert (result.returncode, result.stdout) == (2, ""), result
    assert "error" in result.stderr


# ----------------------------------------------------------------------------- tokens


def test_a_token_is_needed_and_used(secured: Server) -> None:
    with secured.api() as api:
        anonymous = cli("ls", server=secured.url)
        assert anonymous.returncode == 1
        required = httpx.get(f"{secured.url}/sessions").json()["detail"]
        assert anonymous.stderr == (f"error: {required}; give it with --token or PODGATE_TOKEN\n")
        wrong = cli("ls", "--token", "not-it", server=secured.url)
        assert wrong.returncode == 1
        assert wrong.stderr == (
            "error: the bearer token is not valid; check --token or PODGATE_TOKEN\n"
        )

        created = cli(
            "create", "hello", "0:8080", "--name", "t1", "--token", TOKEN, server=secured.url
        )
        lines = _ok(created).splitlines()
        session = api.get("/sessions").json()["data"][0]
        assert lines == session["forwarding"]
        wait_for_status(api, session["id"], "ready")
        from_env = {"PODGATE_TOKEN": TOKEN}
        listed = json.loads(_ok(cli("ls", "-o", "json", server=secured.url, env=from_env)))
        assert listed == api.get("/sessions").json()
        assert _ok(cli("rm", "t1", server=secured.url, env=from_env)) == 'session "t1" deleted\n'
        assert api.get("/sessions").json()["count"] == 0


def test_watch_with_a_token(secured: Server) -> None:
    with secured.api() as api:
        sentinel = create_session(api, target="hello", ports=["0:8080"], name="sentinel")
        args = [*PODGATE, "sessions", "watch", "--server", secured.url]
        env = {**podgate_env(), "PODGATE_TOKEN": TOKEN}
        try:
            with ManagedProcess(args, env=env, name="watch") as watch:
                watch.wait_for_stdout(r"\bsentinel +listed\b", WAIT)
                api.delete(f"/sessions/{sentinel['id']}")
                watch.wait_for_stdout(r"\bsentinel +deleted +-", WAIT)
        finally:
            api.delete(f"/sessions/{sentinel['id']}")


# ----------------------------------------------------------------------------- watch


def _watch(server: str, *extra: str) -> ManagedProcess:
    return ManagedProcess(
        [*PODGATE, "sessions", "watch", "--server", server, *extra],
        env=podgate_env(),
        name="watch",
    )


def test_watch_sees_a_session_go_ready_and_deleted(demo: Server, api: httpx.Client) -> None:
    create_session(api, target="pod/hello", ports=["0:8080"], name="before")
    with _watch(demo.url) as watch:
        watch.wait_for_stdout(r"^TIME +NAME +EVENT +STATUS +DETAIL$", WAIT)
        # Listed after subscribing: from here on every change is an event.
        watch.wait_for_stdout(r"^\d\d:\d\d:\d\d +before +listed +\w+ +default/pod/hello ", WAIT)
        _ok(cli("create", "pod/hello", "0:8080", "--name", "w-new", server=demo.url))
        created = watch.wait_for_stdout(r"\bw-new +created +pending +default/pod/hello", WAIT)
        ready = watch.wait_for_stdout(r"\bw-new +status +ready +pod hello via (\S+)$", WAIT)
        _ok(cli("rm", "w-new", server=demo.url))
        watch.wait_for_stdout(r"\bw-new +deleted +-$", WAIT)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(WAIT) == 0, watch.describe()  # Ctrl-C is how it ends
    assert created and ready[1] in ("websocket", "spdy")
    assert watch.stderr_text() == "", watch.describe()


def test_watch_json_prints_the_events(demo: Server, api: httpx.Client) -> None:
    create_session(api, target="pod/hello", ports=["0:8080"], name="before")
    with _watch(demo.url, "-o", "json") as watch:
        listed = json.loads(watch.wait_for_stdout(r'^\{"type":"listed"', WAIT).string)
        assert listed["session"]["name"] == "before"
        session = create_session(api, target="pod/hello", ports=["0:8080"], name="j1")
        line = watch.wait_for_stdout(r'^\{"type":"status".*"new":"ready"', WAIT).string
        event = json.loads(line)
        assert event["session_id"] == session["id"] and event["name"] == "j1"
        assert int(event["id"]) > 0


def _serve_demo_behind_relay(
    tmp_path: Path, settings: Mapping[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    env = podgate_env()
    env.update({f"PODGATE_{k}": v for k, v in (settings or {}).items()})
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)]
    proc = ManagedProcess(args, env=env, name="podgate-serve-demo")
    return proc, proc.wait_for_stdout(LISTENING_RE, 30)[1]


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_watch_resumes_with_last_event_id(tmp_path: Path) -> None:
    """The stream is cut (a proxy restarts); what happened meanwhile comes as events
    (replayed after Last-Event-ID), not as a new listing."""
    serve, url = _serve_demo_behind_relay(tmp_path)
    with serve, CuttableRelay(("127.0.0.1", _port_of(url))) as relay, api_client(url) as api:
        create_session(api, target="hello", ports=["0:8080"], name="sentinel")
        with _watch(relay.url) as watch:
            watch.wait_for_stdout(r"\bsentinel +listed\b", WAIT)
            first = create_session(api, target="hello", ports=["0:8080"], name="first")
            watch.wait_for_stdout(r"\bfirst +status +ready\b", WAIT)  # an id to resume from

            relay.cut_and_hold()
            watch.wait_for_stderr(r"^watch: the event stream broke.*; reconnecting in", WAIT)
            assert relay.held.wait(WAIT), watch.describe()  # it is back, held at the relay
            second = create_session(api, target="hello", ports=["0:8080"], name="second")
            wait_for_status(api, second["id"], "ready")
            assert api.delete(f"/sessions/{first['id']}").status_code == 204
            relay.release()

            watch.wait_for_stdout(r"\bsecond +created +pending\b", WAIT)
            watch.wait_for_stdout(r"\bsecond +status +ready\b", WAIT)
            watch.wait_for_stdout(r"\bfirst +deleted +-", WAIT)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(WAIT) == 0
        assert not re.search(r"\b(second|first) +listed", watch.stdout_text()), watch.describe()


def test_watch_rereads_the_list_after_a_resync(tmp_path: Path) -> None:
    """Too many events while cut off (a buffer of 2): the server says `resync`, and the
    client prints what changed from a fresh list, deletions included."""
    serve, url = _serve_demo_behind_relay(tmp_path, {"EVENT_BUFFER_SIZE": "2"})
    with serve, CuttableRelay(("127.0.0.1", _port_of(url))) as relay, api_client(url) as api:
        create_session(api, target="hello", ports=["0:8080"], name="sentinel")
        with _watch(relay.url) as watch:
            watch.wait_for_stdout(r"\bsentinel +listed\b", WAIT)
            first = create_session(api, target="hello", ports=["0:8080"], name="first")
            watch.wait_for_stdout(r"\bfirst +status +ready\b", WAIT)

            relay.cut_and_hold()
            assert relay.held.wait(WAIT), watch.describe()
            for name in ("second", "third"):
                made = create_session(api, target="hello", ports=["0:8080"], name=name)
                wait_for_status(api, made["id"], "ready")
            assert api.delete(f"/sessions/{first['id']}").status_code == 204
            relay.release()

            watch.wait_for_stdout(r"\bsecond +listed +ready\b", WAIT)
            watch.wait_for_stdout(r"\bthird +listed +ready\b", WAIT)
            watch.wait_for_stdout(r"\bfirst +deleted +- +deleted while the stream was down", WAIT)
            watch.send_signal(signal.SIGINT)
            assert watch.wait(WAIT) == 0
        # sentinel did not change: it is not listed again.
        assert len(re.findall(r"\bsentinel +listed\b", watch.stdout_text())) == 1


# ----------------------------------------------------------------------------- a Service


def test_create_a_service_session_through_an_agent(tmp_path: Path) -> None:
    """serve + `podgate agent` (a registry with a Service): `--wait` prints the pod port
    the service port leads to, as kubectl does."""
    with host_echo_server() as echo:
        registry = tmp_path / "registry.yaml"
        registry.write_text(
            yaml.safe_dump(
                {
                    "pods": [
                        {
                            "namespace": "default",
                            "name": "echo-1",
                            "target": f"host:{echo.host}",
                            "ports": [{"name": "echo", "containerPort": echo.port}],
                            "labels": {"app": "echo"},
                        }
                    ],
                    "services": [
                        {
                            "namespace": "default",
                            "name": "echo",
                            "selector": {"app": "echo"},
                            "ports": [{"name": "web", "port": 80, "targetPort": "echo"}],
                        }
                    ],
                }
            )
        )
        with run_agent([], extra_args=["--pods", str(registry)]) as agent:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
            with run_serve(tmp_path / "data", kubeconfig) as serve:
                result = cli("create", "default/svc/echo", "0:80", "--wait", server=serve.url)
                lines = _ok(result).splitlines()
                local = int(lines[0].split(":")[1].split()[0])
                assert lines == [
                    f"Forwarding from 127.0.0.1:{local} -> {echo.port}",
                    f"Forwarding from [::1]:{local} -> {echo.port}",
                ]
                assert roundtrip("127.0.0.1", local, b"x" * 100_000, timeout=WAIT).intact
                named = cli("create", "svc/echo", ":web", "--wait", server=serve.url)
                assert _ok(named).splitlines()[0].endswith(f"-> {echo.port}")
                table = _ok(cli("ls", server=serve.url)).splitlines()
                assert [row.split()[1:4] for row in table[1:]] == [
                    ["svc/echo", f"{local}->{echo.port}", "ready"],
                    ["svc/echo", table[2].split()[2], "ready"],
                ]


def test_create_an_ip_session_via_an_agent(tmp_path: Path) -> None:
    """`--via URL`: the agent dials an ip/ target its --allow-target allows (refusals:
    tests/cluster/test_helper_agent.py)."""
    with host_echo_server() as echo:
        allow = ["--allow-target", f"{echo.host}/32"]
        with run_agent([], extra_args=allow) as agent:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
            with run_serve(tmp_path / "data", kubeconfig) as serve:
                target = f"ip/{echo.host}"
                result = cli(
                    "create",
                    target,
                    f"0:{echo.port}",
                    "--via",
                    agent.url,
                    "--wait",
                    "-o",
                    "json",
                    server=serve.url,
                )
                session = json.loads(_ok(result))
                assert session["via"] == {"agent": agent.url, "context": None}
                assert session["transport"] == "h2"  # via an agent: h2 by default
                local = session["ports"][0]["local_port"]
                assert roundtrip("127.0.0.1", local, b"x" * 100_000, timeout=WAIT).intact
