"""Faults on a live service: broker restart, lost and slow subscribers, a failing or hung engine,
and a service restart under a replaying client.

Every test runs the real service and real clients (and a real mosquitto where MQTT is involved)
and states what it sent and what arrived. Where an engine fault is needed, :class:`FaultInjector`
wraps the real :class:`~stream.rules.RulesTagger` and raises or blocks on lines carrying a marker:
a fault injector around the real component, not a stand-in for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import aiomqtt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from engine.base import LineJob, load_tagger
from stream.errors import InputError
from stream.listen import listen
from stream.replay import replay
from stream.schema import (
    Done,
    Error,
    ErrorCode,
    Event,
    InputLine,
    OutboundMessage,
    decode_outbound,
    encode_str,
)
from stream.service import Service
from tests.support.broker import Broker, MakeBroker
from tests.support.service import (
    StartService,
    http_get,
    receive,
    receive_until,
    service_config,
    ws_url,
)

T = TypeVar("T")

LINES = (
    "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！",
    "[00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…",
    "[00:05:31] [玻璃瓶晃动声] 李佳琦（对白）：看！摇一摇，全是绵密泡泡！",
)


def line(seq: int, text: str | None = None) -> str:
    """The JSON input message for ``seq`` (a sample line unless ``text`` is given)."""
    return encode_str(InputLine(text=text or LINES[seq % len(LINES)], seq=seq))


def dones(messages: Sequence[OutboundMessage]) -> list[Done]:
    """The ``done`` messages among ``messages``, in arrival order."""
    return [m for m in messages if isinstance(m, Done)]


def _sample(exposition: bytes, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, exposition.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def metric(svc: Service, name: str, labels: str = "") -> float:
    """A sample's value from the live ``/metrics`` page (0 when absent)."""
    _, _, body = await http_get(svc, "/metrics")
    return _sample(body, name, labels)


async def eventually(probe: Callable[[], T | Awaitable[T]], expected: T, *, within: float) -> None:
    """Poll ``probe()`` until it returns ``expected`` (for state with no event to wait on)."""
    value: object = None
    try:
        async with asyncio.timeout(within):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if value == expected:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"still {value!r} after {within} s, expected {expected!r}") from None


class FaultInjector:
    """The real rules tagger, made to raise on ``BOOM``, block on ``HANG``, take 0.5 s on ``SLOW``.

    A fault injector around the real component (not a mock): every other line is tagged by
    :class:`~stream.rules.RulesTagger` exactly as in production.
    """

    def __init__(self) -> None:
        self.rules = load_tagger("rules")
        self.release = threading.Event()
        self.calls = 0

    @property
    def name(self) -> str:
        """Not ``rules``, so the service runs it in its worker thread with the step timeout."""
        return "rules-faults"

    def tag(self, jobs: Sequence[LineJob]) -> Iterator[tuple[int, Event]]:
        """Tag like the rules backend, except for the marked lines."""
        self.calls += 1
        for job in jobs:
            if "BOOM" in job.text:
                raise RuntimeError("injected engine failure")
            if "HANG" in job.text:
                self.release.wait(10)
            if "SLOW" in job.text:
                time.sleep(0.5)
        yield from self.rules.tag(jobs)


# -- engine faults ---------------------------------------------------------------------------


async def test_engine_failure_on_one_line_gives_an_error_and_the_stream_goes_on(
    start_service: StartService,
) -> None:
    """Sent 12 lines, seq 5 makes the engine raise: 11 done + 1 engine_failed error for seq 5."""
    injector = FaultInjector()
    svc = await start_service(tagger=injector, scheduler={"max_wait_ms": 20.0})
    async with (
        connect(ws_url(svc, "/events?stream=eng")) as sub,
        connect(ws_url(svc, "/ingest/eng")) as ws,
    ):
        for seq in range(12):
            await ws.send(line(seq, "[00:00:01] [门铃] 旁白：BOOM" if seq == 5 else None))
        acks = await receive(ws, 12)
        seen = await receive_until(
            sub, lambda ms: len([m for m in ms if not isinstance(m, Event)]) >= 12
        )
    errors = [m for m in acks if isinstance(m, Error)]
    assert [(e.code, e.seq, e.stream) for e in errors] == [(ErrorCode.ENGINE_FAILED, 5, "eng")]
    assert sorted(d.seq for d in dones(acks)) == [s for s in range(12) if s != 5]
    assert all(d.events == 2 for d in dones(acks))
    # Subscribers learn about the failed line too, and every other line's events arrive once.
    assert [m.seq for m in seen if isinstance(m, Error)] == [5]
    events = Counter(m.seq for m in seen if not isinstance(m, Done | Error))
    assert events == {s: 2 for s in range(12) if s != 5}
    assert await metric(svc, "subtag_errors_total", '{code="engine_failed"}') == 1


