"""Every Prometheus instrument, created on a registry passed in (tests build many apps).

Names follow Prometheus conventions (``gateway_`` prefix, base units, ``_total``, ``_seconds``);
labels come from small closed sets only: route templates, methods, status codes, Tencent API
names, tenant names from the config, Tencent ErrorCodes the gateway knows, and fixed results.
Room ids, keys, tokens and raw paths never become labels.

Events on the request path are counted where they happen; numbers that components keep anyway
(UserSigs issued, Redis trips and round trips, fill waits) are read at scrape time by
``StateCollector``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gateway import __version__

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
M = TypeVar("M", bound=MetricWrapperBase)
_WAIT = (0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """The gateway's instruments."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        self.requests = Counter(
            "gateway_http_requests",
            "Requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer a request",
            ["route", "method"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream_calls = Counter(
            "gateway_upstream_calls",
            "Calls to Tencent by outcome: its ErrorCode, other, transport, timeout, proxy or proxy_refused",
            ["tenant", "api", "code"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_call_duration_seconds",
            "Time of one call to Tencent",
            ["api"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries",
            "Calls to Tencent made again, by reason (transient, usersig, rate_limited)",
            ["tenant", "api", "reason"],
            registry=registry,
        )
        self.budget_wait = Histogram(
            "gateway_budget_wait_seconds",
            "Time a call waited for its budget slot",
            ["tenant", "api"],
            buckets=_WAIT,
            registry=registry,
        )
        self.budget_grants = Counter(
            "gateway_budget_grants",
            "Budget slots booked (one per call to Tencent, retries included, and the missed ones)",
            ["tenant", "api"],
            registry=registry,
        )
        self.budget_missed = Counter(
            "gateway_budget_slots_missed",
            "Slots forfeited because the call could not leave within its send window (booked again)",
            ["tenant", "api"],
            registry=registry,
        )
        self.budget_refusals = Counter(
            "gateway_budget_refusals",
            "Calls refused with 429 because no slot was free within the wait cap",
            ["tenant", "api"],
            registry=registry,
        )
        self.caller_grants = Counter(
            "gateway_budget_caller_grants",
            "Budget slots booked, by calling service (its configured name)",
            ["tenant", "caller"],
            registry=registry,
        )
        self.caller_wait = Histogram(
            "gateway_budget_caller_wait_seconds",
            "Time a call waited for its budget slot, by calling service",
            ["tenant", "caller"],
            buckets=_WAIT,
            registry=registry,
        )
        self.caller_refusals = Counter(
            "gateway_budget_caller_refusals",
            "Calls refused with 429 because no slot was free within the wait cap, by calling service",
            ["tenant", "caller"],
            registry=registry,
        )
        self.idempotency = Counter(
            "gateway_idempotency",
            "Writes with an Idempotency-Key by outcome: stored (the first's answer kept), replayed, "
            "reused (the key sent with another request: 422), in_use (its first still running: 409)",
            ["tenant", "outcome"],
            registry=registry,
        )
        self.callbacks = Counter(
            "gateway_callbacks",
            "Tencent's callbacks by command (known ones, else other) and outcome: accepted, duplicate, "
            "bad_sign, stale, unknown_app, invalid",
            ["tenant", "command", "outcome"],
            registry=registry,
        )
        self.events_published = Counter(
            "gateway_events_published",
            "Room events published to the tenant's event log (accepted callbacks)",
            ["tenant"],
            registry=registry,
        )
        self.events_subscribers = Gauge(
            "gateway_events_subscribers",
            "Event streams (SSE) open on this replica",
            ["tenant"],
            registry=registry,
        )
        self.events_delivered = Counter(
            "gateway_events_delivered",
            "Events written to subscribers' streams on this replica",
            ["tenant"],
            registry=registry,
        )
        self.events_lagged = Counter(
            "gateway_events_lagged",
            "Times a subscriber's queue overflowed (a slow client) and it went on reading the log itself",
            ["tenant"],
            registry=registry,
        )
        self.events_lost = Counter(
            "gateway_events_lost_notices",
            "'lost' notices sent: a subscriber resumed from, or fell behind to, events no longer kept",
            ["tenant"],
            registry=registry,
        )
        self.budget_limit = Gauge(
            "gateway_budget_limit_per_second",
            "The configured budget per (tenant, API), for the whole fleet",
            ["tenant", "api"],
            registry=registry,
        )
        self.cache_results = Counter(
            "gateway_room_cache_results",
            "Room reads by result: hit, miss, stale, coalesced",
            ["tenant", "result"],
            registry=registry,
        )
        self.usersig_rejections = Counter(
            "gateway_usersig_rejections",
            "UserSigs Tencent rejected (dropped and re-signed)",
            ["tenant"],
            registry=registry,
        )
        info = Gauge("gateway_build_info", "Build information", ["version", "python"], registry=registry)
        info.labels(version=__version__, python=platform.python_version()).set(1)

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, remembered: prometheus-client validates the values and takes
        a lock on every ``labels`` call, and on the request path a dict lookup is enough."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]

    def set_limits(self, limits: Iterable[tuple[str, str, int]]) -> None:
        """Publish each (tenant, API) budget (on start-up and on config reload)."""
        self.budget_limit.clear()
        for tenant, api, qps in limits:
            self.budget_limit.labels(tenant=tenant, api=api).set(qps)


class StateCollector(Collector):
    """Counters and gauges read from the components at scrape time."""

    def __init__(self, read: Callable[[], dict[str, float | str]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        state = self._read()
        counters = {
            "gateway_usersig_issued": "Admin UserSigs this process issued",
            "gateway_room_cache_fill_waits": "Room reads that waited for another replica's fill",
            "gateway_redis_errors": "Redis calls that failed or timed out",
            "gateway_redis_round_trips": "Round trips to Redis",
            "gateway_fleet_heartbeats": "Heartbeats this replica sent to Redis (included in the round trips)",
            "gateway_budget_bookings": "Budget store calls (Redis round trips when shared), each booking a batch",
            "gateway_events_dropped": "Room events dropped because more were held during a Redis outage than "
            "GATEWAY_EVENTS_HOLD",
            "gateway_requests_abandoned": "API requests not run because their client had closed the connection "
            "before the app would start them (nobody waits for the answer)",
        }
        for name, text in counters.items():
            yield CounterMetricFamily(name, text, value=float(state.get(name, 0)))
        shed = CounterMetricFamily(
            "gateway_overload_shed",
            "API requests refused 503 overloaded before the app ran: the event loop lagged past "
            "GATEWAY_OVERLOAD_LAG (lag), GATEWAY_MAX_IN_FLIGHT requests were in flight (in_flight), or "
            "more than GATEWAY_OVERLOAD_ACCEPT_QUEUE connections waited to be accepted (accept_queue)",
            labels=["reason"],
        )
        for reason in ("lag", "in_flight", "accept_queue"):
            shed.add_metric([reason], float(state.get(f"gateway_overload_shed_{reason}", 0)))
        yield shed
        yield GaugeMetricFamily(
            "gateway_requests_in_flight",
            "API requests admitted and not finished, queued in the event loop or running (event streams excluded)",
            value=float(state.get("gateway_requests_in_flight", 0)),
        )
        mode = GaugeMetricFamily(
            "gateway_budget_mode",
            "1 for the budget's mode now: embedded, shared, hold, degraded or grace (README: Redis outages)",
            labels=["mode"],
        )
        for name in ("embedded", "shared", "hold", "degraded", "grace"):
            mode.add_metric([name], 1.0 if state.get("gateway_budget_mode") == name else 0.0)
        yield mode
        yield GaugeMetricFamily(
            "gateway_redis_degraded",
            "1 while Redis is unreachable and in-process state is used",
            value=float(state.get("gateway_redis_degraded", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer at the last sample (every 50 ms): the queue every request waits in",
            value=float(state.get("gateway_event_loop_lag_seconds", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_accept_queue",
            "Connections the kernel holds for this replica's listener, not yet accepted, at the last sample (every "
            "50 ms): the queue before the event loop, which its lag cannot see",
            value=float(state.get("gateway_accept_queue", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_overloaded",
            "1 while the replica is overloaded: it sheds new API work because its event loop lags past "
            "GATEWAY_OVERLOAD_LAG, or turns it away because more than GATEWAY_OVERLOAD_ACCEPT_QUEUE "
            "connections wait to be accepted (gateway_accept_queue; and for 2 s after)",
            value=float(state.get("gateway_overloaded", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_events_held",
            "Room events accepted while Redis was unreachable, held to be published when it answers",
            value=float(state.get("gateway_events_held", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_fleet_lapsed_replicas",
            "Other replicas silent in Redis without leaving: the shared budget leaves room for their shares",
            value=float(state.get("gateway_fleet_lapsed_replicas", 0)),
        )
        yield GaugeMetricFamily(
            "gateway_fleet_replicas_seen",
            "The largest fleet this replica's heartbeats showed in 10 minutes (its degraded pace divides by it)",
            value=float(state.get("gateway_fleet_replicas_seen", 1)),
        )

    def describe(self) -> Iterable[Metric]:
        return self.collect()
