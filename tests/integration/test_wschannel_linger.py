"""`ws-channel` has no half-close: after a local client half-closes, the WebSocket stays
open while the pod still answers and closes once the pod has been quiet for the session's
`channel_linger_seconds`. Against a server that closes as soon as it gets our Close (as a
kubelet does), closing at the local EOF cut off the tail of an echo-style exchange."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.support.kube import write_kubeconfig
from tests.support.kubelet_channels import kubelet_channels
from tests.support.podgate import (
    api_client,
    background_loop,
    create_session,
    run_serve,
    wait_for_status,
)

POD_DELAY = 0.2  # the stand-in pod answers this long after each message


def _send_half_close_read(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)


@pytest.mark.parametrize(
    ("linger", "expected"),
    [
        (None, b"hello, pod"),  # the default, 0.5 s: longer than the pod's 0.2 s
        (2.0, b"hello, pod"),
        (0.0, b""),  # Close at the local EOF: the server cuts the answer off
    ],
)
def test_the_answer_after_a_local_half_close_is_not_cut_off(
    tmp_path: Path, linger: float | None, expected: bytes
) -> None:
    with background_loop() as loop:
        server = kubelet_channels(POD_DELAY)
        kubelet = asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
        try:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kubelet.url)
            with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
                options = {} if linger is None else {"channel_linger_seconds": linger}
                session = create_session(
                    api, target="pod/echo", ports=["0:7000"], transport="ws-channel", **options
                )
                ready = wait_for_status(api, session["id"], "ready")
                assert ready["channel_linger_seconds"] == (0.5 if linger is None else linger)
                port = session["ports"][0]["local_port"]
                assert _send_half_close_read(port, b"hello, pod") == expected
        finally:
            closing = server.__aexit__(None, None, None)
            asyncio.run_coroutine_threadsafe(closing, loop).result(10)
