"""The REST contract of issue 3 ("The API"), through the ASGI app and its real lifespan:
a SQLite file in tmp_path, the real supervisor, a real cluster (in-process agent) and
real sockets. Every wait is bounded; status changes are observed by polling the API."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.runner.clusters import ClusterPool
from service.runner.supervisor import Supervisor
from service.store import SessionRepository, make_engine
from tests.api.conftest import POD_HOST, POLL, WAIT, Api, free_port, port_free, running_api
from tests.support.echo import EchoServer, refused_port
from tests.support.kube import write_kubeconfig

pytestmark = pytest.mark.timeout(60)

PROBLEM_JSON = "application/problem+json"
LOCALHOST = ("127.0.0.1", "::1")


# ------------------------------------------------------------------------ helpers


def forwarding_lines(local_port: int, remote_port: int) -> list[str]:
    return [
        f"Forwarding from 127.0.0.1:{local_port} -> {remote_port}",
        f"Forwarding from [::1]:{local_port} -> {remote_port}",
    ]


def without_counters(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Port mappings without their (moving) traffic counters."""
    return [{k: v for k, v in p.items() if k != "counters"} for p in ports]


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """An RFC 9457 problem with `status` whose detail contains every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["type"] == "about:blank"
    assert problem["status"] == status
    assert problem["title"]
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]
    return problem


async def wait_until(
    api: Api,
    session_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """Poll GET /sessions/{id} until `predicate` holds (hard deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await api.client.get(f"/sessions/{session_id}")
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        if predicate(session):
            return session
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s: {session}")
        await asyncio.sleep(POLL)


async def exchange(host: str, port: int, payload: bytes) -> bytes:
    """Send `payload` to host:port, half-close, read until EOF (bounded)."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def refused(host: str, port: int) -> bool:
    """Whether a connection to host:port is refused (nothing listens there)."""
    try:
        async with asyncio.timeout(WAIT):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def closed_without_data(host: str, port: int) -> bool:
    """Whether host:port accepts a connection and then closes it (EOF or reset), silently."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await reader.read() == b""
        except ConnectionResetError:
            return True
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def stored_status(settings: Settings, session_id: str) -> tuple[str, str | None] | None:
    """(status, last_error) of a session as stored in the database file."""
    engine = make_engine(settings.db_url)
    try:
        record = SessionRepository(engine).get(session_id)
        return None if record is None else (record.status, record.last_error)
    finally:
        engine.dispose()


def stored_session_ids(settings: Settings) -> list[str]:
    """The session ids in the database file, read through a fresh engine."""
    engine = make_engine(settings.db_url)
    try:
        return [record.id for record in SessionRepository(engine).list()]
    finally:
        engine.dispose()


@contextlib.contextmanager
def occupied(port: int, *hosts: str) -> Any:
    """Listening sockets of our own on `port` for each host (another program's port)."""
    sockets = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1)
        yield
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------------------ healthz


async def test_healthz(api: Api, echo: EchoServer) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "sessions": 0}
    assert (await api.create(ports=[f"0:{echo.port}"])).status_code == 201
    assert (await api.client.get("/healthz")).json() == {"status": "ok", "sessions": 1}


# ------------------------------------------------------------------------- create


