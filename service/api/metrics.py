"""Prometheus metrics (`GET /metrics`, prometheus-client's text exposition).

The traffic counters are not instrumented per byte: a collector reads the sessions'
own counters at scrape time, so the data path pays nothing and a deleted session's
series disappear with it. Label cardinality is bounded by ``--max-sessions`` and
``--max-listeners-per-session``.

- ``podgate_session_*`` (labels ``name``, ``namespace``): bytes in/out, connections
  total/errors/refused (counters), connections active (gauge), reconnects (counter),
  ``podgate_session_status`` (one series per status, 1 for the current one);
- ``podgate_port_*`` (labels ``name``, ``namespace``, ``port``: the local port, and
  ``remote``): the same traffic counters per port mapping;
- ``podgate_dial_seconds`` (label ``transport``): histogram of successful dials;
- ``podgate_event_subscribers`` and ``podgate_sessions``; the process collectors
  (``process_*``, ``python_*``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.model import SessionStatus, Transport
from service.runner.local import TrafficCounters
from service.runner.supervisor import Supervisor

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (metric suffix, TrafficCounters attribute, help, is a counter)
_TRAFFIC = (
    ("bytes_in", "bytes_in", "Bytes from the pod to local clients.", True),
    ("bytes_out", "bytes_out", "Bytes from local clients to the pod.", True),
    ("connections", "connections_total", "Local connections accepted and forwarded.", True),
    ("connection_errors", "connection_errors", "Connections the pod side failed.", True),
    (
        "connections_refused",
        "connections_refused",
        "Connections closed at once (connection limit, descriptor reserve).",
        True,
    ),
    ("connections_active", "connections_active", "Local connections open now.", False),
)


class _SessionCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sessions = self.supervisor.list()
        keys = ["name", "namespace"]
        per_session = {
            suffix: _family(f"podgate_session_{suffix}", text, keys, counter)
            for suffix, _, text, counter in _TRAFFIC
        }
        per_port = {
            suffix: _family(f"podgate_port_{suffix}", text, [*keys, "port", "remote"], counter)
            for suffix, _, text, counter in _TRAFFIC
        }
        reconnects = CounterMetricFamily(
            "podgate_session_reconnects",
            "Successful re-dials after the link was lost.",
            labels=keys,
        )
        status = GaugeMetricFamily(
            "podgate_session_status",
            "The session's status: 1 for the current one.",
            labels=[*keys, "status"],
        )
        for session in sessions:
            labels = [session.spec.name, session.spec.namespace]
            _add(per_session, labels, session.counters)
            for position, counters in enumerate(session.port_counters):
                mapping = session.spec.mappings[position]
                local = session.bound[position].local_port if position < len(session.bound) else 0
                remote = session.remote_ports[position] or mapping.remote_port
                _add(per_port, [*labels, str(local or mapping.local_port), str(remote)], counters)
            reconnects.add_metric(labels, session.reconnects)
            for value in SessionStatus:
                status.add_metric([*labels, value.value], 1.0 if session.status == value else 0.0)
        yield from per_session.values()
        yield from per_port.values()
        yield reconnects
        yield status
        yield GaugeMetricFamily("podgate_sessions", "Sessions held.", value=len(sessions))
        yield GaugeMetricFamily(
            "podgate_event_subscribers",
            "Open event streams (GET /events, GET /sessions/{id}/events).",
            value=self.supervisor.events.subscribers,
        )


def _family(
    name: str, text: str, labels: list[str], counter: bool
) -> CounterMetricFamily | GaugeMetricFamily:
    if counter:
        return CounterMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


def _add(
    families: dict[str, CounterMetricFamily | GaugeMetricFamily],
    labels: list[str],
    counters: TrafficCounters,
) -> None:
    for suffix, attribute, _, _ in _TRAFFIC:
        families[suffix].add_metric(labels, getattr(counters, attribute))


class Metrics:
    """One registry per app (tests run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.dials = Histogram(
            "podgate_dial_seconds",
            "Time to dial a session's link (connect, upgrade, handshake), by transport.",
            ["transport"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
            registry=self.registry,
        )
        self._sessions: _SessionCollector | None = None

    def attach(self, supervisor: Supervisor) -> None:
        """Read this supervisor's sessions at every scrape; observe its dials."""
        if self._sessions is not None:
            self.registry.unregister(self._sessions)
        self._sessions = _SessionCollector(supervisor)
        self.registry.register(self._sessions)
        supervisor.on_dialled = self.observe_dial

    def observe_dial(self, transport: Transport, seconds: float) -> None:
        self.dials.labels(transport.value).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
