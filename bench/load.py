"""The load generators (run in the bench's own process) and /proc readings of the
forwarder process.

Bulk transfers use one blocking socket with 1 MiB ``recv_into`` / ``sendall`` from a
pre-allocated buffer; the connection-rate case uses 8 threads with blocking sockets;
concurrency and idle connections use asyncio protocols (uvloop when installed), one
event loop for all connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.servers import SOURCE_HEADER

__all__ = [
    "ProcStats",
    "RssSampler",
    "bulk_download",
    "bulk_upload",
    "concurrent_echo",
    "conn_rate",
    "idle_connections",
    "percentile",
    "run_async",
]

CHUNK = 1 << 20
_ZEROS = memoryview(bytearray(CHUNK))
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

T = TypeVar("T")


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine on a fresh loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# --------------------------------------------------------------------------- /proc


class ProcStats:
    """CPU time and memory of a forwarder: its process(es), and with ``group`` every
    process of their process groups too (socat forks one relay per connection)."""

    def __init__(self, pids: list[int], *, group: bool = False) -> None:
        self.pids = pids
        self.group = group

    @staticmethod
    def _stat(pid: int) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        # fields[0] is field 3 of proc(5): pgrp=5, utime=14, stime=15, cutime=16, cstime=17
        return text[text.rindex(")") + 2 :].split()

    def members(self) -> list[int]:
        if not self.group:
            return self.pids
        groups = set(self.pids)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if int(self._stat(int(entry))[2]) in groups:
                        found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    continue
        return found

    def cpu_seconds(self) -> float:
        """utime + stime, plus those of reaped children; a live child counts by itself
        and moves into its parent's cutime when reaped, so nothing counts twice."""
        total = 0
        for pid in self.members():
            try:
                fields = self._stat(pid)
            except OSError:
                continue
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        return total / _CLK_TCK

    def _status(self, key: str) -> int:
        total = 0
        for pid in self.members():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1]) * 1024
                            break
            except OSError:
                continue
        return total

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        return self._status("VmRSS")

    def hwm(self) -> int:
        """Peak resident set size over the process lifetime (VmHWM)."""
        return self._status("VmHWM")


class RssSampler:
    """Samples VmRSS every ``interval`` seconds in a thread; ``peak`` is the maximum."""

    def __init__(self, stats: ProcStats, interval: float = 0.02) -> None:
        self._stats = stats
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self._stats.rss())
            except OSError:
                return
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, self._stats.rss())


# --------------------------------------------------------------------------- bulk


@dataclass
class Transfer:
    nbytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bulk_download(port: int, nbytes: int, timeout: float = 30.0) -> Transfer:
    """Ask the source for ``nbytes`` through the forwarder and read them all; the time
    runs from connect to the last byte. Closing only then never resets a stream that
    still carries data. (The source half-closes after the last byte, but the client
    does not wait for that EOF: kubectl 1.30 passes it on only once the client
    half-closes too.)"""
    buf = memoryview(bytearray(CHUNK))
    start = time.perf_counter()
    got = 0
    with _connect(port, timeout) as sock:
        sock.sendall(SOURCE_HEADER.pack(nbytes))
        while got < nbytes:
            n = sock.recv_into(buf, min(CHUNK, nbytes - got))
            if n == 0:
                raise ConnectionError(f"EOF after {got} of {nbytes} bytes")
            got += n
        elapsed = time.perf_counter() - start
    return Transfer(got, elapsed)


def bulk_upload(port: int, nbytes: int, timeout: float = 30.0) -> Transfer:
    """Write ``nbytes`` toward the sink, half-close, and wait for the sink's close to come
    back (so every byte was delivered); the time runs from connect to that EOF."""
    start = time.perf_counter()
    sent = 0
    with _connect(port, timeout) as sock:
        while sent < nbytes:
            n = min(CHUNK, nbytes - sent)
            sock.sendall(_ZEROS[:n])
            sent += n
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"":
            raise ConnectionError("the sink sent data")
        elapsed = time.perf_counter() - start
    return Transfer(sent, elapsed)


# --------------------------------------------------------------------------- conn/s


@dataclass
class ConnRate:
    count: int
    errors: int
    seconds: float
    latencies: list[float] = field(repr=False)
    first_error: str | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "conn_per_s": self.per_second,
            "p50_ms": percentile(self.latencies, 0.50) * 1e3,
            "p99_ms": percentile(self.latencies, 0.99) * 1e3,
            "count": self.count,
            "errors": self.errors,
            "first_error": self.first_error,
        }


