"""The node side of SPDY/3.1 port-forward: pair streams, dial the pod, copy bytes.

This follows the kubelet/CRI server sequence (protocols.md §1.5): SYN_REPLY at once for
valid streams, pairing by `requestid`, a pair timeout, the pod dial once both halves
exist, and error text on the error stream (§1.6) when the dial fails. Unlike containerd,
a client half-close becomes shutdown(SHUT_WR) on the pod socket. The pairing rules are
``pairs.PairedSession``'s, the pod sockets and back-pressure ``pod.PodForwarder``'s: a
pod socket over its write bound (or a pair still dialling that holds too much) stops the
reading of the client connection, and a client connection that cannot take more stops
the reading of every pod socket.

The session writes to a ``ClientLink``: the client's asyncio transport for plain SPDY,
or a WebSocket tunnel (protocols.md §3, ``sessions/wstunnel.py``) that passes a
``frame_sink`` so that each flush of queued frames becomes one binary message. Bytes
from the client (already unwrapped, for the tunnel) are fed with ``receive``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

from service.agent.dialer import PodDialer
from service.agent.pairs import PairedSession, StreamPair
from service.agent.pod import ClientLink, cause_text
from service.agent.registry import PodEntry
from service.protocols.spdy import (
    ConnectionTerminated,
    DataReceived,
    ProtocolError,
    RstStatus,
    SpdyConnection,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
)

log = logging.getLogger("podgate.agent")

#: Takes every frame queued by one flush (``SpdyConnection.chunks_to_send``).
FrameSink = Callable[[Sequence[bytes | memoryview]], None]


class SpdyPortForwardSession(PairedSession[StreamPair]):
    """Everything that happens on one upgraded client connection."""

    def __init__(
        self,
        transport: ClientLink,
        pod: PodEntry,
        dialer: PodDialer,
        *,
        stream_creation_timeout: float = 30.0,
        frame_sink: FrameSink | None = None,
    ) -> None:
        super().__init__(transport, dialer, stream_creation_timeout)
        self._frame_sink = frame_sink
        # An asyncio transport has writelines (a ClientLink need not): frames go out uncopied.
        self._writelines: Callable[[Sequence[bytes | memoryview]], None] | None = getattr(
            transport, "writelines", None
        )
        self.pod = pod
        self.conn = SpdyConnection(client_side=False)

    # ----------------------------------------------------------------- client side

    def receive(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.warning("pod %s/%s: closing connection: %s", self.pod.namespace, self.pod.name, exc)
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, StreamOpened):
                self._stream_opened(event)
            elif isinstance(event, DataReceived):
                self._data_received(event)
            elif isinstance(event, StreamEnded):
                self._data_ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._stream_reset(event.stream_id)
            elif isinstance(event, StreamRejected):
                log.info("stream %d rejected: %s", event.stream_id, event.error)
                # The SPDY layer has already sent RST_STREAM and forgotten the stream
                # (e.g. DATA after the client's FIN): the pair ends as on a reset from
                # the client, so that nothing more is sent on a dead stream.
                self._stream_reset(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    def client_eof(self) -> None:
        self.close()

    def flush(self) -> None:
        if self._frame_sink is not None:
            if self.conn.has_data_to_send:
                chunks = self.conn.chunks_to_send()
                if not self.transport.is_closing():
                    self._frame_sink(chunks)
            return
        writelines = self._writelines
        if writelines is not None:
            # writelines, not data_to_send(): the join copied every 256 KiB payload once more.
            chunks = self.conn.chunks_to_send()
            if chunks and not self.transport.is_closing():
                writelines(chunks)
            return
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _stream_opened(self, event: StreamOpened) -> None:
        sid, headers = event.stream_id, event.headers
        stream_type = headers.get("streamtype", "")
        port_text = headers.get("port", "")
        # ASCII digits only, like Go's strconv.ParseUint: str.isdigit() also accepts "²",
        # which int() rejects, and U+0661, which int() reads as 1. A bad port refuses its
        # stream, never the connection.
        valid = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        port = int(port_text) if valid else 0
        # A UNIDIRECTIONAL stream can never carry our bytes (a reply to it would be a
        # StreamStateError): it is refused like a bad one.
        if stream_type not in ("error", "data") or not 0 < port < 65536 or event.unidirectional:
            # The kubelet refuses such a stream with a bare RST; the reason is only logged.
            log.info(
                "stream %d refused: streamtype=%r port=%r unidirectional=%s",
                sid,
                stream_type,
                port_text,
                event.unidirectional,
            )
            self.conn.reset_stream(sid, RstStatus.CANCEL)
            return
        self.conn.send_reply(sid)
        request_id = headers.get("requestid")
        if request_id is None:  # pre-2016 clients: derive it as the kubelet does
            request_id = str(sid if stream_type == "error" else sid - 2)
        pair = self._pair(request_id)
        if stream_type == "error":
            if pair.error_sid is not None:
                self._duplicate(pair, sid, "error")
                return
            pair.error_sid = sid
        else:
            if pair.data_sid is not None:
                self._duplicate(pair, sid, "data")
                return
            pair.data_sid = sid
            pair.port = port
        self.by_stream[sid] = pair
        self._dial_when_complete(pair)

    def _new_pair(self, request_id: str) -> StreamPair:
        return StreamPair(request_id=request_id)

    def _dial_name(self, pair: StreamPair) -> str:
        return f"dial {self.pod.name}:{pair.port} req={pair.request_id}"

    def _duplicate(self, pair: StreamPair, sid: int, kind: str) -> None:
        message = (
            f"error processing stream for request {pair.request_id}: {kind} stream already assigned"
        )
        log.info(message)
        self.conn.reset_stream(sid, RstStatus.CANCEL)
        if pair.error_sid is not None:
            self.conn.send_data(pair.error_sid, message.encode())

    def _timed_out(self, pair: StreamPair, message: str) -> None:
        self._report(pair, message)
        self._abort(pair)

    def _data_received(self, event: DataReceived) -> None:
        pair = self.by_stream.get(event.stream_id)
        if pair is None or pair.done or event.stream_id != pair.data_sid or not event.data:
            return  # the error stream carries nothing from the client
        pod = pair.pod
        if pod is not None:
            pod.transport.write(event.data)
            return
        self._hold(pair, event.data)

    def _stream_reset(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done:
            return
        # client-go resets the data stream once it has what it wants: a normal end.
        self.by_stream.pop(sid, None)
        if sid == pair.data_sid:
            pair.data_sid = None
            self._finish(pair)
        else:
            pair.error_sid = None
            self._abort(pair)

    def _cancel_stream(self, sid: int) -> None:
        self.conn.reset_stream(sid, RstStatus.CANCEL)

    def _report(self, pair: StreamPair, text: str) -> None:
        """Text on the error stream: what the client shows as the pair's error."""
        if pair.error_sid is not None:
            self.conn.send_data(pair.error_sid, text.encode())

    # -------------------------------------------------------------------- pod side

    def _pod_entry(self, pair: StreamPair) -> PodEntry:
        return self.pod

    def _dial_failed(self, pair: StreamPair, exc: Exception) -> None:
        if pair.done:
            return
        message = self._error_text(pair, cause_text(exc))
        log.info(message)
        self._report(pair, message)
        self._abort(pair)
        self.flush()

    def _error_text(self, pair: StreamPair, cause: str) -> str:
        """The kubelet's wording (protocols.md §1.6), which clients show to users."""
        return (
            f"error forwarding port {pair.port} to pod {self.pod.name}, uid {self.pod.uid}: {cause}"
        )

    def pod_data(self, pair: StreamPair, data: bytes) -> None:
        if pair.done or pair.data_sid is None:
            return
        self.conn.send_data(pair.data_sid, data)
        self.flush()

    def pod_eof(self, pair: StreamPair) -> None:
        if pair.done or pair.pod_eof:
            return
        pair.pod_eof = True
        if pair.data_sid is not None:
            self.conn.end_stream(pair.data_sid)
        self._maybe_finish(pair)
        self.flush()

    def _pod_failed(self, pair: StreamPair, exc: Exception) -> None:
        self._report(pair, self._error_text(pair, f"read from pod: {exc}"))
        self._abort(pair)

    def _pod_closed(self, pair: StreamPair) -> None:
        self._finish(pair)

    # ------------------------------------------------------------------- endings

    def _maybe_finish(self, pair: StreamPair) -> None:
        if pair.client_fin and pair.pod_eof:
            self._finish(pair)

    def _finish(self, pair: StreamPair) -> None:
        """A normal end: the error stream ends empty and the pod socket is closed."""
        if pair.done:
            return
        if pair.data_sid is not None and not pair.pod_eof:
            # The client is gone from this pair before the pod finished: stop the pod.
            self.conn.reset_stream(pair.data_sid, RstStatus.CANCEL)
        if pair.error_sid is not None:
            self.conn.end_stream(pair.error_sid)
        self._forget(pair)
        if pair.pod is not None:
            pair.pod.transport.close()

    # ------------------------------------------------------------------ lifecycle

    def goaway(self) -> None:
        """Tell the client no new streams will be accepted (graceful shutdown)."""
        if not self._closed:
            with contextlib.suppress(ProtocolError):
                self.conn.goaway()
            self.flush()
