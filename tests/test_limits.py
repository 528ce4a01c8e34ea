"""Limits and access on a live service (WebSocket and a real mosquitto): each breach gets its
error or close code, is counted in /metrics, and leaves every other client and stream alone."""

from __future__ import annotations

import asyncio
import logging
import re

import aiomqtt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from stream.config import TokenConfig
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
from tests.support.broker import Broker, MakeBroker
from tests.support.service import StartService, http_get, receive, receive_until, ws_url

LINE = "[00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…"


async def errors_counted(svc: Service, code: str) -> float:
    """``subtag_errors_total{code=...}`` from the live /metrics page."""
    _, _, body = await http_get(svc, "/metrics")
    found = re.search(rf'^subtag_errors_total{{code="{code}"}} (\S+)$', body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def split(messages: list[OutboundMessage]) -> tuple[list[Done], list[Error]]:
    """The ``done`` and ``error`` messages among ``messages``."""
    return (
        [m for m in messages if isinstance(m, Done)],
        [m for m in messages if isinstance(m, Error)],
    )


async def test_rate_limit_refuses_the_excess_of_one_connection_only(
    start_service: StartService,
) -> None:
    """40 lines at once with burst 5, 2 lines/s: most get rate_limited; a neighbour is untouched."""
    svc = await start_service(limits={"lines_per_second": 2.0, "burst": 5})
    async with (
        connect(ws_url(svc, "/ingest/greedy")) as greedy,
        connect(ws_url(svc, "/ingest/calm")) as calm,
    ):
        for _ in range(40):
            await greedy.send(LINE)
        await calm.send(LINE)
        await calm.send(LINE)
        done, errors = split(await receive(greedy, 40))
        calm_done, calm_errors = split(await receive(calm, 2))
    # The burst, plus a token per half second the 40 sends took (more on a busy machine).
    assert 5 <= len(done) <= 10
    assert {e.code for e in errors} == {ErrorCode.RATE_LIMITED}
    assert len(done) + len(errors) == 40
    assert "lines/s" in errors[0].message
    assert (len(calm_done), calm_errors) == (2, [])
    assert await errors_counted(svc, ErrorCode.RATE_LIMITED) == len(errors)


async def test_live_stream_limit_refuses_a_new_stream_and_keeps_the_others(
    start_service: StartService,
) -> None:
    """With 2 live streams allowed, a third ingest gets too_many_streams and 1013; 2 go on."""
    svc = await start_service(limits={"max_streams": 2})
    async with (
        connect(ws_url(svc, "/ingest/one")) as one,
        connect(ws_url(svc, "/ingest/two")) as two,
    ):
        await one.send(LINE)
        await two.send(LINE)
        await receive(one, 1)
        await receive(two, 1)
        async with connect(ws_url(svc, "/ingest/three")) as three:
            (refusal,) = await receive(three, 1)
            with pytest.raises(ConnectionClosed):
                await three.recv()
        assert isinstance(refusal, Error)
        assert refusal.code == ErrorCode.TOO_MANY_STREAMS
        assert three.close_code == CloseCode.TRY_AGAIN_LATER
        await one.send(LINE)
        await two.send(LINE)
        (a,) = await receive(one, 1)
        (b,) = await receive(two, 1)
    assert isinstance(a, Done)
    assert isinstance(b, Done)
    assert await errors_counted(svc, ErrorCode.TOO_MANY_STREAMS) == 1


async def test_subscriber_limit_refuses_one_more_and_keeps_the_others(
    start_service: StartService,
) -> None:
    """With 2 subscribers allowed, a third gets overloaded and 1013; the 2 still receive."""
    svc = await start_service(limits={"max_subscribers": 2})
    async with (
        connect(ws_url(svc, "/events")) as first,
        connect(ws_url(svc, "/events")) as second,
    ):
        async with connect(ws_url(svc, "/events")) as third:
            (refusal,) = await receive(third, 1)
            with pytest.raises(ConnectionClosed):
                await third.recv()
        assert isinstance(refusal, Error)
        assert refusal.code == ErrorCode.OVERLOADED
        assert third.close_code == CloseCode.TRY_AGAIN_LATER
        async with connect(ws_url(svc, "/ingest/subs")) as ws:
            await ws.send(LINE)
            for sub in (first, second):
                got = await receive_until(sub, lambda ms: any(isinstance(m, Done) for m in ms))
                assert got[-1].stream == "subs"
    assert await errors_counted(svc, ErrorCode.OVERLOADED) == 1


TOKENS = (
    TokenConfig(token="ingest-cam-secret", scopes=("ingest",), streams=("cam-*",), name="cams"),
    TokenConfig(token="watch-secret", scopes=("subscribe",), name="watcher"),
)


async def test_tokens_scopes_and_stream_patterns_are_enforced_at_the_handshake(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    """Missing/unknown token: 401; wrong scope or stream: 403; good tokens work; never logged."""
    caplog.set_level(logging.DEBUG)
    svc = await start_service(auth={"enabled": "on", "tokens": TOKENS})
    refused = [
        ("/ingest/cam-1", None, 401),
        ("/ingest/cam-1", "nope", 401),
        ("/ingest/studio", "ingest-cam-secret", 403),
        ("/events", "ingest-cam-secret", 403),
        ("/ingest/cam-1", "watch-secret", 403),
    ]
    for path, token, status in refused:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(svc, path), additional_headers=headers):
                pass
        assert caught.value.response.status_code == status, (path, token)
    async with (
        connect(ws_url(svc, "/events?token=watch-secret")) as sub,
        connect(
            ws_url(svc, "/ingest/cam-1"),
            additional_headers={"Authorization": "Bearer ingest-cam-secret"},
        ) as ws,
    ):
        await ws.send(LINE)
        (ack,) = await receive(ws, 1)
        got = await receive_until(sub, lambda ms: any(isinstance(m, Done) for m in ms))
    assert isinstance(ack, Done)
    assert got[-1] == ack
    assert await errors_counted(svc, ErrorCode.UNAUTHORIZED) == 2
    assert await errors_counted(svc, ErrorCode.FORBIDDEN) == 3
    _, _, metrics = await http_get(svc, "/metrics")
    # What the service side logs (the test's own client logs its request headers at DEBUG).
    server_log = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")
    )
    for secret in ("ingest-cam-secret", "watch-secret"):
        assert secret not in server_log
        assert secret.encode() not in metrics
    assert "ingest-cam-secret" not in repr(svc.config)


