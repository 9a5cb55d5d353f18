"""The `podgate sessions` verbs: ls, get, create, rm, watch (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from service.client import DEFAULT_REQUEST_TIMEOUT, DEFAULT_SERVER, KIND_WORDS
from service.client.api import (
    ApiError,
    PodgateClient,
    SseEvent,
    Unreachable,
    UsageError,
    describe_transport_error,
)
from service.client.render import dump, parse_time, ports_cell, sessions_table

__all__ = ["WatchPrinter", "main", "split_target"]

#: Backoff between attempts to re-open a dropped event stream (doubling, capped).
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0


def _print(text: str = "", *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _print_sessions(
    sessions: Sequence[dict[str, Any]], output: str, document: Any, *, empty: str
) -> None:
    if output in ("json", "yaml"):
        _print(dump(document, output))
    elif output == "name":
        for session in sessions:
            _print(f"session/{session.get('name')}")
    elif not sessions:
        _print(empty, err=True)
    else:
        _print(sessions_table(sessions, wide=output == "wide"))


# --------------------------------------------------------------------------- targets


def split_target(text: str, namespace: str | None) -> tuple[str, str]:
    """``[NS/]TARGET`` → (namespace, target), TARGET being ``NAME`` or ``KIND/NAME``.

    ``a/b`` is ``KIND/NAME`` when ``a`` is a kind (``svc``, ``deployment.apps``, …),
    else ``NAMESPACE/NAME`` of a pod; ``a/b/c`` is ``NAMESPACE/KIND/NAME``. The target
    itself is checked by the API.
    """
    parts = text.split("/")
    if len(parts) == 1 or (len(parts) == 2 and parts[0].partition(".")[0].lower() in KIND_WORDS):
        given, target = None, text
    elif len(parts) == 2:
        given, target = parts[0], parts[1]
    elif len(parts) == 3:
        given, target = parts[0], f"{parts[1]}/{parts[2]}"
    else:
        raise UsageError(
            f'target "{text}": expected NAME, KIND/NAME, NAMESPACE/NAME or NAMESPACE/KIND/NAME'
        )
    if given is not None and namespace is not None and given != namespace:
        raise UsageError(
            f'target "{text}" is in namespace "{given}" but -n says "{namespace}": give one'
        )
    if given == "":
        raise UsageError(f'target "{text}": the namespace before "/" is empty')
    return given or namespace or "default", target


# --------------------------------------------------------------------------- commands


async def _resolve(api: PodgateClient, refs: Sequence[str]) -> list[dict[str, Any]]:
    return [await api.get_session(ref) for ref in refs]


async def cmd_ls(api: PodgateClient, args: argparse.Namespace) -> int:
    listing = await api.list_sessions()
    _print_sessions(listing["data"], args.output, listing, empty="No sessions found.")
    return 0


async def cmd_get(api: PodgateClient, args: argparse.Namespace) -> int:
    sessions = await _resolve(api, args.refs)
    document: Any = sessions[0]
    if len(sessions) > 1:
        document = {"data": sessions, "count": len(sessions)}
    _print_sessions(sessions, args.output, document, empty="")
    return 0


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    namespace, target = split_target(args.target, args.namespace)
    body: dict[str, Any] = {"namespace": namespace, "target": target, "ports": args.ports}
    addresses = [a for value in args.address for a in value.split(",") if a]
    if addresses:
        body["addresses"] = addresses
    for key in ("name", "context", "transport"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.via is not None:
        body["via"] = {"agent": args.via}
        if args.via_context is not None:
            body["via"]["context"] = args.via_context
    return body


async def cmd_create(api: PodgateClient, args: argparse.Namespace) -> int:
    session, created = await api.create_session(_create_body(args))
    if args.wait:
        session = await _wait_ready(api, session, args.wait_timeout)
    if args.output in ("json", "yaml"):
        _print(dump(session, args.output))
    elif args.output == "name":
        _print(f"session/{session.get('name')}")
    else:
        for line in session.get("forwarding") or []:
            _print(line)
    _print(f'session "{session.get("name")}" {"created" if created else "unchanged"}', err=True)
    return 0


_SETTLED = ("ready", "failed", "stopped")


async def _wait_ready(
    api: PodgateClient, session: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Until the session is ready (its events say when); `ApiError` if it fails first."""
    session_id = str(session["id"])
    try:
        async with asyncio.timeout(timeout):
            async with api.events(f"/sessions/{quote(session_id, safe='')}/events") as events:
                # Subscribed: a change from now on is an event; read where it is now.
                session = await api.get_session(session_id)
                if session.get("status") not in _SETTLED:
                    async for event in events:
                        if event.event == "deleted":
                            raise ApiError(404, f'session "{session.get("name")}" was deleted')
                        if event.event == "status" and event.data.get("new") in _SETTLED:
                            break
                    session = await api.get_session(session_id)
    except TimeoutError:
        session = await api.get_session(session_id)
        raise ApiError(
            504,
            f'session "{session.get("name")}" is not ready after {timeout:g} s: status '
            f"{session.get('status')}, last error: {session.get('last_error') or 'none'}",
        ) from None
    except httpx.TransportError as exc:
        raise api.unreachable(exc) from None
    if session.get("status") != "ready":
        name = session.get("name")
        raise ApiError(
            409,
            f'session "{name}" is {session.get("status")}: '
            f"{session.get('last_error') or 'no error given'} (it stays until "
            f"`podgate sessions rm {name}`)",
        )
    return session


