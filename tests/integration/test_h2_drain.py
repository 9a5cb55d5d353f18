"""An agent that shuts down gracefully (SIGTERM: GOAWAY, then it lets open pairs finish)
does not cut podgate's h2 connections in flight: they finish on the old link, while the
session reports the GOAWAY and reconnects for new connections. (h2 4.x treats any GOAWAY
as the end of the connection; podgate keeps it open for the pairs the agent accepted.)"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
from pathlib import Path

from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    api_client,
    create_session,
    host_echo_server,
    run_agent,
    run_serve,
    wait_for_status,
)
from tests.support.sse import HttpEventStream, SseEvent

MB = 1_000_000


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(1 << 20, n - len(data)))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def test_h2_pairs_in_flight_finish_after_the_agents_goaway(tmp_path: Path) -> None:
    payload = os.urandom(8 * MB)
    half = len(payload) // 2
    with (
        host_echo_server() as echo,
        run_agent(["default/echo=host:127.0.0.1"], extra_args=["--drain-timeout", "60"]) as agent,
    ):
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
        ):
            session = create_session(
                api, target="pod/echo", ports=[f"0:{echo.port}"], transport="h2"
            )
            wait_for_status(api, session["id"], "ready")
            port = session["ports"][0]["local_port"]
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(payload[:half])
                echoed = _read_exactly(sock, half)
                agent.process.send_signal(signal.SIGTERM)

                # The status event, not a poll: the re-dial's error soon replaces it.
                def lost_link(event: SseEvent) -> bool:
                    return event.is_status(session["id"], "reconnecting")

                lost = events.wait_for(lost_link, 20, "the GOAWAY reported").data
                assert "GOAWAY" in lost["last_error"], lost
                assert "draining 1 connection(s)" in lost["last_error"], lost
                # The connection in flight goes on to its end on the draining link.
                sock.sendall(payload[half:])
                sock.shutdown(socket.SHUT_WR)
                echoed += _read_exactly(sock, len(payload) - half)
                assert sock.recv(1) == b""
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert agent.process.wait(20) == 0, agent.process.describe()