async def test_hung_engine_step_times_out_and_later_lines_are_tagged(
    start_service: StartService,
) -> None:
    """Sent 6 lines, seq 2 blocks the engine: engine_timeout for seq 2 (200 ms), 5 done."""
    injector = FaultInjector()
    svc = await start_service(tagger=injector, engine={"line_timeout_ms": 200.0, "inline": "never"})
    try:
        async with connect(ws_url(svc, "/ingest/hang")) as ws:
            await ws.send(line(0))
            await ws.send(line(1))
            acks = await receive(ws, 2, within=5)
            # Alone in its batch, so the timeout hits this line only.
            await ws.send(line(2, "[00:00:02] 旁白：HANG"))
            (answer,) = await receive(ws, 1, within=5)
            for seq in range(3, 6):
                await ws.send(line(seq))
            acks += await receive(ws, 3, within=10)
    finally:
        injector.release.set()
    assert isinstance(answer, Error)
    assert (answer.code, answer.seq, answer.stream) == (ErrorCode.ENGINE_TIMEOUT, 2, "hang")
    assert "200 ms" in answer.message
    assert [d.seq for d in dones(acks)] == [0, 1, 3, 4, 5]
    assert all(d.events == 2 for d in dones(acks))


# -- subscribers -----------------------------------------------------------------------------


async def test_a_subscriber_that_disconnects_goes_unnoticed(start_service: StartService) -> None:
    """Sent 40 lines; 1 of 3 subscribers drops mid-stream; the other 2 get all 40 done, in order."""
    svc = await start_service()
    async with contextlib.AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(connect(ws_url(svc, "/events?stream=gone")))
            for _ in range(3)
        ]
        ws = await stack.enter_async_context(connect(ws_url(svc, "/ingest/gone")))
        for seq in range(20):
            await ws.send(line(seq))
        await receive_until(subs[0], lambda ms: len(dones(ms)) >= 5)
        subs[0].transport.abort()  # vanishes without a close frame
        for seq in range(20, 40):
            await ws.send(line(seq))
        acks = await receive(ws, 40)
        survivors = [await receive_until(sub, lambda ms: len(dones(ms)) >= 40) for sub in subs[1:]]
    assert [d.seq for d in dones(acks)] == list(range(40))
    for got in survivors:
        assert [d.seq for d in dones(got)] == list(range(40))
        assert sum(not isinstance(m, Done | Error) for m in got) == 80
    await eventually(lambda: metric(svc, "subtag_subscribers"), 0.0, within=5)


async def _slow_subscriber(svc: Service, path: str) -> ClientConnection:
    """A subscriber that reads nothing, with a tiny receive buffer, so its server queue fills."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", svc.port))
    # max_queue=1: the client library stops reading the socket after one frame.
    return await connect(ws_url(svc, path), sock=sock, max_queue=1, max_size=None)


@dataclass
class _Watch:
    """The largest subscriber queue seen while a test runs."""

    largest: int = 0
    samples: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def watch_queues(svc: Service) -> AsyncIterator[_Watch]:
    """Sample every subscriber queue's length every 2 ms."""
    watch = _Watch()

    async def sample() -> None:
        while not watch.stop.is_set():
            for sub in svc.fanout:
                watch.largest = max(watch.largest, len(sub.queue))
            watch.samples += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(sample())
    try:
        yield watch
    finally:
        watch.stop.set()
        await task


