"""A smoke run of the benchmark (``python -m bench --smoke``): tiny sizes, one repeat.

It proves the harness works end to end (every server and client starts, every case
produces numbers, results.json and the chart are written, nothing is left running). It
never asserts a timing or a ratio: performance targets are for ``make bench``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.build import build_spdyserver

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)

#: client case -> (summary case, metrics that must be numbers)
METRICS = {
    "bulk": [("bulk_download", ["mb_per_s"]), ("bulk_upload", ["mb_per_s"])],
    "connrate": [("connrate", ["conn_per_s", "p50_ms", "p99_ms"])],
    "concurrency": [("concurrency", ["mb_per_s", "failures"])],
    "concurrency500": [("concurrency500", ["mb_per_s", "failures"])],
    "idle": [("idle_connections", ["kb_per_conn", "rss_before", "rss_after"])],
}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _alive_in_groups(groups: set[int]) -> list[str]:
    """Processes (not zombies) whose process group is one the bench started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) in groups and state != "Z":
            found.append(stat[: stat.rindex(")") + 1])
    return found


def test_bench_smoke(tmp_path: Path) -> None:
    build_spdyserver()  # outside the run: a first build takes longer than the run itself
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Targets (issue 6)" in proc.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["unavailable"] == {}, results["unavailable"]
    clients = results["clients"]
    summary = results["summary"]
    names = {c["name"] for c in clients.values()}
    assert {"podgate-spdy", "kubectl-1.30", "kubectl-1.33", "socat-relay", "direct"} <= names
    servers = {c["server"] for c in clients.values()}
    assert servers == {"spdyserver", "agent", "cluster", "helper-agent", "-"}

    for case_runs in results["runs"].values():
        for cid, runs in case_runs.items():
            for run in runs:
                assert "error" not in run, (cid, run)

    for cid, info in clients.items():
        for client_case in info["cases"]:
            for case, metrics in METRICS[client_case]:
                row = summary[case][cid]
                for metric in metrics:
                    assert _number(row.get(metric)), (case, cid, metric, row)
        if info["name"] != "direct" and "bulk" in info["cases"]:
            assert _number(summary["cpu"][cid]["cpu_s_per_gb"]), cid
        for case in ("concurrency", "concurrency500"):
            if case in info["cases"]:
                assert summary[case][cid]["failures"] == 0, (cid, summary[case][cid])
                if info["name"] != "direct":
                    assert _number(summary[case][cid]["peak_rss_mb"]), (case, cid)

    sessions = summary["idle_sessions"]["podgate"]
    for metric in ("kb_per_session", "get_p50_ms", "get_p99_ms"):
        assert _number(sessions[metric]), (metric, sessions)

    targets = results["targets"]
    assert targets and all("value" in t and "ok" in t for t in targets)
    assert (tmp_path / "ratios.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # every process the bench started led its own process group (socat's forks included)
    assert results["meta"]["pids"]
    assert _alive_in_groups(set(results["meta"]["pids"])) == []
