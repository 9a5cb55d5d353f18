"""Typed failures of talking to the cluster, each saying whether dialing again may help."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "PodNotFound",
    "PodNotRunning",
    "UpstreamError",
    "WatchExpired",
    "WatchRefused",
    "describe_http_error",
    "parse_status",
    "status_is_retryable",
]


def status_is_retryable(status: int) -> bool:
    """5xx, 408 and 429 may succeed later; any other answer will be the same next time."""
    return status >= 500 or status in (408, 429)


class UpstreamError(Exception):
    """The cluster could not be reached or refused the request.

    ``str(error)`` is for people. ``status`` is the HTTP status when the cluster answered
    (else ``None``). ``retryable`` says whether dialing again later may succeed: connection,
    TLS and timeout errors, 5xx and 429 are; 400/401/403/404 and configuration errors are not.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if retryable is None:
            retryable = True if status is None else status_is_retryable(status)
        self.retryable = retryable

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"retryable={self.retryable!r})"
        )


class PodNotFound(UpstreamError):
    """GET pod answered 404."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f'pod "{name}" not found in namespace "{namespace}"', status=404, retryable=False
        )
        self.namespace = namespace
        self.name = name


class PodNotRunning(UpstreamError):
    """The pod exists but ``status.phase`` is not Running (kubectl's client-side check)."""

    def __init__(self, namespace: str, name: str, phase: str) -> None:
        super().__init__(
            f"unable to forward port because pod is not running. Current status={phase}",
            retryable=True,
        )
        self.namespace = namespace
        self.name = name
        self.phase = phase


class WatchRefused(UpstreamError):
    """The server answered a watch request with an HTTP error: it will not serve it."""


class WatchExpired(UpstreamError):
    """410 Gone: the resourceVersion a watch started from is too old; read the object again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=410, retryable=True)


def parse_status(body: bytes) -> dict[str, Any] | None:
    """The body as a metav1.Status object, or None when it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("kind") == "Status":
        return data
    return None


def _status_message(body: bytes) -> str | None:
    """The ``message`` of a metav1.Status body, or None when the body is not one."""
    message = (parse_status(body) or {}).get("message")
    return message if isinstance(message, str) and message else None


def describe_http_error(status: int, reason: str, body: bytes, limit: int = 2000) -> str:
    """What client-go shows for a failed request: the Status message, else the raw text."""
    message = _status_message(body)
    if message is None:
        message = body.decode("utf-8", errors="replace").strip()
        if len(message) > limit:
            message = message[:limit] + "…"
    head = f"{status} {reason}".strip()
    return f"{head}: {message}" if message else head
