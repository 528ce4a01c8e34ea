"""The MQTT adapter: lines in from ``{prefix}/+/lines``, messages out to ``{prefix}/{stream}/...``.

Topics (QoS 1 both ways):

* in: ``{prefix}/{stream}/lines`` -- payload as on ``/ingest`` (a bare line or a JSON input)
* out: ``{prefix}/{stream}/events`` (every event), ``{prefix}/{stream}/done`` (each line's
  ``done``), ``{prefix}/{stream}/errors`` (per-line engine errors and every refused message
  that came in over MQTT -- the sender has no other channel)

Broker loss: the bridge reconnects with exponential backoff (``reconnect_min_s`` doubling to
``reconnect_max_s``) under a fixed client id with ``clean_session=False``, so the broker keeps
the subscription and queues QoS 1 lines sent meanwhile. A redelivered line (same stream and
``seq``) is dropped by a bounded memory of recent ``(stream, seq)`` pairs, so events are not
duplicated downstream; lines without a ``seq`` cannot be recognised and are tagged again.
Outgoing messages wait in one bounded queue (drop oldest, counted as
``subtag_drops_total{reason="mqtt_queue"}``); a publish not acknowledged when the connection
drops is put back at the head of the queue and sent again after the reconnect (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from typing import Final
from urllib.parse import urlsplit

import aiomqtt
import msgspec

from stream.config import MqttConfig, ServiceConfig
from stream.errors import ConfigError
from stream.metrics import ServiceMetrics
from stream.pipeline import Pipeline
from stream.schema import ErrorCode, decode_input, input_refusal
from stream.window import RecentKeys
from stream.ws import valid_stream

__all__ = ["MqttBridge", "broker_address"]

log = logging.getLogger(__name__)

# Concurrent QoS 1 publishes in flight: each waits for its PUBACK, so one would cap the rate
# at one message per broker round trip.
_PUBLISHERS: Final = 16

# paho leaves Nagle on: a PUBLISH written right after a PUBACK waits for the broker's delayed
# ACK (40 ms on Linux), which was most of a line's latency over MQTT.
_NO_DELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class _NoPendingPublishNotes(logging.Filter):
    """Drops aiomqtt's "There are N pending publish calls" warning.

    aiomqtt warns on every publish beyond 10 awaiting their PUBACK; the bridge runs
    ``_PUBLISHERS`` of them on purpose, so under load that warning was 70 000 log lines in 30 s.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


_CLIENT_LOG: Final = logging.getLogger("stream.mqtt.client")
_CLIENT_LOG.addFilter(_NoPendingPublishNotes())

_TOPIC_OF_KIND: Final = {
    "speech": "events",
    "music": "events",
    "action": "events",
    "done": "done",
    "error": "errors",
}