SLOW_LINES = 1500
# A long speech line: each event and done is about 2 KB on the wire, so 1500 lines are ~6 MB,
# far more than the socket buffers between the service and a subscriber that does not read.
LONG_LINE = "[00:01:00] [雷声] 旁白（画外音）：" + "风雨交加的夜晚，" * 110


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
async def test_slow_subscriber_is_bounded_and_stalls_nobody(
    start_service: StartService, policy: str
) -> None:
    """1500 long lines: a reader that stalls hits its bounded queue (drops counted or closed
    1013); the fast subscriber and the sender get all 1500 done."""
    capacity = 64
    svc = await start_service(
        fanout={"subscriber_queue": capacity, "policy": policy},
        limits={"lines_per_second": 0.0},
        scheduler={"queue_per_stream": 4096},
    )
    slow = await _slow_subscriber(svc, "/events?stream=flood")
    try:
        async with (
            watch_queues(svc) as watch,
            connect(ws_url(svc, "/events?stream=flood"), max_size=None) as fast,
            connect(ws_url(svc, "/ingest/flood"), max_size=None) as ws,
        ):
            # The fast subscriber and the sender read all along, as live clients do.
            reading = asyncio.create_task(
                receive_until(fast, lambda ms: len(dones(ms)) >= SLOW_LINES, 40)
            )
            acking = asyncio.create_task(receive(ws, SLOW_LINES, within=40))
            for seq in range(SLOW_LINES):
                await ws.send(line(seq, LONG_LINE))
            acks = await acking
            fast_got = await reading
        # Now let the slow one read what it still has.
        slow_got: list[OutboundMessage] = []
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(15):
                while not dones(slow_got) or dones(slow_got)[-1].seq != SLOW_LINES - 1:
                    slow_got.append(decode_outbound(await slow.recv()))
    finally:
        await slow.close()
    assert [d.seq for d in dones(acks)] == list(range(SLOW_LINES))
    assert [d.seq for d in dones(fast_got)] == list(range(SLOW_LINES))
    assert watch.samples > 10
    # Bounded: no subscriber queue ever held more than its capacity.
    assert watch.largest <= capacity
    assert len(dones(slow_got)) < SLOW_LINES
    if policy == "drop_oldest":
        # The newest messages are kept: the slow subscriber still ends with the last line.
        assert dones(slow_got)[-1].seq == SLOW_LINES - 1
        seqs = [d.seq for d in dones(slow_got)]
        assert seqs == sorted(seqs)
    else:
        assert slow.close_code == CloseCode.TRY_AGAIN_LATER
        assert slow.close_reason
    assert await metric(svc, "subtag_drops_total", '{reason="subscriber_queue"}') > 0


# -- broker restart --------------------------------------------------------------------------


@dataclass
class Downstream:
    """An MQTT consumer with a persistent session that reconnects when the broker goes away."""

    broker: Broker
    identifier: str
    raw: list[OutboundMessage] = field(default_factory=list)
    connections: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, ready: asyncio.Event) -> None:
        """Consume ``subtag/+/events|done|errors`` until cancelled."""
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.identifier,
                    clean_session=False,
                ) as client:
                    for topic in ("events", "done", "errors"):
                        await client.subscribe(f"subtag/+/{topic}", qos=1)
                    self.connections += 1
                    ready.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.raw.append(decode_outbound(message.payload))
                        self.changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def done_seqs(self, stream: str) -> set[int]:
        """Distinct ``seq`` of the ``done`` messages of ``stream`` (dedupe by stream and seq)."""
        return {m.seq for m in self.raw if isinstance(m, Done) and m.stream == stream}


