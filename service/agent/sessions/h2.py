"""Stream pairs over HTTP/2 (protocols.md §5.2, PROJECT DESIGN), agent side.

Reached on the agent's one listener by h2c prior knowledge (the connection starts with
the HTTP/2 preface) or by TLS with ALPN ``h2``. Each forwarded connection is two
client-opened streams on ``/v1/portforward/{namespace}/{pod}`` sharing a ``requestid``:

* validation errors are answered on the offending stream, with a text body and
  END_STREAM: 400 (``port``/``streamtype``/``requestid``), 404 (path or pod), 409 (a
  second stream of one type for a ``requestid``);
* the error stream is answered ``:status 200`` at once; the data stream once the pod
  dial succeeded (``502`` + END_STREAM if it failed, with the reason on the error
  stream);
* flow control is end to end and per stream: received DATA is acknowledged only once
  it was written to the pod socket (the pod transport's buffer limit is 0, so
  ``pause_writing``/``resume_writing`` say exactly whether bytes are still ours). A pod
  that stops reading therefore stalls only its own stream: its window stays closed
  while every other stream keeps flowing. Pod output is sent as the client's windows
  allow; while a stream's window is closed its pod socket is not read;
* half-close both ways (END_STREAM → ``shutdown(SHUT_WR)``, pod EOF → END_STREAM), the
  error stream ends once the pair is done; RST_STREAM from the client aborts the pair;
  a pod reset mid-stream gives RST_STREAM CONNECT_ERROR plus text on the error stream;
* the pair timeout is the SPDY one (text on a lone error stream, RST CANCEL on a lone
  data stream); on shutdown the agent sends GOAWAY and lets open pairs drain.

Pairing and the pair timeout are ``pairs.PairedSession``'s, the pod sockets
``pod.PodConnection``s with a write bound of 0, and a pod's bytes are not read before
its data stream is answered (DATA may not precede the HEADERS).

Malformed input on one stream only ever touches that stream; an HTTP/2 connection error
ends only this connection (GOAWAY first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from hyperframe.frame import GoAwayFrame

from service import __version__
from service.agent.dialer import DialError, PodDialer
from service.agent.pairs import PairedSession, StreamPair
from service.agent.pod import PodConnection, cause_text
from service.agent.registry import PodEntry, PodRegistry
from service.protocols.h2 import (
    AGENT_PATH,
    MAX_CONCURRENT_STREAMS,
    ConnectionTerminated,
    DataReceived,
    H2PairServer,
    PairProtocolError,
    PairRequestError,
    PairStateError,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowOpened,
    parse_pair_path,
    validate_pair_headers,
)

log = logging.getLogger("podgate.agent")

#: Pod output queued since the last write that is written at once, not at the loop turn's
#: end (the client transport's back-pressure must see bulk data).
BULK = 256 * 1024


@dataclass(eq=False, slots=True, kw_only=True)
class H2Pair(StreamPair):
    """A stream pair with HTTP/2's flow control: what is acked, what waits for window."""

    namespace: str = ""
    pod_name: str = ""
    entry: PodEntry | None = None  # the pod the dial looked up
    unacked: int = 0  # flow-controlled bytes received on the data stream, not yet acked
    outq: deque[bytes | memoryview] = field(default_factory=deque)  # waiting for window
    answered: bool = False  # the data stream got its :status 200: DATA may follow
    end_sent: bool = False  # END_STREAM on the data stream
    pod_gone: bool = False


