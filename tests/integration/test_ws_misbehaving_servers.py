"""podgate's WebSocket clients (`websocket`: SPDY in a WebSocket tunnel; `ws-channel`: a
v4 channel WebSocket per connection; `auto`) against servers that misbehave, driven
through the API of a real `podgate serve`. The server is tests/support/ws_apiserver.py:
`websockets` for the WebSocket layer, the Go spdystream server for the SPDY inside a
tunnel, a real echo server as the pod.

- In the middle of a session, a tunnel closed with a code other than 1000, or broken by a
  frame that violates RFC 6455 (a text message too), is noticed at once: the session
  says why in `last_error`, its connections are reset, it reconnects; another session's
  tunnel to the same server is untouched. A Close is answered with a Close.
- A channel WebSocket closed with a code other than 1000, broken by a frame that
  violates RFC 6455 or dropped without a Close ends that one connection with a reset
  (bytes may be missing: not a clean EOF), counted as an error; the other connections
  and the session go on.
- A failure inside the upgrade (no answer but FIN or RST, a cut-off 101, EOF right
  after the 101) is reported and retried; `auto` falls back to SPDY only where kubectl
  does: on a refused upgrade (here a 101 without the subprotocol), never on a broken
  connection or a TLS error. A server that never answers is bounded by the dial timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.runner.links import LinkHooks, dial_auto
from service.upstream import Cluster, TunnelRefused, UpstreamError
from tests.interop.build import build_spdyserver, run_spdyserver
from tests.support.echo import RoundTrip, roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    Gate,
    HostEcho,
    Podgate,
    api_client,
    create_session,
    explain_on_failure,
    gated_roundtrip,
    host_echo_server,
    run_serve,
    wait_for_session,
)
from tests.support.sse import HttpEventStream
from tests.support.tls import make_ca
from tests.support.ws_apiserver import WsApiServer, ws_apiserver

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000
WAIT = 20.0
#: The service's own default (a session may not ask for less than 1 s): retries come fast.
SETTINGS = {"max_backoff_seconds": "0.2"}

#: Faults in an open WebSocket, and what the client must say about each.
CLOSES = {"close:1011": "WebSocket closed with code 1011", "close:1001": "closed with code 1001"}
VIOLATIONS = {
    "opcode-3": "WebSocket protocol error: Invalid opcode 0x3",
    "close-1005": "WebSocket protocol error: remote CLOSE with local-only reason",
    "ping-126": "WebSocket protocol error: Control frame with payload len > 125",
    "masked": "WebSocket protocol error: client received unexpected masked frame",
    "rsv1": "WebSocket protocol error: Reserved bit set unexpectedly",
}
TUNNEL_FAULTS = {**CLOSES, "text": "WebSocket protocol error: invalid message type", **VIOLATIONS}
CHANNEL_FAULTS = {
    **CLOSES,
    **VIOLATIONS,
    "abort": "closed the connection without a WebSocket Close",
}


@dataclass
class Rig:
    echo: HostEcho
    server: WsApiServer
    serve: Podgate
    api: httpx.Client
    created: list[str] = field(default_factory=list)  # session ids, deleted after each test


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    build_spdyserver()
    tmp = tmp_path_factory.mktemp("ws-misbehaving")
    with (
        host_echo_server() as echo,
        run_spdyserver() as go,
        ws_apiserver((go.host, go.port)) as server,
        run_serve(
            tmp / "data", write_kubeconfig(tmp / "kubeconfig", server.url), settings=SETTINGS
        ) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process, go.process),
    ):
        yield Rig(echo, server, serve, api)


@pytest.fixture(autouse=True)
def _delete_sessions(rig: Rig) -> Iterator[None]:
    """A session left behind would go on dialling the stand-in (and fill its log)."""
    yield
    while rig.created:
        assert rig.api.delete(f"/sessions/{rig.created.pop()}").status_code in (204, 404)


def _session(rig: Rig, pod: str, transport: str) -> dict[str, Any]:
    session = create_session(
        rig.api, target=f"pod/{pod}", ports=[f"0:{rig.echo.port}"], transport=transport
    )
    rig.created.append(session["id"])
    return session


def _events(rig: Rig) -> HttpEventStream:
    """Every session's events from now on (open it before creating the session)."""
    return HttpEventStream(rig.serve.url, "/events")


