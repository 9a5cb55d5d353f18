"""podgate as the client of the independent Go peer (tests/interop) in `--tunnel` mode:
gorilla/websocket accepts `SPDY/3.1+portforward.k8s.io` and spdystream serves SPDY inside
it, as an API server with the KEP-4006 tunnel does. The `websocket` and `auto` sessions
of a real `podgate serve` carry 20 MB each way (SHA-256 checked) and 50 connections at
once through it; `auto` negotiates the tunnel; the Go server's log shows which protocol
each session used and that every byte of the bulk pair reached the pod side.

The pod is tests/support/echo_server.py on this host (the server dials 127.0.0.1:PORT).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.interop.build import build_spdyserver, run_spdyserver
from tests.support.echo import roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    api_client,
    concurrent_roundtrips,
    create_session,
    explain_on_failure,
    host_echo_server,
    run_serve,
    wait_for_session,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
WAIT = 20.0


@pytest.fixture(scope="module")
def spdyserver_binary() -> Path:
    return build_spdyserver()


@pytest.mark.usefixtures("spdyserver_binary")
@pytest.mark.parametrize("transport", ["websocket", "auto"])
def test_20mb_each_way_and_50_concurrent_through_the_go_tunnel(
    tmp_path: Path, transport: str
) -> None:
    with host_echo_server() as echo, run_spdyserver(tunnel=True) as go:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", go.url)
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            explain_on_failure(serve.process, go.process),
        ):
            created = create_session(
                api, target="pod/echo", ports=[f"0:{echo.port}"], transport=transport
            )
            session = wait_for_status(api, created["id"], "ready", timeout=WAIT)
            assert session["transport"] == "websocket"  # `auto` chose the tunnel, too
            local = session["ports"][0]["local_port"]

            payload = os.urandom(20 * MB)
            result = roundtrip("127.0.0.1", local, payload, timeout=60)
            assert result.received_sha256 == result.sent_sha256, (
                f"sent {result.sent} bytes, got {len(result.received)} back (or altered)"
            )
            # The Go side counted the same bytes on the pod side of request 0.
            done = go.process.wait_for_stderr(
                r"session \d+ tunnel: request 0: done "
                r"\(client->pod (\d+) bytes, pod->client (\d+) bytes\)",
                WAIT,
            )
            assert int(done[1]) == int(done[2]) == len(payload)

            payloads = [os.urandom(100_000 + i) for i in range(50)]
            results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=60)
            broken = [i for i, r in enumerate(results) if not r.intact]
            assert not broken, f"connections {broken} came back short or altered"

            after = wait_for_session(
                api,
                created["id"],
                lambda s: s["connections_active"] == 0 and s["connections_total"] == 51,
                timeout=WAIT,
                what="every connection counted and ended",
            )
            sent = len(payload) + sum(len(p) for p in payloads)
            assert (after["status"], after["transport"]) == ("ready", "websocket")
            assert (after["bytes_out"], after["bytes_in"], after["connection_errors"]) == (
                sent,
                sent,
                0,
            )
            assert after["reconnects"] == 0 and after["last_error"] is None

        log = go.process.stderr_text()
        # One tunnel, one SPDY session inside it; never a plain SPDY POST.
        assert log.count('tunnel upgraded (subprotocol "SPDY/3.1+portforward.k8s.io")') == 1, log
        assert len(re.findall(r"session \d+ tunnel start: pod default/echo", log)) == 1, log
        assert not re.search(r"session \d+ spdy start", log), log
        assert "POST /api/v1/namespaces/default/pods/echo/portforward" not in log