async def _publish(broker: Broker, stream: str, seqs: Sequence[int]) -> None:
    """Publish lines ``seqs`` to ``subtag/{stream}/lines`` with QoS 1 (each acknowledged)."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for seq in seqs:
            await client.publish(f"subtag/{stream}/lines", line(seq), qos=1)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_loses_no_line_and_tags_none_twice(
    start_service: StartService, make_broker: MakeBroker, kill: bool
) -> None:
    """Sent 0-19, broker stopped (SIGTERM, or SIGKILL with autosave on every change) and
    restarted, sent 15-39 (15-19 again): 40 lines done downstream, each tagged once (the
    resent lines dropped by stream+seq), events deduped by stream+seq = sum of done.events."""
    broker = make_broker(autosave=kill)
    svc = await start_service(
        mqtt={
            "url": broker.url,
            "client_id": "svc-restart",
            # Slow to come back, so lines published right after the restart wait in the
            # broker for the service's persistent session.
            "reconnect_min_s": 0.8,
            "reconnect_max_s": 1.0,
        }
    )
    assert svc.mqtt is not None
    await svc.mqtt.connected.wait()
    downstream = Downstream(broker, "downstream-restart")
    ready = asyncio.Event()
    consumer = asyncio.create_task(downstream.run(ready))
    try:
        await ready.wait()
        await _publish(broker, "mq", range(20))
        async with asyncio.timeout(10):
            while len(downstream.done_seqs("mq")) < 5:
                downstream.changed.clear()
                await downstream.changed.wait()
        # SIGTERM: mosquitto writes its persistence and exits; SIGKILL: only what autosave wrote.
        broker.stop(kill=kill)
        await asyncio.sleep(0.3)
        broker.start()
        # A client that never saw acknowledgements for 15-19 resends them: the service must
        # recognise them by (stream, seq) and not tag them twice.
        await _publish(broker, "mq", range(15, 40))
        async with asyncio.timeout(20):
            while len(downstream.done_seqs("mq")) < 40:
                downstream.changed.clear()
                await downstream.changed.wait()
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert downstream.done_seqs("mq") == set(range(40))
    assert svc.mqtt.connections >= 2
    assert downstream.connections >= 2
    assert await metric(svc, "subtag_lines_done_total") == 40
    # At least the 5 resent lines; a QoS 1 redelivery of a line in flight at the stop adds more.
    assert await metric(svc, "subtag_drops_total", '{reason="duplicate"}') >= 5
    done_events = {m.seq: m.events for m in downstream.raw if isinstance(m, Done)}
    distinct_events = {
        (m.stream, m.seq, m.__struct_config__.tag, m.start)
        for m in downstream.raw
        if not isinstance(m, Done | Error)
    }
    assert len(distinct_events) == sum(done_events.values()) == 80
    assert not [m for m in downstream.raw if isinstance(m, Error)]


# -- service restart -------------------------------------------------------------------------


@dataclass(frozen=True)
class _SubtitleLine:
    text: str
    start_ms: int | None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_service_restart_replay_resends_and_listen_reconnects() -> None:
    """Replay 40 lines 40 ms apart; the service restarts while line 8 is in the engine (0.5 s):
    lines sent during the drain are refused (shutting_down) and, like the unacknowledged ones,
    resent to the new instance: all 40 acknowledged; the listener reconnects by itself."""
    port = _free_port()
    config = service_config(engine={"inline": "never"})
    config = dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, port=port, shutdown_timeout_s=2.0),
    )
    lines = [_SubtitleLine(LINES[i % 3] + ("SLOW" if i == 8 else ""), i * 40) for i in range(40)]
    heard: list[OutboundMessage] = []

    async def listener() -> None:
        async for message in listen(
            f"ws://127.0.0.1:{port}/events?stream=restart", retries=20, backoff=0.05
        ):
            heard.append(message)

    first = Service(config, tagger=FaultInjector())
    await first.__aenter__()
    listening = asyncio.create_task(listener())
    try:
        await eventually(lambda: first.ws.subscriber_count, 1, within=5)
        sending = asyncio.create_task(
            replay(lines, f"ws://127.0.0.1:{port}/ingest/restart", ack_timeout=15, retries=8)
        )
        await eventually(lambda: len(dones(heard)) >= 8, True, within=10)
        await eventually(lambda: first.pipeline.in_flight > 0, True, within=5)  # line 8
        await first.__aexit__(None, None, None)
        async with Service(config, tagger=FaultInjector()) as second:
            await eventually(lambda: second.ws.subscriber_count, 1, within=10)
            result = await sending
            await eventually(lambda: SENT_LAST in {d.seq for d in dones(heard)}, True, within=5)
            tagged_by_second = await metric(second, "subtag_lines_done_total")
        tagged_by_first = _sample(first.metrics.render(), "subtag_lines_done_total")
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    assert result.sent == 40
    assert result.retried > 0, "no line was sent during the drain: the resend went untested"
    assert result.done == 40, result.errors
    assert result.errors == []
    assert result.reconnects >= 1
    # Every line was tagged by one instance or the other (a resent line may be tagged twice).
    assert tagged_by_first >= 8
    assert tagged_by_first + tagged_by_second >= 40
    heard_seqs = {d.seq for d in dones(heard)}
    assert set(range(8)) <= heard_seqs
    assert SENT_LAST in heard_seqs


SENT_LAST = 39


async def test_service_starts_without_its_broker_and_connects_when_it_appears(
    start_service: StartService, broker: Broker
) -> None:
    """Broker down at start: WebSocket serves at once; once the broker is up, MQTT lines are
    tagged (1 line sent over each transport, 1 done each)."""
    broker.stop()
    svc = await start_service(
        mqtt={"url": broker.url, "client_id": "svc-late", "reconnect_max_s": 0.2}
    )
    assert svc.mqtt is not None
    async with connect(ws_url(svc, "/ingest/early")) as ws:
        await ws.send(line(0))
        (ack,) = await receive(ws, 1)
    assert isinstance(ack, Done)
    assert not svc.mqtt.connected.is_set()
    broker.start()
    async with asyncio.timeout(10):
        await svc.mqtt.connected.wait()
    downstream = Downstream(broker, "downstream-late")
    ready = asyncio.Event()
    consumer = asyncio.create_task(downstream.run(ready))
    try:
        await ready.wait()
        await _publish(broker, "late", [0])
        await eventually(lambda: downstream.done_seqs("late"), {0}, within=10)
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def test_broker_outage_keeps_the_mqtt_outbox_bounded(
    start_service: StartService, broker: Broker
) -> None:
    """Broker down, 30 lines over WebSocket (90 messages for MQTT), outbox of 10: WebSocket
    gets all 30 done, 80 MQTT messages are dropped and counted, the newest 10 go out later."""
    svc = await start_service(
        mqtt={"url": broker.url, "client_id": "svc-outbox", "publish_queue": 10}
    )
    assert svc.mqtt is not None
    await svc.mqtt.connected.wait()
    # A consumer with a persistent session, so the broker keeps its subscription across the stop.
    downstream = Downstream(broker, "downstream-outbox")
    ready = asyncio.Event()
    consumer = asyncio.create_task(downstream.run(ready))
    try:
        await ready.wait()
        broker.stop()
        await eventually(svc.mqtt.connected.is_set, False, within=5)
        async with connect(ws_url(svc, "/ingest/outage")) as ws:
            for seq in range(30):
                await ws.send(line(seq))
            acks = await receive(ws, 30)
        assert [d.seq for d in dones(acks)] == list(range(30))
        assert await metric(svc, "subtag_drops_total", '{reason="mqtt_queue"}') == 80
        broker.start()
        await eventually(lambda: 29 in downstream.done_seqs("outage"), True, within=10)
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert len([m for m in downstream.raw if m.stream == "outage"]) <= 10


async def test_service_restart_under_mqtt_replay_loses_no_line(broker: Broker) -> None:
    """Replay 30 lines over MQTT 40 ms apart; the bridged service restarts while line 8 is in
    the engine: lines refused during the drain go back to the broker and the new instance
    (same client id, persistent session) tags them: 30 done, no error."""
    config = service_config(
        engine={"inline": "never"},
        mqtt={"url": broker.url, "client_id": "svc-mq-restart", "reconnect_min_s": 0.05},
    )
    lines = [_SubtitleLine(LINES[i % 3] + ("SLOW" if i == 8 else ""), i * 40) for i in range(30)]
    first = Service(config, tagger=FaultInjector())
    await first.__aenter__()
    assert first.mqtt is not None
    await first.mqtt.connected.wait()
    sending = asyncio.create_task(replay(lines, broker.url, stream="mq-restart", ack_timeout=15))
    try:
        # Line 8 (0.5 s in the engine) is in flight: the drain will take a while.
        await eventually(
            lambda: (
                _sample(first.metrics.render(), "subtag_lines_done_total") >= 8
                and first.pipeline.in_flight > 0
            ),
            True,
            within=10,
        )
    finally:
        await first.__aexit__(None, None, None)
    async with Service(config, tagger=FaultInjector()) as second:
        result = await sending
        tagged_by_second = await metric(second, "subtag_lines_done_total")
    tagged_by_first = _sample(first.metrics.render(), "subtag_lines_done_total")
    assert result.sent == 30
    assert result.retried > 0, "no line arrived during the drain: the resend went untested"
    assert (result.done, result.errors) == (30, [])
    assert tagged_by_first + tagged_by_second >= 30


async def test_listen_gives_up_after_its_retries_with_a_clear_error() -> None:
    """listen() on a port nobody serves: 3 attempts with backoff, then InputError naming it."""
    url = f"ws://127.0.0.1:{_free_port()}/events"

    async def drain() -> None:
        async with asyncio.timeout(5):
            async for _ in listen(url, retries=2, backoff=0.01):
                pass

    with pytest.raises(InputError, match="cannot reach"):
        await drain()
