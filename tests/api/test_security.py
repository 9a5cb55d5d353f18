"""Issue 11, "closed by default", through the ASGI app with its real lifespan, store and
(in-process) agent: bearer tokens from a token file and whose sessions a caller sees, the
request guard (Host, Origin, body size), the listen policy, the limits and the target
validation. Each refusal is checked for its problem+json answer *and* for what it must
not have done (nothing stored, nothing bound, nothing created).

The real-process side (start-up checks, slow clients, descriptors, RSS) is in
tests/integration/test_serve_security.py, `--auth kubernetes` against a real API server in
tests/cluster/test_auth_kubernetes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.api.conftest import WAIT, Api, port_free, running_api
from tests.api.test_sessions_api import closed_without_data
from tests.support.echo import EchoServer
from tests.support.sse import AsgiEventStream

pytestmark = pytest.mark.timeout(60)

PROBLEM_JSON = "application/problem+json"
#: Two users and an admin, in kube-apiserver's static token format (comments allowed).
TOKENS = """# token,user,uid[,"group1,group2"]
alice-token,alice,uid-alice
bob-token,bob,uid-bob,"testers"
root-token,root,uid-root,"ops,podgate:admin"
"""
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}
ROOT = {"Authorization": "Bearer root-token"}


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status and problem["title"], problem
    for fragment in fragments:
        assert fragment in problem["detail"], problem
    return problem


async def session_count(api: Api, headers: dict[str, str] | None = None) -> int:
    response = await api.client.get("/sessions", headers=headers or {})
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------ tokens


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.csv"
    path.write_text(TOKENS)
    return path


@pytest.fixture
async def secured(settings: Settings, token_file: Path) -> AsyncIterator[Api]:
    async with running_api(settings.model_copy(update={"token_file": token_file})) as api:
        yield api


ROUTES = [
    ("GET", "/sessions"),
    ("POST", "/sessions"),
    ("GET", "/sessions/0123456789abcdef0123456789abcdef"),
    ("DELETE", "/sessions/0123456789abcdef0123456789abcdef"),
    ("GET", "/events"),
    ("GET", "/sessions/0123456789abcdef0123456789abcdef/events"),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Bearer ", "Basic YWxpY2U6YWxpY2UtdG9rZW4=", "alice-token"],
)
async def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    secured: Api, echo: EchoServer, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"namespace": "default", "target": "pod/echo", "ports": [f"0:{echo.port}"]}
    for method, path in ROUTES:
        response = await secured.client.request(
            method, path, headers=headers, json=body if method == "POST" else None
        )
        assert_problem(response, 401, "bearer token")
        assert response.headers["www-authenticate"].startswith("Bearer "), response.headers
    # Nothing was created by the refused POST; liveness needs no token (HEALTHCHECK).
    assert await session_count(secured, ROOT) == 0
    assert (await secured.client.get("/healthz")).status_code == 200


async def test_callers_read_and_delete_only_their_own_sessions(
    secured: Api, echo: EchoServer
) -> None:
    async def create(headers: dict[str, str], **body: Any) -> dict[str, Any]:
        body = {"namespace": "default", "target": "pod/echo", "ports": [f"0:{echo.port}"], **body}
        response = await secured.client.post("/sessions", json=body, headers=headers)
        assert response.status_code == 201, response.text
        session: dict[str, Any] = response.json()
        return session

    mine = await create(ALICE, name="web")
    theirs = await create(BOB, name="web")  # names are unique per owner
    assert (mine["owner"], theirs["owner"]) == ("alice", "bob")
    assert mine["id"] != theirs["id"]
    # The same name and spec again is alice's own session (idempotent per owner).
    again = await secured.client.post(
        "/sessions",
        json={"target": "pod/echo", "ports": [f"0:{echo.port}"], "name": "web"},
        headers=ALICE,
    )
    assert (again.status_code, again.json()["id"]) == (200, mine["id"])

    listed = (await secured.client.get("/sessions", headers=ALICE)).json()
    assert [s["id"] for s in listed["data"]] == [mine["id"]] and listed["count"] == 1
    for method, path in [
        ("GET", f"/sessions/{theirs['id']}"),
        ("DELETE", f"/sessions/{theirs['id']}"),
        ("GET", f"/sessions/{theirs['id']}/events"),
    ]:
        # Another caller's session does not exist for alice: 404, not 403 (no oracle).
        assert_problem(await secured.client.request(method, path, headers=ALICE), 404)
    assert (await secured.client.get(f"/sessions/{theirs['id']}", headers=BOB)).status_code == 200

    # podgate:admin sees, reads and deletes every session.
    everything = (await secured.client.get("/sessions", headers=ROOT)).json()
    assert {s["id"]: s["owner"] for s in everything["data"]} == {
        mine["id"]: "alice",
        theirs["id"]: "bob",
    }
    assert (await secured.client.get(f"/sessions/{mine['id']}", headers=ROOT)).status_code == 200
    deleted = await secured.client.delete(f"/sessions/{theirs['id']}", headers=ROOT)
    assert deleted.status_code == 204
    assert (await secured.client.get(f"/sessions/{theirs['id']}", headers=BOB)).status_code == 404
    assert await session_count(secured, BOB) == 0
    assert (
        await secured.client.delete(f"/sessions/{mine['id']}", headers=ALICE)
    ).status_code == 204


async def test_event_streams_carry_only_the_callers_sessions(
    secured: Api, echo: EchoServer
) -> None:
    body = {"namespace": "default", "target": "pod/echo", "ports": [f"0:{echo.port}"]}
    async with (
        AsgiEventStream(secured.app, "/events", ALICE) as alice_stream,
        AsgiEventStream(secured.app, "/events", ROOT) as root_stream,
    ):
        bobs = (await secured.client.post("/sessions", json=body, headers=BOB)).json()
        alices = (await secured.client.post("/sessions", json=body, headers=ALICE)).json()
        first = await alice_stream.next(WAIT)
        assert (first.event, first.data["session_id"]) == ("created", alices["id"])
        # Root's stream has both; once it has seen bob's deletion, alice's has had the
        # time to get it too, and must not have.
        assert (
            await secured.client.delete(f"/sessions/{bobs['id']}", headers=BOB)
        ).status_code == 204
        await root_stream.wait_for(lambda e: e.event == "deleted", WAIT)
        seen = {e.data.get("session_id") for e in root_stream.events}
        assert {alices["id"], bobs["id"]} <= seen
    assert bobs["id"] not in {e.data.get("session_id") for e in alice_stream.events}
    assert all(e.data.get("session_id") == alices["id"] for e in alice_stream.events)

    # A replay (Last-Event-ID) is filtered the same way.
    before_all = min(int(e.id) for e in root_stream.events if e.id is not None) - 1
    async with AsgiEventStream(secured.app, f"/events?last_event_id={before_all}", ALICE) as replay:
        await replay.wait_for(lambda e: e.event == "created", WAIT)
        async with AsgiEventStream(
            secured.app, f"/events?last_event_id={before_all}", BOB
        ) as bob_replay:
            await bob_replay.wait_for(lambda e: e.event == "deleted", WAIT)
    assert {e.data["session_id"] for e in replay.events} == {alices["id"]}
    assert {e.data["session_id"] for e in bob_replay.events} == {bobs["id"]}
    # And one session's stream of another owner's session does not exist for alice.
    response = await secured.client.get(f"/sessions/{alices['id']}/events", headers=BOB)
    assert_problem(response, 404)


# ------------------------------------------------------------------------ the guard


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",  # DNS rebinding: evil.example now resolves to 127.0.0.1
        "localhost.evil.example",
        "127.0.0.1.nip.io:8080",
        "127.0.0.2",
        "[::2]:8080",
        "",
    ],
)
async def test_a_host_not_allowed_is_421_and_nothing_is_done(
    api: Api, echo: EchoServer, host: str
) -> None:
    body = {"target": "pod/echo", "ports": [f"0:{echo.port}"]}
    for method, path in [("POST", "/sessions"), ("GET", "/sessions"), ("GET", "/healthz")]:
        response = await api.client.request(
            method, path, headers={"Host": host}, json=body if method == "POST" else None
        )
        assert_problem(response, 421, "--allowed-host")
    assert await session_count(api) == 0


async def test_the_hosts_that_are_allowed(settings: Settings) -> None:
    allowed = settings.model_copy(update={"allowed_hosts": ["podgate.internal"]})
    async with running_api(allowed) as api:
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:8080",
            "podgate.internal:443",
        ]:
            response = await api.client.get("/healthz", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        assert_problem(await api.client.get("/healthz", headers={"Host": "other.internal"}), 421)


async def test_a_foreign_origin_is_403_and_nothing_is_created(api: Api, echo: EchoServer) -> None:
    body = f'{{"target": "pod/echo", "ports": ["0:{echo.port}"]}}'
    for origin in ["http://evil.example", "null", "http://localhost:3000", "https://localhost"]:
        for content_type in ["application/json", "text/plain"]:  # text/plain: no preflight
            response = await api.client.post(
                "/sessions",
                content=body,
                headers={"Origin": origin, "Content-Type": content_type},
            )
            assert_problem(response, 403, f'origin "{origin}"', "--cors-origin")
            assert not any(h.startswith("access-control-") for h in response.headers)
        assert_problem(await api.client.get("/sessions", headers={"Origin": origin}), 403)
    assert await session_count(api) == 0
    # The API's own origin (a page it served) is not cross-site.
    same = await api.client.post(
        "/sessions",
        content=body,
        headers={"Origin": "http://localhost", "Content-Type": "application/json"},
    )
    assert same.status_code == 201, same.text


async def test_a_preflight_from_an_unlisted_origin_gets_no_cors_headers(settings: Settings) -> None:
    listed = "http://frontend.example:3000"
    async with running_api(settings.model_copy(update={"cors_origins": [listed]})) as api:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        }
        for origin in [
            "http://evil.example",
            "http://frontend.example",
            "http://frontend.example:3001",
        ]:
            response = await api.client.options(
                "/sessions", headers={"Origin": origin, **preflight}
            )
            assert response.status_code == 403
            assert not [h for h in response.headers if h.startswith("access-control-")], (
                response.headers
            )


async def test_a_listed_origin_works_with_preflight_and_request(
    settings: Settings, echo: EchoServer
) -> None:
    origin = "http://frontend.example:3000"
    async with running_api(settings.model_copy(update={"cors_origins": [origin]})) as api:
        preflight = await api.client.options(
            "/sessions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "DELETE" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "authorization"
        created = await api.client.post(
            "/sessions",
            json={"target": "pod/echo", "ports": [f"0:{echo.port}"]},
            headers={"Origin": origin},
        )
        assert created.status_code == 201, created.text
        assert created.headers["access-control-allow-origin"] == origin
        assert "Origin" in created.headers["vary"]
        deleted = await api.client.delete(
            f"/sessions/{created.json()['id']}", headers={"Origin": origin}
        )
        assert deleted.status_code == 204
        assert deleted.headers["access-control-allow-origin"] == origin


class CountingBody:
    """A request body of `total` bytes in 64 KiB chunks that counts what was pulled."""

    CHUNK = 64 * 1024

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += self.CHUNK
            yield b"x" * self.CHUNK


async def test_a_body_over_1_mib_is_413_before_it_is_read(api: Api) -> None:
    mib = 1 << 20
    # By Content-Length: refused on the head (the body is never asked for).
    declared = await api.client.post(
        "/sessions", content=b"{}", headers={"Content-Length": str(100 * mib)}
    )
    assert_problem(declared, 413, f"larger than {mib} bytes")
    assert declared.headers["connection"] == "close"
    # Chunked (no Content-Length): refused once past 1 MiB, the rest never pulled.
    body = CountingBody(100 * mib)
    chunked = await api.client.post("/sessions", content=body)
    assert_problem(chunked, 413, f"larger than {mib} bytes")
    assert mib < body.pulled <= mib + 2 * CountingBody.CHUNK, body.pulled
    # A body of exactly the limit is read (and refused for what it says).
    exact = await api.client.post(
        "/sessions", content=b" " * (mib - 2) + b"{}", headers={"Content-Type": "application/json"}
    )
    assert exact.status_code == 422, exact.text
    assert await session_count(api) == 0


async def test_405_allows_every_method_of_the_path(api: Api) -> None:
    for method, path, allow in [
        ("PUT", "/sessions", "GET, POST"),
        ("PATCH", "/sessions/abc", "DELETE, GET"),
        ("POST", "/sessions/abc/events", "GET"),
        ("DELETE", "/healthz", "GET"),
    ]:
        response = await api.client.request(method, path)
        assert_problem(response, 405, method)
        assert response.headers["allow"] == allow, (method, path, response.headers)


# ------------------------------------------------------------------------ listen policy


async def test_listening_beyond_loopback_needs_listen_address(
    settings: Settings, echo: EchoServer
) -> None:
    body = {"target": "pod/echo", "ports": [f"0:{echo.port}"]}
    async with running_api(settings) as api:
        for addresses in (
            ["0.0.0.0"],
            ["::"],
            ["192.0.2.2"],
            ["localhost", "10.1.2.3"],
            # Other spellings of "everywhere" and of a LAN address.
            ["0:0:0:0:0:0:0:0"],
            ["::ffff:0.0.0.0"],
            ["::ffff:192.0.2.2"],
        ):
            before = open_fds()
            response = await api.create(**body, addresses=addresses)
            assert_problem(response, 403, "is not allowed", "--listen-address")
            assert open_fds() == before  # nothing was bound, not even for a moment
        assert await session_count(api) == 0
    async with running_api(settings.model_copy(update={"listen_addresses": ["0.0.0.0"]})) as api:
        created = await api.create(**body, addresses=["0.0.0.0"])
        assert created.status_code == 201, created.text
        assert created.json()["ports"][0]["addresses"] == ["0.0.0.0"]
        assert_problem(await api.create(**body, addresses=["::"]), 403, "--listen-address ::")


async def test_restored_sessions_obey_the_policy_of_the_new_start(
    settings: Settings, echo: EchoServer
) -> None:
    """A session created while 0.0.0.0 was allowed is not bound there after a restart
    without --listen-address: it is failed, with the reason."""
    wide = settings.model_copy(update={"listen_addresses": ["0.0.0.0"]})
    async with running_api(wide) as api:
        created = await api.create(ports=[f"0:{echo.port}"], addresses=["0.0.0.0"])
        assert created.status_code == 201, created.text
        sid, local = created.json()["id"], created.json()["ports"][0]["local_port"]
    async with running_api(settings) as api:
        session = (await api.client.get(f"/sessions/{sid}")).json()
        assert session["status"] == "failed", session
        assert "cannot restore listeners" in session["last_error"]
        assert "--listen-address 0.0.0.0" in session["last_error"]
        assert session["ports"][0]["addresses"] == []
        assert port_free(local, "0.0.0.0")


def free_privileged_port() -> int:
    """A port below 1024 free on 127.0.0.1 and ::1 (the tests run as root)."""
    for port in range(1000, 700, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port_free(port):
                return port
    raise RuntimeError("no port below 1024 is free on 127.0.0.1 and ::1")


async def test_privileged_local_ports_need_the_flag(settings: Settings, echo: EchoServer) -> None:
    port = free_privileged_port()
    async with running_api(settings) as api:
        response = await api.create(ports=[f"{port}:{echo.port}"])
        assert_problem(response, 403, f"local port {port}", "--allow-privileged-ports")
        assert port_free(port, "127.0.0.1") and port_free(port, "::1")
        # Port 0 (the kernel picks) and ports from 1024 on need nothing.
        assert (await api.create(ports=[f"0:{echo.port}"])).status_code == 201
    async with running_api(settings.model_copy(update={"allow_privileged_ports": True})) as api:
        created = await api.create(ports=[f"{port}:{echo.port}"])
        assert created.status_code == 201, created.text
        assert created.json()["ports"][0]["local_port"] == port


async def test_multicast_and_broadcast_are_refused_even_when_listed(
    settings: Settings, echo: EchoServer
) -> None:
    bad = ["224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255"]
    async with running_api(settings.model_copy(update={"listen_addresses": bad})) as api:
        for address in bad:
            response = await api.create(ports=[f"0:{echo.port}"], addresses=[address])
            assert_problem(response, 422, address, "not a unicast address")
        assert await session_count(api) == 0


# ------------------------------------------------------------------------ limits


async def test_max_sessions_is_429(settings: Settings, echo: EchoServer) -> None:
    async with running_api(settings.model_copy(update={"max_sessions": 2})) as api:
        first = await api.create(ports=[f"0:{echo.port}"], name="one")
        assert first.status_code == 201
        assert (await api.create(ports=[f"0:{echo.port}"])).status_code == 201
        assert_problem(await api.create(ports=[f"0:{echo.port}"]), 429, "--max-sessions")
        # Creating again what exists is not a new session.
        assert (await api.create(ports=[f"0:{echo.port}"], name="one")).status_code == 200
        assert await session_count(api) == 2
        assert (await api.client.delete(f"/sessions/{first.json()['id']}")).status_code == 204
        assert (await api.create(ports=[f"0:{echo.port}"])).status_code == 201


async def test_the_1024_listener_post_is_refused_before_binding(
    settings: Settings, echo: EchoServer
) -> None:
    """The issue's attack: 64 ports x 16 addresses in one POST bound 1,024 listeners."""
    many = settings.model_copy(update={"listen_addresses": [f"127.0.0.{i}" for i in range(2, 18)]})
    async with running_api(many) as api:
        before = open_fds()
        response = await api.create(
            ports=[f"0:{echo.port}"] * 64, addresses=[f"127.0.0.{i}" for i in range(2, 18)]
        )
        assert_problem(response, 422, "1024 listeners", "at most 64", "--max-listeners-per-session")
        assert open_fds() == before
        # localhost is two listeners per port: 32 ports are the most.
        assert (await api.create(ports=[f"0:{echo.port}"] * 32)).status_code == 201
        assert_problem(await api.create(ports=[f"0:{echo.port}"] * 33), 422, "66 listeners")
    async with running_api(settings.model_copy(update={"max_listeners_per_session": 3})) as api:
        assert_problem(await api.create(ports=[f"0:{echo.port}"] * 2), 422, "4 listeners")
        assert await session_count(api) == 1  # the one of 32 ports, restored


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bool:
    writer.write(data)
    async with asyncio.timeout(WAIT):
        await writer.drain()
        return await reader.readexactly(len(data)) == data


