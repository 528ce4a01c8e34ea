"""Load test: N streams x R lines/s for T seconds against a running service, over WebSocket or MQTT.

Every line carries ``{"text", "seq", "t"}`` with ``seq`` counting from 0 per stream, so the
downstream side can account for each one:

* WebSocket: one ``/ingest/{stream}`` connection per stream, and one ``/events`` subscriber for
  the run's streams (a fnmatch pattern on the run id).
* MQTT: one client publishes (QoS 1) to ``{prefix}/{stream}/lines`` and subscribes to
  ``{prefix}/+/events``, ``{prefix}/+/done`` and ``{prefix}/+/errors``.

Before the timed part a probe line proves the subscription is live (no line can be missed
because the subscriber was not yet registered). Counted downstream, per stream: ``done``
messages, events, ``error`` messages (refused lines), lost lines (neither ``done`` nor
``error`` by the end of the drain), duplicated ``done``/events, reordered ``done`` (a ``seq``
lower than one already seen on that stream). Latency is measured on the client from the send to
the arrival of the line's ``done`` (monotonic clock), next to the server's own
``done.latency.total``. The run is bounded: ``seconds`` of sending, then at most ``drain_s`` of
waiting, and at most ``max_lines`` lines in all.

Usage::

    python tools/loadtest.py --url ws://127.0.0.1:8765 --streams 200 --rate 5 --seconds 60
    python tools/loadtest.py --url mqtt://127.0.0.1:1883 --streams 50 --rate 5 --seconds 30

Exit status: 0 when nothing was lost, duplicated or reordered (``--allow-loss`` tolerates lost
and refused lines), 1 otherwise, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

import msgspec

from stream.schema import Done, Error, InputLine, decode_outbound, encode_str

__all__ = ["LoadReport", "StreamTally", "main", "percentiles", "run_load"]

Transport = Literal["ws", "mqtt"]
Send = Callable[[str, str], Awaitable[None]]
"""``await send(stream, frame)``: one line out on the transport."""

# Lines in the shapes the service tags (cue brackets, speaker with status, timestamps, music).
LINES: Final = (
    "[00:01:02] [清脆的铃声] 店员（对白）：欢迎光临，今天想看点什么？",
    "[00:01:05] 顾客（画外音）：我想找一款适合干皮的面霜。",
    "[00:01:09] [轻快的钢琴曲] 店员（对白）：这款是我们的新品，您可以试一下。",
    "[00:01:14] [开盖声]+[按压声] 顾客（OS）：质地好细腻啊！",
    "♪ 舒缓的吉他旋律 ♪",
    "[00:01:20] 【雷声】 旁白：暴雨在傍晚如期而至。",
    "[00:01:24] 店员（对白，小声）：别担心，店里有伞。",
    "[00:01:27] [门铃响] [脚步声渐近]",
)

_PROBE_TIMEOUT_S: Final = 10.0

_QUIET_MQTT_LOG: Final = logging.getLogger("loadtest.mqtt")
_QUIET_MQTT_LOG.setLevel(logging.ERROR)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p90``, ``p99``, ``max`` (nearest rank) of ``values``; empty -> ``{}``."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(p * n) - 1))]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1]}


@dataclass(slots=True)
class StreamTally:
    """Downstream accounting of one stream."""

    sent_at: dict[int, float] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    errors: set[int] = field(default_factory=set)
    events: set[tuple[int, str, int, int]] = field(default_factory=set)
    last_done: int = -1
    duplicated_done: int = 0
    duplicated_events: int = 0
    reordered: int = 0


@dataclass(slots=True)
class LoadReport:
    """What a load run sent and what arrived.

    Attributes:
        transport: ``ws`` or ``mqtt``.
        streams: Streams fed in parallel.
        rate: Lines per second per stream (offered).
        seconds: Sending duration asked for.
        sent: Lines sent.
        done: Lines closed by a ``done`` message downstream (first copy of each).
        refused: Lines answered with an ``error`` message instead (by code in ``error_codes``).
        events: Distinct events received.
        lost: Lines with neither ``done`` nor ``error`` at the end of the drain.
        duplicated: Repeated ``done`` messages plus repeated events.
        reordered: ``done`` messages that arrived after a later line's ``done`` of their stream.
        error_codes: ``error`` messages by code (lines and connection-level errors).
        latency_ms: Client-side send -> ``done`` percentiles.
        server_latency_ms: ``done.latency.total`` percentiles (the service's own measure).
        send_seconds: Wall time the sending took.
        elapsed_s: Wall time of the whole run, drain included.
        achieved_rate: ``done`` per second over the sending time.
    """

    transport: str
    streams: int
    rate: float
    seconds: float
    sent: int = 0
    done: int = 0
    refused: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_latency_ms: dict[str, float] = field(default_factory=dict)
    send_seconds: float = 0.0
    elapsed_s: float = 0.0
    achieved_rate: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost, refused, duplicated or reordered."""
        return not (self.lost or self.refused or self.duplicated or self.reordered)

    def summary(self) -> str:
        """A few human-readable lines."""

        def fmt(p: dict[str, float]) -> str:
            return " ".join(f"{k}={v:.1f}" for k, v in p.items()) or "-"

        return "\n".join(
            [
                f"{self.transport}: {self.streams} streams x {self.rate:g} lines/s x "
                f"{self.seconds:g} s",
                f"  sent {self.sent}  done {self.done}  refused {self.refused}  "
                f"events {self.events}  lost {self.lost}  duplicated {self.duplicated}  "
                f"reordered {self.reordered}",
                f"  achieved {self.achieved_rate:.1f} lines/s over {self.send_seconds:.1f} s "
                f"(run {self.elapsed_s:.1f} s)",
                f"  latency send->done ms: {fmt(self.latency_ms)}",
                f"  server done.latency.total ms: {fmt(self.server_latency_ms)}",
                *([f"  errors: {self.error_codes}"] if self.error_codes else []),
            ]
        )


class _Collector:
    """Accounts for every downstream message of the run's streams."""

    def __init__(self, names: Sequence[str], probe: str) -> None:
        self.tallies = {name: StreamTally() for name in names}
        self.probe = probe
        self.probe_seen = asyncio.Event()
        self.latencies: list[float] = []
        self.server_latencies: list[float] = []
        self.error_codes: dict[str, int] = {}
        self.outstanding = 0
        self.settled = asyncio.Event()

    def sent(self, stream: str, seq: int) -> None:
        self.tallies[stream].sent_at[seq] = time.monotonic()
        self.outstanding += 1
        self.settled.clear()

    def take(self, payload: bytes | str) -> None:
        try:
            message = decode_outbound(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.error_codes["unreadable"] = self.error_codes.get("unreadable", 0) + 1
            return
        now = time.monotonic()
        stream = message.stream
        if stream == self.probe:
            if isinstance(message, Done | Error):
                self.probe_seen.set()
            return
        tally = self.tallies.get(stream) if stream is not None else None
        if isinstance(message, Error):
            self.error_codes[message.code] = self.error_codes.get(message.code, 0) + 1
            if tally is not None and message.seq is not None and message.seq in tally.sent_at:
                if message.seq not in tally.errors and message.seq not in tally.done:
                    self._settle()
                tally.errors.add(message.seq)
            return
        if tally is None:
            return  # another client's stream
        if isinstance(message, Done):
            seq = message.seq
            if seq in tally.done:
                tally.duplicated_done += 1
                return
            if seq < tally.last_done:
                tally.reordered += 1
            tally.last_done = max(tally.last_done, seq)
            tally.done.add(seq)
            sent_at = tally.sent_at.get(seq)
            if sent_at is not None:
                self.latencies.append((now - sent_at) * 1000)
            self.server_latencies.append(message.latency.total)
            if seq not in tally.errors:
                self._settle()
            return
        key = (message.seq, message.__struct_config__.tag or "", message.start, message.end)
        if key in tally.events:
            tally.duplicated_events += 1
        else:
            tally.events.add(key)  # type: ignore[arg-type]

    def _settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.settled.set()

    def report(self, report: LoadReport) -> LoadReport:
        for tally in self.tallies.values():
            report.sent += len(tally.sent_at)
            report.done += len(tally.done)
            report.refused += len(tally.errors - tally.done)
            report.events += len(tally.events)
            report.lost += len(tally.sent_at.keys() - tally.done - tally.errors)
            report.duplicated += tally.duplicated_done + tally.duplicated_events
            report.reordered += tally.reordered
        report.error_codes = dict(sorted(self.error_codes.items()))
        report.latency_ms = percentiles(self.latencies)
        report.server_latency_ms = percentiles(self.server_latencies)
        return report


async def _await_probe(
    collector: _Collector, reader: asyncio.Task[None], where: str, hint: str = ""
) -> None:
    """Wait for the probe line's answer, so no counted line can precede the subscription."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await collector.probe_seen.wait()
    except TimeoutError:
        reader.cancel()
        raise ConnectionError(
            f"the probe line never came back {where} within {_PROBE_TIMEOUT_S:g} s{hint}"
        ) from None


def _line(stream_index: int, seq: int) -> str:
    text = LINES[(stream_index + seq) % len(LINES)]
    return encode_str(InputLine(text=text, seq=seq))


async def _paced(
    collector: _Collector,
    stream: str,
    index: int,
    count: int,
    rate: float,
    t0: float,
    send: Send,
) -> None:
    """Send ``count`` lines of one stream on an absolute schedule (no drift)."""
    # Spread the streams' first lines over one period so they do not all fire at once.
    offset = (index / max(1, len(collector.tallies))) / rate
    for seq in range(count):
        delay = t0 + offset + seq / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        collector.sent(stream, seq)
        await send(stream, _line(index, seq))


async def run_load(
    url: str,
    streams: int,
    rate: float,
    seconds: float,
    transport: Transport = "ws",
    *,
    prefix: str = "subtag",
    token: str | None = None,
    drain_s: float = 30.0,
    max_lines: int = 1_000_000,
    run_id: str | None = None,
) -> LoadReport:
    """Run one load test against a running service and account for every line.

    Args:
        url: ``ws://HOST:PORT`` (or ``http://``) of the service, or ``mqtt://HOST:PORT`` of the
            broker the service is bridged to.
        streams: Streams fed in parallel (>= 1).
        rate: Lines per second per stream (> 0).
        seconds: How long to send (> 0).
        transport: ``ws`` or ``mqtt`` (must match ``url``'s scheme).
        prefix: The service's MQTT topic prefix.
        token: Bearer token for a service with auth on (WebSocket).
        drain_s: Longest wait for outstanding ``done`` after the last send.
        max_lines: Upper bound on lines sent in all.
        run_id: Stream ids are ``load-{run_id}-{i}``; random by default.

    Returns:
        The report.

    Raises:
        ValueError: Bad counts, or a URL that does not fit the transport.
        ConnectionError: The service (or broker) cannot be reached or the probe line never
            came back.
    """
    if streams < 1 or rate <= 0 or seconds <= 0:
        raise ValueError("streams must be >= 1, rate and seconds > 0")
    per_stream = max(1, round(rate * seconds))
    if streams * per_stream > max_lines:
        raise ValueError(
            f"{streams} x {per_stream} lines exceeds max_lines={max_lines}; "
            "lower the load or raise the bound"
        )
    run_id = run_id or secrets.token_hex(3)
    names = [f"load-{run_id}-{i:04d}" for i in range(streams)]
    collector = _Collector(names, f"load-{run_id}-probe")
    report = LoadReport(transport=transport, streams=streams, rate=rate, seconds=seconds)
    scheme = urlsplit(url).scheme
    started = time.monotonic()
    if transport == "ws":
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"transport 'ws' needs a ws:// URL, got {url!r}")
        await _run_ws(url, names, per_stream, rate, collector, report, token, drain_s)
    elif transport == "mqtt":
        if scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"transport 'mqtt' needs an mqtt:// URL, got {url!r}")
        await _run_mqtt(url, names, per_stream, rate, collector, report, prefix, drain_s)
    else:
        raise ValueError(f"unknown transport {transport!r}; use 'ws' or 'mqtt'")
    report.elapsed_s = time.monotonic() - started
    collector.report(report)
    report.achieved_rate = report.done / report.send_seconds if report.send_seconds else 0.0
    return report


async def _drain(collector: _Collector, drain_s: float) -> None:
    if collector.outstanding > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await collector.settled.wait()


async def _run_ws(
    url: str,
    names: list[str],
    per_stream: int,
    rate: float,
    collector: _Collector,
    report: LoadReport,
    token: str | None,
    drain_s: float,
) -> None:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed

    parts = urlsplit(url)
    scheme = "wss" if parts.scheme in ("wss", "https") else "ws"
    base = f"{scheme}://{parts.netloc}"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    pattern = names[0].rsplit("-", 1)[0] + "-*"

    async def read(ws: ClientConnection, take: bool) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                if take:
                    collector.take(frame)

    async with contextlib.AsyncExitStack() as stack:
        try:
            events = await stack.enter_async_context(
                connect(
                    f"{base}/events?stream={pattern}",
                    additional_headers=headers,
                    max_size=None,
                    max_queue=None,
                )
            )
        except (OSError, ConnectionClosed) as exc:
            raise ConnectionError(f"cannot subscribe at {base}/events: {exc}") from exc
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read(events, True), name="load-events")
            # Prove the subscription is registered before anything is counted.
            probe = await stack.enter_async_context(
                connect(f"{base}/ingest/{collector.probe}", additional_headers=headers)
            )
            await probe.send(_line(0, 0))
            await _await_probe(collector, reader, f"on {base}/events")
            sockets: dict[str, ClientConnection] = {}
            for name in names:
                ws = await stack.enter_async_context(
                    connect(f"{base}/ingest/{name}", additional_headers=headers, max_size=None)
                )
                sockets[name] = ws
                # The ingest connection also gets its own lines' done/error: read them (the
                # subscriber is the one counted) so the server never blocks on us.
                group.create_task(read(ws, False), name=f"load-ack-{name}")

            async def send(stream: str, frame: str) -> None:
                await sockets[stream].send(frame)

            t0 = time.monotonic()
            async with asyncio.TaskGroup() as senders:
                for index, name in enumerate(names):
                    senders.create_task(_paced(collector, name, index, per_stream, rate, t0, send))
            report.send_seconds = time.monotonic() - t0
            await _drain(collector, drain_s)
            for ws in (*sockets.values(), probe, events):
                await ws.close()
            reader.cancel()


async def _run_mqtt(
    url: str,
    names: list[str],
    per_stream: int,
    rate: float,
    collector: _Collector,
    report: LoadReport,
    prefix: str,
    drain_s: float,
) -> None:
    import aiomqtt

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    client = aiomqtt.Client(
        host,
        port,
        username=parts.username,
        password=parts.password,
        identifier=f"subtag-loadtest-{secrets.token_hex(4)}",
        max_inflight_messages=1000,
        max_queued_incoming_messages=0,
        # Nagle would hold each publish for the broker's delayed ACK (~40 ms).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        # aiomqtt warns on every publish beyond 10 awaiting their PUBACK: that is this tool's
        # normal state under load.
        logger=_QUIET_MQTT_LOG,
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise ConnectionError(f"cannot reach the broker at {url}: {exc}") from exc
    try:
        for topic in ("events", "done", "errors"):
            await client.subscribe(f"{prefix}/+/{topic}", qos=1)

        async def read() -> None:
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    collector.take(message.payload)

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read(), name="load-mqtt-read")
            await client.publish(f"{prefix}/{collector.probe}/lines", _line(0, 0), qos=1)
            await _await_probe(
                collector, reader, f"on {prefix}/+/done", f": is the service bridged to {url}?"
            )

            async def send(stream: str, frame: str) -> None:
                await client.publish(f"{prefix}/{stream}/lines", frame, qos=1)

            t0 = time.monotonic()
            async with asyncio.TaskGroup() as senders:
                for index, name in enumerate(names):
                    senders.create_task(_paced(collector, name, index, per_stream, rate, t0, send))
            report.send_seconds = time.monotonic() - t0
            await _drain(collector, drain_s)
            reader.cancel()
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run once, print the report (``--json`` for machine use)."""
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="service or broker URL")
    parser.add_argument("--transport", choices=("ws", "mqtt"), help="default: from --url")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--rate", type=float, default=5.0, help="lines/s per stream")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=30.0, help="max wait after sending (s)")
    parser.add_argument("--max-lines", type=int, default=1_000_000)
    parser.add_argument("--prefix", default="subtag", help="MQTT topic prefix")
    parser.add_argument("--token", help="bearer token (WebSocket, auth on)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--allow-loss", action="store_true", help="exit 0 even when lines were lost or refused"
    )
    args = parser.parse_args(argv)
    transport: Transport = args.transport or (
        "mqtt" if urlsplit(args.url).scheme in ("mqtt", "mqtts") else "ws"
    )
    try:
        report = asyncio.run(
            run_load(
                args.url,
                args.streams,
                args.rate,
                args.seconds,
                transport,
                prefix=args.prefix,
                token=args.token,
                drain_s=args.drain,
                max_lines=args.max_lines,
            )
        )
    except (ValueError, ConnectionError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print(report.summary())
    if report.duplicated or report.reordered:
        return 1
    if (report.lost or report.refused) and not args.allow_loss:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
