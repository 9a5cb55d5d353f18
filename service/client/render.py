"""What `podgate sessions` prints: kubectl-style tables, AGE, byte counts, JSON/YAML."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

__all__ = [
    "HEADER",
    "NONE",
    "WIDE_HEADER",
    "dump",
    "format_table",
    "human_bytes",
    "human_duration",
    "parse_time",
    "ports_cell",
    "session_row",
    "sessions_table",
]

NONE = "<none>"  # kubectl's cell for an empty value


# --------------------------------------------------------------------------- formatting


def human_duration(seconds: float) -> str:
    """kubectl's AGE (k8s.io/apimachinery ``duration.HumanDuration``): ``45s``,
    ``3m12s``, ``2h5m``, ``3d4h``, ``400d``, ``2y30d``."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 60 * 2:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return _units(minutes, "m", whole % 60, "s")
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _units(hours // 24, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        return _units(hours // 24 // 365, "y", (hours // 24) % 365, "d")
    return f"{hours // 24 // 365}y"


def _units(count: int, unit: str, rest: int, rest_unit: str) -> str:
    """``3m12s``; without the rest when it is 0 (``3m``)."""
    return f"{count}{unit}" if rest == 0 else f"{count}{unit}{rest}{rest_unit}"


def human_bytes(count: int) -> str:
    """``512``, ``1.5Ki``, ``20Mi``, ``3.1Gi`` (binary units, as kubectl shows memory)."""
    value = float(count)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            if unit == "":
                return str(count)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """kubectl's tabwriter layout: left-aligned, three spaces between columns, the last
    column not padded."""
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(session: Mapping[str, Any], now: datetime) -> str:
    created = parse_time(session.get("created_at"))
    return NONE if created is None else human_duration((now - created).total_seconds())


def ports_cell(session: Mapping[str, Any]) -> str:
    """``43531->8080,8888->5000``; a port name not resolved yet shows as the name."""
    shown = []
    for port in session.get("ports") or []:
        remote = port.get("remote_port") or port.get("remote_name") or "?"
        shown.append(f"{port.get('local_port')}->{remote}")
    return ",".join(shown) or NONE


def _cell(value: Any) -> str:
    return NONE if value in (None, "") else str(value)


HEADER = ("NAME", "TARGET", "PORTS", "STATUS", "TRANSPORT", "AGE")
WIDE_HEADER = (
    *HEADER,
    *("NAMESPACE", "POD", "ACTIVE", "CONNECTIONS", "ERRORS", "IN", "OUT", "RECONNECTS"),
    *("ID", "LAST ERROR"),
)


def session_row(session: Mapping[str, Any], now: datetime, *, wide: bool = False) -> list[str]:
    row = [
        _cell(session.get("name")),
        _cell(session.get("target")),
        ports_cell(session),
        _cell(session.get("status")),
        _cell(session.get("transport")),
        _age(session, now),
    ]
    if wide:
        row += [
            _cell(session.get("namespace")),
            _cell(session.get("pod")),
            str(session.get("connections_active", 0)),
            str(session.get("connections_total", 0)),
            str(session.get("connection_errors", 0)),
            human_bytes(int(session.get("bytes_in", 0))),
            human_bytes(int(session.get("bytes_out", 0))),
            str(session.get("reconnects", 0)),
            _cell(session.get("id")),
            _cell(session.get("last_error")),
        ]
    return row


def sessions_table(sessions: Sequence[Mapping[str, Any]], *, wide: bool = False) -> str:
    now = datetime.now(UTC)
    return format_table(
        WIDE_HEADER if wide else HEADER, [session_row(s, now, wide=wide) for s in sessions]
    )


def dump(document: Any, output: str) -> str:
    if output == "yaml":
        text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        return text.rstrip("\n")
    return json.dumps(document, indent=2, ensure_ascii=False)
