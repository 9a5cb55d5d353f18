"""The "pod" side of the benchmark: the TCP servers every forwarder dials.

* **source** (download): ``python -m bench.servers source``, a threaded server that reads
  an 8-byte big-endian length, sends that many zero bytes with 1 MiB ``sendall`` calls
  (the GIL is released while the kernel copies) and half-closes. A fixed length ends
  each download with a clean EOF: a client that resets a connection while data is still
  flowing would measure something else (kubectl 1.30 stops creating streams after that);
* **sink** (upload): ``socat -u TCP-LISTEN:0,fork OPEN:/dev/null`` reads until EOF, then
  closes, so the client's EOF marks the end-to-end delivery of the last byte;
* **echo** (connection rate, concurrency, idle): ``python -m bench.servers echo``, an
  asyncio (uvloop when installed) echo server with back-pressure and a 4096 backlog.

socat runs with 128 KiB buffers. On loopback both the source and the sink move
1-2.5 GB/s, several times what any forwarder reaches, so the servers are not the
bottleneck (the `direct` rows of the table show the ceiling of servers + load
generator without a forwarder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass

from tests.support.procs import ManagedProcess

__all__ = ["TargetServer", "start_echo", "start_sink", "start_socat_relay", "start_source"]

SOCAT_BUFFER = 128 * 1024
_SOCAT_LISTENING = re.compile(r"listening on AF=2 127\.0\.0\.1:(\d+)$")
_LISTENING = re.compile(r"^Listening on 127\.0\.0\.1:(\d+)$")


@dataclass
class TargetServer:
    """A running server process and the loopback port it listens on."""

    name: str
    process: ManagedProcess
    port: int


def _socat(name: str, args: list[str], timeout: float = 10.0) -> TargetServer:
    proc = ManagedProcess(["socat", "-d", "-d", *args], name=name)
    try:
        match = proc.wait_for_stderr(_SOCAT_LISTENING, timeout)
    except BaseException:
        proc.stop()
        raise
    return TargetServer(name, proc, int(match[1]))


def _listen(extra: str = "") -> str:
    return f"TCP-LISTEN:0,bind=127.0.0.1,fork,reuseaddr,backlog=4096{extra}"


def start_source(timeout: float = 10.0) -> TargetServer:
    """``python -m bench.servers source``: sends as many zeros as the client asks for."""
    return _python_server("source", timeout)


def start_sink() -> TargetServer:
    """A sink: every accepted connection is read until EOF, then closed."""
    return _socat("sink", ["-b", str(SOCAT_BUFFER), "-u", _listen(), "OPEN:/dev/null"])


def start_socat_relay(port: int) -> TargetServer:
    """The relay baseline, as people write it: default options (8 KiB buffer)."""
    return _socat("socat-relay", [_listen(), f"TCP:127.0.0.1:{port}"])


def start_echo(timeout: float = 10.0) -> TargetServer:
    """``python -m bench.servers echo`` on a free loopback port."""
    return _python_server("echo", timeout)


def _python_server(kind: str, timeout: float) -> TargetServer:
    proc = ManagedProcess([sys.executable, "-m", "bench.servers", kind], name=kind)
    try:
        match = proc.wait_for_stdout(_LISTENING, timeout)
    except BaseException:
        proc.stop()
        raise
    return TargetServer(kind, proc, int(match[1]))


# --------------------------------------------------------------------------- source

SOURCE_HEADER = struct.Struct(">Q")
_CHUNK = 1 << 20


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError("EOF in the request")
        data += more
    return data


def _source_connection(sock: socket.socket) -> None:
    zeros = memoryview(bytearray(_CHUNK))
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            (remaining,) = SOURCE_HEADER.unpack(_recv_exact(sock, SOURCE_HEADER.size))
            while remaining:
                n = min(remaining, _CHUNK)
                sock.sendall(zeros[:n])
                remaining -= n
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(60)
            while sock.recv(65536):  # until the client closes
                pass
        except OSError:
            pass


def _serve_source() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(f"Listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_source_connection, args=(sock,), daemon=True).start()


# --------------------------------------------------------------------------- echo server


class _Echo(asyncio.Protocol):
    """Echo every byte; stop reading while the peer does not read (back-pressure)."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the echo is flushed

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def _serve_echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"Listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["echo", "source"])
    args = parser.parse_args(argv)
    if args.kind == "source":
        with contextlib.suppress(KeyboardInterrupt):
            _serve_source()
        return 0
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve_echo())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
