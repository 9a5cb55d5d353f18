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

Malformed input on one stream only ever touches that stream; an HTTP/2 connection error
ends only this connection (GOAWAY first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import cast

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from hyperframe.frame import GoAwayFrame

from service import __version__
from service.agent.dialer import DialError, PodDialer
from service.agent.registry import PodRegistry
from service.protocols.h2pair import (
    AGENT_PATH,
    MAX_CONCURRENT_STREAMS,
    H2PairServer,
    LinkTerminated,
    PairData,
    PairEnded,
    PairProtocolError,
    PairRequestError,
    PairReset,
    PairStateError,
    PairStreamOpened,
    WindowOpened,
    parse_pair_path,
    validate_pair_headers,
)

log = logging.getLogger("podgate.agent")


@dataclass(eq=False, slots=True)
class H2Pair:
    """One forwarded connection: an error stream and a data stream sharing a requestid."""

    request_id: str
    namespace: str = ""
    pod_name: str = ""
    error_sid: int | None = None
    data_sid: int | None = None
    port: int = 0
    timer: asyncio.TimerHandle | None = None
    pod: H2PodSide | None = None
    pending: list[bytes | memoryview] = field(default_factory=list)  # before the dial
    unacked: int = 0  # flow-controlled bytes received on the data stream, not yet acked
    outq: deque[bytes | memoryview] = field(default_factory=deque)  # waiting for window
    answered: bool = False  # the data stream got its :status 200: DATA may follow
    client_fin: bool = False
    pod_eof: bool = False
    end_sent: bool = False  # END_STREAM on the data stream
    pod_gone: bool = False
    dialing: bool = False
    done: bool = False

    @property
    def complete(self) -> bool:
        return self.error_sid is not None and self.data_sid is not None


class H2PodSide(asyncio.Protocol):
    """The pod end of a pair."""

    def __init__(self, session: H2Session, pair: H2Pair) -> None:
        self.session = session
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # high=0: pause_writing as soon as a byte is left in our buffer, resume_writing
        # once it is empty, i.e. exactly "everything was written to the pod socket".
        self.transport.set_write_buffer_limits(high=0)
        if self.session.client_write_paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.session.pod_data(self.pair, data)
        if not self.pair.answered and self.transport is not None:
            # A pod that speaks first, before the dial completed: its bytes wait in outq
            # until the data stream is answered (DATA may not precede the HEADERS).
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.session.pod_eof(self.pair)
        return True  # keep our write side open: a real half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.pod_lost(self.pair, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.session.pod_drained(self.pair)


class H2Session:
    """One HTTP/2 client connection (h2c prior knowledge or TLS+ALPN ``h2``)."""

    def __init__(
        self,
        transport: asyncio.Transport,
        registry: PodRegistry,
        dialer: PodDialer,
        *,
        stream_creation_timeout: float = 30.0,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
    ) -> None:
        self.transport = transport
        self.registry = registry
        self.dialer = dialer
        self.stream_creation_timeout = stream_creation_timeout
        self.h2 = H2PairServer(max_concurrent_streams=max_concurrent_streams)
        self.pairs: dict[str, H2Pair] = {}
        self.by_stream: dict[int, H2Pair] = {}
        self.client_write_paused = False
        self._closed = False
        self._goaway_sent = False
        self._last_stream_id = 0  # highest client stream seen: the GOAWAY last-stream-id
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()
        self._drained.set()

    def start(self, how: str) -> None:
        log.info("http/2 connection (%s) from %s", how, self.transport.get_extra_info("peername"))
        self.flush()

    # ------------------------------------------------------------ client side

    def receive(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.h2.receive_data(data)
        except PairProtocolError as exc:
            log.info("http/2 connection error: %s", exc.message)
            self.flush()
            self.close()
            return
        for event in events:
            if self._closed:
                return
            try:
                if isinstance(event, PairData):
                    self._data(event)
                elif isinstance(event, PairStreamOpened):
                    self._stream_opened(event)
                elif isinstance(event, PairEnded):
                    self._stream_ended(event.stream_id)
                elif isinstance(event, PairReset):
                    self._stream_reset(event.stream_id)
                elif isinstance(event, WindowOpened):
                    self._window_opened(event.stream_id)
                elif isinstance(event, LinkTerminated):
                    # h2 sends nothing more after the client's GOAWAY: the pairs end here.
                    log.info("http/2 client sent GOAWAY (code %d)", event.code)
                    self.close()
                    return
            except (PairStateError, H2ProtocolError) as exc:
                # A stream in a state we did not expect (e.g. reset while we answered):
                # it concerns that stream only.
                log.info("http/2 stream state: %s", exc)
        self.flush()

    def client_eof(self) -> None:
        self.close()

    def flush(self) -> None:
        data = self.h2.buffers_to_send()
        if data and not self.transport.is_closing():
            self.transport.writelines(data)

    def pause_writing(self) -> None:
        self.client_write_paused = True
        for pair in self.pairs.values():
            if pair.pod is not None and pair.pod.transport is not None:
                pair.pod.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_write_paused = False
        for pair in list(self.pairs.values()):
            self._maybe_resume_pod(pair)

    def _maybe_resume_pod(self, pair: H2Pair) -> None:
        pod = pair.pod
        if (
            pod is not None
            and pod.transport is not None
            and not pair.outq
            and not pair.pod_eof
            and not self.client_write_paused
        ):
            pod.transport.resume_reading()

    def _reject(self, sid: int, error: PairRequestError, end_stream: bool) -> None:
        log.info("http/2 stream %d refused: %s", sid, error)
        self.h2.reject_stream(sid, error)
        if not end_stream:
            # The response is complete before the request: RST_STREAM(NO_ERROR) tells
            # the client to stop sending (RFC 9113 §8.1).
            self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)

    def _stream_opened(self, event: PairStreamOpened) -> None:
        sid, headers = event.stream_id, event.headers
        self._last_stream_id = max(self._last_stream_id, sid)
        if self._goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
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
        if pair is None:
            pair = H2Pair(request_id)
            self.pairs[request_id] = pair
            self._drained.clear()
            pair.timer = asyncio.get_running_loop().call_later(
                self.stream_creation_timeout, self._pair_timed_out, pair
            )
        self.by_stream[sid] = pair
        if stream_type == "error":
            pair.error_sid = sid
            self.h2.respond(sid, 200)  # the SYN_REPLY equivalent
        else:
            pair.data_sid = sid
            pair.port = port
            pair.namespace, pair.pod_name = namespace, pod_name
            pair.client_fin = event.end_stream
        if pair.complete and not pair.dialing:
            if pair.timer is not None:
                pair.timer.cancel()
                pair.timer = None
            pair.dialing = True
            task = asyncio.get_running_loop().create_task(
                self._dial(pair), name=f"h2 dial {pair.pod_name}:{pair.port} req={request_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _data(self, event: PairData) -> None:
        pair = self.by_stream.get(event.stream_id)
        if pair is None or pair.done or event.stream_id != pair.data_sid:
            # Unknown, finished or error stream: dropped, but the window is handed back.
            self.h2.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        pair.unacked += event.flow_controlled_length
        pod = pair.pod
        if pod is None or pod.transport is None:
            if event.data:
                pair.pending.append(event.data)  # bounded by the stream window
            return
        if event.data:
            pod.transport.write(event.data)
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

    def _stream_ended(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done or sid != pair.data_sid:
            return
        pair.client_fin = True
        if pair.pod is not None:
            self._pod_write_eof(pair)
        self._maybe_finish(pair)

    def _pod_write_eof(self, pair: H2Pair) -> None:
        """The client's END_STREAM becomes shutdown(SHUT_WR) on the pod socket."""
        pod = pair.pod
        if pod is None or pod.transport is None or not pod.transport.can_write_eof():
            return
        try:
            pod.transport.write_eof()
        except OSError as exc:
            self.pod_lost(pair, exc)

    def _stream_reset(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done:
            return
        self._abort(pair, skip=sid)

    def _window_opened(self, sid: int) -> None:
        if sid == 0:
            pairs = [p for p in self.pairs.values() if p.outq or (p.pod_eof and not p.end_sent)]
        else:
            found = self.by_stream.get(sid)
            pairs = [found] if found is not None else []
        for pair in pairs:
            if not pair.done:
                self._send_out(pair)

    # ------------------------------------------------------------ pod side

    async def _dial(self, pair: H2Pair) -> None:
        pod_entry = self.registry.get(pair.namespace, pair.pod_name)
        try:
            if pod_entry is None:
                raise DialError(f'pods "{pair.pod_name}" not found')
            sock = await self.dialer.dial(pod_entry, pair.port)
        except DialError as exc:
            uid = pod_entry.uid if pod_entry is not None else ""
            where = f"port {pair.port} to pod {pair.pod_name}, uid {uid}"
            self._dial_failed(pair, f"error forwarding {where}: {exc}")
            return
        if pair.done or self._closed:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            _, pod = await loop.create_connection(lambda: H2PodSide(self, pair), sock=sock)
        except OSError as exc:
            sock.close()
            self._dial_failed(pair, f"error forwarding port {pair.port}: {exc}")
            return
        assert pod.transport is not None
        if pair.done or self._closed:
            pod.transport.abort()
            return
        pair.pod = pod
        try:
            assert pair.data_sid is not None
            self.h2.respond(pair.data_sid, 200)
            pair.answered = True
            if pair.pending:
                pod.transport.writelines(pair.pending)
                pair.pending.clear()
            if not pod.write_paused:
                self._ack(pair)
            if pair.client_fin:
                self._pod_write_eof(pair)
            self._send_out(pair)  # what the pod said first; resumes reading it
        except PairStateError as exc:
            log.info("http/2 stream state: %s", exc)
            self._abort(pair)
        self.flush()

    def _dial_failed(self, pair: H2Pair, message: str) -> None:
        if pair.done:
            return
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
        self.flush()

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
                if pair.pod is not None and pair.pod.transport is not None:
                    pair.pod.transport.pause_reading()
                return
            if pair.pod_eof:
                if not pair.end_sent:
                    pair.end_sent = True
                    self.h2.end_stream(sid)
                self._maybe_finish(pair)
            else:
                self._maybe_resume_pod(pair)
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
        if pair.done:
            return
        if exc is not None and not pair.pod_eof:
            message = (
                f"error forwarding port {pair.port} to pod {pair.pod_name}: read from pod: {exc}"
            )
            log.info(message)
            self._end_error_stream(pair, message)  # the reason first, as in _dial_failed
            with contextlib.suppress(PairStateError):
                if pair.data_sid is not None:
                    self.h2.reset_stream(pair.data_sid, ErrorCodes.CONNECT_ERROR)
            self._forget(pair)
        else:
            if not pair.pod_eof:
                self.pod_eof(pair)
            self._maybe_finish(pair)
        self.flush()

    # ------------------------------------------------------------ endings

    def _maybe_finish(self, pair: H2Pair) -> None:
        if pair.done or not pair.end_sent:
            return
        if pair.client_fin or pair.pod_gone:
            self._end_error_stream(pair)
            self._forget(pair)
            if pair.pod is not None and pair.pod.transport is not None:
                pair.pod.transport.close()

    def _abort(self, pair: H2Pair, skip: int | None = None) -> None:
        """RST_STREAM CANCEL on both streams (except ``skip``), abort the pod socket."""
        if pair.done:
            return
        for sid in (pair.data_sid, pair.error_sid):
            if sid is not None and sid != skip:
                with contextlib.suppress(PairStateError):
                    self.h2.reset_stream(sid, ErrorCodes.CANCEL)
        self._forget(pair)
        if pair.pod is not None and pair.pod.transport is not None:
            pair.pod.transport.abort()

    def _pair_timed_out(self, pair: H2Pair) -> None:
        pair.timer = None
        if pair.complete or pair.done:
            return
        message = f"(conn={id(self):#x}, request={pair.request_id}) timed out waiting for streams"
        log.info(message)
        if pair.error_sid is not None:
            self._end_error_stream(pair, message)
        if pair.data_sid is not None:
            with contextlib.suppress(PairStateError):
                self.h2.reset_stream(pair.data_sid, ErrorCodes.CANCEL)
        self._forget(pair)
        self.flush()

    def _forget(self, pair: H2Pair) -> None:
        pair.done = True
        if pair.timer is not None:
            pair.timer.cancel()
            pair.timer = None
        # Bytes we will never write still count against the connection window.
        self._ack(pair)
        pair.pending.clear()
        pair.outq.clear()
        self.pairs.pop(pair.request_id, None)
        for sid in (pair.error_sid, pair.data_sid):
            if sid is not None:
                self.by_stream.pop(sid, None)
        if not self.pairs:
            self._drained.set()

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
        self.flush()
        frame = GoAwayFrame(0, last_stream_id=self._last_stream_id, error_code=0)
        if not self.transport.is_closing():
            self.transport.write(frame.serialize())

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pair in list(self.pairs.values()):
            self._forget(pair)
            if pair.pod is not None and pair.pod.transport is not None:
                pair.pod.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if not self.transport.is_closing():
            self.transport.close()
