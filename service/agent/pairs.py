"""Stream pairs, the shape SPDY and HTTP/2 sessions share (protocols.md §1.5, §5.2).

Each forwarded connection is two client-opened streams, an error stream and a data
stream, sharing a ``requestid``. The kubelet's rules live here once: a pair exists from
its first stream, its pod is dialled once both halves are there, and it times out after
``stream_creation_timeout`` if the second never comes. A client half-close of the data
stream becomes shutdown(SHUT_WR) on the pod socket; the session is drained once no pair
is left. What each protocol sends for these events stays in its session.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeVar

from service.agent.dialer import PodDialer
from service.agent.pod import ClientLink, PodEnd, PodForwarder

log = logging.getLogger("podgate.agent")


@dataclass(eq=False, slots=True, kw_only=True)
class StreamPair(PodEnd):
    """One forwarded connection: an error stream and a data stream sharing a requestid."""

    request_id: str
    error_sid: int | None = None
    data_sid: int | None = None
    timer: asyncio.TimerHandle | None = None
    dialing: bool = False

    @property
    def complete(self) -> bool:
        return self.error_sid is not None and self.data_sid is not None


P = TypeVar("P", bound=StreamPair)


class PairedSession(PodForwarder[P]):
    """A client session whose forwarded connections are stream pairs.

    Besides ``PodForwarder``'s, a session says how to make a pair (``_new_pair``), name
    its dial task (``_dial_name``), cancel a stream (``_cancel_stream``), end a pair that
    timed out (``_timed_out``) and what a pod that reset or closed means for the pair
    (``_pod_failed``, ``_pod_closed``); ``flush`` writes what it queued.
    """

    def __init__(
        self, transport: ClientLink, dialer: PodDialer, stream_creation_timeout: float
    ) -> None:
        super().__init__(transport, dialer)
        self.stream_creation_timeout = stream_creation_timeout
        self.pairs: dict[str, P] = {}
        self.by_stream: dict[int, P] = {}
        self._drained.set()

    @abc.abstractmethod
    def _new_pair(self, request_id: str) -> P: ...

    @abc.abstractmethod
    def _dial_name(self, pair: P) -> str: ...

    @abc.abstractmethod
    def _cancel_stream(self, sid: int) -> None: ...

    @abc.abstractmethod
    def _timed_out(self, pair: P, message: str) -> None: ...

    @abc.abstractmethod
    def _pod_failed(self, pair: P, exc: Exception) -> None:
        """The pod socket broke before the pod's EOF: the pair ends with an error."""

    @abc.abstractmethod
    def _pod_closed(self, pair: P) -> None:
        """The pod socket closed after its EOF (or cleanly): a normal end."""

    @abc.abstractmethod
    def flush(self) -> None: ...

    def _ends(self) -> Collection[P]:
        return self.pairs.values()

    # ------------------------------------------------------------ pairing

    def _pair(self, request_id: str) -> P:
        """The pair of ``request_id``; a new one starts its pair timeout."""
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self._new_pair(request_id)
            self.pairs[request_id] = pair
            self._drained.clear()
            pair.timer = asyncio.get_running_loop().call_later(
                self.stream_creation_timeout, self._pair_timed_out, pair
            )
        return pair

    def _dial_when_complete(self, pair: P) -> None:
        if pair.complete and not pair.dialing:
            if pair.timer is not None:
                pair.timer.cancel()
                pair.timer = None
            pair.dialing = True
            self._start_dial(pair, self._dial_name(pair))

    def _pair_timed_out(self, pair: P) -> None:
        pair.timer = None
        if pair.complete or pair.done:
            return
        message = f"(conn={id(self):#x}, request={pair.request_id}) timed out waiting for streams"
        log.info(message)
        self._timed_out(pair, message)
        self.flush()

    def _data_ended(self, sid: int) -> None:
        """The client half-closed a data stream."""
        pair = self.by_stream.get(sid)
        if pair is None or pair.done or sid != pair.data_sid:
            return
        pair.client_fin = True
        if pair.pod is not None:
            pair.pod.write_eof()
        self._maybe_finish(pair)

    @abc.abstractmethod
    def _maybe_finish(self, pair: P) -> None:
        """End the pair normally if both sides are done with it."""

    # ------------------------------------------------------------ pod events

    def pod_lost(self, pair: P, exc: Exception | None) -> None:
        if pair.done:
            return
        # Once the pod has sent EOF its reply is complete; a later EPIPE/ECONNRESET only
        # says that it closed its socket and takes no more input (e.g. a server that
        # closes after answering). That is a normal end, not a forwarding error: text
        # on the error stream makes client-go drop the whole session ("lost connection
        # to pod"), and containerd only logs such copy errors.
        if exc is not None and not pair.pod_eof:
            self._pod_failed(pair, exc)
        else:
            if not pair.pod_eof:
                self.pod_eof(pair)
            self._pod_closed(pair)
        self.flush()

    # ------------------------------------------------------------ endings

    def _abort(self, pair: P, skip: int | None = None) -> None:
        """Cancel both streams (except ``skip``) and abort the pod socket."""
        if pair.done:
            return
        for sid in (pair.data_sid, pair.error_sid):
            if sid is not None and sid != skip:
                self._cancel_stream(sid)
        self._forget(pair)
        if pair.pod is not None:
            pair.pod.transport.abort()

    def _forget(self, pair: P) -> None:
        super()._forget(pair)
        if pair.timer is not None:
            pair.timer.cancel()
            pair.timer = None
        self.pairs.pop(pair.request_id, None)
        for sid in (pair.error_sid, pair.data_sid):
            if sid is not None:
                self.by_stream.pop(sid, None)
        if not self.pairs:
            self._drained.set()

    def close(self) -> None:
        if self._closed:
            return
        self._stop()
        if not self.transport.is_closing():
            self.transport.close()