async def test_connections_over_the_limit_are_closed_and_counted(
    settings: Settings, echo: EchoServer
) -> None:
    async with running_api(settings.model_copy(update={"max_connections_per_session": 2})) as api:
        created = (await api.create(ports=[f"0:{echo.port}", f"0:{echo.port}"])).json()
        sid, first, second = created["id"], *(p["local_port"] for p in created["ports"])
        await api.wait_status(sid, "ready")
        async with connection(first) as one, connection(second) as two:
            assert await echoes(*one, b"one") and await echoes(*two, b"two")
            # Both ports share the session's limit: these are accepted, then closed at once.
            assert await closed_without_data("127.0.0.1", first)
            assert await closed_without_data("::1", second)
            assert await closed_without_data("127.0.0.1", second)
            session = (await api.client.get(f"/sessions/{sid}")).json()
            assert (session["connections_refused"], session["connections_active"]) == (3, 2)
            assert [p["counters"]["connections_refused"] for p in session["ports"]] == [1, 2]
            assert await echoes(*one, b"still forwarded")

        # The limit is on open connections: once they are closed, new ones are forwarded.
        async def forwarded() -> bool:
            async with connection(first) as again:
                try:
                    return await echoes(*again, b"again")
                except (asyncio.IncompleteReadError, ConnectionResetError):
                    return False  # refused: the closes have not reached the session yet

        deadline = asyncio.get_running_loop().time() + WAIT
        while not await forwarded():  # the two closes reach the session asynchronously
            assert asyncio.get_running_loop().time() < deadline, "never forwarded again"
        session = (await api.client.get(f"/sessions/{sid}")).json()
        assert session["connections_refused"] >= 3


