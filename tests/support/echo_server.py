"""A TCP echo server for tests, run as its own process (e.g. inside a network namespace).

`python echo_server.py --port N [--host H ...]` listens on every given host (default
127.0.0.1 and ::1), prints `READY <port>` once listening, echoes every byte back and
half-closes its side after the client half-closes, so a test sees everything it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while chunk := await reader.read(256 * 1024):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", action="append", default=[])
    args = parser.parse_args()
    hosts = args.host or ["127.0.0.1", "::1"]
    servers = [await asyncio.start_server(_echo, h, args.port, reuse_address=True) for h in hosts]
    port = servers[0].sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
