"""Every Prometheus metric dormant exports, in one place, named ``<noun>_<verb>_<unit>``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dormant.engine import Engine, EngineEvent
from dormant.engine.notify import (
    DeadlineDue,
    OperationFinished,
    OrphanRemoved,
    Transitioned,
    Warned,
)
from dormant.engine.outcome import OperationKind, OperationStatus
from dormant.policy import State
from dormant.reconciler import Reconciler

#: Seconds: from a fraction of a second (a process) to minutes (an image pull).
_OPERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, engine: Engine, reconciler: Reconciler) -> None:
        self.registry = CollectorRegistry()
        self.sessions_created_total = Counter(
            "dormant_sessions_created_total", "Sessions created.", registry=self.registry
        )
        self.transitions_applied_total = Counter(
            "dormant_transitions_applied_total",
            "Session state transitions, by target state and reason code.",
            ["to_state", "code"],
            registry=self.registry,
        )
        self.warnings_sent_total = Counter(
            "dormant_warnings_sent_total", "Sleep warnings sent.", registry=self.registry
        )
        self.orphans_removed_total = Counter(
            "dormant_orphans_removed_total",
            "Containers removed by the reconciler.",
            registry=self.registry,
        )
        self.deadlines_late_seconds = Histogram(
            "dormant_deadlines_late_seconds",
            "How late the scheduler handled a due deadline.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        self.operations_finished_total = Counter(
            "dormant_operations_finished_total",
            "Operations (create, start, stop, remove) that ended, by kind and outcome (done, "
            "failed, superseded, interrupted).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.operations_duration_seconds = Histogram(
            "dormant_operations_duration_seconds",
            "Time from an operation's intent to its end, by kind.",
            ["kind"],
            buckets=_OPERATION_BUCKETS,
            registry=self.registry,
        )
        self.wakes_duration_seconds = Histogram(
            "dormant_wakes_duration_seconds",
            "Wake latency: from leaving sleeping (or failed) to running.",
            buckets=_OPERATION_BUCKETS,
            registry=self.registry,
        )
        # Every label value exists from the start (at 0): a rate() over a series that appears
        # only with its first event misses that event.
        for kind in OperationKind:
            self.operations_duration_seconds.labels(kind.value)
            for status in OperationStatus:
                if status is not OperationStatus.PENDING:
                    self.operations_finished_total.labels(kind.value, status.value)
        #: Sessions waking now: when each left sleeping (or failed).
        self._waking: dict[str, datetime] = {}
        self.registry.register(_EngineCollector(engine, reconciler))
        engine.listeners.append(self.observe)

    def add_gateway(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Export the real-time gateway's counters (read from ``stats()`` at each scrape)."""
        self.registry.register(_GatewayCollector(stats))

    def add_proxy(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        """Export the session proxy's counters (read from ``stats()`` at each scrape)."""
        self.registry.register(_ProxyCollector(stats))

    def observe(self, event: EngineEvent) -> None:
        match event:
            case Transitioned(from_state=None, to_state=to_state, code=code):
                self.transitions_applied_total.labels(to_state.value, code).inc()
                self.sessions_created_total.inc()
            case Transitioned(to_state=to_state, code=code):
                self.transitions_applied_total.labels(to_state.value, code).inc()
                self._wake_step(event)
            case OperationFinished(kind=kind, outcome=outcome, seconds=seconds):
                self.operations_finished_total.labels(kind, outcome).inc()
                if seconds is not None:
                    self.operations_duration_seconds.labels(kind).observe(seconds)
            case Warned():
                self.warnings_sent_total.inc()
            case OrphanRemoved():
                self.orphans_removed_total.inc()
            case DeadlineDue(late_seconds=late):
                self.deadlines_late_seconds.observe(max(0.0, late))
            case _:
                pass

    def _wake_step(self, event: Transitioned) -> None:
        sid = event.session_id
        if event.from_state in (State.SLEEPING, State.FAILED) and event.to_state is State.STARTING:
            self._waking[sid] = event.session.state_since
            return
        began = self._waking.pop(sid, None)
        if began is not None and event.to_state is State.RUNNING:
            seconds = (event.session.state_since - began).total_seconds()
            self.wakes_duration_seconds.observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, reconciler: Reconciler) -> None:
        self.engine = engine
        self.reconciler = reconciler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "dormant_sessions_live_count", "Sessions not deleted.", value=self.engine.live_count()
        )
        yield GaugeMetricFamily(
            "dormant_sessions_queued_count",
            "Sessions waiting for capacity (admission queues), as the last admission pass saw.",
            value=self.engine.queue_length,
        )
        yield GaugeMetricFamily(
            "dormant_deadlines_pending_count",
            "Deadlines waiting in the scheduler.",
            value=len(self.engine.deadlines),
        )
        yield CounterMetricFamily(
            "dormant_activity_events_applied",
            "Activity events applied by the engine.",
            value=self.engine.events_applied,
        )
        yield CounterMetricFamily(
            "dormant_reconcile_reads_skipped",
            "Runtime listings that failed, so the sweep judged nothing of that runtime.",
            value=self.reconciler.skipped_reads,
        )
        yield GaugeMetricFamily(
            "dormant_containers_foreign_count",
            "Containers of other deployments seen (and left alone) by the last sweep.",
            value=self.reconciler.last_plan.foreign,
        )
        yield CounterMetricFamily(
            "dormant_connections_stale_dropped",
            "Connection counts dropped because the instance holding them was gone.",
            value=self.engine.connections_dropped,
        )
        yield CounterMetricFamily(
            "dormant_sessions_purged",
            "Deleted sessions removed (with timelines and operations) after retention.",
            value=self.engine.sessions_purged,
        )


