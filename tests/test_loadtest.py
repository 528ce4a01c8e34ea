"""A small bounded run of tools/loadtest.py against the real service (WebSocket and MQTT):
every line sent is tagged and arrives once, in order. The larger run is in docs/reliability.md."""

from __future__ import annotations

import pytest

from tests.support.broker import Broker
from tests.support.service import StartService
from tools.loadtest import main, percentiles, run_load


def test_percentiles_are_nearest_rank() -> None:
    """p50/p90/p99/max use the nearest-rank definition; no data gives no percentiles."""
    assert percentiles([]) == {}
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p90": 7.0, "p99": 7.0, "max": 7.0}


async def test_websocket_load_loses_nothing(start_service: StartService) -> None:
    """10 streams x 20 lines/s x 3 s over WebSocket: 600 sent, 600 done, none lost/dup/reordered."""
    svc = await start_service()
    report = await run_load(svc.url, streams=10, rate=20, seconds=3, transport="ws", drain_s=15)
    assert report.sent == 600, report.summary()
    assert report.done == 600, report.summary()
    assert (report.lost, report.refused, report.duplicated, report.reordered) == (0, 0, 0, 0)
    assert report.events > report.done  # most sample lines carry a cue and a speech
    assert report.latency_ms["max"] < 15_000
    assert report.server_latency_ms["p50"] <= report.latency_ms["p50"]
    assert report.ok


async def test_mqtt_load_loses_nothing(start_service: StartService, broker: Broker) -> None:
    """5 streams x 10 lines/s x 2 s over MQTT QoS 1: 100 sent, 100 done, none lost/dup/reordered."""
    svc = await start_service(mqtt={"url": broker.url, "client_id": "svc-load"})
    assert svc.mqtt is not None
    await svc.mqtt.connected.wait()
    report = await run_load(broker.url, streams=5, rate=10, seconds=2, transport="mqtt")
    assert (report.sent, report.done) == (100, 100), report.summary()
    assert (report.lost, report.refused, report.duplicated, report.reordered) == (0, 0, 0, 0)
    assert report.ok


async def test_load_is_bounded_in_count() -> None:
    """A run larger than max_lines is refused before anything is sent."""
    with pytest.raises(ValueError, match="max_lines"):
        await run_load("ws://127.0.0.1:9", streams=100, rate=100, seconds=100, max_lines=1000)


def test_cli_reports_an_unreachable_service_with_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI turns an unreachable service into a one-line message and exit status 2."""
    assert main(["--url", "ws://127.0.0.1:9", "--streams", "1", "--seconds", "1"]) == 2
    assert "loadtest: cannot subscribe" in capsys.readouterr().err
