"""Prometheus metrics of one service instance.

Each :class:`ServiceMetrics` owns its own ``CollectorRegistry`` so several services (tests, the
demo) can live in one process. Label children are resolved once here, so the hot path does a
plain ``observe``/``inc`` without a label lookup.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

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


class ServiceMetrics:
    """The service's histograms, counters and gauges (names prefixed ``subtag_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.line_latency = Histogram(
            "subtag_line_latency_seconds",
            "Per-line total latency: frame received until its done message was sent.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.first_event = Histogram(
            "subtag_first_event_seconds",
            "Frame received until the line's first event was sent.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "subtag_queue_wait_seconds",
            "Time a line waited in the scheduler queue.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.model_time = Histogram(
            "subtag_model_seconds",
            "Engine time of the batch that carried the line.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "subtag_batch_size",
            "Lines per engine batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self._lines = Counter(
            "subtag_lines", "Lines accepted, by transport.", ["transport"], registry=r
        )
        self.lines_ws = self._lines.labels("ws")
        self.lines_mqtt = self._lines.labels("mqtt")
        self._events = Counter("subtag_events", "Events published, by kind.", ["kind"], registry=r)
        self.events = {k: self._events.labels(k) for k in ("speech", "music", "action")}
        self._errors = Counter(
            "subtag_errors", "Error messages sent, by code.", ["code"], registry=r
        )
        self._drops = Counter(
            "subtag_drops",
            "Messages or lines dropped, by reason (subscriber_queue, mqtt_queue, duplicate, "
            "shutdown).",
            ["reason"],
            registry=r,
        )
        self.lines_done = Counter("subtag_lines_done", "Lines closed with done.", registry=r)
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
        self._errors.labels(code).inc()

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` dropped messages or lines."""
        self._drops.labels(reason).inc(n)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