class _GatewayCollector(Collector):
    _COUNTERS = (
        ("connected_total", "dormant_connections_accepted", "Real-time connections accepted."),
        ("activity_applied", "dormant_gateway_activity_applied", "Activity events applied."),
        (
            "activity_dropped",
            "dormant_gateway_activity_dropped",
            "Activity dropped by the rate limit.",
        ),
        (
            "invalid_events",
            "dormant_gateway_events_rejected",
            "Invalid real-time events answered with an error.",
        ),
        (
            "heartbeat_drops",
            "dormant_connections_dropped",
            "Connections dropped after missed pongs.",
        ),
        ("broadcasts", "dormant_broadcasts_sent", "Broadcasts relayed to session rooms."),
        (
            "malformed_packets",
            "dormant_gateway_packets_malformed",
            "Engine.IO/Socket.IO packets that did not parse (or came before auth), dropped.",
        ),
        (
            "handshake_timeouts",
            "dormant_gateway_handshakes_expired",
            "Sockets closed for not completing a valid connect in time.",
        ),
        (
            "revoked_drops",
            "dormant_connections_revoked",
            "Connections closed because their API key was revoked.",
        ),
    )
    _GAUGES = (
        ("sockets", "dormant_gateway_sockets_count", "Engine.IO sockets open now."),
        (
            "unauthenticated",
            "dormant_gateway_sockets_unauthenticated_count",
            "Engine.IO sockets open now without a valid connect yet.",
        ),
    )

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats()
        yield GaugeMetricFamily(
            "dormant_connections_open_count",
            "Real-time connections open now.",
            value=stats.get("connections", 0),
        )
        for key, name, doc in self._GAUGES:
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        for key, name, doc in self._COUNTERS:
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        refused = CounterMetricFamily(
            "dormant_connections_refused",
            "Real-time connections refused, by reason.",
            labels=["code"],
        )
        for code, n in sorted(dict(stats.get("refused", {})).items()):
            refused.add_metric([code], n)
        yield refused


class _ProxyCollector(Collector):
    """The session proxy's counters, read from its ``stats()`` at each scrape; every outcome
    label is present from the start (at 0)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.stats()
        requests = CounterMetricFamily(
            "dormant_proxy_requests",
            "Requests to the session proxy, by how they ended (forwarded to the session, or "
            "answered by the proxy: allowed, redirected, refused, not_found, waiting, "
            "unavailable, bad_gateway, bad_request).",
            labels=["outcome"],
        )
        for outcome, n in dict(stats.get("outcomes", {})).items():
            requests.add_metric([outcome], n)
        yield requests
        yield CounterMetricFamily(
            "dormant_proxy_wakes_started",
            "Wakes the proxy started for requests that found their session asleep.",
            value=stats.get("wakes", 0),
        )