def broker_address(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a ``mqtt://`` / ``mqtts://`` URL.

    Raises:
        ConfigError: The URL has no host or a bad port.
    """
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"[mqtt] url {url!r} has a bad port") from exc
    if not parts.hostname:
        raise ConfigError(f"[mqtt] url {url!r} has no host")
    return parts.hostname, port, tls


class MqttBridge:
    """Subscribes to line topics, publishes outbound messages, survives broker restarts."""

    def __init__(self, config: ServiceConfig, pipeline: Pipeline, metrics: ServiceMetrics) -> None:
        assert config.mqtt.url is not None
        self._cfg: MqttConfig = config.mqtt
        self._limits = config.limits
        self._pipeline = pipeline
        self._metrics = metrics
        self._host, self._port, tls = broker_address(config.mqtt.url)
        self._tls = tls or config.mqtt.tls
        prefix = config.mqtt.prefix.rstrip("/")
        self._prefix = prefix
        self._lines_topic = f"{prefix}/+/lines"
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._unacked = 0
        self._seen = RecentKeys(config.mqtt.dedupe)
        self.connected = asyncio.Event()
        self._stopping = False
        self.connections = 0

    # -- outbound ----------------------------------------------------------------------

    def publish(self, stream: str, kind: str, payload: bytes) -> None:
        """Queue one outbound message (a pipeline sink)."""
        outbox = self._outbox
        if len(outbox) >= self._cfg.publish_queue:
            outbox.popleft()
            self._metrics.drop("mqtt_queue")
        outbox.append((f"{self._prefix}/{stream}/{_TOPIC_OF_KIND[kind]}", payload))
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        """Mark the bridge as stopping; :meth:`run` returns instead of reconnecting."""
        self._stopping = True

    async def flush(self, deadline: float) -> None:
        """Wait until every queued message is acknowledged, or ``time.monotonic()`` > deadline.

        Without a broker connection there is nothing to wait for: the messages stay queued
        only as long as the process lives.
        """

        # Polling once at shutdown is simpler than tracking an "all acknowledged" event.
        def pending() -> bool:
            return bool(self._outbox or self._unacked) and self.connected.is_set()

        while pending() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._outbox or self._unacked:
            log.warning(
                "MQTT: %d message(s) not delivered before shutdown",
                len(self._outbox) + self._unacked,
            )

    async def _publisher(self, client: aiomqtt.Client) -> None:
        outbox = self._outbox
        while True:
            if not outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            topic, payload = outbox.popleft()
            self._unacked += 1
            try:
                await client.publish(topic, payload, qos=1)
            except BaseException:
                outbox.appendleft((topic, payload))
                raise
            finally:
                self._unacked -= 1

    # -- inbound -----------------------------------------------------------------------

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            received = time.monotonic_ns()
            parts = message.topic.value.split("/")
            stream = parts[-2] if len(parts) >= 2 else ""
            self._on_line(stream, message.payload, received)

    def _on_line(self, stream: str, payload: object, received: int) -> None:
        pipeline = self._pipeline
        seq: int | None = None
        refused: tuple[str, str] | None
        if not valid_stream(stream):
            # The same ids as on /ingest: a topic level may be empty or 64 KiB long, and each
            # id is kept in the bounded stream table.
            refused = (
                ErrorCode.BAD_MESSAGE,
                f"bad stream id {stream[:64]!r}: use 1-128 of A-Z a-z 0-9 . _ : @ -",
            )
        elif not isinstance(payload, bytes | bytearray):
            refused = ErrorCode.BAD_MESSAGE, "the payload must be UTF-8 text"
        elif len(payload) > self._limits.max_frame_bytes:
            refused = (
                ErrorCode.FRAME_TOO_LARGE,
                f"the payload exceeds the limit of {self._limits.max_frame_bytes} bytes",
            )
        else:
            try:
                line = decode_input(bytes(payload))
            except (UnicodeDecodeError, msgspec.DecodeError) as exc:
                refused = input_refusal(exc)
            else:
                seq = line.seq
                if seq is not None and not self._seen.add((stream, seq)):
                    self._metrics.drop("duplicate")
                    return
                refused = pipeline.submit(stream, line, received, None)
                if refused is None:
                    self._metrics.lines_mqtt.inc()
                    return
        self.publish(stream, "error", pipeline.error(stream, seq, *refused))

    # -- connection loop ---------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        tls_params = None
        if self._tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=cfg.ca_file,
                certfile=cfg.cert_file,
                keyfile=cfg.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return aiomqtt.Client(
            self._host,
            self._port,
            username=cfg.username,
            password=cfg.password,
            identifier=cfg.client_id,
            # A persistent session: the broker keeps our subscription and queues QoS 1
            # lines while we are away.
            clean_session=False,
            keepalive=cfg.keepalive_s,
            tls_params=tls_params,
            tls_insecure=cfg.tls_insecure if self._tls else None,
            max_inflight_messages=_PUBLISHERS * 4,
            timeout=10,
            socket_options=_NO_DELAY,
            logger=_CLIENT_LOG,
        )

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until cancelled."""
        delay = self._cfg.reconnect_min_s
        where = f"{self._host}:{self._port}"
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(self._lines_topic, qos=1)
                    self.connections += 1
                    self._metrics.mqtt_connected.set(1)
                    self.connected.set()
                    log.info("MQTT: connected to %s, subscribed to %s", where, self._lines_topic)
                    delay = self._cfg.reconnect_min_s
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._receiver(client), name="mqtt-receive")
                        for i in range(_PUBLISHERS):
                            group.create_task(self._publisher(client), name=f"mqtt-publish-{i}")
            except* aiomqtt.MqttError as group:
                self.connected.clear()
                self._metrics.mqtt_connected.set(0)
                first = group.exceptions[0]
                log.warning(
                    "MQTT: broker %s unavailable (%s); retrying in %.1f s", where, first, delay
                )
            if self._stopping:
                # aiomqtt can turn our cancellation into an MqttError on its way out of
                # `async with`; the shutdown must still win.
                return
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.05), self._cfg.reconnect_max_s)
