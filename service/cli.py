"""The `podgate` command: serve | agent | forward | sessions."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from service.client import add_address_option
from service.client import add_parser as add_sessions_parser
from service.model import Transport
from service.protocols.h2 import MAX_CONCURRENT_STREAMS

log = logging.getLogger("podgate")


#: How long `podgate agent --cluster` waits for the first pod list before it listens.
DISCOVERY_WAIT = 30.0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


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


#: glibc mallopt parameters, and the value for both: above the largest buffers the data
#: path frees and allocates again (reads, joined DATA runs, queued writes).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MALLOC_KEEP = 16 * 1024 * 1024


def _tune_malloc() -> None:
    """Keep freed data-path buffers in the heap instead of returning them to the kernel.

    Why: glibc's defaults mmap/trim the 0.25-16 MiB buffers of a bulk transfer on every
    cycle, and each page is faulted in again: 150-250k minor faults and about 1 CPU-s per
    GB forwarded (podgate -> agent upload: 1.3-1.7 -> 0.45-0.6 CPU-s/GB). The cost is up
    to 16 MiB of freed memory kept resident. MALLOC_*_ environment variables win.
    """
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc: nothing to tune
    mallopt(_M_MMAP_THRESHOLD, _MALLOC_KEEP)
    mallopt(_M_TRIM_THRESHOLD, _MALLOC_KEEP)


def _freeze_startup_heap() -> None:
    # Moves the ~150k start-up objects (kubernetes_asyncio, sqlalchemy, fastapi) out of the
    # collector's reach: a full collection over them took 30-100 ms, a p99 spike per connection.
    gc.collect()
    gc.freeze()


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run_agent(args: argparse.Namespace) -> int:
    import ssl

    from service.agent.demo import demo_dialer
    from service.agent.discovery import PodDiscovery, netns_dialer
    from service.agent.registry import PodRegistry, RegistryError
    from service.agent.server import Agent, AgentAuth, tls_context
    from service.agent.targets import TargetPolicy, TargetPolicyError, service_dialer
    from service.aio.fds import raise_nofile_limit
    from service.aio.tasks import TaskSet
    from service.config import is_loopback
    from service.tokens import TokenFile, TokenFileError
    from service.upstream import Cluster, UpstreamError

    try:
        registry = PodRegistry.from_sources(args.pod, [Path(p) for p in args.pods])
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.client_ca is not None and args.tls_cert is None:
        print("error: --client-ca needs TLS (--tls-cert and --tls-key)", file=sys.stderr)
        return 2
    tokens = None
    if args.token_file is not None:
        try:
            tokens = TokenFile(Path(args.token_file))
        except TokenFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    auth = AgentAuth(tokens=tokens, client_certs=args.client_ca is not None)
    host, port = args.listen
    if not auth.enabled and not is_loopback(host):
        print(
            f"error: refusing to listen on {host} without authentication: anyone who can "
            "reach it could connect to the pods. Give --client-ca FILE (with --tls-cert) or "
            "--token-file FILE, or listen on loopback (--listen 127.0.0.1:PORT).",
            file=sys.stderr,
        )
        return 2
    ssl_context = None
    if args.tls_cert is not None:
        try:
            ssl_context = tls_context(
                args.tls_cert,
                args.tls_key,
                client_ca=args.client_ca,
                client_cert_required=tokens is None,
            )
        except (OSError, ssl.SSLError) as exc:
            print(f"error: cannot load the TLS files: {exc}", file=sys.stderr)
            return 2
    raise_nofile_limit()
    try:
        policy = TargetPolicy(args.allow_target)
    except TargetPolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    registry.targets = policy
    cluster = discovery = None
    if args.cluster:
        try:
            cluster = await Cluster.load(args.kubeconfig, args.context)
        except UpstreamError as exc:
            print(f"error: --cluster: {exc}", file=sys.stderr)
            return 1
        cluster.start_refresh()
        discovery = PodDiscovery(cluster, registry, node=args.node, dial=args.dial)
    # `--pod NS/NAME=demo:...` serves the demo pod too; svc: targets are read from the API.
    dialer = demo_dialer()
    dialer.kinds = {
        **dialer.kinds,
        "svc": service_dialer(cluster, dialer.dial_address),
        "pod-netns": netns_dialer(dialer),
    }
    agent = Agent(
        registry,
        host=host,
        port=port,
        dialer=dialer,
        stream_creation_timeout=args.stream_creation_timeout,
        websocket_tunnel=args.websocket_tunnel,
        ssl_context=ssl_context,
        h2_max_streams=args.h2_max_streams,
        auth=auth,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        streaming_idle_timeout=args.streaming_connection_idle_timeout,
    )
    log.info(
        "authentication: %s",
        " and ".join(
            [
                *(["client certificates (--client-ca)"] if auth.client_certs else []),
                *([f"bearer tokens ({len(tokens)} in {args.token_file})"] if tokens else []),
            ]
        )
        or "none (loopback only)",
    )
    tasks = TaskSet()
    if discovery is not None:
        tasks.start(discovery.run(), name="pod discovery")
        try:  # serve a filled registry from the start, if the API server answers soon
            async with asyncio.timeout(DISCOVERY_WAIT):
                await discovery.synced.wait()
        except TimeoutError:
            log.warning("no pod list from the API server within %g s; serving", DISCOVERY_WAIT)
    try:
        await agent.start()
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        await tasks.close()
        return 1
    _freeze_startup_heap()
    print(f"Listening on {agent.url}", flush=True)
    await _wait_for_signal()
    await agent.shutdown(drain_timeout=args.drain_timeout)
    await tasks.close()
    if cluster is not None:
        await cluster.close()
    return 0


async def _run_serve(args: argparse.Namespace) -> int:
    import socket

    import uvicorn
    from pydantic import ValidationError

    from service.aio.fds import raise_nofile_limit
    from service.api.app import create_app
    from service.api.http import guarded_h11
    from service.api.security import TokenFileError
    from service.config import Settings
    from service.store.engine import upgrade_schema_isolated

    overrides: dict[str, object] = {"host": args.host, "port": args.port, "demo": args.demo}
    for key, value in (
        ("database_url", args.db),
        ("kubeconfig", args.kubeconfig),
        ("context", args.context),
        ("data_dir", args.data_dir),
        ("token_file", args.token_file),
        ("auth", args.auth),
        ("allowed_hosts", args.allowed_host),
        ("cors_origins", args.cors_origin),
        ("listen_addresses", args.listen_address),
        ("allow_privileged_ports", args.allow_privileged_ports),
        ("max_sessions", args.max_sessions),
        ("max_listeners_per_session", args.max_listeners_per_session),
        ("max_connections_per_session", args.max_connections_per_session),
        ("max_event_subscribers", args.max_event_subscribers),
        ("default_agent", args.default_agent),
        ("default_agent_context", args.default_agent_context),
        ("agent_kubeconfig", args.agent_kubeconfig),
    ):
        if value:
            overrides[key] = value
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    if not settings.on_loopback and not settings.authenticates:
        print(
            f"error: refusing to listen on {settings.host} without authentication: anyone who "
            "can reach it could forward into the cluster. Give --token-file FILE or "
            "--auth kubernetes, or listen on loopback (--host 127.0.0.1).",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(settings, migrate=upgrade_schema_isolated)
    except TokenFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(
            f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                _freeze_startup_heap()
                print(f"Listening on http://{shown}:{port}", flush=True)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Event streams never end by themselves: end them, or the graceful shutdown
            # waits its whole timeout for them.
            supervisor = getattr(app.state, "supervisor", None)
            if supervisor is not None:
                supervisor.events.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        # Why isolated: alembic (+12-14 MB) then never becomes resident in the server.
        app,
        http=guarded_h11(settings.header_timeout_seconds),
        log_level=args.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Not int(): 1.5 s would become 1 s, and 0.5 s 0 (no keep-alive at all). uvicorn
        # only hands it to loop.call_later, which takes seconds as a float.
        timeout_keep_alive=cast(int, settings.keepalive_timeout_seconds),
        h11_max_incomplete_event_size=64 * 1024,  # a request head (line + headers)
    )
    server = Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # no-op handlers in place that is harmless and a SIGTERM ends with exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    await server.serve(sockets=[sock])
    return 0 if server.started else 1


async def _run_forward(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from service.model import SessionStatus
    from service.ports import format_forwarding_lines
    from service.runner.clusters import ClusterPool
    from service.runner.listeners import ListenError
    from service.runner.session import ForwardSession
    from service.runner.spec import RequestError, build_request
    from service.upstream.targets import parse_target

    addresses = [a for value in args.address for a in value.split(",") if a]
    try:
        request = build_request(
            args.namespace,
            args.target,
            args.ports,
            addresses or ["localhost"],
            context=args.context,
            transport=args.transport,
        )
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    spec = request.spec("cli", parse_target(args.target).name, datetime.now(UTC))
    changed = asyncio.Event()

    def on_change(session: ForwardSession) -> None:
        changed.set()

    def on_accept(local: object) -> None:
        print(f"Handling connection for {getattr(local, 'local_port', '?')}", flush=True)

    clusters = ClusterPool(args.kubeconfig, args.context)
    session = ForwardSession(spec, clusters, on_change=on_change, on_accept=on_accept)
    try:
        session.bind()
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    await session.start()
    try:
        # Like kubectl, a first dial that fails ends the command; later drops are re-dialled.
        while session.status != SessionStatus.READY:
            await changed.wait()
            changed.clear()
            if session.status == SessionStatus.FAILED or session.last_error:
                print(f"error: {session.last_error}", file=sys.stderr)
                return 1
        log.info("connected to pod %s/%s over %s", spec.namespace, session.pod, session.transport)
        for bound, remote_port in zip(session.bound, session.remote_ports, strict=True):
            for address in bound.addresses:
                print(format_forwarding_lines(address, bound.local_port, remote_port), flush=True)
        reported = session.last_error
        stop = asyncio.create_task(_wait_for_signal())
        while not stop.done():
            waiter = asyncio.create_task(changed.wait())
            await asyncio.wait({stop, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            changed.clear()
            if session.last_error and session.last_error != reported:
                reported = session.last_error
                print(f"error: {reported}", file=sys.stderr, flush=True)
        return 0
    finally:
        await session.stop()
        await clusters.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podgate", description=__doc__)
    parser.add_argument(
        "--log-level",
        help="logging level (default INFO; WARNING for forward and sessions, which print "
        "what kubectl prints: -v is INFO, -vv DEBUG)",
    )
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
    agent.add_argument(
        "--no-websocket-tunnel",
        dest="websocket_tunnel",
        action="store_false",
        help="refuse SPDY tunnelled in a WebSocket, like an older kubelet (kubectl falls "
        "back to plain SPDY); v4 WebSocket channels are still served",
    )
    agent.add_argument(
        "--h2-max-streams",
        type=_positive_int,
        default=MAX_CONCURRENT_STREAMS,
        metavar="N",
        help="HTTP/2 streams one client connection may have open, two per forwarded "
        f"connection (default {MAX_CONCURRENT_STREAMS}); podgate's h2 transport queues "
        "connections past it",
    )
    agent.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this PEM certificate (chain); ALPN http/1.1 (preferred) for "
        "the upgrades and discovery, h2 alone for HTTP/2 pairs",
    )
    agent.add_argument("--tls-key", metavar="FILE", help="the PEM private key for --tls-cert")
    agent.add_argument(
        "--client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (the kubelet's --client-ca-file; "
        "needs --tls-cert)",
    )
    agent.add_argument(
        "--token-file",
        metavar="FILE",
        help='bearer tokens, kube-apiserver\'s format: token,user,uid[,"groups"]; without '
        "--client-ca or --token-file the agent listens on loopback only",
    )
    cluster = agent.add_argument_group("helper agent in a cluster (README: Helper agent)")
    cluster.add_argument(
        "--cluster",
        action="store_true",
        help="fill the pod registry from the API server (a watch of pods; kubeconfig or "
        "in-cluster credentials, as serve finds them)",
    )
    cluster.add_argument("--kubeconfig", help="kubeconfig path (default $KUBECONFIG, in-cluster)")
    cluster.add_argument("--context", help="kubeconfig context")
    cluster.add_argument("--node", metavar="NAME", help="only the pods of this node")
    cluster.add_argument(
        "--dial",
        choices=["pod-ip", "netns"],
        default="pod-ip",
        help="pod-ip (default): dial the pods' IPs; netns: enter each pod's network namespace "
        "on this node (needs hostPID), falling back to its IP",
    )
    cluster.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="svc|CIDR|NAME",
        help="targets besides pods that clients may name (svc:NAME, ip:ADDRESS, host:NAME): "
        "svc for Services, a CIDR for addresses in it, a host name (*.domain for its "
        "subdomains); default: pods only",
    )
    agent.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="close a connection whose request (head and body), TLS handshake or first "
        "HTTP/2 stream has not arrived within this long (default 30)",
    )
    agent.add_argument(
        "--keepalive-timeout",
        type=_positive_float,
        default=90.0,
        metavar="SECONDS",
        help="close a keep-alive connection idle between two requests after this long (default 90)",
    )
    agent.add_argument(
        "--streaming-connection-idle-timeout",
        type=_positive_float,
        default=4 * 3600.0,
        metavar="SECONDS",
        help="close an upgraded connection with no forwarded connection and no traffic "
        "from its client for this long (default 4 h, like the kubelet)",
    )
    agent.set_defaults(func=_run_agent)

    serve = sub.add_parser("serve", help="run the REST API and the session runner")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1); beyond loopback only with --token-file or "
        "--auth kubernetes",
    )
    serve.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    serve.add_argument("--db", help="SQLAlchemy URL (default: SQLite under --data-dir)")
    serve.add_argument("--data-dir", help="where the SQLite file lives")
    serve.add_argument("--kubeconfig", help="kubeconfig path (default $KUBECONFIG, ~/.kube/config)")
    serve.add_argument("--context", help="default kubeconfig context")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="also run an in-process agent with a demo pod default/hello and use it as cluster",
    )
    serve.add_argument(
        "--default-agent",
        metavar="URL",
        help="a podgate agent that sessions go through unless they say otherwise (via), "
        "e.g. the helper agent of the cluster serve runs in (PODGATE_DEFAULT_AGENT)",
    )
    serve.add_argument(
        "--default-agent-context",
        metavar="NAME",
        help="the kubeconfig context with the default agent's CA and token or client certificate",
    )
    serve.add_argument(
        "--agent-kubeconfig",
        metavar="FILE",
        help="the kubeconfig whose contexts describe agents (default: --kubeconfig's)",
    )
    security = serve.add_argument_group("security (README: Security)")
    security.add_argument(
        "--token-file",
        metavar="FILE",
        help='static tokens, kube-apiserver\'s format: token,user,uid[,"group1,group2"]; '
        "requests need Authorization: Bearer TOKEN (PODGATE_TOKEN_FILE)",
    )
    security.add_argument(
        "--auth",
        choices=["none", "kubernetes"],
        help="kubernetes: check bearer tokens with a TokenReview and every new session with "
        "SubjectAccessReviews as the caller (PODGATE_AUTH)",
    )
    security.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name the API answers to, besides localhost, 127.0.0.1, [::1] and its "
        "own address (repeatable; PODGATE_ALLOWED_HOSTS)",
    )
    security.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed to call the API, e.g. http://localhost:3000 "
        "(repeatable; PODGATE_CORS_ORIGINS, comma-separated)",
    )
    security.add_argument(
        "--listen-address",
        action="append",
        metavar="ADDR",
        help="an address beyond loopback that sessions may listen on, e.g. 0.0.0.0 "
        "(repeatable; PODGATE_LISTEN_ADDRESSES)",
    )
    security.add_argument(
        "--allow-privileged-ports",
        action="store_true",
        default=None,
        help="let sessions listen on local ports below 1024",
    )
    for flag, default, what in (
        ("--max-sessions", 1000, "sessions (429 beyond)"),
        ("--max-listeners-per-session", 64, "listeners of one session: ports x addresses"),
        ("--max-connections-per-session", 1000, "open local connections of one session"),
        ("--max-event-subscribers", 100, "open event streams (429 beyond)"),
    ):
        security.add_argument(
            flag, type=_positive_int, metavar="N", help=f"{what} (default {default})"
        )
    serve.set_defaults(func=_run_serve)

    forward = sub.add_parser(
        "forward",
        help="forward local ports to a pod, like `oc port-forward` (Ctrl-C ends it)",
        description="Same arguments and output as `oc port-forward`: 5000, 8888:5000, "
        ":5000 and 0:5000 (a free local port); a Service port or a port name (8080:http) "
        "is forwarded to the pod port it leads to, which the lines show.",
    )
    forward.add_argument("-n", "--namespace", default="default", help="namespace (default)")
    add_address_option(forward)
    forward.add_argument("--kubeconfig", help="kubeconfig path (default $KUBECONFIG)")
    forward.add_argument("--context", help="kubeconfig context")
    forward.add_argument(
        "--transport",
        choices=[t.value for t in Transport],
        default=Transport.AUTO.value,
        help="how to reach the cluster (README: Transports; default auto)",
    )
    forward.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also log what podgate does on stderr: -v INFO, -vv DEBUG (default: errors only)",
    )
    forward.add_argument(
        "target",
        metavar="TARGET",
        help="NAME, pod/NAME, svc/NAME, deploy/NAME, sts/NAME or rs/NAME",
    )
    forward.add_argument("ports", metavar="[LOCAL:]REMOTE", nargs="+", help="port specs")
    forward.set_defaults(func=_run_forward)

    add_sessions_parser(sub)
    return parser


def _log_level(args: argparse.Namespace) -> str:
    """--log-level if given; else what the command prints by default: `forward` and
    `sessions` only kubectl's lines and errors (WARNING; -v INFO, -vv DEBUG)."""
    if args.log_level:
        return str(args.log_level).upper()
    if args.command in ("forward", "sessions"):
        return ("WARNING", "INFO", "DEBUG")[min(getattr(args, "verbose", 0), 2)]
    return "INFO"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level = _log_level(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    _install_loop_policy()
    _tune_malloc()
    result: int = asyncio.run(args.func(args))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