async def test_create_binds_before_201_and_forwards(api: Api, echo: EchoServer) -> None:
    fixed_local = free_port()
    e = echo.port
    specs = [str(e), f"{fixed_local}:{e}", f":{e}", f"0:{e}"]  # the four forms at once
    before = datetime.now(UTC)

    response = await api.create(ports=specs)

    assert response.status_code == 201, response.text
    session = response.json()
    # The listeners were bound before the answer: connect right away, on both addresses.
    for port in session["ports"]:
        for host in LOCALHOST:
            assert not await refused(host, port["local_port"]), (host, port)

    assert response.headers["location"] == f"/sessions/{session['id']}"
    assert set(session) == {
        "id", "name", "namespace", "target", "pod", "status", "transport", "last_error",
        "created_at", "ready_since", "ports", "forwarding", "connections_active",
        "connections_total", "connection_errors", "bytes_in", "bytes_out", "reconnects",
        "reconnect", "keepalive_seconds", "connect_wait_seconds", "ttl_seconds",
        "idle_timeout_seconds", "channel_linger_seconds", "expires_at", "connections_refused",
        "via",
        "owner",
    }  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{32}", session["id"])
    assert session["name"] == f"echo-{session['id'][:8]}"
    assert session["namespace"] == "default"
    assert session["target"] == "pod/echo"
    assert session["status"] in ("pending", "ready")
    assert session["last_error"] is None
    created_at = datetime.fromisoformat(session["created_at"])
    assert before - timedelta(seconds=1) <= created_at <= datetime.now(UTC)

    ports = session["ports"]
    assert [p["spec"] for p in ports] == specs
    assert [p["remote_port"] for p in ports] == [e] * 4
    assert ports[0]["local_port"] == e
    assert ports[1]["local_port"] == fixed_local
    chosen = {ports[2]["local_port"], ports[3]["local_port"]}
    assert len(chosen) == 2 and not chosen & {0, e, fixed_local}
    assert all(p["addresses"] == ["127.0.0.1", "::1"] for p in ports)
    expected_lines: list[str] = []
    for p in ports:
        expected_lines += forwarding_lines(p["local_port"], p["remote_port"])
    assert session["forwarding"] == expected_lines
    assert session["connection_errors"] == 0
    assert session["bytes_in"] == 0 and session["bytes_out"] == 0

    ready = await api.wait_status(session["id"], "ready")
    assert ready["pod"] == "echo"
    assert ready["transport"] == "websocket"  # auto: the tunnel, like kubectl 1.31+
    assert ready["last_error"] is None
    assert ready["ready_since"] is not None
    # The per-mapping counters move with the connections made above; the rest stays.
    assert without_counters(ready["ports"]) == without_counters(ports)
    assert ready["forwarding"] == expected_lines

    # Bytes reach the echo pod through every mapping, on 127.0.0.1 and on ::1.
    sent = 0
    for p in ports:
        for host in LOCALHOST:
            payload = f"hello {host} {p['spec']} ".encode() * 1000
            assert await exchange(host, p["local_port"], payload) == payload
            sent += len(payload)
    after = await wait_until(
        api,
        session["id"],
        # The empty connections made right after the 201 are forwarded too.
        lambda s: s["connections_total"] >= 8 and s["connections_active"] == 0,
        "eight finished connections",
    )
    assert after["bytes_out"] == sent and after["bytes_in"] == sent
    assert after["connection_errors"] == 0
    assert after["status"] == "ready"
    # The session's counters are the sums of its mappings' counters.
    for key in ("connections_total", "connection_errors", "bytes_in", "bytes_out"):
        assert sum(p["counters"][key] for p in after["ports"]) == after[key], key
    assert all(p["counters"]["bytes_in"] > 0 for p in after["ports"])


async def test_connection_error_closes_that_connection_only(api: Api, echo: EchoServer) -> None:
    with refused_port(POD_HOST) as dead:
        response = await api.create(ports=[f"0:{dead}", f"0:{echo.port}"])
        assert response.status_code == 201, response.text
        session = response.json()
        dead_local, echo_local = (p["local_port"] for p in session["ports"])
        await api.wait_status(session["id"], "ready")

        assert await exchange("127.0.0.1", dead_local, b"anyone?") == b""

        failed_one = await wait_until(
            api, session["id"], lambda s: s["connection_errors"] == 1, "a connection error"
        )
    assert failed_one["status"] == "ready"
    assert f"forwarding {dead_local} -> {dead}" in failed_one["last_error"]
    assert await exchange("::1", echo_local, b"still up") == b"still up"


async def test_several_os_chosen_ports_in_one_request(api: Api, echo: EchoServer) -> None:
    response = await api.create(ports=[f":{echo.port}"] * 3 + [f"0:{echo.port}"] * 2)
    assert response.status_code == 201, response.text
    local_ports = [p["local_port"] for p in response.json()["ports"]]
    assert len(set(local_ports)) == 5 and 0 not in local_ports
    await api.wait_status(response.json()["id"], "ready")
    for port in local_ports:
        assert await exchange("127.0.0.1", port, b"x" * 10) == b"x" * 10


async def test_same_name_same_spec_is_idempotent(api: Api, echo: EchoServer) -> None:
    body = {"name": "web", "ports": [f"0:{echo.port}"]}
    first = await api.create(**body)
    assert first.status_code == 201, first.text

    again = await api.create(**body)

    assert again.status_code == 200, again.text
    assert again.headers["location"] == f"/sessions/{first.json()['id']}"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "web"
    # Nothing new was bound: the same port, and still one session.
    assert again.json()["ports"] == first.json()["ports"]
    listing = (await api.client.get("/sessions")).json()
    assert listing["count"] == 1
    assert stored_session_ids(api.settings) == [first.json()["id"]]