# -- MQTT --------------------------------------------------------------------------------------


async def test_mqtt_hostile_payloads_get_errors_and_good_lines_are_tagged(
    start_service: StartService, broker: Broker
) -> None:
    """Over MQTT: non-UTF-8, oversize, malformed and empty payloads each get an error on
    subtag/{stream}/errors; the 3 good lines between them get done."""
    svc = await start_service(
        mqtt={"url": broker.url, "client_id": "svc-hostile"},
        limits={"max_frame_bytes": 1024},
    )
    assert svc.mqtt is not None
    await svc.mqtt.connected.wait()
    hostile = [
        (b"\xff\xfe[\x80]", ErrorCode.BAD_ENCODING),
        (b"x" * 2000, ErrorCode.FRAME_TOO_LARGE),
        (b'{"text": ', ErrorCode.BAD_JSON),
        (b'{"text": 1}', ErrorCode.BAD_MESSAGE),
        (b"   ", ErrorCode.EMPTY_LINE),
    ]
    got: list[OutboundMessage] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("subtag/mq-bad/errors", qos=1)
        await client.subscribe("subtag/mq-bad/done", qos=1)
        for seq, (payload, _) in enumerate(hostile):
            good = encode(InputLine(text=LINE, seq=seq))
            await client.publish("subtag/mq-bad/lines", good, qos=1)
            await client.publish("subtag/mq-bad/lines", payload, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(decode_outbound(message.payload))
                if len(got) == len(hostile) * 2:
                    break
    done, errors = split(got)
    assert sorted(d.seq for d in done) == list(range(len(hostile)))
    assert all(d.events == 2 for d in done)
    assert sorted(e.code for e in errors) == sorted(code for _, code in hostile)
    assert all(e.stream == "mq-bad" for e in errors)
    assert await errors_counted(svc, ErrorCode.BAD_ENCODING) == 1


async def test_mqtt_broker_credentials_are_used_and_a_wrong_password_is_survived(
    start_service: StartService, make_broker: MakeBroker
) -> None:
    """A password broker: the right credentials tag lines; a wrong password leaves the service
    up (WebSocket still tags) with subtag_mqtt_connected 0."""
    secured = make_broker(username="subtag", password="b-secret")
    good = await start_service(
        mqtt={
            "url": secured.url,
            "client_id": "svc-auth",
            "username": "subtag",
            "password": "b-secret",
        }
    )
    assert good.mqtt is not None
    async with asyncio.timeout(10):
        await good.mqtt.connected.wait()
    async with aiomqtt.Client(
        secured.host, secured.port, username="subtag", password="b-secret"
    ) as client:
        await client.subscribe("subtag/cred/done", qos=1)
        await client.publish("subtag/cred/lines", LINE.encode(), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                done = decode_outbound(message.payload)
                break
    assert isinstance(done, Done)
    assert done.events == 2

    bad = await start_service(
        mqtt={
            "url": secured.url,
            "client_id": "svc-wrong",
            "username": "subtag",
            "password": "wrong",
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.1,
        }
    )
    await asyncio.sleep(0.3)
    assert bad.mqtt is not None
    assert not bad.mqtt.connected.is_set()
    _, _, body = await http_get(bad, "/metrics")
    assert b"subtag_mqtt_connected 0.0" in body
    async with connect(ws_url(bad, "/ingest/still")) as ws:
        await ws.send(LINE)
        (ack,) = await receive(ws, 1)
    assert isinstance(ack, Done)


async def test_mqtt_stream_ids_follow_the_websocket_rule(
    start_service: StartService, broker: Broker
) -> None:
    """A topic level that is not a valid stream id (empty, spaces, 200 chars) gets bad_message."""
    svc = await start_service(mqtt={"url": broker.url, "client_id": "svc-ids"})
    assert svc.mqtt is not None
    await svc.mqtt.connected.wait()
    bad_ids = ["", "bad id", "s" * 200]
    got: list[OutboundMessage] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("subtag/+/errors", qos=1)
        for stream in bad_ids:
            await client.publish(f"subtag/{stream}/lines", LINE.encode(), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(decode_outbound(message.payload))
                if len(got) == len(bad_ids):
                    break
    assert all(isinstance(m, Error) and m.code == ErrorCode.BAD_MESSAGE for m in got)
    assert sorted(m.stream or "" for m in got) == sorted(bad_ids)
    assert len(svc.pipeline.streams) == 0
