"""The runner's HTTP/2 link (service/runner/h2link.py) against a real `podgate agent`, with
the large windows and frames of protocols.md §5.2 as tuned for issue 6: a local client
that stops reading stalls its own stream only, and the bytes held for it stay bounded.

Held bytes: the local socket's write buffer (≤ the high-water mark, acknowledged) plus
at most one stream window of unacknowledged data, plus what the kernel buffers on the
way (bounded by the tcp_wmem/tcp_rmem maxima). The pod sends far more than all of that
together, so without back-pressure it would not stall. A stall is no progress for
``STALL`` seconds; nothing waits by sleeping.

Past the agent's stream limit (--h2-max-streams), connections wait for pairs to end
instead of failing.

Both pods speak first (they send as soon as they accept): the agent must hold those bytes
until it has answered the data stream, since DATA may not precede the response HEADERS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from service.aio.readbuffer import READ_SIZE
from service.protocols.h2 import STREAM_WINDOW
from service.runner.links.base import LinkHooks
from service.runner.links.h2 import BULK, UPSTREAM_WRITE_HIGH_WATER, H2Link, H2Pair
from service.runner.local import LOCAL_WRITE_HIGH_WATER, LocalConnection
from tests.support.podgate import run_agent

MIB = 1 << 20
STALL = 1.5
READ = 256 * 1024


def _kernel_allowance() -> int:
    """What the two TCP connections on either side of the link can hold at most: each
    has a send and a receive buffer (the link's own bytes count in the window)."""
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    return 2 * (wmem + rmem)


# One pod read the agent holds while the window is closed, plus the two bounds above.
BOUND = LOCAL_WRITE_HIGH_WATER + STREAM_WINDOW + READ + _kernel_allowance()


class SourcePod:
    """A pod that sends ``total`` pseudo-random bytes, then EOF; ``stalled`` is set once
    the receiver took nothing for ``STALL`` seconds."""

    def __init__(self, total: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.total = total
        self.sent = 0
        self.sha = hashlib.sha256()
        self.stalled = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        rng = random.Random(6)
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(STALL)
                while self.sent < self.total:
                    block = memoryview(rng.randbytes(min(READ, self.total - self.sent)))
                    while block:
                        try:
                            n = conn.send(block)
                        except TimeoutError:
                            self.stalled.set()
                            conn.settimeout(60)  # from now on: wait for the reader
                            continue
                        self.sha.update(block[:n])
                        self.sent += n
                        block = block[n:]
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(READ):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _link(agent_url: str) -> AsyncIterator[H2Link]:
    host, _, port = agent_url.removeprefix("http://").rpartition(":")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, host, int(port))
    transport.pause_reading()
    lost: list[str] = []
    hooks = LinkHooks(
        on_lost=lambda _link, reason: lost.append(reason),
        on_connection_error=lambda _local, text: lost.append(text),
        keepalive=0,
    )
    link = H2Link("default", "local", hooks)
    link.attach(transport, authority=f"{host}:{port}", scheme="http", headers=[])
    try:
        yield link
        assert lost == []
    finally:
        link.close()


async def _listen(link: H2Link, pod_port: int) -> tuple[asyncio.Server, int]:
    """A local port whose connections become pairs to ``pod_port``."""

    def accept(local: LocalConnection) -> None:
        local.remote_port = pod_port
        link.open_pair(local)

    server = await asyncio.get_running_loop().create_server(
        lambda: LocalConnection(0, 0, accept), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


@contextlib.contextmanager
def _pod(total: int) -> Iterator[SourcePod]:
    pod = SourcePod(total)
    try:
        yield pod
    finally:
        pod.close()


async def test_a_local_client_that_stops_reading_holds_bounded_bytes_and_stalls_only_itself() -> (
    None
):
    loop = asyncio.get_running_loop()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    with (
        run_agent(["default/local=host:127.0.0.1"]) as agent,
        _pod(BOUND + 16 * MIB) as pod,
    ):
        async with _link(agent.url) as link:
            slow_server, slow_port = await _listen(link, pod.port)
            echo_server, echo_local = await _listen(link, echo_port)
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", slow_port))
            sock.shutdown(socket.SHUT_WR)  # sends nothing, and reads nothing for now
            try:
                stalled = await asyncio.to_thread(pod.stalled.wait, 60)
                assert stalled, "the pod never stalled"
                [pair] = {p for p in link.pairs.values() if isinstance(p, H2Pair)}
                local = pair.local
                assert local.transport is not None

                def check_bounded() -> None:
                    assert pair.unacked <= STREAM_WINDOW
                    assert local.transport is not None
                    held = local.transport.get_write_buffer_size()
                    assert held <= LOCAL_WRITE_HIGH_WATER + STREAM_WINDOW
                    assert pod.sent <= BOUND, f"{pod.sent / MIB:.1f} MiB left the pod"

                check_bounded()
                print(f"stalled after {pod.sent / MIB:.1f} MiB (bound {BOUND / MIB:.1f} MiB)")

                # Another connection of the same link flows meanwhile, both ways.
                payload = os.urandom(8 * MIB)
                reader, writer = await asyncio.open_connection("127.0.0.1", echo_local)

                async def send() -> None:
                    writer.write(payload)
                    await writer.drain()
                    writer.write_eof()

                _, echoed = await asyncio.gather(send(), reader.read())
                assert echoed == payload
                writer.close()
                check_bounded()

                # Read now: every byte arrives, in order, then EOF.
                got, sha = 0, hashlib.sha256()
                async with asyncio.timeout(120):
                    while data := await loop.sock_recv(sock, READ):
                        got += len(data)
                        sha.update(data)
                assert (got, sha.hexdigest()) == (pod.total, pod.sha.hexdigest())
            finally:
                sock.close()
                slow_server.close()
                echo_server.close()
    echo.close()


async def test_a_pod_that_speaks_first_and_closes_gets_through() -> None:
    banner = b"220 pod ready\r\n"
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(banner)  # at once, then EOF: before the agent answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with run_agent(["default/local=host:127.0.0.1"]) as agent:
            async with _link(agent.url) as link:
                server, port = await _listen(link, listener.getsockname()[1])
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write_eof()
                    async with asyncio.timeout(20):
                        assert await reader.read() == banner
                    writer.close()
                finally:
                    server.close()
    finally:
        listener.close()


async def test_connections_past_the_stream_limit_wait_for_pairs_to_end() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    payloads = [os.urandom(64 * 1024 + i) for i in range(12)]

    async def roundtrip(port: int, payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data

    try:
        # 4 streams: two pairs at a time, twelve connections at once.
        with run_agent(
            ["default/local=host:127.0.0.1"], extra_args=["--h2-max-streams", "4"]
        ) as agent:
            async with _link(agent.url) as link:
                server, port = await _listen(link, echo_port)
                try:
                    async with asyncio.timeout(30):
                        echoed = await asyncio.gather(*(roundtrip(port, p) for p in payloads))
                    assert echoed == payloads
                    assert not link._waiting
                finally:
                    server.close()
    finally:
        echo.close()


class SinkPod:
    """A pod that reads each connection to its EOF and keeps the SHA-256 of what came."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._read, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sha = hashlib.sha256()
        while data := await reader.read(READ):
            sha.update(data)
        self.received.append(sha.hexdigest())
        writer.close()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` on the loop (every 20 ms) until it holds; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)


async def test_an_agent_that_stops_reading_pauses_every_local_reader_and_bounds_the_buffer() -> (
    None
):
    """The agent process is stopped (SIGSTOP): it reads nothing, so the link's socket stops
    taking bytes. The link may send up to the connection window (16 MiB) before flow
    control stops it; the kernel takes a few MiB of that, and without pausing the local
    readers the rest would pile up in the socket's write buffer. Paused, it holds the
    high-water mark plus what the locals' reads of one loop turn queued. SIGCONT: every
    byte arrives."""
    connections = 4
    payloads = [os.urandom(8 * MIB) for _ in range(connections)]  # 32 MiB > the window
    # After the buffer crosses its mark: one read of every local socket in the same loop
    # turn, and the bytes the link held back for one flush.
    slack = connections * READ_SIZE + BULK
    sink = SinkPod()
    await sink.start()
    assert sink.server is not None
    with run_agent(["default/local=host:127.0.0.1"]) as agent:
        async with _link(agent.url) as link:
            assert link.transport is not None
            server, port = await _listen(link, sink.port)
            await link.verified(20)  # the agent's SETTINGS and window are in
            agent.process.send_signal(signal.SIGSTOP)
            try:

                async def send(payload: bytes) -> None:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(payload)
                    await writer.drain()
                    writer.write_eof()

                senders = [asyncio.create_task(send(p)) for p in payloads]
                await _until(lambda: link._write_paused, 30, "pause of the upstream writes")

                def sent() -> int:
                    return sum(p.local.counters.bytes_out for p in set(link.pairs.values()))

                # A stall: nothing more is read from the local sockets for STALL seconds.
                last, quiet_since = -1, asyncio.get_running_loop().time()
                async with asyncio.timeout(30):
                    while asyncio.get_running_loop().time() - quiet_since < STALL:
                        if sent() != last:
                            last, quiet_since = sent(), asyncio.get_running_loop().time()
                        await asyncio.sleep(0.05)
                pairs = set(link.pairs.values())
                assert len(pairs) == connections
                for pair in pairs:
                    assert pair.local.transport is not None
                    assert not pair.local.transport.is_reading(), "a local reader went on"
                held = link.transport.get_write_buffer_size()
                print(
                    f"stalled: {sent() / MIB:.1f} MiB read from local clients, "
                    f"{held / MIB:.1f} MiB held in the link's write buffer"
                )
                assert held <= UPSTREAM_WRITE_HIGH_WATER + slack, f"{held / MIB:.1f} MiB held"
                assert not any(s.done() for s in senders), "a sender finished while stalled"
            finally:
                agent.process.send_signal(signal.SIGCONT)
            async with asyncio.timeout(60):
                await asyncio.gather(*senders)
                await _until(lambda: len(sink.received) == connections, 60, "every byte")
            assert sorted(sink.received) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
            assert not link._write_paused
            server.close()
    sink.server.close()
