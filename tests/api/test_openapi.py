"""The committed OpenAPI document is the app's, and it documents the contract's routes and
their problem (RFC 9457) responses the way they are really sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.api.openapi import render
from service.config import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()

#: What the request guard and the HTTP layer answer before any route (issue 11): every
#: operation documents them.
BEFORE_ROUTES = {"400", "403", "408", "413", "421"}
#: An authenticated operation: no or a wrong token (401), the cluster cannot check it (503).
AUTH = {"401", "503"}

#: The contract (issue 3, "The API"): operation -> the statuses it answers with.
ROUTES: dict[tuple[str, str], set[str]] = {
    ("post", "/sessions"): {"200", "201", "409", "422", "429"} | AUTH,
    ("get", "/sessions"): {"200"} | AUTH,
    ("get", "/sessions/{session_id}"): {"200", "404"} | AUTH,
    ("delete", "/sessions/{session_id}"): {"204", "404"} | AUTH,
    ("get", "/healthz"): {"200"},
    # Issue 5: live events (Server-Sent Events).
    ("get", "/events"): {"200", "422", "429"} | AUTH,
    ("get", "/sessions/{session_id}/events"): {"200", "404", "422", "429"} | AUTH,
    # Issue 12: Prometheus metrics (admins only).
    ("get", "/metrics"): {"200", "403"} | AUTH,
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(render())
    return doc


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_committed_document_is_current() -> None:
    assert COMMITTED.exists(), f"{COMMITTED} is missing: run `make openapi`"
    assert COMMITTED.read_text() == render(), (
        f"{COMMITTED} is stale (the app's OpenAPI document changed): run `make openapi` "
        "and commit the result"
    )


def test_document_has_the_routes(document: dict[str, Any]) -> None:
    assert set(operations(document)) == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_route_documents_its_responses(document: dict[str, Any], method: str, path: str) -> None:
    responses = operations(document)[(method, path)]["responses"]
    assert ROUTES[(method, path)] | BEFORE_ROUTES <= set(responses), sorted(responses)


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_operation_declares_the_bearer_scheme(
    document: dict[str, Any], method: str, path: str
) -> None:
    """Every authenticated operation names the `bearer` scheme (client generators and
    schemathesis send the token from it); /healthz needs none (container HEALTHCHECK)."""
    operation = operations(document)[(method, path)]
    if "401" in ROUTES[(method, path)]:
        assert operation["security"] == [{"bearer": []}], operation.get("security")
        headers = operation["responses"]["401"]["headers"]
        assert set(headers) == {"WWW-Authenticate"}
    else:
        assert "security" not in operation and "401" not in operation["responses"]
    if "429" in operation["responses"]:
        assert set(operation["responses"]["429"]["headers"]) == {"Retry-After"}


def test_security_scheme_and_the_405_response(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer", "description": ANY_TEXT}}
    method_not_allowed = document["components"]["responses"]["MethodNotAllowed"]
    assert method_not_allowed["headers"]["Allow"]["required"] is True
    assert method_not_allowed["content"] == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_every_error_response_is_a_problem(
    document: dict[str, Any], method: str, path: str
) -> None:
    """What the handlers send: `application/problem+json` with the Problem schema, only."""
    responses = operations(document)[(method, path)]["responses"]
    for status, response in responses.items():
        if int(status) >= 400:
            assert response.get("content") == {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}, (
                f"{method.upper()} {path} {status}: {response}"
            )


def test_problem_schema(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail"}
    assert set(problem["required"]) == {"title", "status", "detail"}
    # No schema is left that nothing refers to (FastAPI's own validation-error shapes).
    text = json.dumps(document)
    for name in document["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text, f"unreferenced schema {name}"


def test_session_schemas_have_the_contract_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    create = schemas["SessionCreate"]
    assert {
        "namespace", "target", "ports", "name", "addresses", "context", "transport",
        # issue 5: per-session policy
        "reconnect", "keepalive_seconds", "connect_wait_seconds", "ttl_seconds",
        "idle_timeout_seconds",
        # issue 13: the ws-channel linger
        "channel_linger_seconds",
        # issue 14: through a helper agent
        "via",
    } == set(create["properties"])  # fmt: skip
    assert set(schemas["ReconnectPolicy"]["properties"]) == {
        "enabled", "max_attempts", "max_backoff_seconds",
    }  # fmt: skip
    assert set(create["required"]) == {"target", "ports"}
    assert create["additionalProperties"] is False
    public = schemas["SessionPublic"]
    assert {
        "id", "name", "namespace", "target", "pod", "status", "transport", "last_error",
        "created_at", "ports", "forwarding",
        # issue 11: who created it
        "owner",
    } <= set(public["required"])  # fmt: skip
    assert set(schemas["SessionStatus"]["enum"]) == {
        "pending", "ready", "reconnecting", "failed", "stopped",
    }  # fmt: skip
    assert public["properties"]["status"] == {"$ref": "#/components/schemas/SessionStatus"}
    assert set(schemas["Transport"]["enum"]) == {"auto", "spdy", "websocket", "ws-channel", "h2"}
    assert {"spec", "local_port", "remote_port", "addresses", "counters"} == set(
        schemas["PortPublic"]["required"]
    )
    assert {"reconnects", "connections_total", "bytes_in", "bytes_out"} <= set(public["required"])
    for path in ("/events", "/sessions/{session_id}/events"):
        ok = operations(document)[("get", path)]["responses"]["200"]
        assert set(ok["content"]) == {"text/event-stream"}, path
    assert {"data", "count"} == set(schemas["SessionsPublic"]["required"])
    created = operations(document)[("post", "/sessions")]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionPublic"
    }
    assert (
        "content"
        not in operations(document)[("delete", "/sessions/{session_id}")]["responses"]["204"]
    )


async def test_served_document_is_the_rendered_one() -> None:
    """`GET /openapi.json` (what Swagger UI and client generators read) is the same document."""
    app = create_app(Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(render())


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_parameters_are_never_null(document: dict[str, Any], method: str, path: str) -> None:
    """An optional header or query parameter is absent or a value: a document that allows
    `null` has clients (and schemathesis) send `Last-Event-ID: null`, a 422."""
    for parameter in operations(document)[(method, path)].get("parameters", []):
        assert "null" not in json.dumps(parameter["schema"]), parameter


def test_event_streams_document_their_events(document: dict[str, Any]) -> None:
    """OpenAPI 3.1: the schema of a `text/event-stream` response describes one event."""
    for path in ("/events", "/sessions/{session_id}/events"):
        content = operations(document)[("get", path)]["responses"]["200"]["content"]
        event = content["text/event-stream"]["schema"]
        assert event["type"] == "object" and set(event["required"]) == {"event", "data"}
        assert set(event["properties"]["event"]["enum"]) == {
            "created", "status", "reconnect", "connection_error", "expired", "deleted",
            "resync", "dropped",
        }  # fmt: skip
        assert event["properties"]["data"]["contentMediaType"] == "application/json"
