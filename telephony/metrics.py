"""Prometheus metrics, served at ``GET /metrics`` (docs/metrics.md).

Two kinds of numbers:

* what happened to transfers -- counted from the record events (:meth:`Metrics.observe`) the
  moment the call layer reports them: transfers by outcome, times to answer and to hand off,
  abandonment by phase, calls offered, rule reloads;
* what the daemon holds right now -- read only when Prometheus scrapes, from the live objects
  behind :class:`MetricSources` (active calls, destination health, Redis, spool, SIP and RTP
  counters), so the SIP and RTP paths do nothing extra for metrics.

Labels never name a call: ``destination`` is a destination label from the routing rules, ``psap``
a configured PSAP id, ``mode``/``outcome``/``phase`` fixed vocabularies. The registry is our own
(not the process-global default), so two daemons in one test process do not mix.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from telephony.recording.events import PHASES, RecordEvent
from telephony.routing.model import MODES

#: seconds; telephony-sized: a 988 answer takes seconds to a couple of minutes
BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
#: record kinds that end a transfer, and the ``outcome`` label each gives
OUTCOMES = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "abandoned": "abandoned",
}
NONE = "none"  # label value when a transfer had no destination yet


class MetricSources(Protocol):
    """The daemon's live state, read at scrape time (implemented by ``telephony.observe``)."""

    def active_calls(self) -> int: ...
    def active_transfers(self) -> int: ...
    def trunk_up(self) -> Mapping[str, bool]: ...
    def redis_up(self) -> bool: ...
    def spool_events(self) -> int: ...
    def spool_dropped(self) -> int: ...
    def sip_messages(self) -> Mapping[tuple[str, str], int]: ...
    def rtp_packets(self) -> Mapping[str, int]: ...
    def registered_contacts(self) -> Mapping[tuple[str, str], int]: ...


