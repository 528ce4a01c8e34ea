"""The service with a real mosquitto: MQTT in and out, identical messages on both transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from websockets.asyncio.client import connect

from stream.schema import (
    Done,
    Error,
    ErrorCode,
    InputLine,
    OutboundMessage,
    decode_outbound,
    encode,
)
from stream.service import Service
from tests.support.broker import Broker
from tests.support.service import StartService, count_done, receive, receive_until, ws_url

LINE = "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！"


async def mqtt_service(start_service: StartService, broker: Broker) -> Service:
    svc = await start_service(
        mqtt={"url": broker.url, "client_id": f"subtag-test-{broker.port}", "reconnect_min_s": 0.05}
    )
    assert svc.mqtt is not None
    async with asyncio.timeout(10):
        await svc.mqtt.connected.wait()
    return svc


@pytest.fixture
async def mqtt_client(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    """A plain MQTT client subscribed to every outbound topic."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic in ("subtag/+/events", "subtag/+/done", "subtag/+/errors"):
            await client.subscribe(topic, qos=1)
        yield client


async def mqtt_receive_until(
    client: aiomqtt.Client, dones: int, within: float = 10.0
) -> list[tuple[str, OutboundMessage]]:
    """(topic, message) pairs until ``dones`` done messages arrived."""
    out: list[tuple[str, OutboundMessage]] = []
    async with asyncio.timeout(within):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            out.append((message.topic.value, decode_outbound(message.payload)))
            if count_done([m for _, m in out]) >= dones:
                return out
    return out


async def test_ws_line_reaches_mqtt_and_ws_subscribers_identically(
    start_service: StartService, broker: Broker, mqtt_client: aiomqtt.Client
) -> None:
    """A WebSocket line is published to {prefix}/{stream}/events|done and to /events, the same."""
    svc = await mqtt_service(start_service, broker)
    async with connect(ws_url(svc, "/events")) as sub, connect(ws_url(svc, "/ingest/cam1")) as ing:
        await ing.send(LINE)
        from_ws = await receive_until(sub, lambda ms: count_done(ms) == 1)
        from_mqtt = await mqtt_receive_until(mqtt_client, 1)
        await receive(ing, 1)
    assert [m for _, m in from_mqtt] == from_ws
    assert [topic for topic, _ in from_mqtt] == [
        "subtag/cam1/events",
        "subtag/cam1/events",
        "subtag/cam1/done",
    ]


async def test_mqtt_line_reaches_mqtt_and_ws_subscribers(
    start_service: StartService, broker: Broker, mqtt_client: aiomqtt.Client
) -> None:
    """A line published to {prefix}/{stream}/lines gives events and done on both transports."""
    svc = await mqtt_service(start_service, broker)
    async with connect(ws_url(svc, "/events?stream=cam2")) as sub:
        await mqtt_client.publish("subtag/cam2/lines", LINE.encode(), qos=1)
        await mqtt_client.publish(
            "subtag/cam2/lines", encode(InputLine(text="[欢快口哨声]", seq=7)), qos=1
        )
        from_ws = await receive_until(sub, lambda ms: count_done(ms) == 2)
        from_mqtt = await mqtt_receive_until(mqtt_client, 2)
    assert [m for _, m in from_mqtt] == from_ws
    dones = [m for m in from_ws if isinstance(m, Done)]
    assert [(d.stream, d.seq, d.events) for d in dones] == [("cam2", 0, 2), ("cam2", 7, 1)]
    assert svc.metrics.lines_mqtt.value == 2


async def test_mqtt_redelivered_line_is_not_tagged_twice(
    start_service: StartService, broker: Broker, mqtt_client: aiomqtt.Client
) -> None:
    """A line with the same stream and seq arriving again is dropped (no duplicate events)."""
    svc = await mqtt_service(start_service, broker)
    payload = encode(InputLine(text="[欢快口哨声]", seq=3))
    for _ in range(2):
        await mqtt_client.publish("subtag/dup/lines", payload, qos=1)
    await mqtt_client.publish("subtag/dup/lines", encode(InputLine(text="[掌声]", seq=4)), qos=1)
    got = await mqtt_receive_until(mqtt_client, 2)
    dones = [m for _, m in got if isinstance(m, Done)]
    assert [d.seq for d in dones] == [3, 4]
    assert svc.metrics.lines_done.value == 2


async def test_bad_mqtt_payload_gets_an_error_on_the_errors_topic(
    start_service: StartService, broker: Broker, mqtt_client: aiomqtt.Client
) -> None:
    """A malformed payload is answered on {prefix}/{stream}/errors; the next line works."""
    await mqtt_service(start_service, broker)
    await mqtt_client.publish("subtag/bad/lines", b'{"text": ', qos=1)
    await mqtt_client.publish("subtag/bad/lines", b"\xff\xfe", qos=1)
    await mqtt_client.publish("subtag/bad/lines", "[掌声]".encode(), qos=1)
    got = await mqtt_receive_until(mqtt_client, 1)
    errors = [(topic, m.code) for topic, m in got if isinstance(m, Error)]
    assert errors == [
        ("subtag/bad/errors", ErrorCode.BAD_JSON),
        ("subtag/bad/errors", ErrorCode.BAD_ENCODING),
    ]


async def test_lines_sent_while_the_service_is_away_arrive_after_reconnect(
    start_service: StartService, broker: Broker
) -> None:
    """The broker keeps the service's session: QoS 1 lines sent during a restart arrive."""
    svc = await mqtt_service(start_service, broker)
    assert svc.mqtt is not None
    broker.stop()
    async with asyncio.timeout(10):
        while svc.mqtt.connected.is_set():  # noqa: ASYNC110 - watching the bridge notice
            await asyncio.sleep(0.01)
    broker.start()
    async with aiomqtt.Client(broker.host, broker.port, identifier="sender") as client:
        await client.subscribe("subtag/away/done", qos=1)
        # Published before the service is back: the broker queues it in the session.
        await client.publish("subtag/away/lines", encode(InputLine(text="[掌声]", seq=1)), qos=1)
        got = await mqtt_receive_until(client, 1, within=20)
    assert [(m.stream, m.seq) for _, m in got if isinstance(m, Done)] == [("away", 1)]
    assert svc.mqtt.connections >= 2
