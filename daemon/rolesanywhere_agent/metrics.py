"""Prometheus metrics, one registry per Agent so that agents in one process never collide.

Counters and the latency histogram are fed by observers; the per-profile gauges are read from
the sessions at scrape time, so they are exact whenever Prometheus looks. Label values are
profile names, endpoint route templates, status codes and error class names: never a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .clock import Clock
from .sessions import ProfileSession, RefreshOutcome, State

PREFIX = "rolesanywhere_agent"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# CreateSession answers in tens to hundreds of milliseconds; timeouts are at 10 s.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AgentMetrics:
    """The agent's metrics; `refresh_finished` and `request_served` are its two observers."""

    def __init__(self, sessions: Mapping[str, ProfileSession], clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.refreshes = Counter(
            f"{PREFIX}_refreshes",
            "Refresh attempts by profile and outcome (success or the error's class name).",
            ["profile", "outcome"],
            registry=self.registry,
        )
        self.create_session_seconds = Histogram(
            f"{PREFIX}_create_session_duration_seconds",
            "Time CreateSession took, by profile, failed calls included.",
            ["profile"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "Requests served, by endpoint route and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self.registry.register(SessionCollector(sessions, clock))
        ProcessCollector(namespace=PREFIX, registry=self.registry)

    def refresh_finished(self, outcome: RefreshOutcome) -> None:
        self.refreshes.labels(outcome.profile, outcome.outcome).inc()
        if outcome.call_seconds is not None:
            self.create_session_seconds.labels(outcome.profile).observe(outcome.call_seconds)

    def request_served(self, endpoint: str, status: int) -> None:
        # A dict look-up instead of labels() on every request: this is the serving hot path.
        child = self._request_children.get((endpoint, status))
        if child is None:
            child = self._request_children[(endpoint, status)] = self.requests.labels(
                endpoint, str(status)
            )
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SessionCollector(Collector):
    """Per-profile gauges computed from the sessions when scraped."""

    def __init__(self, sessions: Mapping[str, ProfileSession], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        now = self._clock.now()
        expiry = _gauge("session_expiry_seconds", "Seconds until the cached session expires.")
        not_after = _gauge(
            "certificate_not_after_timestamp_seconds",
            "The certificate's notAfter time, as a Unix timestamp.",
        )
        success = _gauge(
            "last_refresh_success_timestamp_seconds",
            "When the last successful refresh started, as a Unix timestamp.",
        )
        state = _gauge("profile_state", "1 for the profile's current state.", ("state",))
        for name, session in self._sessions.items():
            _collect_profile(name, session, now, expiry, not_after, success, state)
        return [expiry, not_after, success, state]


def _collect_profile(
    name: str,
    session: ProfileSession,
    now: datetime,
    expiry: GaugeMetricFamily,
    not_after: GaugeMetricFamily,
    success: GaugeMetricFamily,
    state: GaugeMetricFamily,
) -> None:
    if session.current is not None:
        expiry.add_metric([name], session.current.seconds_left(now))
    identity = session.identity.loaded
    if identity is not None:
        not_after.add_metric([name], identity.not_after.timestamp())
    if session.last_success_at is not None:
        success.add_metric([name], session.last_success_at.timestamp())
    current = session.state
    for value in State:
        state.add_metric([name, value.value], 1.0 if value == current else 0.0)


def _gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["profile", *extra])
