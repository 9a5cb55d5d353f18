"""``python -m bench``: start everything on loopback, run every case, print the table.

See bench/README.md for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import load
from bench.forwarders import (
    SERVE_LIMITS,
    Client,
    Server,
    Started,
    Unavailable,
    direct_client,
    kubectl_client,
    podgate_client,
    socat_relay_client,
    start_agent,
    start_cluster,
    start_spdyserver,
)
from bench.report import evaluate, format_report, summarize, write_chart
from bench.servers import TargetServer, start_echo, start_sink, start_source
from tests.support.procs import ManagedProcess

BENCH_DIR = Path(__file__).resolve().parent

#: podgate transports to benchmark, one client each per server. Add "websocket",
#: "ws-channel", "h2" here as they land; a transport a server does not speak shows as
#: "not run" with the reason, and the other clients still run.
TRANSPORTS: tuple[str, ...] = ("spdy", "websocket", "h2")
#: Transports only a podgate agent serves (protocols.md §5.2).
AGENT_ONLY = frozenset({"h2"})

#: kubectl clients: (version, KUBECTL_PORT_FORWARD_WEBSOCKETS). 1.30 speaks SPDY; 1.33
#: uses the WebSocket tunnel by default (and falls back to SPDY against the agent).
KUBECTLS: tuple[tuple[str, bool | None], ...] = (("1.30", False), ("1.33", None))

CASES = ("bulk", "connrate", "concurrency", "concurrency500", "idle", "sessions")


@dataclass(frozen=True)
class Sizes:
    bulk_mib: int
    bulk_max_seconds: float
    probe_mib: int
    connrate_threads: int
    connrate_seconds: float
    concurrency_connections: int
    concurrency_kib: int
    concurrency500_connections: int
    concurrency500_kib: int
    idle_connections: int
    idle_sessions: int
    get_requests: int
    timeout: float
    settle: float
    rss_samples: int


FULL = Sizes(
    bulk_mib=512,
    bulk_max_seconds=6.0,
    probe_mib=48,
    connrate_threads=8,
    connrate_seconds=3.0,
    concurrency_connections=1000,
    concurrency_kib=100,
    concurrency500_connections=500,
    concurrency500_kib=200,
    idle_connections=2000,
    idle_sessions=1000,
    get_requests=20,
    timeout=60.0,
    settle=0.5,
    rss_samples=5,
)
SMOKE = Sizes(
    bulk_mib=4,
    bulk_max_seconds=5.0,
    probe_mib=1,
    connrate_threads=8,
    connrate_seconds=0.3,
    concurrency_connections=20,
    concurrency_kib=16,
    concurrency500_connections=10,
    concurrency500_kib=32,
    idle_connections=20,
    idle_sessions=5,
    get_requests=3,
    timeout=20.0,
    settle=0.05,
    rss_samples=1,
)


def bench_cpu_seconds() -> float:
    """CPU time of this process (the load generator), all threads."""
    t = os.times()
    return t.user + t.system


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def raise_nofile() -> int:
    """Raise the soft file-descriptor limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs, {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def start_clients(
    stack: ExitStack,
    starters: list[tuple[str, Callable[[], Started]]],
    unavailable: dict[str, str],
) -> dict[str, Client]:
    """Start every client in parallel; register each stop on ``stack`` (even when
    interrupted half-way), record those that cannot run in ``unavailable``."""
    clients: dict[str, Client] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(starters))) as pool:
        futures = [(cid, pool.submit(fn)) for cid, fn in starters]
        try:
            for cid, fut in futures:
                try:
                    client, stop = fut.result()
                except Unavailable as exc:
                    unavailable[cid] = str(exc)
                    log(f"{cid}: not run: {exc}")
                    continue
                except Exception as exc:
                    unavailable[cid] = f"{type(exc).__name__}: {exc}"
                    log(f"{cid}: failed to start: {exc}")
                    continue
                stack.callback(stop)
                clients[cid] = client
        except BaseException:
            for cid, fut in futures:  # interrupted: stop whatever still comes up
                if cid in clients:
                    continue
                with contextlib.suppress(BaseException):
                    fut.result()[1]()
            raise
    return clients


# --------------------------------------------------------------------------- cases