async def cmd_rm(api: PodgateClient, args: argparse.Namespace) -> int:
    if args.all:
        if args.refs:
            raise UsageError("give NAME|ID... or --all, not both")
        sessions = (await api.list_sessions())["data"]
    elif not args.refs:
        raise UsageError("give the sessions to delete (NAME or ID), or --all")
    else:
        sessions = []
    failed = False
    targets: list[tuple[str, str]] = [(str(s["id"]), str(s.get("name"))) for s in sessions]
    for ref in args.refs:
        try:
            found = await api.get_session(ref)
        except ApiError as exc:
            _print(f"error: {exc.detail}", err=True)
            failed = True
            continue
        targets.append((str(found["id"]), str(found.get("name"))))
    for session_id, name in targets:
        try:
            await api.delete_session(session_id)
        except ApiError as exc:
            _print(f"error: {exc.detail}", err=True)
            failed = True
            continue
        _print(f'session "{name}" deleted')
    return 1 if failed else 0


# --------------------------------------------------------------------------- watch

WATCH_HEADER = ("TIME", "NAME", "EVENT", "STATUS", "DETAIL")
#: Column widths of the watch lines (lines are printed as they come, so they are fixed).
_WATCH_WIDTHS = (8, 16, 10, 12)


def _clock(text: str | None) -> str:
    moment = parse_time(text) or datetime.now(UTC)
    return moment.astimezone().strftime("%H:%M:%S")


def _listed_detail(session: Mapping[str, Any]) -> str:
    detail = f"{session.get('namespace')}/{session.get('target')} {ports_cell(session)}"
    if session.get("last_error"):
        detail += f": {session['last_error']}"
    return detail


def _event_detail(kind: str, data: Mapping[str, Any]) -> str:
    if kind == "created":
        ports = ",".join(str(p) for p in data.get("local_ports") or [])
        return f"{data.get('namespace')}/{data.get('target')} local ports {ports}"
    if kind == "status":
        if data.get("last_error"):
            return str(data["last_error"])
        if data.get("new") == "ready":
            return f"pod {data.get('pod')} via {data.get('transport')}"
        return ""
    if kind == "reconnect":
        text = f"pod {data.get('pod')}"
        if data.get("previous_pod") and data.get("previous_pod") != data.get("pod"):
            text += f" (was {data['previous_pod']})"
        text += f" via {data.get('transport')}, reconnects {data.get('reconnects')}"
        if data.get("outage_seconds") is not None:
            text += f", {data['outage_seconds']:g} s without a connection"
        return text
    if kind == "connection_error":
        return f"{data.get('port')} -> {data.get('remote_port')}: {data.get('text')}"
    if kind == "expired":
        return str(data.get("reason") or "")
    return ""


