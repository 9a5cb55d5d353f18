"""`GET /sessions` renders its JSON in one pydantic-core call: the bytes must equal what
FastAPI's JSONResponse sends for the same model (including floats that need exponents)."""

from __future__ import annotations

import datetime

import pytest
from fastapi.responses import JSONResponse

from service.api.routes import render_json
from service.api.schemas import Counters, PortPublic, ReconnectPublic, SessionPublic, SessionsPublic

NOW = datetime.datetime(2026, 11, 25, 16, 24, 38, 123456, tzinfo=datetime.UTC)


def _session(i: int, seconds: float | None) -> SessionPublic:
    counters = Counters(
        connections_active=1, connections_total=2, connection_errors=0, bytes_in=3, bytes_out=4
    )
    return SessionPublic(
        id=f"s{i}",
        name=f'naïve-\u2603-"q"\\\n\x01{i}',
        namespace="default",
        target="pod/web",
        pod="web",
        status="ready",
        transport="spdy",
        last_error=None if i % 2 else "dial failed: \u00e9",
        created_at=NOW,
        ready_since=NOW if i % 2 else None,
        ports=[
            PortPublic(
                spec="0:80",
                local_port=40000 + i,
                remote_port=80,
                remote_name="http",
                addresses=["127.0.0.1", "::1"],
                counters=counters,
            )
        ],
        forwarding=["Forwarding from 127.0.0.1:40000 -> 80"],
        connections_active=1,
        connections_total=2,
        connection_errors=0,
        bytes_in=3,
        bytes_out=4,
        reconnects=5,
        reconnect=ReconnectPublic(enabled=True, max_attempts=None, max_backoff_seconds=30.0),
        keepalive_seconds=1 / 3,
        connect_wait_seconds=10.0,
        ttl_seconds=seconds,
        idle_timeout_seconds=315360000.0,
        expires_at=NOW,
    )


@pytest.mark.parametrize("seconds", [None, 0.25, 1e-4, 1e-5, 1e-7, 123456789.125, 3600])
def test_render_matches_fastapi_json_response(seconds: float | None) -> None:
    listing = SessionsPublic(data=[_session(i, seconds) for i in range(3)], count=3)
    expected = JSONResponse(listing.model_dump(mode="json")).body
    assert render_json(listing) == expected
