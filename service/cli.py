"""The `podgate` command: serve | agent | forward."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}")
    return host, int(port)


def _install_loop_policy() -> None:
    try:
        import uvloop  # optional accelerator (podgate[fast])
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run_agent(args: argparse.Namespace) -> int:
    from service.agent.registry import PodRegistry, RegistryError
    from service.agent.server import Agent

    try:
        registry = PodRegistry.from_sources(args.pod, [Path(p) for p in args.pods])
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen
    agent = Agent(
        registry,
        host=host,
        port=port,
        stream_creation_timeout=args.stream_creation_timeout,
    )
    try:
        await agent.start()
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"Listening on {agent.url}", flush=True)
    await _wait_for_signal()
    await agent.shutdown(drain_timeout=args.drain_timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podgate", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the node-side port-forward agent")
    agent.add_argument(
        "--listen",
        type=lambda t: _host_port(t, 10250),
        default=("127.0.0.1", 10250),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:10250; port 0 picks a free port)",
    )
    agent.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="NS/NAME=TARGET",
        help="a pod: TARGET is netns:/run/netns/NAME, netns:/proc/PID/ns/net or host:ADDRESS",
    )
    agent.add_argument(
        "--pods", action="append", default=[], metavar="FILE", help="YAML/JSON pod registry file"
    )
    agent.add_argument(
        "--stream-creation-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the second stream of a pair may take (default 30)",
    )
    agent.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, how long open connections may take to finish (default 10)",
    )
    agent.set_defaults(func=_run_agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _install_loop_policy()
    result: int = asyncio.run(args.func(args))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
