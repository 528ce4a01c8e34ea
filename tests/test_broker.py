"""The mosquitto fixture itself: it accepts clients, requires passwords when told, and keeps a
persistent session's QoS 1 messages across a restart (what the fault tests rely on)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from tests.support.broker import Broker, MakeBroker


async def test_broker_delivers_between_two_clients(broker: Broker) -> None:
    """A message published on the fixture's broker reaches a subscriber."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="sub") as sub:
        await sub.subscribe("t/#", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, identifier="pub") as pub:
            await pub.publish("t/x", b"hello", qos=1)
        received: list[tuple[str, object]] = []
        async with asyncio.timeout(5):
            async for message in sub.messages:
                received.append((str(message.topic), message.payload))
                break
    assert received == [("t/x", b"hello")]


async def test_persistent_session_survives_restart(broker: Broker) -> None:
    """QoS 1 messages queued for an offline persistent session arrive after a broker restart."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="durable", clean_session=False
    ) as sub:
        await sub.subscribe("q/#", qos=1)
    async with aiomqtt.Client(broker.host, broker.port, identifier="pub") as pub:
        for i in range(5):
            await pub.publish(f"q/{i}", str(i).encode(), qos=1)
    broker.stop()
    assert not broker.running
    broker.start()
    received: list[bytes] = []
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="durable", clean_session=False
    ) as sub:
        async with asyncio.timeout(5):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)
                if len(received) == 5:
                    break
    assert sorted(received) == [b"0", b"1", b"2", b"3", b"4"]


async def test_password_broker_refuses_anonymous_and_accepts_the_user(
    make_broker: MakeBroker,
) -> None:
    """The password-file variant refuses anonymous clients and accepts its user."""
    secured = make_broker(username="svc", password="s3cret")
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(secured.host, secured.port, identifier="anon"):
            pass
    async with aiomqtt.Client(
        secured.host, secured.port, identifier="svc", username="svc", password="s3cret"
    ) as client:
        await client.publish("ok", b"1", qos=1)
