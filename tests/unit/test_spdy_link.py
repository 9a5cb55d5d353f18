"""SpdyLink without sockets: the SYN_REPLY sweep, one local write per upstream read and
one upstream write per loop turn.

The transports here are recording stand-ins, on purpose: what is checked is the sequence
of calls a link makes per upstream read (one write, then EOF), which a real socket cannot
show. The real-socket behaviour is covered by the integration tests."""

from __future__ import annotations

import asyncio
from typing import Any

from service.protocols.spdy import SpdyConnection
from service.runner.links.base import LinkHooks
from service.runner.links.spdy import DATA_FRAME_SIZE, SpdyLink
from service.runner.local import GATED_READ, LocalConnection


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.log: list[str] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.log.append("write")

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))
        self.log.append("write")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.log.append("eof")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.log.append("close")

    def abort(self) -> None:
        self.closed = True
        self.log.append("abort")


def make_link(
    reply_timeout: float, reported: asyncio.Event | None = None
) -> tuple[SpdyLink, FakeTransport, list[str]]:
    errors: list[str] = []

    def on_error(local: object, text: str) -> None:
        errors.append(text)
        if reported is not None:
            reported.set()

    hooks = LinkHooks(on_lost=lambda link, reason: None, on_connection_error=on_error, keepalive=0)
    link = SpdyLink(hooks, reply_timeout=reply_timeout)
    upstream = FakeTransport()
    link.adopt(upstream)  # type: ignore[arg-type]
    return link, upstream, errors


def make_local(link: SpdyLink) -> tuple[LocalConnection, FakeTransport]:
    local = LocalConnection(1234, 0, lambda conn: None)
    transport = FakeTransport()
    local.transport = transport  # type: ignore[assignment]
    local.remote_port = 8080
    link.open_pair(local)
    return local, transport


async def test_unreplied_pair_times_out_by_the_sweep() -> None:
    reported = asyncio.Event()
    link, _, errors = make_link(reply_timeout=0.05, reported=reported)
    local, transport = make_local(link)
    async with asyncio.timeout(10):
        await reported.wait()
    assert errors == ["timed out waiting for the upstream to accept the stream pair"]
    assert transport.log == ["abort"]
    assert local.counters.connections_active == 0
    assert not link._awaiting and link._sweep_handle is None


async def flushed() -> None:
    # One FIFO turn of the loop: the link's call_soon flush, scheduled earlier, runs first.
    await asyncio.sleep(0)


async def test_pairs_opened_together_go_out_in_one_write() -> None:
    link, upstream, _ = make_link(reply_timeout=30)
    make_local(link)
    make_local(link)
    assert upstream.writes == []  # nothing yet: the flush waits for the end of the turn
    await flushed()
    assert len(upstream.writes) == 1
    server = SpdyConnection(False)
    events = server.receive_data(upstream.writes[0])
    assert [e.stream_id for e in events] == [1, 3, 5, 7]  # type: ignore[attr-defined]
    link.close()


async def test_bulk_local_data_is_written_at_once() -> None:
    link, upstream, _ = make_link(reply_timeout=30)
    local, _ = make_local(link)
    await flushed()
    server = SpdyConnection(False)
    server.receive_data(upstream.writes.pop())
    server.send_reply(1)
    server.send_reply(3)
    link.data_received(server.data_to_send())
    upstream.writes.clear()
    link.local_data(local.pair, b"s" * 100)
    assert upstream.writes == []  # small: waits for the end of the loop turn
    link.local_data(local.pair, b"b" * DATA_FRAME_SIZE)
    # Bulk: written now, so that the transport's back-pressure sees it at once.
    assert len(upstream.writes) == 1 and len(upstream.writes[0]) > DATA_FRAME_SIZE
    link.close()


async def test_merged_data_is_one_write_before_fin() -> None:
    link, upstream, errors = make_link(reply_timeout=0.05)
    _, transport = make_local(link)
    await flushed()
    server = SpdyConnection(False, max_data_frame=4)
    server.receive_data(b"".join(upstream.writes))
    server.send_reply(1)
    server.send_reply(3)
    server.send_data(3, b"0123456789", fin=True)
    link.data_received(server.data_to_send())
    # The scenario, not a synchronisation: time passes the timeout; a replied pair stays.
    await asyncio.sleep(0.2)
    assert transport.writes == [b"0123456789"]
    assert transport.log == ["write", "eof"]
    assert errors == []
    link.close()


async def test_a_connection_waiting_for_its_pair_reads_only_a_little() -> None:
    link, upstream, _ = make_link(reply_timeout=30)
    local, _ = make_local(link)
    assert len(local.get_buffer(-1)) == GATED_READ  # uvloop's one read before the pause
    await flushed()
    server = SpdyConnection(False)
    server.receive_data(upstream.writes.pop())
    server.send_reply(1)
    server.send_reply(3)
    link.data_received(server.data_to_send())
    assert not local.gated
    assert len(local.get_buffer(-1)) > GATED_READ
    link.close()