class _Live(Collector):
    """The scrape-time families, built from :class:`MetricSources` on each collect."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        yield GaugeMetricFamily("handoff_active_calls", "Calls in progress", value=s.active_calls())
        yield GaugeMetricFamily(
            "handoff_active_transfers",
            "Transfers requested and not yet completed, failed, cancelled or abandoned",
            value=s.active_transfers(),
        )
        up = GaugeMetricFamily(
            "handoff_trunk_up",
            "1 when a 988 destination trunk answers OPTIONS probes (or is not probed), else 0",
            labels=["trunk"],
        )
        for trunk, ok in sorted(s.trunk_up().items()):
            up.add_metric([trunk], 1.0 if ok else 0.0)
        yield up
        yield GaugeMetricFamily(
            "handoff_redis_up",
            "1 while records reach Redis, 0 while they spool",
            value=s.redis_up(),
        )
        yield GaugeMetricFamily(
            "handoff_spool_events",
            "Record events in the local spool waiting for Redis",
            value=s.spool_events(),
        )
        yield CounterMetricFamily(
            "handoff_spool_dropped",
            "Record events lost because the spool was at records.spool.max_bytes",
            value=s.spool_dropped(),
        )
        sip = CounterMetricFamily(
            "handoff_sip_messages",
            "SIP messages by direction and method (requests) or status class (responses)",
            labels=["direction", "kind"],
        )
        for (direction, kind), n in sorted(s.sip_messages().items()):
            sip.add_metric([direction, kind], n)
        yield sip
        rtp = CounterMetricFamily(
            "handoff_rtp_packets", "RTP packets through the media relay", labels=["direction"]
        )
        for direction, n in sorted(s.rtp_packets().items()):
            rtp.add_metric([direction], n)
        yield rtp
        reg = GaugeMetricFamily(
            "handoff_registered_contacts",
            "Softphone contacts registered for a position, by reachability (qualify)",
            labels=["position", "state"],
        )
        for (position, state), n in sorted(s.registered_contacts().items()):
            reg.add_metric([position, state], n)
        yield reg


class Metrics:
    """The daemon's metrics. ``answer_interval`` (records.answer_interval, seconds) is both a
    gauge, for the dashboard's within-interval share, and a histogram bucket bound, so that
    share is exact rather than interpolated."""

    def __init__(self, sources: MetricSources, *, version: str, answer_interval: float) -> None:
        self.registry = r = CollectorRegistry()
        buckets = tuple(sorted({*BUCKETS, float(answer_interval)}))
        self.transfers = Counter(
            "handoff_transfers",
            "Transfers by how they ended",
            ["mode", "destination", "outcome"],
            registry=r,
        )
        self.answer = Histogram(
            "handoff_transfer_answer_seconds",
            "From transfer request to the 988 destination's answer",
            ["mode", "destination"],
            buckets=buckets,
            registry=r,
        )
        self.handoff = Histogram(
            "handoff_transfer_handoff_seconds",
            "From transfer request to the transfer completed (dispatcher released)",
            ["mode"],
            buckets=buckets,
            registry=r,
        )
        self.abandoned = Counter(
            "handoff_transfer_abandoned",
            "Callers who hung up during a transfer, by phase",
            ["mode", "phase"],
            registry=r,
        )
        self.offered = Counter(
            "handoff_calls_offered", "Calls offered from PSAP trunks", ["psap"], registry=r
        )
        self.requested = Counter(
            "handoff_transfers_requested",
            "Transfers to 988 requested",
            ["mode", "psap"],
            registry=r,
        )
        self.reloads = Counter(
            "handoff_rules_reload", "Routing rule reloads by result", ["result"], registry=r
        )
        Gauge(
            "handoff_answer_interval_seconds",
            "The configured interval a destination should answer within (records.answer_interval)",
            registry=r,
        ).set(answer_interval)
        Gauge(
            "handoff_build_info",
            "The running handoffd build",
            ["version", "python"],
            registry=r,
        ).labels(version, platform.python_version()).set(1)
        for result in ("ok", "error"):
            self.reloads.labels(result)
        r.register(_Live(sources))

    def observe(self, ev: RecordEvent) -> None:
        """Count one record event (called by the observer as the call layer reports it)."""
        kind = ev.kind
        mode = ev.mode or NONE
        if kind == "call_offered":
            self.offered.labels(ev.psap).inc()
        elif kind == "transfer_requested":
            self.requested.labels(mode, ev.psap).inc()
        elif kind == "destination_answered":
            self._since_request(self.answer.labels(mode, ev.destination or NONE), ev)
        if kind in OUTCOMES and ev.transfer_id is not None:
            self.transfers.labels(mode, ev.destination or NONE, OUTCOMES[kind]).inc()
            if kind == "completed":
                self._since_request(self.handoff.labels(mode), ev)
            elif kind == "abandoned":
                self.abandoned.labels(mode, ev.phase or NONE).inc()

    @staticmethod
    def _since_request(h: Histogram, ev: RecordEvent) -> None:
        if ev.transfer_requested_ms is not None:
            h.observe(max(0, ev.at_ms - ev.transfer_requested_ms) / 1000)

    def prepare(self, *, psaps: Iterable[str] = (), destinations: Iterable[str] = ()) -> None:
        """Create at 0 the label sets that can occur (configured PSAPs, destinations in the
        rules, every mode, outcome and phase). A series first scraped at 1 hides its first
        event from ``rate()`` and ``increase()``: without this, the dashboard and the alerts
        would miss the first transfer, failure or abandonment of each kind after a restart."""
        dests = tuple(destinations)
        for psap in psaps:
            self.offered.labels(psap)
            for mode in MODES:
                self.requested.labels(mode, psap)
        for mode in MODES:
            self.handoff.labels(mode)
            for phase in PHASES:
                self.abandoned.labels(mode, phase)
            for dest in dests:
                self.answer.labels(mode, dest)
                for outcome in OUTCOMES.values():
                    self.transfers.labels(mode, dest, outcome)

    def rules_reloaded(self, *, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
