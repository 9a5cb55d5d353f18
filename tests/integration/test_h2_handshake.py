"""The `h2` transport proves that it talks to a podgate agent before a session is `ready`:
a server that is not one (here hypercorn, an independent HTTP/2 server, answering 403 the
way an API server does) fails the session with an error that says so, and no local client
ever receives that server's answers as pod data. Every request carries podgate's
User-Agent."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

from tests.support.kube import write_kubeconfig
from tests.support.podgate import api_client, create_session, run_serve, wait_for_status
from tests.support.procs import ManagedProcess


def test_h2_to_a_server_that_is_not_an_agent_fails_and_says_so(tmp_path: Path) -> None:
    server = [sys.executable, "-m", "hypercorn", "tests.support.not_an_agent:app"]
    with ManagedProcess([*server, "--bind", "127.0.0.1:0"], name="hypercorn") as h2:
        url = h2.wait_for_stderr(r"Running on (http://127\.0\.0\.1:\d+)", 20)[1]
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
            session = create_session(api, target="pod/echo", ports=["0:7000"], transport="h2")
            failed = wait_for_status(api, session["id"], "failed")
            error = failed["last_error"]
            assert f"{url} is not a podgate agent" in error
            assert 'cannot get path "/v1/agent"' in error  # the server's own words
            # A local client gets no byte of that server's answers.
            port = session["ports"][0]["local_port"]
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
                contextlib.suppress(ConnectionResetError),
            ):
                assert sock.recv(4096) == b""
        requests = [line for line in h2.stdout_text().splitlines() if line.startswith("REQUEST ")]
        assert requests, "the server saw no request"
        assert all(line.split()[3].startswith("podgate/") for line in requests), requests
