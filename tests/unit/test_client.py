"""`podgate sessions`' pure parts: kubectl's AGE, the table layout, `[NS/]TARGET`, the
SSE line rules, and the client's list of target kinds against the API's."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from service.client import KIND_WORDS, add_parser
from service.client.api import SseEvent, SseParser
from service.client.commands import UsageError, WatchPrinter, split_target
from service.client.render import (
    HEADER,
    format_table,
    human_bytes,
    human_duration,
    ports_cell,
    session_row,
)
from service.upstream import targets

# k8s.io/apimachinery/pkg/util/duration.HumanDuration, case by case across every branch
# boundary of its source (kubectl's AGE column).
AGES = [
    (-5, "<invalid>"),
    (-1.5, "0s"),
    (0, "0s"),
    (45, "45s"),
    (119, "119s"),
    (120, "2m"),
    (192, "3m12s"),
    (599, "9m59s"),
    (600, "10m"),
    (3 * 3600 - 1, "179m"),
    (3 * 3600, "3h"),
    (2 * 3600 + 5 * 60, "125m"),  # under 3 h kubectl still counts minutes
    (4 * 3600 + 5 * 60, "4h5m"),
    (8 * 3600 - 1, "7h59m"),
    (8 * 3600, "8h"),
    (47 * 3600 + 59 * 60, "47h"),
    (48 * 3600, "2d"),
    (3 * 86400 + 4 * 3600, "3d4h"),
    (8 * 86400 - 1, "7d23h"),
    (8 * 86400, "8d"),
    (400 * 86400, "400d"),
    (2 * 365 * 86400, "2y"),
    (2 * 365 * 86400 + 30 * 86400, "2y30d"),
    (8 * 365 * 86400, "8y"),
    (20 * 365 * 86400, "20y"),
]


@pytest.mark.parametrize(("seconds", "shown"), AGES)
def test_age_is_kubectls_human_duration(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_table_is_laid_out_like_kubectl_get() -> None:
    text = format_table(("NAME", "STATUS", "AGE"), [("web", "ready", "5s"), ("a", "", "")])
    assert text.splitlines() == [
        "NAME   STATUS   AGE",
        "web    ready    5s",
        "a",  # trailing padding is stripped
    ]


def test_session_row_shows_ports_status_and_none_cells() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    session = {
        "name": "web",
        "target": "svc/web",
        "status": "pending",
        "transport": None,
        "created_at": (now - timedelta(seconds=192)).isoformat().replace("+00:00", "Z"),
        "ports": [
            {"local_port": 8888, "remote_port": 5000, "remote_name": None},
            {"local_port": 40001, "remote_port": 0, "remote_name": "http"},
        ],
    }
    assert len(HEADER) == 6
    assert session_row(session, now) == [
        "web",
        "svc/web",
        "8888->5000,40001->http",
        "pending",
        "<none>",
        "3m12s",
    ]
    assert ports_cell({"ports": []}) == "<none>"


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0"),
        (1023, "1023"),
        (1536, "1.5Ki"),
        (20 * 1024**2, "20Mi"),
        (int(3.14 * 1024**3), "3.1Gi"),
    ],
)
def test_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("text", "namespace", "expected"),
    [
        ("hello", None, ("default", "hello")),
        ("pod/hello", None, ("default", "pod/hello")),
        ("svc/web", "prod", ("prod", "svc/web")),
        ("deployment.apps/web", None, ("default", "deployment.apps/web")),
        ("Deploy/web", None, ("default", "Deploy/web")),
        ("prod/hello", None, ("prod", "hello")),
        ("prod/hello", "prod", ("prod", "hello")),
        ("prod/svc/web", None, ("prod", "svc/web")),
    ],
)
def test_namespace_slash_target(
    text: str, namespace: str | None, expected: tuple[str, str]
) -> None:
    assert split_target(text, namespace) == expected


@pytest.mark.parametrize(
    ("text", "namespace"), [("a/b/c/d", None), ("prod/hello", "dev"), ("/hello", None)]
)
def test_namespace_slash_target_refused(text: str, namespace: str | None) -> None:
    with pytest.raises(UsageError):
        split_target(text, namespace)


def test_the_client_knows_the_kinds_the_api_accepts() -> None:
    # `a/b` is KIND/NAME exactly when the API would read `a` as a kind.
    assert set(targets._ALIASES) == KIND_WORDS


def test_sse_lines_follow_the_html_standard() -> None:
    parser = SseParser()
    lines = [
        ": podgate events",
        "",
        "id: 7",
        "event: status",
        'data: {"a":',
        "data:1}",
        "",
        "event: resync",
        'data: {"detail": "x"}',
        "",
        "id: 8",
        "",  # no data: nothing dispatched, but the id is kept
    ]
    events = [e for e in map(parser.feed_line, lines) if e is not None]
    assert events == [
        SseEvent("status", {"a": 1}, "7"),
        SseEvent("resync", {"detail": "x"}, None),
    ]
    assert parser.last_event_id == "8"


def test_options_before_and_after_the_verb() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    before = parser.parse_args(["sessions", "--server", "http://a:1", "ls"])
    after = parser.parse_args(["sessions", "ls", "--server", "http://b:2", "-o", "wide"])
    neither = parser.parse_args(["sessions", "ls"])
    assert (before.server, before.verb) == ("http://a:1", "ls")
    assert (after.server, after.output) == ("http://b:2", "wide")
    assert getattr(neither, "server", None) is None


def test_watch_resync_prints_what_changed_and_what_went(capsys: pytest.CaptureFixture[str]) -> None:
    printer = WatchPrinter("table", [])

    def session(id_: str, status: str) -> dict[str, object]:
        return {
            "id": id_,
            "name": f"s-{id_}",
            "namespace": "default",
            "target": "hello",
            "status": status,
            "ports": [],
        }

    printer.listing([session("1", "ready"), session("2", "pending")], initial=True)
    first = capsys.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in first[1:]] == [
        ["s-1", "listed", "ready"],
        ["s-2", "listed", "pending"],
    ]
    printer.listing([session("2", "ready"), session("3", "pending")], initial=False)
    second = capsys.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in second] == [
        ["s-2", "listed", "ready"],
        ["s-3", "listed", "pending"],
        ["s-1", "deleted", "-"],
    ]
