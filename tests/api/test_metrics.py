"""`GET /metrics`: the Prometheus text exposition, parsed with prometheus-client's own
parser and checked against `GET /sessions/{id}` after real traffic through a session (a
real app, a real agent, a real echo server)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from tests.api.conftest import WAIT, Api, running_api
from tests.api.test_sessions_api import exchange
from tests.support.echo import EchoServer


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _scrape(api: Api, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(response.text)


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def _settled(api: Api, sid: str) -> dict[str, Any]:
    """The session once every connection of the exchanges has ended."""
    deadline = time.monotonic() + WAIT
    while True:
        session: dict[str, Any] = (await api.client.get(f"/sessions/{sid}")).json()
        if session["connections_active"] == 0 and session["connections_total"] == 3:
            return session
        assert time.monotonic() < deadline, session
        await asyncio.sleep(0.02)


async def test_metrics_match_the_sessions_counters(api: Api, echo: EchoServer) -> None:
    created = (await api.create(name="web", ports=[f"0:{echo.port}", f"0:{echo.port}"])).json()
    sid = created["id"]
    first, second = (p["local_port"] for p in created["ports"])
    await api.wait_status(sid, "ready")
    for port, payload in ((first, b"a" * 3000), (first, b"b" * 5000), (second, b"c" * 7000)):
        assert await exchange("127.0.0.1", port, payload) == payload
    session = await _settled(api, sid)

    samples = await _scrape(api)
    web = _labels(name="web", namespace="default")
    for metric, field in (
        ("podgate_session_bytes_in_total", "bytes_in"),
        ("podgate_session_bytes_out_total", "bytes_out"),
        ("podgate_session_connections_total", "connections_total"),
        ("podgate_session_connection_errors_total", "connection_errors"),
        ("podgate_session_connections_refused_total", "connections_refused"),
        ("podgate_session_connections_active", "connections_active"),
        ("podgate_session_reconnects_total", "reconnects"),
    ):
        assert samples[(metric, web)] == session[field], metric
    for port in session["ports"]:
        labels = _labels(
            name="web",
            namespace="default",
            port=str(port["local_port"]),
            remote=str(port["remote_port"]),
        )
        assert samples[("podgate_port_bytes_in_total", labels)] == port["counters"]["bytes_in"]
        assert (
            samples[("podgate_port_connections_total", labels)]
            == (port["counters"]["connections_total"])
        )
    assert session["bytes_in"] == 15000  # the traffic was real
    states = {
        s: samples[("podgate_session_status", _labels(name="web", namespace="default", status=s))]
        for s in ("pending", "ready", "reconnecting", "failed", "stopped")
    }
    assert states == {"pending": 0, "ready": 1, "reconnecting": 0, "failed": 0, "stopped": 0}
    negotiated = session["transport"]
    assert samples[("podgate_dial_seconds_count", _labels(transport=negotiated))] >= 1
    assert samples[("podgate_sessions", ())] == 1
    assert ("process_resident_memory_bytes", ()) in samples

    # A deleted session's series disappear.
    assert (await api.client.delete(f"/sessions/{sid}")).status_code == 204
    after = await _scrape(api)
    assert not [key for key in after if dict(key[1]).get("name") == "web"]
    assert after[("podgate_sessions", ())] == 0


async def test_metrics_need_a_caller_who_sees_every_session(
    settings: Settings, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('alice-token,alice,1\nroot-token,root,2,"podgate:admin,ops"\n')
    async with running_api(settings.model_copy(update={"token_file": tokens})) as api:
        assert (await api.client.get("/metrics")).status_code == 401
        alice = await api.client.get("/metrics", headers={"Authorization": "Bearer alice-token"})
        assert alice.status_code == 403, alice.text
        await _scrape(api, Authorization="Bearer root-token")