def conn_rate(port: int, *, threads: int = 8, duration: float = 3.0, size: int = 64) -> ConnRate:
    """``threads`` threads doing connect → ``size`` bytes echo → close for ``duration`` s."""
    message = b"x" * size
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    first_error: list[str] = []
    start_barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        lat = latencies[index]
        start_barrier.wait()
        stop = stop_at[0]
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= stop:
                return
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.sendall(message)
                    got = 0
                    while got < size:
                        data = sock.recv(size - got)
                        if not data:
                            raise ConnectionError(f"EOF after {got} of {size} echoed bytes")
                        got += len(data)
            except OSError as exc:
                errors[index] += 1
                if not first_error:
                    first_error.append(repr(exc))
                continue
            lat.append(clock() - t0)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    begin = time.perf_counter()
    stop_at[0] = begin + duration
    start_barrier.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - begin
    flat = [x for lat in latencies for x in lat]
    return ConnRate(len(flat), sum(errors), elapsed, flat, first_error[0] if first_error else None)


# --------------------------------------------------------------------------- asyncio clients


class _EchoClient(asyncio.Protocol):
    """Sends its payload when told to, completes once the whole echo came back."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = 0.0
        self.finished = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.started = time.perf_counter()
        # The forwarder may have closed it since it opened (uvloop raises on such a write):
        # that connection failed, the run goes on.
        if self.transport.is_closing():
            if not self.done.done():
                self.done.set_exception(ConnectionError("closed by the forwarder before sending"))
            return
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.expected and not self.done.done():
            self.finished = time.perf_counter()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                ConnectionError(f"closed after {self.received} of {self.expected} bytes: {exc}")
            )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _open(port: int, expected: int, timeout: float) -> _EchoClient:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: _EchoClient(expected), "127.0.0.1", port), timeout
    )
    return proto


async def _open_many(
    port: int, count: int, expected: int, timeout: float, batch: int
) -> tuple[list[_EchoClient], list[BaseException]]:
    clients: list[_EchoClient] = []
    failures: list[BaseException] = []
    for first in range(0, count, batch):
        n = min(batch, count - first)
        results = await asyncio.gather(
            *(_open(port, expected, timeout) for _ in range(n)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                failures.append(r)
            else:
                clients.append(r)
    return clients, failures


async def _await_all(
    clients: list[_EchoClient], timeout: float
) -> tuple[list[_EchoClient], list[BaseException]]:
    done: list[_EchoClient] = []
    failures: list[BaseException] = []
    results = await asyncio.gather(
        *(asyncio.wait_for(asyncio.shield(c.done), timeout) for c in clients),
        return_exceptions=True,
    )
    for client, r in zip(clients, results, strict=True):
        if isinstance(r, BaseException):
            failures.append(r)
        else:
            done.append(client)
    return done, failures


def _describe(failures: list[BaseException]) -> str | None:
    return repr(failures[0]) if failures else None


def concurrent_echo(
    port: int, *, connections: int = 1000, size: int = 100 * 1024, timeout: float = 60.0
) -> dict[str, Any]:
    """Open ``connections`` connections at once, then have every one echo ``size`` bytes
    at the same time. Returns failures, aggregate MB/s (echoed bytes / wall time from
    the first send to the last echo) and per-connection latency."""

    async def run() -> dict[str, Any]:
        opening = time.perf_counter()
        clients, open_failures = await _open_many(port, connections, size, timeout, connections)
        opened = time.perf_counter() - opening
        payload = b"\xa5" * size
        begin = time.perf_counter()
        for c in clients:
            c.send(payload)
        done, failures = await _await_all(clients, timeout)
        end = max((c.finished for c in done), default=time.perf_counter())
        for c in clients:
            c.close()
        await asyncio.sleep(0)
        lat = [c.finished - c.started for c in done]
        elapsed = max(end - begin, 1e-9)
        return {
            "failures": len(open_failures) + len(failures),
            "mb_per_s": len(done) * size / elapsed / 1e6,
            "seconds": elapsed,
            "open_seconds": opened,
            "p50_ms": percentile(lat, 0.5) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3,
            "first_error": _describe(open_failures + failures),
        }

    return run_async(run())


def idle_connections(
    port: int,
    measure: Callable[[], int],
    *,
    connections: int = 2000,
    batch: int = 250,
    timeout: float = 30.0,
    settle: float = 0.5,
    samples: int = 5,
) -> dict[str, Any]:
    """Open ``connections`` forwarded connections (1 byte echoed on each, which proves the
    stream pair is up), leave them idle, and return ``measure()`` before and after."""

    async def run() -> dict[str, Any]:
        await asyncio.sleep(settle)
        before = measure()
        clients, failures = await _open_many(port, connections, 1, timeout, batch)
        for c in clients:
            c.send(b"i")
        done, echo_failures = await _await_all(clients, timeout)
        failures += echo_failures
        await asyncio.sleep(settle)
        taken = [measure()]
        for _ in range(samples - 1):
            await asyncio.sleep(0.1)
            taken.append(measure())
        after = statistics.median(taken)
        for c in clients:
            c.close()
        await asyncio.sleep(0.2)
        return {
            "connections": len(done),
            "failures": len(failures),
            "rss_before": before,
            "rss_after": after,
            "kb_per_conn": (after - before) / max(len(done), 1) / 1024,
            "first_error": _describe(failures),
        }

    return run_async(run())
