"""Prometheus metrics of one service instance.

Each :class:`ServiceMetrics` owns its own ``CollectorRegistry`` so several services (tests, the
demo) can live in one process. The per-line histograms and counters are plain Python numbers
updated on the event loop (a ``bisect`` and two additions per observation, no lock) and turned
into Prometheus metric families only when ``/metrics`` is scraped: prometheus-client's own
``observe`` takes a lock and costs several microseconds, which at 5,000 lines/s with four
histograms per line was a visible share of the service's time. Rarely updated gauges use
prometheus-client directly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "ENGINE_COUNTERS",
    "Count",
    "LabeledCount",
    "LatencyHistogram",
    "ServiceMetrics",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Seconds; dense below 10 ms where the service's own overhead lives, sparse up to model times.
_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """A histogram with fixed upper bounds (inclusive, Prometheus ``le``), lock-free."""

    __slots__ = ("bounds", "count", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...] = _BUCKETS) -> None:
        self.name = name
        self.doc = doc
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(self) -> HistogramMetricFamily:
        """The Prometheus metric family (cumulative buckets)."""
        buckets = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class Count:
    """A counter, lock-free (updated from the event loop only)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount


class LabeledCount:
    """A family of :class:`Count` by one label value."""

    __slots__ = ("children", "doc", "label", "name")

    def __init__(self, name: str, doc: str, label: str) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.children: dict[str, Count] = {}

    def labels(self, value: str) -> Count:
        """The counter for ``value`` (created at zero on first use)."""
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Count()
        return child

    def family(self) -> CounterMetricFamily:
        """The Prometheus metric family."""
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, child in sorted(self.children.items()):
            family.add_metric([value], child.value)
        return family


class _Exporter(Collector):
    """Turns the lock-free metrics into metric families at scrape time."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        for histogram in (m.line_latency, m.first_event, m.queue_wait, m.model_time, m.batch_size):
            yield histogram.family()
        for labeled in (m.lines, m.events_by_kind, m.errors, m.drops):
            yield labeled.family()
        done = CounterMetricFamily("subtag_lines_done", "Lines closed with done.")
        done.add_metric([], m.lines_done.value)
        yield done
        engine = CounterMetricFamily(
            "subtag_engine",
            "The model backend's own counters: dropped_spans (spans not verbatim in the line, "
            "never published), invalid_answers, generated_tokens.",
            labels=["counter"],
        )
        # Read at scrape time from the tagger itself, so the hot path counts nothing twice.
        for name in ENGINE_COUNTERS:
            value = getattr(m.engine, name, None) if m.engine is not None else None
            if isinstance(value, int):
                engine.add_metric([name], value)
        yield engine


ENGINE_COUNTERS: Final = ("dropped_spans", "invalid_answers", "generated_tokens")
"""Counters a model backend may keep as int attributes; exported as ``subtag_engine_total``."""


class ServiceMetrics:
    """The service's histograms, counters and gauges (names prefixed ``subtag_``)."""

    def __init__(self) -> None:
        self.engine: object | None = None  # the tagger in use, read for ENGINE_COUNTERS
        self.line_latency = LatencyHistogram(
            "subtag_line_latency_seconds",
            "Per-line total latency: frame received until its done message was sent.",
        )
        self.first_event = LatencyHistogram(
            "subtag_first_event_seconds", "Frame received until the line's first event was sent."
        )
        self.queue_wait = LatencyHistogram(
            "subtag_queue_wait_seconds", "Time a line waited in the scheduler queue."
        )
        self.model_time = LatencyHistogram(
            "subtag_model_seconds", "Engine time of the batch that carried the line."
        )
        self.batch_size = LatencyHistogram(
            "subtag_batch_size", "Lines per engine batch.", (1, 2, 4, 8, 16, 32, 64, 128)
        )
        self.lines = LabeledCount("subtag_lines", "Lines accepted, by transport.", "transport")
        self.lines_ws = self.lines.labels("ws")
        self.lines_mqtt = self.lines.labels("mqtt")
        self.events_by_kind = LabeledCount("subtag_events", "Events published, by kind.", "kind")
        self.events = {k: self.events_by_kind.labels(k) for k in ("speech", "music", "action")}
        self.errors = LabeledCount("subtag_errors", "Error messages sent, by code.", "code")
        self.drops = LabeledCount(
            "subtag_drops",
            "Messages or lines dropped, by reason (subscriber_queue, mqtt_queue, duplicate).",
            "reason",
        )
        self.lines_done = Count()

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_Exporter(self))
        self.queue_depth = Gauge(
            "subtag_queue_depth", "Lines waiting in the scheduler queue.", registry=r
        )
        self.in_flight = Gauge("subtag_lines_in_flight", "Lines in the engine.", registry=r)
        self.live_streams = Gauge("subtag_live_streams", "Streams with live state.", registry=r)
        self.subscribers = Gauge("subtag_subscribers", "Connected /events subscribers.", registry=r)
        self.connections = Gauge(
            "subtag_ingest_connections", "Open /ingest connections.", registry=r
        )
        self.mqtt_connected = Gauge(
            "subtag_mqtt_connected", "1 while the broker connection is up.", registry=r
        )
        self.ready = Gauge("subtag_ready", "1 once the engine is loaded.", registry=r)

    def error(self, code: str) -> None:
        """Count one error message of ``code``."""
        self.errors.labels(code).inc()

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped messages or lines."""
        self.drops.labels(reason).inc(n)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