class H2PodConnection(PodConnection[H2Pair]):
    """A pod socket whose bytes wait until its data stream is answered."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.owner.pod_data(self.end, data)
        if not self.end.answered:
            # A pod that speaks first, before the dial completed: its bytes wait in outq
            # until the data stream is answered, and the pod is not read meanwhile.
            self.transport.pause_reading()


class H2Session(PairedSession[H2Pair]):
    """One HTTP/2 client connection (h2c prior knowledge or TLS+ALPN ``h2``)."""

    def __init__(
        self,
        transport: asyncio.Transport,
        registry: PodRegistry,
        dialer: PodDialer,
        *,
        stream_creation_timeout: float = 30.0,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        authorized: Callable[[str], bool] = lambda authorization: True,
    ) -> None:
        super().__init__(transport, dialer, stream_creation_timeout)
        self.transport: asyncio.Transport = transport
        self.registry = registry
        #: Whether a stream's ``authorization`` header is good enough (agent.py AgentAuth).
        self._authorized = authorized
        self.h2 = H2PairServer(max_concurrent_streams=max_concurrent_streams)
        self._goaway_sent = False
        self._last_stream_id = 0  # highest client stream seen: the GOAWAY last-stream-id
        self._flush_pending = False
        self._unflushed = 0  # pod payload bytes queued since the last write
        # Pairs whose pod output waits for window (an ordered set): what a connection-wide
        # WINDOW_UPDATE may unblock, without walking every pair.
        self._stalled: dict[H2Pair, None] = {}
        # The client's payloads of one read, per pair: each pod socket gets one write (and
        # each stream one acknowledgement) per read, not one per DATA frame.
        self._held: dict[H2Pair, list[bytes | memoryview]] = {}

    def start(self, how: str) -> None:
        log.info("http/2 connection (%s) from %s", how, self.transport.get_extra_info("peername"))
        self.flush_now()

    # ------------------------------------------------------------ client side

    def receive(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.h2.receive_data(data)
        except PairProtocolError as exc:
            log.info("http/2 connection error: %s", exc.message)
            self.flush_now()
            self.close()
            return
        for event in events:
            if self._closed:
                return
            try:
                if type(event) is DataReceived:
                    self._data(event)
                    continue
                if self._held:
                    self._write_held()  # keep order: data reaches the pod before its EOF
                if isinstance(event, StreamOpened):
                    self._stream_opened(event)
                elif isinstance(event, StreamEnded):
                    self._data_ended(event.stream_id)
                elif isinstance(event, StreamReset):
                    self._stream_reset(event.stream_id)
                elif isinstance(event, WindowOpened):
                    self._window_opened(event.stream_id)
                elif isinstance(event, ConnectionTerminated):
                    # h2 sends nothing more after the client's GOAWAY: the pairs end here.
                    log.info("http/2 client sent GOAWAY (code %d)", event.error_code)
                    self.close()
                    return
            except (PairStateError, H2ProtocolError) as exc:
                # A stream in a state we did not expect (e.g. reset while we answered):
                # it concerns that stream only.
                log.info("http/2 stream state: %s", exc)
        if self._held:
            self._write_held()
        self.flush()

    def client_eof(self) -> None:
        self.close()

    def flush(self) -> None:
        """Write what h2 queued once the loop has run every callback of this I/O poll:
        the frames of every pair that had news in it (responses, small DATA, END_STREAM,
        WINDOW_UPDATE) share one write, where each was a write and a wake-up of the
        client before (5 writes a pair with 1000 concurrent connections)."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        self._unflushed = 0
        data = self.h2.buffers_to_send()
        if data and not self.transport.is_closing():
            self.transport.writelines(data)

    def _resume_pod(self, pair: H2Pair) -> None:
        pod = pair.pod
        if pod is not None and not pair.outq and not pair.pod_eof and not self.client_write_paused:
            pod.transport.resume_reading()

    def _reject(self, sid: int, error: PairRequestError, end_stream: bool) -> None:
        log.info("http/2 stream %d refused: %s", sid, error)
        self.h2.reject_stream(sid, error)
        if not end_stream:
            # The response is complete before the request: RST_STREAM(NO_ERROR) tells
            # the client to stop sending (RFC 9113 §8.1).
            self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)

    def _stream_opened(self, event: StreamOpened) -> None:
        sid, headers = event.stream_id, event.headers
        self._last_stream_id = max(self._last_stream_id, sid)
        if self._goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        if not self._authorized(headers.get("authorization", "")):
            self._reject(sid, PairRequestError(401, "Unauthorized"), event.end_stream)
            return
        if headers.get(":path") == AGENT_PATH and headers.get(":method") == "GET":
            self.h2.answer_agent_query(sid, __version__)
            if not event.end_stream:
                self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            return
        try:
            namespace, pod_name = parse_pair_path(headers.get(":path", ""))
            if self.registry.get(namespace, pod_name) is None:
                raise PairRequestError(404, f'pods "{pod_name}" not found')
            stream_type, port, request_id = validate_pair_headers(headers)
        except PairRequestError as error:
            self._reject(sid, error, event.end_stream)
            return
        pair = self.pairs.get(request_id)
        if pair is not None and (
            (stream_type == "error" and pair.error_sid is not None)
            or (stream_type == "data" and pair.data_sid is not None)
        ):
            message = (
                f"error processing stream for request {request_id}: "
                f"{stream_type} stream already assigned"
            )
            self._reject(sid, PairRequestError(409, message), event.end_stream)
            return
        pair = self._pair(request_id)
        self.by_stream[sid] = pair
        if stream_type == "error":
            pair.error_sid = sid
            self.h2.respond(sid, 200)  # the SYN_REPLY equivalent
        else:
            pair.data_sid = sid
            pair.port = port
            pair.namespace, pair.pod_name = namespace, pod_name
            pair.client_fin = event.end_stream
        self._dial_when_complete(pair)

    def _new_pair(self, request_id: str) -> H2Pair:
        return H2Pair(request_id=request_id)

    def _dial_name(self, pair: H2Pair) -> str:
        return f"h2 dial {pair.pod_name}:{pair.port} req={pair.request_id}"

    def _data(self, event: DataReceived) -> None:
        pair = self.by_stream.get(event.stream_id)
        if pair is None or pair.done or event.stream_id != pair.data_sid:
            # Unknown, finished or error stream: dropped, but the window is handed back.
            self.h2.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        pair.unacked += event.flow_controlled_length
        pod = pair.pod
        if pod is None:
            if event.data:
                pair.pending.append(event.data)  # bounded by the stream window
            return
        chunks = self._held.get(pair)
        if chunks is None:
            chunks = self._held[pair] = []
        if event.data:
            chunks.append(event.data)

    def _write_held(self) -> None:
        """Write what this read brought for each pod; acknowledge it at once if the pod
        socket took it all, else once it drains (``pod_drained``)."""
        held, self._held = self._held, {}
        for pair, chunks in held.items():
            pod = pair.pod
            if pair.done or pod is None:
                continue  # _forget acknowledged what the pair held
            if len(chunks) == 1:
                pod.transport.write(chunks[0])
            elif chunks:
                pod.transport.writelines(chunks)
            if not pod.write_paused:
                self._ack(pair)

    def _ack(self, pair: H2Pair) -> None:
        if pair.unacked and pair.data_sid is not None:
            with contextlib.suppress(H2ProtocolError):  # the connection is closing
                self.h2.acknowledge(pair.data_sid, pair.unacked)
        pair.unacked = 0

    def pod_drained(self, pair: H2Pair) -> None:
        """Everything written to the pod reached its socket: open the window again."""
        if pair.done:
            return
        self._ack(pair)
        self.flush()

    def _stream_reset(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done:
            return
        self._abort(pair, skip=sid)

    def _cancel_stream(self, sid: int) -> None:
        with contextlib.suppress(PairStateError):
            self.h2.reset_stream(sid, ErrorCodes.CANCEL)

    def _window_opened(self, sid: int) -> None:
        if sid == 0:
            pairs = list(self._stalled)
        else:
            found = self.by_stream.get(sid)
            pairs = [found] if found is not None else []
        for pair in pairs:
            if sid == 0 and self.h2.connection_window() <= 0:
                break  # the rest wait for the next one
            if not pair.done:
                self._send_out(pair)

    # ------------------------------------------------------------ pod side

    def _new_pod(self, pair: H2Pair) -> PodConnection[H2Pair]:
        # write_limit 0: pause_writing as soon as a byte is left in our buffer,
        # resume_writing once it is empty, i.e. exactly "everything reached the pod
        # socket", which is when its window is handed back.
        return H2PodConnection(self, pair, write_limit=0)

    def _pod_entry(self, pair: H2Pair) -> PodEntry:
        pair.entry = self.registry.get(pair.namespace, pair.pod_name)
        if pair.entry is None:
            raise DialError(f'pods "{pair.pod_name}" not found')
        return pair.entry

    def _pod_connected(self, pair: H2Pair, pod: PodConnection[H2Pair]) -> None:
        pair.pod = pod
        try:
            assert pair.data_sid is not None
            self.h2.respond(pair.data_sid, 200)
            pair.answered = True
            self._write_pending(pair, pod)
            if not pod.write_paused:
                self._ack(pair)
            if pair.client_fin:
                pod.write_eof()
            self._send_out(pair)  # what the pod said first; resumes reading it
        except PairStateError as exc:
            log.info("http/2 stream state: %s", exc)
            self._abort(pair)
        self.flush()

    def _dial_failed(self, pair: H2Pair, exc: Exception) -> None:
        if pair.done:
            return
        if isinstance(exc, DialError):
            uid = pair.entry.uid if pair.entry is not None else ""
            message = f"error forwarding port {pair.port} to pod {pair.pod_name}, uid {uid}: {exc}"
        else:
            message = f"error forwarding port {pair.port}: {cause_text(exc)}"
        log.info(message)
        # The reason first: a client that sees the data stream reset before the error
        # text would take the failure for a plain reset and not report it.
        self._end_error_stream(pair, message)
        with contextlib.suppress(PairStateError):
            if pair.data_sid is not None:
                self.h2.respond(pair.data_sid, 502, end_stream=True)
                if not pair.client_fin:
                    self.h2.reset_stream(pair.data_sid, ErrorCodes.NO_ERROR)
        self._forget(pair)
        if pair.pod is not None:
            pair.pod.transport.abort()
        self.flush()

    def _end_error_stream(self, pair: H2Pair, text: str = "") -> None:
        if pair.error_sid is None:
            return
        with contextlib.suppress(PairStateError):
            if text:
                self.h2.send_data(pair.error_sid, text.encode())
            self.h2.end_stream(pair.error_sid)

    def pod_data(self, pair: H2Pair, data: bytes) -> None:
        if pair.done or pair.data_sid is None:
            return
        pair.outq.append(data)
        self._send_out(pair)
        self._unflushed += len(data)
        if self._unflushed >= BULK:
            self.flush_now()

    def _send_out(self, pair: H2Pair) -> None:
        """Send queued pod output as the windows allow; END_STREAM once it is all out."""
        sid = pair.data_sid
        if sid is None or not pair.answered:
            return
        outq = pair.outq
        try:
            while outq:
                chunk = outq[0]
                sent = self.h2.send_data(sid, chunk)
                if sent < len(chunk):
                    outq[0] = memoryview(chunk)[sent:]
                    break
                outq.popleft()
            if outq:
                # Window closed: stop reading this pod until the client opens it.
                self._stalled[pair] = None
                if pair.pod is not None:
                    pair.pod.transport.pause_reading()
                return
            self._stalled.pop(pair, None)
            if pair.pod_eof:
                if not pair.end_sent:
                    pair.end_sent = True
                    self.h2.end_stream(sid)
                self._maybe_finish(pair)
            else:
                self._resume_pod(pair)
        except PairStateError as exc:
            log.info("http/2 stream state: %s", exc)
            self._abort(pair)
        self.flush()

    def pod_eof(self, pair: H2Pair) -> None:
        if pair.done or pair.pod_eof:
            return
        pair.pod_eof = True
        self._send_out(pair)

    def pod_lost(self, pair: H2Pair, exc: Exception | None) -> None:
        pair.pod_gone = True
        super().pod_lost(pair, exc)

    def _pod_failed(self, pair: H2Pair, exc: Exception) -> None:
        message = f"error forwarding port {pair.port} to pod {pair.pod_name}: read from pod: {exc}"
        log.info(message)
        self._end_error_stream(pair, message)  # the reason first, as in _dial_failed
        with contextlib.suppress(PairStateError):
            if pair.data_sid is not None:
                self.h2.reset_stream(pair.data_sid, ErrorCodes.CONNECT_ERROR)
        self._forget(pair)

    def _pod_closed(self, pair: H2Pair) -> None:
        self._maybe_finish(pair)

    # ------------------------------------------------------------ endings

    def _maybe_finish(self, pair: H2Pair) -> None:
        if pair.done or not pair.end_sent:
            return
        if pair.client_fin or pair.pod_gone:
            self._end_error_stream(pair)
            self._forget(pair)
            if pair.pod is not None:
                pair.pod.transport.close()

    def _timed_out(self, pair: H2Pair, message: str) -> None:
        # Text and END_STREAM on a lone error stream, RST CANCEL on a lone data stream.
        self._end_error_stream(pair, message)
        self._abort(pair, skip=pair.error_sid)

    def _forget(self, pair: H2Pair) -> None:
        super()._forget(pair)
        # Bytes we will never write still count against the connection window.
        self._ack(pair)
        pair.outq.clear()
        self._stalled.pop(pair, None)
        self.h2.release(*(sid for sid in (pair.data_sid, pair.error_sid) if sid is not None))

    # ------------------------------------------------------------ lifecycle

    def goaway(self) -> None:
        """GOAWAY(NO_ERROR, last stream id): no new pairs, the open ones drain.

        h2's own ``close_connection`` would move its state machine to CLOSED, after which
        nothing more may be sent, not even on the pairs that are to drain. So the frame is
        built here and written behind h2's output; streams the client opens afterwards
        are refused (REFUSED_STREAM, safe to retry on a new connection).
        """
        if self._closed or self._goaway_sent:
            return
        self._goaway_sent = True
        self.flush_now()
        frame = GoAwayFrame(0, last_stream_id=self._last_stream_id, error_code=0)
        if not self.transport.is_closing():
            self.transport.write(frame.serialize())
