"""Medians, the issue's targets as ratios of the same run, the printed table and the chart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.png import Bar, bar_chart

__all__ = ["TARGETS", "Target", "evaluate", "format_report", "summarize", "write_chart"]

S = "spdyserver"
A = "agent"
PODGATE_SPDY = (f"{S}/podgate-spdy",)
#: For the tunnel comparison, podgate's WebSocket tunnel once it exists, else its SPDY path.
PODGATE_TUNNEL = (f"{S}/podgate-websocket", f"{S}/podgate-spdy")
KUBECTL_SPDY = f"{S}/kubectl-1.30"
KUBECTL_TUNNEL = f"{S}/kubectl-1.33"


@dataclass(frozen=True)
class Target:
    """``case.metric`` of the first available client of ``num``, divided by that of ``den``
    (or taken as is when ``den`` is None), compared with ``bound`` by ``op``.
    ``op`` None: informational, no target."""

    label: str
    case: str
    metric: str
    num: tuple[str, ...]
    den: str | None
    op: str | None
    bound: float

    @property
    def is_ratio(self) -> bool:
        return self.den is not None

    def describe_target(self) -> str:
        if self.op is None:
            return "-"
        sym = "\u2265" if self.op == ">=" else "\u2264"
        unit = "\u00d7" if self.is_ratio else ""
        return f"{sym} {self.bound:g}{unit}"


def _both(
    label: str, metric: str, num: tuple[str, ...], den: str, op: str | None, bound: float
) -> list[Target]:
    return [
        Target(label.format(d="\u2193 download"), "bulk_download", metric, num, den, op, bound),
        Target(label.format(d="\u2191 upload"), "bulk_upload", metric, num, den, op, bound),
    ]


#: The issue's targets, in the order they are printed. Informational rows have op None.
TARGETS: list[Target] = [
    *_both("{d}, SPDY: podgate / kubectl 1.30", "mb_per_s", PODGATE_SPDY, KUBECTL_SPDY, ">=", 1.25),
    *_both(
        "{d}, tunnel: podgate / kubectl 1.33",
        "mb_per_s",
        PODGATE_TUNNEL,
        KUBECTL_TUNNEL,
        ">=",
        1.25,
    ),
    Target(
        "conn/s: podgate / kubectl 1.30",
        "connrate",
        "conn_per_s",
        PODGATE_SPDY,
        KUBECTL_SPDY,
        ">=",
        3,
    ),
    Target(
        "conn/s: podgate / kubectl 1.33",
        "connrate",
        "conn_per_s",
        PODGATE_TUNNEL,
        KUBECTL_TUNNEL,
        ">=",
        3,
    ),
    Target("conn p99 ms: podgate", "connrate", "p99_ms", PODGATE_SPDY, None, "<=", 10),
    Target("concurrent failures: podgate", "concurrency", "failures", PODGATE_SPDY, None, "<=", 0),
    Target(
        "concurrent MB/s: podgate / kubectl 1.30",
        "concurrency",
        "mb_per_s",
        PODGATE_SPDY,
        KUBECTL_SPDY,
        ">=",
        1.5,
    ),
    Target(
        "concurrent MB/s: podgate / kubectl 1.33",
        "concurrency",
        "mb_per_s",
        PODGATE_TUNNEL,
        KUBECTL_TUNNEL,
        ">=",
        1.5,
    ),
    Target(
        "concurrent peak RSS MB: podgate",
        "concurrency",
        "peak_rss_mb",
        PODGATE_SPDY,
        None,
        "<=",
        150,
    ),
    *_both(
        "{d}, to agent: podgate / socat relay",
        "mb_per_s",
        (f"{A}/podgate-spdy",),
        "-/socat-relay",
        ">=",
        1.3,
    ),
    *_both(
        "{d}, to agent: podgate h2 / SPDY",
        "mb_per_s",
        (f"{A}/podgate-h2",),
        f"{A}/podgate-spdy",
        ">=",
        0.8,
    ),
    # Issue 13: many concurrent echoes, where h2's per-stream work shows.
    Target(
        "concurrent MB/s (case 3), to agent: podgate h2 / SPDY",
        "concurrency",
        "mb_per_s",
        (f"{A}/podgate-h2",),
        f"{A}/podgate-spdy",
        ">=",
        0.8,
    ),
    Target(
        "concurrent MB/s (case 3b), to agent: podgate h2 / SPDY",
        "concurrency500",
        "mb_per_s",
        (f"{A}/podgate-h2",),
        f"{A}/podgate-spdy",
        ">=",
        0.8,
    ),
    Target("idle failures: podgate", "idle_connections", "failures", PODGATE_SPDY, None, "<=", 0),
    Target(
        "idle KB per connection: podgate",
        "idle_connections",
        "kb_per_conn",
        PODGATE_SPDY,
        None,
        "<=",
        10,
    ),
    Target("idle KB per session", "idle_sessions", "kb_per_session", ("podgate",), None, "<=", 100),
    Target("GET /sessions ms (p50)", "idle_sessions", "get_p50_ms", ("podgate",), None, "<=", 50),
    Target(
        "CPU-s/GB: podgate / kubectl 1.30",
        "cpu",
        "cpu_s_per_gb",
        PODGATE_SPDY,
        KUBECTL_SPDY,
        "<=",
        1,
    ),
    Target(
        "CPU-s/GB: podgate / kubectl 1.33",
        "cpu",
        "cpu_s_per_gb",
        PODGATE_TUNNEL,
        KUBECTL_TUNNEL,
        "<=",
        1,
    ),
    # Issue 14: the helper agent (pod-ip, h2) against the kubelet path (SPDY through a
    # real kube-apiserver) to the same pod; informational.
    *_both(
        "{d}, helper agent (pod-ip, h2) / kubelet path (SPDY)",
        "mb_per_s",
        ("helper-agent/podgate-h2",),
        "cluster/podgate-spdy",
        None,
        0,
    ),
    Target(
        "conn/s: helper agent (pod-ip, h2) / kubelet path (SPDY)",
        "connrate",
        "conn_per_s",
        ("helper-agent/podgate-h2",),
        "cluster/podgate-spdy",
        None,
        0,
    ),
    # Informational: the same comparisons against podgate's own agent.
    *_both(
        "{d}, agent: podgate / kubectl 1.30",
        "mb_per_s",
        (f"{A}/podgate-spdy",),
        f"{A}/kubectl-1.30",
        None,
        0,
    ),
    Target(
        "conn/s, agent: podgate / kubectl 1.30",
        "connrate",
        "conn_per_s",
        (f"{A}/podgate-spdy",),
        f"{A}/kubectl-1.30",
        None,
        0,
    ),
    Target(
        "concurrent MB/s, agent: podgate / kubectl 1.30",
        "concurrency",
        "mb_per_s",
        (f"{A}/podgate-spdy",),
        f"{A}/kubectl-1.30",
        None,
        0,
    ),
]


TARGETS_BY_LABEL = {t.label: t for t in TARGETS}

# --------------------------------------------------------------------------- medians


def _median(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def _cpu_pct(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for r in rows for k in r.get("cpu_pct", {})}
    return {k: _median([r["cpu_pct"][k] for r in rows if k in r.get("cpu_pct", {})]) for k in keys}


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per case and client: medians over the repeats (failures summed, peaks maxed)."""
    out: dict[str, dict[str, Any]] = {}
    for case in ("bulk_download", "bulk_upload"):
        for cid, rs in runs.get(case, {}).items():
            ok = [r for r in rs if "error" not in r]
            row: dict[str, Any] = {
                "mb_per_s": _median([r["mb_per_s"] for r in ok]),
                "runs": len(ok),
                "errors": len(rs) - len(ok),
                "bytes": _median([r["bytes"] for r in ok]),
                "cpu_pct": _cpu_pct(ok),
            }
            if ok and ok[0].get("cpu_s") is not None:
                row["cpu_s_per_gb"] = _median([r["cpu_s_per_gb"] for r in ok])
            out.setdefault(case, {})[cid] = row
    # CPU per GB over every bulk run of a forwarder (both directions).
    cpu: dict[str, dict[str, Any]] = {}
    for case in ("bulk_download", "bulk_upload"):
        for cid, rs in runs.get(case, {}).items():
            for r in rs:
                if "error" in r or r.get("cpu_s") is None:
                    continue
                acc = cpu.setdefault(cid, {"cpu_s": 0.0, "bytes": 0})
                acc["cpu_s"] += r["cpu_s"]
                acc["bytes"] += r["bytes"]
    for cid, acc in cpu.items():
        acc["cpu_s_per_gb"] = acc["cpu_s"] / (acc["bytes"] / 1e9) if acc["bytes"] else float("nan")
        for case in ("bulk_download", "bulk_upload"):
            bulk_row = out.get(case, {}).get(cid)
            if bulk_row is not None:
                acc[f"{case.removeprefix('bulk_')}_cpu_s_per_gb"] = bulk_row.get("cpu_s_per_gb")
    if cpu:
        out["cpu"] = cpu
    for cid, rs in runs.get("connrate", {}).items():
        ok = [r for r in rs if "error" not in r]
        out.setdefault("connrate", {})[cid] = {
            "conn_per_s": _median([r["conn_per_s"] for r in ok]),
            "p50_ms": _median([r["p50_ms"] for r in ok]),
            "p99_ms": _median([r["p99_ms"] for r in ok]),
            "errors": sum(r["errors"] for r in ok) + len(rs) - len(ok),
            "runs": len(ok),
            "cpu_pct": _cpu_pct(ok),
        }
    for case in ("concurrency", "concurrency500"):
        for cid, rs in runs.get(case, {}).items():
            ok = [r for r in rs if "error" not in r]
            row = {
                "failures": sum(r["failures"] for r in ok) + sum(1 for r in rs if "error" in r),
                "mb_per_s": _median([r["mb_per_s"] for r in ok]),
                "open_seconds": _median([r["open_seconds"] for r in ok]),
                "p99_ms": _median([r["p99_ms"] for r in ok]),
                "runs": len(ok),
                "cpu_pct": _cpu_pct(ok),
            }
            peaks = [r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb") is not None]
            if peaks:
                row["peak_rss_mb"] = max(peaks)
            out.setdefault(case, {})[cid] = row
    for case in ("idle_connections", "idle_sessions"):
        for cid, rs in runs.get(case, {}).items():
            ok = [r for r in rs if "error" not in r]
            if ok:
                out.setdefault(case, {})[cid] = dict(ok[-1])
            else:
                out.setdefault(case, {})[cid] = {"error": rs[-1]["error"] if rs else "not run"}
    return out


# --------------------------------------------------------------------------- targets


def _value(summary: dict[str, dict[str, Any]], case: str, cid: str, metric: str) -> float | None:
    v = summary.get(case, {}).get(cid, {}).get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def evaluate(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target: the clients used, the value (ratio or absolute) and whether it is met."""
    rows = []
    for t in TARGETS:
        num = next((c for c in t.num if _value(summary, t.case, c, t.metric) is not None), None)
        value: float | None = None
        if num is not None:
            value = _value(summary, t.case, num, t.metric)
            if t.den is not None:
                den = _value(summary, t.case, t.den, t.metric)
                value = value / den if (value is not None and den) else None
        ok: bool | None = None
        if value is not None and t.op is not None:
            ok = value >= t.bound if t.op == ">=" else value <= t.bound
        rows.append(
            {
                "label": t.label,
                "case": t.case,
                "metric": t.metric,
                "numerator": num or t.num[0],
                "denominator": t.den,
                "ratio": t.is_ratio,
                "value": value,
                "target": t.describe_target(),
                "op": t.op,
                "bound": t.bound if t.op else None,
                "ok": ok,
            }
        )
    return rows


# --------------------------------------------------------------------------- printing


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, spec)


CPU_HEADERS = ["fwd CPU%", "server CPU%", "bench CPU%"]


def _cpu_cols(row: dict[str, Any]) -> list[str]:
    pct = row.get("cpu_pct", {})
    return [_fmt(pct.get(k), ".0f") for k in ("forwarder", "server", "bench")]


def _mib(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / 2**20:.0f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return lines


def format_report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    summary = results["summary"]
    clients = results["clients"]
    sizes = meta["sizes"]
    out: list[str] = []
    out.append(
        f"podgate bench ({meta['mode']}, repeat {meta['repeat']}, medians) on {meta['machine']}"
    )
    out.append(
        f"load average before/after: {meta['loadavg_before']} / {meta.get('loadavg_after', '-')}"
    )
    out.append("")

    out.append("Clients (server/client):")
    for cid, info in clients.items():
        out.append(f"   {cid:<24}  {info.get('note', '')}")
    out.append("")

    bulk_ids = [
        c
        for c in clients
        if c in summary.get("bulk_download", {}) or c in summary.get("bulk_upload", {})
    ]
    out.append(
        f"1+5. Bulk, one connection, {sizes['bulk_mib']} MiB per run (less where that "
        f"would take over {sizes['bulk_max_seconds']:g} s): MB/s, forwarder CPU-s per GB"
    )
    rows = []
    for cid in bulk_ids:
        d = summary.get("bulk_download", {}).get(cid, {})
        u = summary.get("bulk_upload", {}).get(cid, {})
        c = summary.get("cpu", {}).get(cid, {})
        rows.append(
            [
                cid,
                _fmt(d.get("mb_per_s")),
                _fmt(u.get("mb_per_s")),
                _mib(d.get("bytes")) + "/" + _mib(u.get("bytes")),
                _fmt(c.get("download_cpu_s_per_gb"), ".2f"),
                _fmt(c.get("upload_cpu_s_per_gb"), ".2f"),
            ]
        )
    out += _table(
        ["client", "down MB/s", "up MB/s", "MiB/run", "cpu-s/GB down", "cpu-s/GB up"], rows
    )
    out.append("")

    out.append(
        f"2. New connections: {sizes['connrate_threads']} threads, connect -> 64 B echo -> close, "
        f"{sizes['connrate_seconds']:g} s per run"
    )
    rows = [
        [
            cid,
            _fmt(r.get("conn_per_s"), ".0f"),
            _fmt(r.get("p50_ms"), ".2f"),
            _fmt(r.get("p99_ms"), ".2f"),
            _fmt(r.get("errors")),
            *_cpu_cols(r),
        ]
        for cid, r in summary.get("connrate", {}).items()
    ]
    out += _table(["client", "conn/s", "p50 ms", "p99 ms", "errors", *CPU_HEADERS], rows)
    out.append("")

    for case, title in (("concurrency", "3. Concurrency"), ("concurrency500", "3b. Concurrency")):
        if case not in summary:
            continue
        out.append(
            f"{title}: {sizes[f'{case}_connections']} connections at once, "
            f"{sizes[f'{case}_kib']} KiB echoed on each"
        )
        rows = [
            [
                cid,
                _fmt(r.get("failures")),
                _fmt(r.get("mb_per_s")),
                _fmt(r.get("open_seconds"), ".2f"),
                _fmt(r.get("p99_ms"), ".0f"),
                _fmt(r.get("peak_rss_mb")),
                *_cpu_cols(r),
            ]
            for cid, r in summary[case].items()
        ]
        headers = ["client", "failures", "MB/s", "open s", "p99 ms", "peak RSS MB", *CPU_HEADERS]
        out += _table(headers, rows)
        out.append("")

    out.append(f"4. Idle: {sizes['idle_connections']} open forwarded connections")
    rows = []
    for cid, r in summary.get("idle_connections", {}).items():
        if "error" in r:
            rows.append([cid, "-", "-", "-", r["error"][:60]])
        else:
            rows.append(
                [
                    cid,
                    _fmt(r.get("kb_per_conn"), ".2f"),
                    _fmt(r["rss_before"] / 2**20),
                    _fmt(r["rss_after"] / 2**20),
                    _fmt(r.get("failures")),
                ]
            )
    out += _table(["client", "KB/conn", "RSS before MB", "RSS after MB", "failures"], rows)
    for cid, r in summary.get("idle_sessions", {}).items():
        if "error" in r:
            out.append(f"   {sizes['idle_sessions']} idle sessions ({cid}): error {r['error']}")
        else:
            out.append(
                f"   {r['sessions']} idle sessions ({cid}): {r['kb_per_session']:.1f} KB/session, "
                f"GET /sessions p50 {r['get_p50_ms']:.1f} ms, p99 {r['get_p99_ms']:.1f} ms, "
                f"created at {r['create_per_s']:.0f}/s, all ready after {r['ready_seconds']:.1f} s"
            )
    out.append("")

    if results.get("unavailable"):
        out.append("Not run:")
        for cid, reason in results["unavailable"].items():
            out.append(f"   {cid}: {reason[:160]}")
        out.append("")

    out.append("Targets (issue 6), ratios of medians measured in this run")
    rows = []
    for t in results["targets"]:
        mark = {True: "\u2713", False: "\u2717", None: ""}[t["ok"]]
        if t["value"] is None:
            value = "n/a"
        else:
            # one more digit where rounding would show the bound itself on a miss
            spec = ".3f" if t["ok"] is False and round(t["value"], 2) == t["bound"] else ".2f"
            value = format(t["value"], spec) + ("\u00d7" if t["ratio"] else "")
        rows.append([_target_label(t), value, t["target"], mark])
    out += _table(["target", "value", "goal", ""], rows)
    met = sum(1 for t in results["targets"] if t["ok"])
    judged = sum(1 for t in results["targets"] if t["ok"] is not None)
    out.append(f"{met}/{judged} targets met")
    if meta["mode"] == "smoke":
        out.append("(smoke run: sizes are far too small for these numbers to mean anything)")
    out.append("")
    out.append(f"total time {meta['total_seconds']:.0f} s")
    return "\n".join(out)


def _target_label(t: dict[str, Any]) -> str:
    """The target's label, naming the stand-in client when the preferred one is missing."""
    label: str = t["label"]
    if t["numerator"] not in TARGETS_BY_LABEL[label].num[:1]:
        label += f" (as {t['numerator'].split('/')[-1]})"
    return label


def write_chart(results: dict[str, Any], path: Path) -> None:
    bars = [
        Bar(
            _target_label(t),
            t["value"],
            t["bound"],
            t["ok"],
        )
        for t in results["targets"]
        if t["ratio"]
    ]
    meta = results["meta"]
    bar_chart(
        path,
        "podgate bench: ratios (tick = target)",
        f"{meta['mode']} run, repeat {meta['repeat']}, {meta['machine']}, {meta['date']}",
        bars,
    )