@pytest.mark.parametrize(
    "change",
    [
        {"ports": ["0:7000"]},
        {"target": "pod/other"},
        {"addresses": ["127.0.0.1"]},
    ],
    ids=["ports", "target", "addresses"],
)
async def test_same_name_other_spec_is_409(
    api: Api, echo: EchoServer, change: dict[str, Any]
) -> None:
    body = {"name": "web", "ports": [f"0:{echo.port}"]}
    first = await api.create(**body)
    assert first.status_code == 201, first.text

    response = await api.create(**{**body, **change})

    assert_problem(response, 409, '"web"', "different spec")
    listing = (await api.client.get("/sessions")).json()
    assert [s["id"] for s in listing["data"]] == [first.json()["id"]]
    assert listing["data"][0]["ports"] == first.json()["ports"]


# --------------------------------------------------------------------------- 422


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"ports": ["0"]}, ['"0"', "remote port must be between 1 and 65535"]),
        ({"ports": ["8080:0"]}, ['"8080:0"', "remote port"]),
        ({"ports": ["70000"]}, ['"70000"', "greater than 65535"]),
        ({"ports": ["8080:70000"]}, ['"8080:70000"', "greater than 65535"]),
        ({"ports": ["8888:a_b"]}, ['"8888:a_b"', "not a number"]),
        ({"ports": ["8080:x-y_"]}, ['"8080:x-y_"', "not a number"]),
        ({"ports": ["5000", "5000:6000"]}, ['"5000:6000"', "local port 5000 is used twice"]),
        ({"ports": []}, ["ports", "at least 1"]),
        ({"ports": ["5000"], "bogus": 1}, ["bogus", "Extra inputs are not permitted"]),
        ({"ports": ["5000"], "namespace": "Bad_NS"}, ["namespace"]),
        ({"target": "job/x", "ports": ["5000"]}, ['"job/x"', 'unknown kind "job"']),
        ({"target": "pod/x", "ports": ["http"]}, ['"http"', "needs a local port", ":http"]),
        ({"ports": ["5000"], "transport": "carrier-pigeon"}, ["transport"]),
        ({"ports": ["5000"], "addresses": ["not-an-ip"]}, ['"not-an-ip"', "listen address"]),
    ],
    ids=[
        "remote-0",
        "local-remote-0",
        "remote-70000",
        "local-remote-70000",
        "not-a-number",
        "bad-name",
        "local-port-twice",
        "no-ports",
        "unknown-field",
        "bad-namespace",
        "unknown-kind-target",
        "bare-port-name",
        "transport-unknown",
        "bad-address",
    ],
)
async def test_invalid_request_is_422(api: Api, body: dict[str, Any], fragments: list[str]) -> None:
    response = await api.create(**body)
    assert_problem(response, 422, *fragments)
    assert (await api.client.get("/sessions")).json() == {"data": [], "count": 0}
    assert stored_session_ids(api.settings) == []