class Bench:
    def __init__(self, sizes: Sizes, repeat: int, cases: set[str]) -> None:
        self.sizes = sizes
        self.repeat = repeat
        self.cases = cases
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.bulk_bytes: dict[tuple[str, str], int] = {}

    def record(self, case: str, cid: str, result: dict[str, Any]) -> None:
        self.runs.setdefault(case, {}).setdefault(cid, []).append(result)

    def guarded(self, case: str, client: Client, fn: Callable[[], dict[str, Any]]) -> None:
        for proc in client.processes:
            if proc.returncode is not None:
                self.record(case, client.id, {"error": f"{proc.name} exited ({proc.returncode})"})
                return
        meters = {
            "forwarder": client.stats.cpu_seconds if client.stats else None,
            "server": client.server_stats.cpu_seconds if client.server_stats else None,
            "bench": bench_cpu_seconds,
        }
        before = {k: m() for k, m in meters.items() if m is not None}
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            log(f"{case} {client.id}: {type(exc).__name__}: {exc}")
            self.record(case, client.id, {"error": f"{type(exc).__name__}: {exc}"})
            return
        wall = time.perf_counter() - t0
        # CPU use of each process during the run, in % of one core (200 = both cores):
        # shows which process was the bottleneck.
        after = {k: m() for k, m in meters.items() if m is not None}
        result["cpu_pct"] = {k: (after[k] - v) / wall * 100 for k, v in before.items()}
        self.record(case, client.id, result)

    def bulk(self, client: Client, direction: str, nbytes: int | None = None) -> dict[str, Any]:
        if nbytes is None:
            nbytes = self.bulk_bytes.get((client.id, direction), self.sizes.bulk_mib << 20)
        cpu0 = client.stats.cpu_seconds() if client.stats else None
        if direction == "download":
            t = load.bulk_download(client.ports["source"], nbytes, self.sizes.timeout)
        else:
            t = load.bulk_upload(client.ports["sink"], nbytes, self.sizes.timeout)
        result: dict[str, Any] = {"mb_per_s": t.mb_per_s, "bytes": t.nbytes, "seconds": t.seconds}
        if client.stats is not None and cpu0 is not None:
            cpu = client.stats.cpu_seconds() - cpu0
            result["cpu_s"] = cpu
            result["cpu_s_per_gb"] = cpu / (t.nbytes / 1e9)
        return result

    def probe_bulk(self, clients: list[Client]) -> None:
        """Warm every path up with a short transfer each way, and size the bulk runs:
        ``bulk_mib``, or less for a client that would need more than
        ``bulk_max_seconds`` for it (the table shows the MiB actually moved)."""
        full = self.sizes.bulk_mib << 20
        probe = min(full, self.sizes.probe_mib << 20)
        for client in clients:
            if "bulk" not in client.cases:
                continue
            for direction in ("download", "upload"):
                try:
                    rate = self.bulk(client, direction, probe)["mb_per_s"] * 1e6
                except Exception as exc:
                    log(f"probe {direction} {client.id}: {type(exc).__name__}: {exc}")
                    continue
                fit = int(rate * self.sizes.bulk_max_seconds) >> 20 << 20
                self.bulk_bytes[(client.id, direction)] = max(probe, min(full, fit))

    def connrate(self, client: Client) -> dict[str, Any]:
        r = load.conn_rate(
            client.ports["echo"],
            threads=self.sizes.connrate_threads,
            duration=self.sizes.connrate_seconds,
        )
        return r.summary()

    def concurrency(
        self, client: Client, connections: int | None = None, kib: int | None = None
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            return load.concurrent_echo(
                client.ports["echo"],
                connections=connections or self.sizes.concurrency_connections,
                size=(kib or self.sizes.concurrency_kib) * 1024,
                timeout=self.sizes.timeout,
            )

        if client.stats is None:
            return run()
        with load.RssSampler(client.stats) as sampler:
            result = run()
        result["peak_rss_mb"] = sampler.peak / 2**20
        return result

    def concurrency500(self, client: Client) -> dict[str, Any]:
        """Fewer, larger echoes (issue 13): the h2/SPDY ratio to the agent."""
        return self.concurrency(
            client, self.sizes.concurrency500_connections, self.sizes.concurrency500_kib
        )

    def idle(self, client: Client) -> dict[str, Any]:
        assert client.stats is not None
        return load.idle_connections(
            client.ports["echo"],
            client.stats.rss,
            connections=self.sizes.idle_connections,
            timeout=self.sizes.timeout,
            settle=self.sizes.settle,
            samples=self.sizes.rss_samples,
        )

    def run_round(self, clients: list[Client], r: int) -> None:
        steps: list[tuple[str, str, Callable[[Client], dict[str, Any]]]] = []
        if "bulk" in self.cases:
            steps.append(("bulk_download", "bulk", lambda c: self.bulk(c, "download")))
            steps.append(("bulk_upload", "bulk", lambda c: self.bulk(c, "upload")))
        if "connrate" in self.cases:
            steps.append(("connrate", "connrate", self.connrate))
        if "concurrency" in self.cases:
            steps.append(("concurrency", "concurrency", self.concurrency))
        if "concurrency500" in self.cases:
            steps.append(("concurrency500", "concurrency500", self.concurrency500))
        for case, kind, fn in steps:
            t0 = time.monotonic()
            for client in clients:
                if kind in client.cases:
                    self.guarded(case, client, partial(fn, client))
            log(f"round {r + 1}/{self.repeat}: {case} done in {time.monotonic() - t0:.1f} s")


def idle_sessions(
    server: Server,
    workdir: Path,
    echo_port: int,
    count: int,
    get_requests: int,
    timeout: float,
    started: list[ManagedProcess],
) -> dict[str, Any]:
    """A fresh ``podgate serve`` with ``count`` idle sessions (target pod/echo, ports
    ["0:ECHO"]): RSS per session and ``GET /sessions`` latency."""
    from tests.support.podgate import api_client, start_serve

    data_dir = workdir / "sessions"
    data_dir.mkdir(parents=True, exist_ok=True)
    serve = start_serve(data_dir, server.kubeconfig, extra_args=SERVE_LIMITS)
    started.append(serve.process)
    try:
        stats = load.ProcStats([serve.process.pid])
        body = {"namespace": "default", "target": "pod/echo", "ports": [f"0:{echo_port}"]}
        with api_client(serve.url, timeout=timeout) as api:

            def create() -> None:
                response = api.post("/sessions", json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"POST /sessions: {response.status_code} {response.text}")

            def ready_count() -> int:
                data = api.get("/sessions").json()["data"]
                bad = [s for s in data if s["status"] in ("failed", "stopped")]
                if bad:
                    raise RuntimeError(f"session {bad[0]['status']}: {bad[0]['last_error']}")
                return sum(1 for s in data if s["status"] == "ready")

            def wait_ready(n: int) -> None:
                deadline = time.monotonic() + timeout * 2
                while ready_count() < n:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {ready_count()} of {n} sessions ready")
                    time.sleep(0.2)

            create()  # a first session warms up imports, pools and caches
            wait_ready(1)
            time.sleep(0.3)
            before = stats.rss()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                for f in [pool.submit(create) for _ in range(count - 1)]:
                    f.result()
            created = time.monotonic() - t0
            wait_ready(count)
            ready = time.monotonic() - t0
            time.sleep(0.5)
            after = statistics.median(_samples(stats.rss, 5, 0.1))
            latencies = []
            for _ in range(get_requests):
                g0 = time.perf_counter()
                response = api.get("/sessions")
                latencies.append(time.perf_counter() - g0)
                assert response.json()["count"] == count
        return {
            "sessions": count,
            "rss_before": before,
            "rss_after": after,
            "kb_per_session": (after - before) / max(count - 1, 1) / 1024,
            "create_per_s": (count - 1) / created if created else float("nan"),
            "ready_seconds": ready,
            "get_p50_ms": load.percentile(latencies, 0.5) * 1e3,
            "get_p99_ms": load.percentile(latencies, 0.99) * 1e3,
        }
    finally:
        serve.process.stop(timeout=10)


def _samples(fn: Callable[[], int], n: int, interval: float) -> list[int]:
    out = []
    for _ in range(n):
        out.append(fn())
        time.sleep(interval)
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat (seconds)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (default 3)")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        metavar="CASE",
        help=f"cases to run (default all: {' '.join(CASES)})",
    )
    parser.add_argument(
        "--transports",
        nargs="+",
        default=list(TRANSPORTS),
        metavar="T",
        help=f"podgate transports (default {' '.join(TRANSPORTS)})",
    )
    parser.add_argument("--bulk-mib", type=int, default=None, help="MiB per bulk run")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for results.json, ratios.png and logs/ "
        "(default: bench/, logs in bench/out/logs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir under bench/out/")
    return parser.parse_args(argv)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every process we started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.bulk_mib is not None:
        sizes = Sizes(**{**sizes.__dict__, "bulk_mib": args.bulk_mib})
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    cases = set(args.cases)
    started = time.monotonic()
    nofile = raise_nofile()
    out_dir = BENCH_DIR / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    output = args.output if args.output is not None else BENCH_DIR
    logs = output / "logs" if args.output is not None else out_dir / "logs"
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=out_dir))
    meta: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "repeat": repeat,
        "cases": sorted(cases),
        "transports": list(args.transports),
        "sizes": sizes.__dict__,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_before": loadavg(),
        "nofile": nofile,
        "uvloop": importlib.util.find_spec("uvloop") is not None,
    }
    log(f"{meta['mode']} run, repeat {repeat}, work dir {workdir}")
    bench = Bench(sizes, repeat, cases)
    unavailable: dict[str, str] = {}
    all_processes: list[ManagedProcess] = []
    try:
        with sigterm_as_interrupt(), ExitStack() as stack:
            targets_srv: dict[str, TargetServer] = {}
            for name, fn in (("source", start_source), ("sink", start_sink), ("echo", start_echo)):
                srv = fn()
                stack.callback(srv.process.stop)
                all_processes.append(srv.process)
                targets_srv[name] = srv
            targets = {name: s.port for name, s in targets_srv.items()}
            servers: dict[str, Server] = {}
            for start in (start_spdyserver, start_agent, start_cluster):
                try:
                    started_servers = start(stack, workdir)
                except Unavailable as exc:
                    unavailable[start.__name__.removeprefix("start_")] = str(exc)
                    log(str(exc))
                    continue
                if isinstance(started_servers, Server):
                    started_servers = [started_servers]
                for server in started_servers:
                    servers[server.name] = server
                    all_processes.append(server.process)
            per_client = cases - {"sessions"}
            starters: list[tuple[str, Callable[[], Started]]] = []
            if per_client:
                for server in servers.values():
                    for transport in args.transports:
                        if server.transports is not None and transport not in server.transports:
                            continue
                        if transport in AGENT_ONLY and server.name not in ("agent", "helper-agent"):
                            continue  # podgate's own link: no Kubernetes server speaks it
                        starters.append(
                            (
                                f"{server.name}/podgate-{transport}",
                                partial(podgate_client, server, transport, targets, workdir),
                            )
                        )
                    for version, websockets in KUBECTLS if server.kubectl else ():
                        starters.append(
                            (
                                f"{server.name}/kubectl-{version}",
                                partial(
                                    kubectl_client, server, version, websockets, targets, workdir
                                ),
                            )
                        )
                starters.append(("-/socat-relay", lambda: socat_relay_client(targets)))
                starters.append(("-/direct", lambda: direct_client(targets)))
            clients = start_clients(stack, starters, unavailable)
            for client in clients.values():
                all_processes.extend(client.processes)
            log(f"{len(clients)} clients up after {time.monotonic() - started:.1f} s")
            order = list(clients.values())
            if "idle" in cases:  # first, while the forwarders' heaps are fresh
                t0 = time.monotonic()
                for client in order:
                    if "idle" in client.cases:
                        bench.guarded("idle_connections", client, partial(bench.idle, client))
                log(f"idle connections done in {time.monotonic() - t0:.1f} s")
            if "bulk" in cases:
                t0 = time.monotonic()
                bench.probe_bulk(order)
                log(f"bulk warm-up and sizing done in {time.monotonic() - t0:.1f} s")
            for r in range(repeat):
                bench.run_round(order, r)
            if "sessions" in cases:
                t0 = time.monotonic()
                sessions_server = servers.get("spdyserver") or next(iter(servers.values()), None)
                if sessions_server is None:
                    unavailable["podgate sessions"] = "no server"
                else:
                    try:
                        result = idle_sessions(
                            sessions_server,
                            workdir,
                            targets["echo"],
                            sizes.idle_sessions,
                            sizes.get_requests,
                            sizes.timeout,
                            all_processes,
                        )
                        result["server"] = sessions_server.name
                    except Exception as exc:
                        log(f"idle sessions: {type(exc).__name__}: {exc}")
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    bench.record("idle_sessions", "podgate", result)
                log(f"idle sessions done in {time.monotonic() - t0:.1f} s")
            client_info = {
                c.id: {"server": c.server, "name": c.name, "note": c.note, "cases": sorted(c.cases)}
                for c in order
            }
            spdyserver_log = servers["spdyserver"].log if "spdyserver" in servers else None
            if spdyserver_log is not None and any(c.name == "kubectl-1.33" for c in order):
                # the proof that kubectl 1.33 used the WebSocket tunnel
                text = spdyserver_log.read_text(errors="replace")
                meta["spdyserver_tunnel_sessions"] = text.count("tunnel start")
    except KeyboardInterrupt:
        log("interrupted: every process stopped")
        return 130
    finally:
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for proc in all_processes:
            with contextlib.suppress(Exception):
                (logs / f"{proc.name}-{proc.pid}.log").write_text(proc.describe())
        for path in [*workdir.rglob("*.log"), *workdir.rglob("*.stdout")]:
            with contextlib.suppress(OSError):
                shutil.copy(path, logs / f"{path.parent.name}-{path.name}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_after"] = loadavg()
    meta["pids"] = [p.pid for p in all_processes]
    meta["total_seconds"] = time.monotonic() - started
    summary = summarize(bench.runs)
    results: dict[str, Any] = {
        "meta": meta,
        "clients": client_info,
        "unavailable": unavailable,
        "summary": summary,
        "runs": bench.runs,
    }
    results["targets"] = evaluate(summary)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        write_chart(results, output / "ratios.png")
    except Exception:
        traceback.print_exc()
    print(format_report(results))
    print(f"\nwrote {output / 'results.json'} and {output / 'ratios.png'} (logs: {logs})")
    return 0