async def test_max_event_subscribers_is_429(settings: Settings) -> None:
    async with running_api(settings.model_copy(update={"max_event_subscribers": 2})) as api:
        async with AsgiEventStream(api.app, "/events"), AsgiEventStream(api.app, "/events"):
            response = await api.client.get("/events")
            assert_problem(response, 429, "--max-event-subscribers")
            assert response.headers["retry-after"] == "5"
        async with AsgiEventStream(api.app, "/events") as stream:
            assert stream.status == 200


async def test_floors_of_the_timing_knobs(api: Api, echo: EchoServer) -> None:
    for bad, field in [
        ({"keepalive_seconds": 0.999}, "keepalive_seconds"),
        ({"reconnect": {"max_backoff_seconds": 0.999}}, "reconnect.max_backoff_seconds"),
        ({"connect_wait_seconds": -0.001}, "connect_wait_seconds"),
        ({"ttl_seconds": 0.999}, "ttl_seconds"),
        ({"idle_timeout_seconds": 0}, "idle_timeout_seconds"),
    ]:
        assert_problem(await api.create(ports=[f"0:{echo.port}"], **bad), 422, field)
    assert await session_count(api) == 0
    floors = {
        "keepalive_seconds": 1,
        "reconnect": {"max_backoff_seconds": 1},
        "connect_wait_seconds": 0,
        "ttl_seconds": 1,
        "idle_timeout_seconds": 1,
    }
    created = await api.create(ports=[f"0:{echo.port}"], **floors)
    assert created.status_code == 201, created.text


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", "pod/\u0661\u0662\u0663"),  # Arabic-Indic digits: str.isdigit() is True
        ("target", "pod/echo\u00b2"),
        ("target", "pod/\uff45cho"),  # fullwidth e
        ("target", "pod/ech\u200bo"),  # zero-width space
        ("target", " pod/echo"),
        ("target", "pod/echo\n"),
        ("target", "pod/echo\t"),
        ("namespace", "\u0661\u0662\u0663"),
        ("namespace", "d\u0435fault"),  # Cyrillic e
        ("namespace", " default"),
        ("namespace", "default\n"),
        ("namespace", "Default"),
        ("name", "web\n"),
        ("name", "w\u0435b"),
    ],
)
async def test_names_are_ascii_dns_1123_and_unstripped(
    api: Api, echo: EchoServer, field: str, value: str
) -> None:
    body = {"namespace": "default", "target": "pod/echo", "ports": [f"0:{echo.port}"]}
    response = await api.client.post("/sessions", json={**body, field: value})
    problem = assert_problem(response, 422)
    assert field in problem["detail"] or "whitespace" in problem["detail"], problem
    assert await session_count(api) == 0