def _status(session: dict[str, Any], new: str) -> Any:
    return lambda e: e.is_status(session["id"], new)


def _transitions(events: HttpEventStream, session: dict[str, Any]) -> list[str]:
    return [e.data["new"] for e in events.events if e.is_status(session["id"])]


def _start(pool: ThreadPoolExecutor, port: int) -> tuple[Gate, Future[RoundTrip]]:
    gate = Gate()
    transfer = pool.submit(gated_roundtrip, "127.0.0.1", port, os.urandom(2 * MB), gate)
    assert gate.started.wait(WAIT), "the transfer did not get going"
    return gate, transfer


def _local(session: dict[str, Any]) -> int:
    return int(session["ports"][0]["local_port"])


def _idle_connection(port: int) -> socket.socket:
    """A connection that echoed 1 MB and now waits, with nothing unread on either side."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    payload = os.urandom(MB)
    sock.sendall(payload)
    echoed = bytearray()
    while len(echoed) < len(payload):
        chunk = sock.recv(len(payload) - len(echoed))
        assert chunk, f"EOF after {len(echoed)} echoed bytes"
        echoed += chunk
    assert echoed == payload
    return sock


def _ending(sock: socket.socket) -> str:
    """How the connection ends for its client: a reset is how it learns bytes may be
    missing; a clean EOF would say the pod ended it."""
    with sock:
        try:
            data = sock.recv(1)
        except ConnectionResetError:
            return "reset"
    return "EOF" if data == b"" else f"more data {data!r}"


# --------------------------------------------------------------------------- tunnel


@pytest.mark.parametrize("fault", list(TUNNEL_FAULTS))
def test_a_broken_tunnel_is_reported_and_redialled_and_spares_other_sessions(
    rig: Rig, fault: str
) -> None:
    name = fault.replace(":", "-")
    with _events(rig) as events:
        broken = _session(rig, f"a-{name}", "websocket")
        other = _session(rig, f"b-{name}", "websocket")
        events.wait_for(_status(broken, "ready"), WAIT, "ready")
        events.wait_for(_status(other, "ready"), WAIT, "the other session ready")
        idle = _idle_connection(_local(broken))
        with ThreadPoolExecutor(max_workers=1) as pool:
            other_gate, other_transfer = _start(pool, _local(other))
            tunnel = rig.server.break_tunnel(f"a-{name}", fault)
            lost = events.wait_for(_status(broken, "reconnecting"), WAIT, "reconnecting")
            assert _ending(idle) == "reset"
            other_gate.release.set()
            assert other_transfer.result(timeout=WAIT).intact, "the other session was hit"
        assert TUNNEL_FAULTS[fault] in lost.data["last_error"], lost.data
        if fault.startswith("close:"):  # the closing handshake is answered, same code
            assert tunnel.close_received is not None, "the server's Close was not answered"
            assert tunnel.close_received.code == int(fault.removeprefix("close:"))

        events.wait_for(_status(broken, "ready"), WAIT, "ready again")
        assert roundtrip("127.0.0.1", _local(broken), os.urandom(MB), timeout=WAIT).intact
        assert _transitions(events, other) == ["ready"]
    after = rig.api.get(f"/sessions/{broken['id']}").json()
    assert (after["status"], after["transport"], after["reconnects"]) == ("ready", "websocket", 1)
    untouched = rig.api.get(f"/sessions/{other['id']}").json()
    assert (untouched["status"], untouched["reconnects"], untouched["last_error"]) == (
        "ready",
        0,
        None,
    )


# --------------------------------------------------------------------------- ws-channel


@pytest.mark.parametrize("fault", list(CHANNEL_FAULTS))
def test_a_broken_channel_ends_its_connection_only_and_counts_an_error(
    rig: Rig, fault: str
) -> None:
    pod = f"c-{fault.replace(':', '-')}"
    with _events(rig) as events:
        session = _session(rig, pod, "ws-channel")
        sid, local = session["id"], _local(session)
        events.wait_for(_status(session, "ready"), WAIT, "ready")
        idle = _idle_connection(local)
        [channel] = [s for s in rig.server.wait_sockets("channel", 1) if s.pod == pod]
        with ThreadPoolExecutor(max_workers=1) as pool:
            gate, transfer = _start(pool, local)
            rig.server.break_socket(channel, fault)
            error = events.wait_for(
                lambda e: e.event == "connection_error" and e.data["session_id"] == sid, WAIT
            )
            assert _ending(idle) == "reset"
            gate.release.set()
            assert transfer.result(timeout=WAIT).intact, "another connection was hit"
        assert CHANNEL_FAULTS[fault] in error.data["text"], error.data
        if fault.startswith("close:"):
            assert channel.close_received is not None, "the server's Close was not answered"
            assert channel.close_received.code == int(fault.removeprefix("close:"))
        after = wait_for_session(
            rig.api, sid, lambda s: s["connections_active"] == 0, timeout=WAIT, what="all ended"
        )
        assert (after["status"], after["reconnects"]) == ("ready", 0)
        assert (after["connections_total"], after["connection_errors"]) == (2, 1)
        assert CHANNEL_FAULTS[fault] in after["last_error"]
        assert roundtrip("127.0.0.1", local, os.urandom(MB), timeout=WAIT).intact
        assert _transitions(events, session) == ["ready"]


# --------------------------------------------------------------------------- the upgrade

#: A failure inside the upgrade, and what `last_error` must say (tunnel, channel).
UPGRADE_FAULTS = {
    "close-at-upgrade": ("closed the connection before answering the WebSocket upgrade",) * 2,
    "reset-at-upgrade": ("closed the connection before answering the WebSocket upgrade",) * 2,
    "truncated-101": ("closed the connection before finishing its answer to the WebSocket",) * 2,
    "eof-after-101": (
        "upstream closed the connection",
        "upstream closed the connection without a WebSocket Close",
    ),
}


def _upgrades(rig: Rig, pod: str, method: str = "UPGRADE") -> int:
    path = f"/api/v1/namespaces/default/pods/{pod}/portforward"
    return sum(1 for r in rig.server.requests if r.startswith(f"{method} {path}"))


@pytest.mark.parametrize("transport", ["websocket", "auto"])
@pytest.mark.parametrize("fault", list(UPGRADE_FAULTS))
def test_a_tunnel_upgrade_that_breaks_is_reported_and_retried(
    rig: Rig, fault: str, transport: str
) -> None:
    before = _upgrades(rig, fault)
    session = _session(rig, fault, transport)
    sid = session["id"]
    seen = wait_for_session(
        rig.api,
        sid,
        lambda s: s["last_error"] is not None and _upgrades(rig, fault) >= before + 3,
        timeout=WAIT,
        what="an error reported and three upgrades tried",
    )
    # Never ready, but for an instant after a complete 101 (then the connection ended).
    assert seen["status"] == "pending" or fault == "eof-after-101", seen
    assert UPGRADE_FAULTS[fault][0] in seen["last_error"], seen["last_error"]
    if fault != "eof-after-101":  # that one is a lost link, not a failed dial
        assert rig.server.url in seen["last_error"]
    # kubectl falls back to SPDY on a refused upgrade only, never on a broken connection.
    assert _upgrades(rig, fault, "POST") == 0


def test_a_tunnel_101_without_the_subprotocol_is_a_refusal(rig: Rig) -> None:
    """`auto` falls back to SPDY (to the same Go server) and forwards; `websocket` fails."""

    def tries() -> tuple[int, int]:
        upgrades, posts = _upgrades(rig, "no-subprotocol"), _upgrades(rig, "no-subprotocol", "POST")
        return upgrades - before[0], posts - before[1]

    before = (0, 0)
    before = tries()
    fallback = _session(rig, "no-subprotocol", "auto")
    ready = wait_for_session(
        rig.api, fallback["id"], lambda s: s["status"] == "ready", timeout=WAIT, what="ready"
    )
    assert ready["transport"] == "spdy"
    assert tries() == (1, 1)
    assert roundtrip("127.0.0.1", _local(ready), os.urandom(MB), timeout=WAIT).intact

    strict = _session(rig, "no-subprotocol", "websocket")
    failed = wait_for_session(
        rig.api, strict["id"], lambda s: s["status"] == "failed", timeout=WAIT, what="failed"
    )
    assert "WebSocket upgrade" in failed["last_error"], failed["last_error"]
    assert "subprotocol" in failed["last_error"], failed["last_error"]
    assert tries() == (2, 1)  # no fallback for `websocket`


@pytest.mark.parametrize("fault", list(UPGRADE_FAULTS))
def test_a_channel_upgrade_that_breaks_fails_that_connection_only(rig: Rig, fault: str) -> None:
    before = _upgrades(rig, fault)
    session = _session(rig, fault, "ws-channel")
    sid, local = session["id"], _local(session)
    wait_for_session(rig.api, sid, lambda s: s["status"] == "ready", timeout=WAIT, what="ready")
    for attempt in (1, 2):  # every connection dials again
        with contextlib.suppress(ConnectionResetError):  # a reset is as good as EOF
            assert roundtrip("127.0.0.1", local, b"", timeout=WAIT).received == b""
        after = wait_for_session(
            rig.api,
            sid,
            lambda s, n=attempt: s["connection_errors"] == n and s["connections_active"] == 0,
            timeout=WAIT,
            what=f"{attempt} connection error(s)",
        )
        assert after["status"] == "ready"
        assert UPGRADE_FAULTS[fault][1] in after["last_error"], after["last_error"]
    assert _upgrades(rig, fault) == before + 2


def test_a_channel_101_without_a_subprotocol_is_binary_framing(rig: Rig) -> None:
    session = _session(rig, "no-subprotocol", "ws-channel")
    wait_for_session(rig.api, session["id"], lambda s: s["status"] == "ready", timeout=WAIT)
    assert roundtrip("127.0.0.1", _local(session), os.urandom(MB), timeout=WAIT).intact


@pytest.mark.parametrize("dial", ["tunnel", "channel"])
async def test_a_server_that_never_answers_the_upgrade_is_bounded_by_the_dial_timeout(
    rig: Rig, tmp_path: Path, dial: str
) -> None:
    cluster = await Cluster.load(str(write_kubeconfig(tmp_path / "kubeconfig", rig.server.url)))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            if dial == "tunnel":
                await cluster.upgrade_tunnel("default", "silent-at-upgrade", timeout=1.0)
            else:
                await cluster.open_channel("default", "silent-at-upgrade", [7000], timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        await cluster.close()
    assert 1.0 <= elapsed < 5, elapsed
    assert not isinstance(caught.value, TunnelRefused)  # `auto` would not fall back on it
    assert caught.value.retryable and caught.value.status is None
    assert "timed out waiting for the WebSocket upgrade response" in str(caught.value)
    assert rig.server.url in str(caught.value)


async def test_auto_does_not_fall_back_on_a_tls_error(tmp_path: Path) -> None:
    """A server whose certificate the kubeconfig's CA did not sign: the tunnel dial fails
    on the TLS handshake and `auto` stops there (no second connection for SPDY)."""
    server_cert = make_ca(tmp_path / "ca").issue(tmp_path / "server", "server")
    other_ca = make_ca(tmp_path / "other-ca", "some-other-ca")
    accepted = 0  # TCP connections, counted before their TLS handshake

    async def tls_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.start_tls(server_cert.server_context())  # fails: not trusted
        writer.close()

    server = await asyncio.start_server(tls_server, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, certificate_authority=other_ca.cert)
    cluster = await Cluster.load(str(kubeconfig))
    hooks = LinkHooks(on_lost=lambda *_: None, on_connection_error=lambda *_: None)
    try:
        with pytest.raises(UpstreamError) as caught:
            await dial_auto(cluster, "default", "echo", hooks)
    finally:
        await cluster.close()
        server.close()
    assert not isinstance(caught.value, TunnelRefused)
    assert "certificate verification failed" in str(caught.value), caught.value
    assert accepted == 1, accepted  # the tunnel's dial only: no SPDY dial after it
