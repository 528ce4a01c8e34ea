"""replay and listen against a real service (and a real mosquitto for MQTT)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from stream.errors import InputError
from stream.listen import events_url, listen
from stream.replay import replay
from stream.schema import Done, OutboundMessage
from stream.sources import SourceLine, read_subtitle_file
from tests.support.broker import Broker
from tests.support.service import StartService, ws_url

LINES = [
    SourceLine(1, "[00:00:01] [掌声] 主持人（对白）：欢迎！", start_ms=1000),
    SourceLine(2, "[00:00:02] [欢快口哨声]", start_ms=1200),
    SourceLine(3, "[00:00:03] 嘉宾：谢谢。", start_ms=1400),
    SourceLine(4, "没有时间的一句"),
]
DEMO_SRT = Path(__file__).resolve().parent.parent / "stream" / "samples" / "demo.srt"


async def collect(url: str, dones: int) -> list[OutboundMessage]:
    out: list[OutboundMessage] = []
    async for message in listen(url):
        out.append(message)
        if sum(isinstance(m, Done) for m in out) >= dones:
            break
    return out


async def test_replay_over_ws_is_acknowledged_and_listen_sees_it(
    start_service: StartService,
) -> None:
    """replay sends every line and gets every done; listen yields the same lines' messages."""
    svc = await start_service()
    listener = asyncio.create_task(collect(events_url(svc.url, streams="show"), len(LINES)))
    await asyncio.sleep(0.1)  # let the subscription open before the lines flow
    result = await replay(LINES, ws_url(svc, "/ingest/show"), pace=False)
    got = await asyncio.wait_for(listener, 10)
    assert (result.sent, result.done, result.errors) == (4, 4, [])
    dones = [m for m in got if isinstance(m, Done)]
    assert [d.seq for d in dones] == [0, 1, 2, 3]
    assert result.events == sum(d.events for d in dones) == len(got) - len(dones)


async def test_replay_paces_by_start_time_and_speed(start_service: StartService) -> None:
    """Lines go out at their start times scaled by speed (400 ms of cues at 2x = 200 ms)."""
    svc = await start_service()
    started = time.monotonic()
    result = await replay(LINES, ws_url(svc, "/ingest/paced"), speed=2.0)
    elapsed = time.monotonic() - started
    assert result.done == 4
    assert 0.18 <= elapsed < 2.0


async def test_replay_to_unknown_scheme_is_an_input_error() -> None:
    """A --to that is neither ws:// nor mqtt:// is a clear error."""
    with pytest.raises(InputError, match="--to must be"):
        await replay(LINES, "http://127.0.0.1:1/ingest/x")


async def test_listen_filters_by_kind(start_service: StartService) -> None:
    """listen with kind=music yields only music events and the done messages."""
    svc = await start_service()
    listener = asyncio.create_task(collect(events_url(svc.url, kinds="music"), len(LINES)))
    await asyncio.sleep(0.1)
    await replay(LINES, ws_url(svc, "/ingest/k"), pace=False)
    got = await asyncio.wait_for(listener, 10)
    kinds = {getattr(m.__struct_config__, "tag", None) for m in got}
    assert kinds == {"music", "done"}


async def test_listen_refused_subscription_is_an_input_error(start_service: StartService) -> None:
    """A refused handshake (bad filter) ends listen with the service's reason."""
    svc = await start_service()
    with pytest.raises(InputError, match=r"HTTP 400.*unknown kind"):
        async for _ in listen(events_url(svc.url, kinds="nope")):
            pass


async def test_replay_over_mqtt(start_service: StartService, broker: Broker) -> None:
    """replay --to mqtt:// publishes the lines and collects their done messages."""
    svc = await start_service(mqtt={"url": broker.url, "client_id": f"replay-{broker.port}"})
    assert svc.mqtt is not None
    async with asyncio.timeout(10):
        await svc.mqtt.connected.wait()
    result = await replay(LINES, broker.url, stream="radio", pace=False)
    assert (result.sent, result.done, result.errors) == (4, 4, [])


async def test_replay_and_listen_commands(start_service: StartService) -> None:
    """`subtag replay FILE --to ws://` and `subtag listen --count` work end to end."""
    svc = await start_service()
    cues = len(read_subtitle_file(DEMO_SRT))
    listen_cmd = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stream.cli", "listen", ws_url(svc, "/events"),
        "--kind", "done", "--count", str(cues), "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        while len(svc.fanout) == 0:  # noqa: ASYNC110 - waiting for the listener to subscribe
            await asyncio.sleep(0.05)
        replay_cmd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stream.cli", "replay", str(DEMO_SRT),
            "--to", ws_url(svc, "/ingest/demo"), "--no-pace",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, replay_err = await replay_cmd.communicate()
        listened, _ = await listen_cmd.communicate()
    assert replay_cmd.returncode == 0
    assert f"sent {cues} line(s), {cues} done" in replay_err.decode()
    assert listen_cmd.returncode == 0
    dones = [line for line in listened.decode().splitlines() if '"type":"done"' in line]
    assert len(dones) == cues
