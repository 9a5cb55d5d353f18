"""Errors as RFC 9457 `application/problem+json`, with a message a person can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.schemas import Problem

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ProblemError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def problem_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = Problem(title=_TITLES.get(status, "Error"), status=status, detail=detail)
    return JSONResponse(
        body.model_dump(), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def problem_bytes(status: int, detail: str) -> bytes:
    """The body `problem_response` sends, for the layers below FastAPI (the guard, h11)."""
    body = Problem(title=_TITLES.get(status, "Error"), status=status, detail=detail)
    return json.dumps(body.model_dump(), separators=(",", ":")).encode()


def _allowed_methods(request: Request, fallback: str) -> str:
    """Every method the request's path has an operation for (Starlette's 405 names only
    the first route that matched the path: ``POST`` for ``PUT /sessions``)."""
    app: FastAPI = request.app
    for template, item in app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            return ", ".join(sorted(method.upper() for method in item))
    return fallback  # a route of no operation (/openapi.json, /docs)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else error["msg"])
    return "invalid request: " + "; ".join(parts)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.status, exc.detail, exc.headers)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Allow lists every method of the path (RFC 9110 §15.5.6).
            headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
            detail = f"{request.method} is not allowed here: use {headers['Allow']}"
            return problem_response(405, detail, headers)
        return problem_response(exc.status_code, str(exc.detail), headers or None)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(422, _validation_detail(exc))

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    _document_problems_as_sent(app)


#: What the request guard and the HTTP layer answer before any route runs, so any
#: operation may get them (service/api/guard.py, service/api/http.py).
BEFORE_ROUTES: dict[int, str] = {
    400: "Not a valid HTTP/1.1 request (request line, headers, or a request head over 64 KiB)",
    403: "The request comes from a browser page whose `Origin` is neither the API's own nor "
    "an `--cors-origin` (nothing is done). `POST /sessions` also answers 403 for what the "
    "caller or the listen policy may not do.",
    408: "The request body did not arrive within 30 s of its head "
    "(`PODGATE_HEADER_TIMEOUT_SECONDS`); the connection is closed",
    413: "The request body is larger than 1 MiB (refused before it is read in full)",
    421: "The `Host` header names neither localhost, 127.0.0.1, [::1], the address the API "
    "is bound to nor an `--allowed-host` (DNS rebinding; nothing is done)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer realm="podgate"`',
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again (event streams)",
            "schema": {"type": "string"},
        }
    },
}
_METHOD_NOT_ALLOWED = {
    "description": "The path has no operation for this method; `Allow` lists those it has "
    "(any path of this document, for a method it does not list)",
    "headers": {
        "Allow": {
            "description": "The methods of the path, e.g. `GET, POST`",
            "schema": {"type": "string"},
            "required": True,
        }
    },
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _document_problems_as_sent(app: FastAPI) -> None:
    """Fix (API tests): document error responses as they are sent.

    FastAPI puts a `responses=` model under the route's media type (`application/json`,
    leaving `application/problem+json` without a schema) and adds its own 422
    (`HTTPValidationError`), which `on_validation` never sends. Rewrite every 4xx/5xx to
    `application/problem+json` with the Problem schema and drop the unused schemas. Add
    the answers of the guard (`BEFORE_ROUTES`) to every operation, the headers that come
    with 401 and 429, and the 405 every path answers for another method.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        components.setdefault("responses", {})["MethodNotAllowed"] = _METHOD_NOT_ALLOWED
        for item in document.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status, description in BEFORE_ROUTES.items():
                    responses.setdefault(str(status), {"description": description})
                for code, response in responses.items():
                    if code[:1] in ("4", "5"):
                        ref = {"$ref": "#/components/schemas/Problem"}
                        response["content"] = {PROBLEM_JSON: {"schema": ref}}
                        if int(code) in _HEADERS:
                            response["headers"] = _HEADERS[int(code)]
                for parameter in operation.get("parameters", []):
                    _not_null(parameter)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _not_null(parameter: dict[str, Any]) -> None:
    """An optional header or query parameter is absent or a value, never ``null``: FastAPI
    documents ``int | None`` as ``anyOf: [integer, null]`` (a client would send "null")."""
    schema = parameter.get("schema", {})
    kinds = schema.get("anyOf")
    if parameter.get("in") in ("header", "query") and kinds and {"type": "null"} in kinds:
        rest = [kind for kind in kinds if kind != {"type": "null"}]
        if len(rest) == 1:
            del schema["anyOf"]
            schema.update(rest[0])


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problem statuses a route can return."""
    # The model registers the Problem schema; its content is fixed by _document_problems_as_sent.
    return {s: {"model": Problem, "description": _TITLES.get(s, "Error")} for s in statuses}