async def test_malformed_json_is_422_problem(api: Api) -> None:
    response = await api.client.post(
        "/sessions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)


# --------------------------------------------------------------------------- 409


async def test_port_in_use_is_409_nothing_persisted_nothing_bound(
    api: Api, echo: EchoServer
) -> None:
    first_port, busy = free_port(), free_port()
    # The first mapping binds, the second cannot: the first must be released again.
    with occupied(busy, *LOCALHOST):
        response = await api.create(ports=[f"{first_port}:{echo.port}", f"{busy}:7000"])
        assert_problem(response, 409, f"local port {busy} is already in use", f'"{busy}:7000"')

    assert (await api.client.get("/sessions")).json()["count"] == 0
    assert stored_session_ids(api.settings) == []
    # A fresh supervisor on the same database file restores nothing.
    engine = make_engine(api.settings.db_url)
    fresh = Supervisor(
        SessionRepository(engine), ClusterPool(api.settings.kubeconfig), api.settings
    )
    try:
        await fresh.start()
        assert fresh.list() == []
    finally:
        await fresh.stop()
        engine.dispose()
    for port in (first_port, busy):
        for host in LOCALHOST:
            assert port_free(port, host), f"{host}:{port} was left bound"
    # And the API can use those ports right away.
    retry = await api.create(ports=[f"{first_port}:{echo.port}", f"{busy}:{echo.port}"])
    assert retry.status_code == 201, retry.text


async def test_port_in_use_on_ipv4_only_is_409(api: Api, echo: EchoServer) -> None:
    busy = free_port()
    with occupied(busy, "127.0.0.1"):
        response = await api.create(ports=[f"{busy}:7000"])
        assert_problem(response, 409, f"local port {busy} is already in use")
        assert (await api.client.get("/sessions")).json()["count"] == 0
        assert stored_session_ids(api.settings) == []
        assert port_free(busy, "::1"), "[::1] was left bound"


# --------------------------------------------------------------- cluster trouble


async def test_pod_not_found_fails_with_last_error(api: Api, echo: EchoServer) -> None:
    started = time.monotonic()
    response = await api.create(target="pod/missing", ports=[f"0:{echo.port}"])
    assert response.status_code == 201, response.text
    assert time.monotonic() - started < 10.0

    failed = await api.wait_status(response.json()["id"], "failed")

    assert 'pod "missing" not found' in failed["last_error"]
    assert failed["pod"] is None
    # Its listener stays bound (the session exists), but closes what it accepts.
    local_port = failed["ports"][0]["local_port"]
    assert await closed_without_data("127.0.0.1", local_port)
    # The failure is written to the store too.
    deadline = time.monotonic() + WAIT
    while stored_status(api.settings, failed["id"]) != ("failed", failed["last_error"]):
        assert time.monotonic() < deadline, stored_status(api.settings, failed["id"])
        await asyncio.sleep(POLL)


async def test_pod_not_running_stays_pending_with_last_error(api: Api, echo: EchoServer) -> None:
    response = await api.create(target="waiting", ports=[f"0:{echo.port}"])
    assert response.status_code == 201, response.text

    session = await wait_until(
        api, response.json()["id"], lambda s: s["last_error"] is not None, "last_error"
    )

    assert session["status"] == "pending"
    assert "pod is not running" in session["last_error"]
    assert "Pending" in session["last_error"]


@contextlib.asynccontextmanager
async def silent_cluster() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP server that accepts connections and never answers a byte."""
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        accepted.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_unresponsive_cluster_does_not_block_the_api(
    tmp_path: Path, settings: Settings
) -> None:
    async with silent_cluster() as (url, accepted):
        kubeconfig = write_kubeconfig(tmp_path / "silent-kubeconfig", url)
        silent = settings.model_copy(update={"kubeconfig": str(kubeconfig)})
        async with running_api(silent) as api:
            started = time.monotonic()
            response = await api.create(ports=["0:7000"])
            assert response.status_code == 201, response.text
            assert time.monotonic() - started < 10.0
            session_id = response.json()["id"]

            # The cluster was asked (it holds our request) while the API keeps answering.
            async with asyncio.timeout(WAIT):
                await accepted.wait()
            for _ in range(3):
                session = (await api.client.get(f"/sessions/{session_id}")).json()
                assert session["status"] == "pending"
                assert session["last_error"] is None
                assert (await api.client.get("/healthz")).status_code == 200
            # A second create is not queued behind the first one's dial.
            started = time.monotonic()
            assert (await api.create(ports=["0:7001"])).status_code == 201
            assert time.monotonic() - started < 10.0
        # Leaving the lifespan (bounded inside running_api) did not wait for the cluster.


# ------------------------------------------------------------------ list and get


async def test_list_get_and_unknown_id(api: Api, echo: EchoServer) -> None:
    assert (await api.client.get("/sessions")).json() == {"data": [], "count": 0}
    a = (await api.create(name="a", ports=[f"0:{echo.port}"])).json()
    b = (await api.create(name="b", ports=[f":{echo.port}"])).json()

    listing = (await api.client.get("/sessions")).json()
    assert listing["count"] == 2
    assert [s["id"] for s in listing["data"]] == [a["id"], b["id"]]
    assert [s["name"] for s in listing["data"]] == ["a", "b"]

    got = await api.client.get(f"/sessions/{a['id']}")
    assert got.status_code == 200
    assert {k: v for k, v in got.json().items() if k in ("id", "name", "ports", "forwarding")} == {
        k: a[k] for k in ("id", "name", "ports", "forwarding")
    }

    assert_problem(await api.client.get("/sessions/nope"), 404, '"nope"', "does not exist")
    assert_problem(await api.client.delete("/sessions/nope"), 404, '"nope"')


# ------------------------------------------------------------------------ delete


async def test_delete_closes_listeners_and_connections_and_row(api: Api, echo: EchoServer) -> None:
    created = (await api.create(ports=[f"0:{echo.port}"])).json()
    session_id, port = created["id"], created["ports"][0]["local_port"]
    await api.wait_status(session_id, "ready")
    # An in-flight connection, proven to be forwarding.
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
    try:
        response = await api.client.delete(f"/sessions/{session_id}")
        assert response.status_code == 204
        assert response.content == b""

        # The in-flight connection was closed (EOF or reset), not left hanging.
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    for host in LOCALHOST:
        assert await refused(host, port), f"{host}:{port} still accepts"
    assert_problem(await api.client.get(f"/sessions/{session_id}"), 404)
    assert (await api.client.get("/sessions")).json()["count"] == 0
    assert stored_session_ids(api.settings) == []
    assert_problem(await api.client.delete(f"/sessions/{session_id}"), 404)


# ----------------------------------------------------------------------- restart


async def test_restart_restores_sessions_on_the_same_ports(
    settings: Settings, echo: EchoServer
) -> None:
    fixed = free_port()
    async with running_api(settings) as api:
        a = (await api.create(name="a", ports=[f"0:{echo.port}", f"{fixed}:{echo.port}"])).json()
        b = (await api.create(ports=[f":{echo.port}"])).json()
        for session in (a, b):
            await api.wait_status(session["id"], "ready")
        before = (await api.client.get("/sessions")).json()
    ports = [p["local_port"] for s in (a, b) for p in s["ports"]]
    for port in ports:
        assert await refused("127.0.0.1", port), "the lifespan left a listener open"

    # A new app on the same database file.
    async with running_api(settings) as api:
        after = (await api.client.get("/sessions")).json()
        assert after["count"] == 2
        assert [s["id"] for s in after["data"]] == [a["id"], b["id"]]
        for old, new in zip(before["data"], after["data"], strict=True):
            for key in ("id", "name", "namespace", "target", "created_at", "ports", "forwarding"):
                assert new[key] == old[key], key
        for session in (a, b):
            ready = await api.wait_status(session["id"], "ready")
            assert ready["pod"] == "echo" and ready["transport"] == "websocket"
        for port in ports:
            for host in LOCALHOST:
                assert await exchange(host, port, b"back again") == b"back again"
        # The name is still taken by the same session.
        again = await api.create(name="a", ports=[f"0:{echo.port}", f"{fixed}:{echo.port}"])
        assert again.status_code == 200 and again.json()["id"] == a["id"]


# -------------------------------------------------------------------------- CORS


async def test_cors_preflight_and_simple_request_from_a_listed_origin(
    settings: Settings,
) -> None:
    origin = "http://frontend.example"
    async with running_api(settings.model_copy(update={"cors_origins": [origin]})) as api:
        preflight = await api.client.options(
            "/sessions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        methods = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST", "DELETE"} <= methods
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()

        simple = await api.client.get("/sessions", headers={"Origin": origin})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == origin


async def test_restart_with_a_port_taken_meanwhile(settings: Settings, echo: EchoServer) -> None:
    async with running_api(settings) as api:
        a = (await api.create(name="a", ports=[f"0:{echo.port}"])).json()
        b = (await api.create(name="b", ports=[f"0:{echo.port}"])).json()
        await api.wait_status(a["id"], "ready")
        await api.wait_status(b["id"], "ready")
    taken = a["ports"][0]["local_port"]

    with occupied(taken, *LOCALHOST):  # another program took a's port while we were down
        async with running_api(settings) as api:
            failed = await api.wait_status(a["id"], "failed")
            assert "cannot restore listeners" in failed["last_error"]
            assert f"local port {taken} is already in use" in failed["last_error"]
            # Still says what it forwards, and that it listens nowhere.
            assert failed["ports"] == [{**a["ports"][0], "addresses": []}]
            assert failed["forwarding"] == []
            # The other session is unaffected.
            assert (await api.wait_status(b["id"], "ready"))["ports"] == b["ports"]

    # Once the port is free again, the next start restores it on that same port.
    async with running_api(settings) as api:
        ready = await api.wait_status(a["id"], "ready")
        assert ready["ports"] == a["ports"] and ready["forwarding"] == a["forwarding"]
        assert await exchange("127.0.0.1", taken, b"mine again") == b"mine again"