class WatchPrinter:
    """One line per change; `known` is each session's last status, by id."""

    def __init__(self, output: str, refs: Sequence[str]) -> None:
        self.output = output
        self.refs = set(refs)
        self.known: dict[str, tuple[str, str]] = {}  # id -> (name, status)
        self._header_done = False

    def wanted(self, session_id: Any, name: Any) -> bool:
        return not self.refs or session_id in self.refs or name in self.refs

    def line(self, time: str | None, name: str, kind: str, status: str, detail: str) -> None:
        if not self._header_done:
            self._header_done = True
            self.line_raw(WATCH_HEADER)
        self.line_raw((_clock(time), name, kind, status, detail))

    def line_raw(self, cells: Sequence[str]) -> None:
        padded = [cell.ljust(width) for cell, width in zip(cells, _WATCH_WIDTHS, strict=False)]
        _print("   ".join([*padded, cells[-1]]).rstrip())

    def json_line(self, document: Mapping[str, Any]) -> None:
        _print(json.dumps(document, ensure_ascii=False, separators=(",", ":")))

    def listing(self, sessions: Sequence[Mapping[str, Any]], *, initial: bool) -> None:
        """The current sessions: all of them at the start; after a resync only what
        changed, and a `deleted` line for each one that went meanwhile."""
        now = datetime.now(UTC).isoformat()
        seen: dict[str, tuple[str, str]] = {}
        for session in sessions:
            session_id, name = str(session.get("id")), str(session.get("name"))
            if not self.wanted(session_id, name):
                continue
            status = str(session.get("status"))
            seen[session_id] = (name, status)
            if not initial and self.known.get(session_id) == (name, status):
                continue
            if self.output == "json":
                self.json_line({"type": "listed", "time": now, "session": session})
            else:
                self.line(now, name, "listed", status, _listed_detail(session))
        if not initial:
            for session_id, (name, _) in self.known.items():
                if session_id in seen:
                    continue
                if self.output == "json":
                    gone = {"type": "deleted", "session_id": session_id, "name": name}
                    self.json_line({**gone, "time": now})
                else:
                    self.line(now, name, "deleted", "-", "deleted while the stream was down")
        self.known = seen

    def event(self, event: SseEvent) -> None:
        data: Mapping[str, Any] = event.data if isinstance(event.data, dict) else {}
        session_id, name = data.get("session_id"), str(data.get("name"))
        if not self.wanted(session_id, name):
            return
        status = self.known.get(str(session_id), (name, "-"))[1]
        if event.event == "created":
            status = str(data.get("status"))
        elif event.event == "status":
            status = str(data.get("new"))
        if event.event == "deleted":
            self.known.pop(str(session_id), None)
            status = "-"
        else:
            self.known[str(session_id)] = (name, status)
        if self.output == "json":
            self.json_line({"type": event.event, **data, "id": event.id})
        else:
            detail = _event_detail(event.event, data)
            self.line(data.get("time"), name, event.event, status, detail)


async def cmd_watch(api: PodgateClient, args: argparse.Namespace) -> int:
    """Subscribe, list (first time: everything; later: what changed), then print events;
    a broken stream is re-opened with Last-Event-ID until Ctrl-C."""
    printer = WatchPrinter(args.output, args.refs)
    last_id: str | None = None
    listed = False
    delay = RECONNECT_FIRST_DELAY
    while True:
        try:
            async with api.events("/events", last_id) as events:
                if last_id is None:
                    # Nothing is replayed without an id: read the sessions (subscribed
                    # already, so a change from now on is also an event).
                    printer.listing((await api.list_sessions())["data"], initial=not listed)
                    listed = True
                delay = RECONNECT_FIRST_DELAY
                async for event in events:
                    if event.id is not None:
                        last_id = event.id
                    if event.event == "resync":
                        printer.listing((await api.list_sessions())["data"], initial=False)
                    elif event.event == "dropped":
                        break  # the server ends this stream; resume after last_id
                    else:
                        printer.event(event)
            reason = "the server ended the event stream"
        except Unreachable as exc:
            if not listed:
                raise
            reason = str(exc)
        except httpx.TransportError as exc:
            if not listed:
                raise api.unreachable(exc) from None
            reason = f"the event stream broke: {describe_transport_error(exc)}"
        except ApiError as exc:
            if not listed or exc.status in (401, 403):
                raise
            reason = exc.detail
        _print(f"watch: {reason}; reconnecting in {delay:g} s", err=True)
        await asyncio.sleep(delay)  # backoff between attempts to re-open the stream
        delay = min(delay * 2, RECONNECT_MAX_DELAY)


async def _until_signal(work: Callable[[], Awaitable[int]], status: int) -> int:
    """Run ``work()``; SIGINT/SIGTERM end it with ``status`` (0 for `watch`: its way out)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work())
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if stopped:
            return status
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


VERBS: dict[str, Callable[[PodgateClient, argparse.Namespace], Awaitable[int]]] = {
    "ls": cmd_ls,
    "get": cmd_get,
    "create": cmd_create,
    "rm": cmd_rm,
    "watch": cmd_watch,
}


async def main(args: argparse.Namespace) -> int:
    """``podgate sessions VERB ...``: the exit status."""
    server = getattr(args, "server", None) or os.environ.get("PODGATE_SERVER") or DEFAULT_SERVER
    token = getattr(args, "token", None) or os.environ.get("PODGATE_TOKEN") or None
    timeout = getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
    if "://" not in server:
        server = f"http://{server}"
    try:
        async with PodgateClient(server, token, timeout=timeout) as api:
            # Ctrl-C is how `watch` ends (0); it interrupts the others (130, as a shell says).
            interrupted = 0 if args.verb == "watch" else 130
            return await _until_signal(lambda: VERBS[args.verb](api, args), interrupted)
    except UsageError as exc:
        _print(f"error: {exc}", err=True)
        return 2
    except (ApiError, Unreachable) as exc:
        _print(f"error: {exc}", err=True)
        return 1
    except BrokenPipeError:
        # `podgate sessions ls | head -1`: the reader left; say nothing more.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
