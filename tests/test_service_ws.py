"""The service end to end over WebSocket: real server on port 0, real clients, rules backend."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine.base import LineJob, load_tagger
from stream.config import AuthConfig, TokenConfig
from stream.schema import Done, Error, ErrorCode, Event, InputLine, OutboundMessage, encode_str
from tests.support.service import (
    StartService,
    count_done,
    http_get,
    receive,
    receive_until,
    ws_url,
)

LINE = "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！"
CUE_ONLY = "[00:05:35] [欢快口哨声]"


def events_of(messages: list[OutboundMessage]) -> list[Event]:
    return [m for m in messages if not isinstance(m, Done | Error)]


def done_of(messages: list[OutboundMessage]) -> list[Done]:
    return [m for m in messages if isinstance(m, Done)]


class FaultyTagger:
    """The real rules tagger, made to fail on lines containing BOOM and hang on HANG."""

    def __init__(self) -> None:
        self.rules = load_tagger("rules")
        self.release = threading.Event()

    @property
    def name(self) -> str:
        return self.rules.name

    def tag(self, jobs: Sequence[LineJob]) -> Iterator[tuple[int, Event]]:
        for job in jobs:
            if "BOOM" in job.text:
                raise RuntimeError("injected failure")
            if "HANG" in job.text:
                self.release.wait(10)
        yield from self.rules.tag(jobs)


async def test_ws_line_gives_events_and_done_to_subscriber_and_sender(
    start_service: StartService,
) -> None:
    """A line on /ingest reaches /events subscribers as events then done, acked to its sender."""
    svc = await start_service()
    async with connect(ws_url(svc, "/events")) as sub, connect(ws_url(svc, "/ingest/a")) as ing:
        await ing.send(LINE)
        got = await receive_until(sub, lambda ms: count_done(ms) == 1)
        (ack,) = await receive(ing, 1)
    events = events_of(got)
    assert [e.__struct_config__.tag for e in events] == ["music", "speech"]
    assert {(e.stream, e.seq, e.backend) for e in events} == {("a", 0, "rules")}
    assert got[-1] == ack
    assert isinstance(ack, Done)
    assert ack.events == 2
    assert ack.backend == "rules"


async def test_json_input_keeps_client_seq_and_t(start_service: StartService) -> None:
    """A JSON input message's seq is kept; lines without one continue after it."""
    svc = await start_service()
    async with connect(ws_url(svc, "/ingest/s")) as ing:
        await ing.send(encode_str(InputLine(text="[笑声]", seq=41, t="00:01:00")))
        await ing.send("[笑声]")
        acks = await receive(ing, 2)
    assert [(m.seq, m.stream) for m in done_of(acks)] == [(41, "s"), (42, "s")]


async def test_latency_fields_present_and_consistent(start_service: StartService) -> None:
    """Each done carries non-negative latencies with first event <= total."""
    svc = await start_service()
    async with connect(ws_url(svc, "/ingest/lat")) as ing:
        for _ in range(5):
            await ing.send(LINE)
        await ing.send("没有任何标记的一句话")
        acks = done_of(await receive(ing, 6))
    for done in acks:
        lat = done.latency
        assert min(lat.received_to_queued, lat.queue, lat.model, lat.total) >= 0
        assert lat.received_to_queued + lat.queue <= lat.total
        if done.events:
            assert lat.first_event is not None
            assert lat.first_event <= lat.total
        else:
            assert lat.first_event is None


async def test_filters_by_stream_and_kind(start_service: StartService) -> None:
    """?stream= and ?kind= deliver only the matching events (and the stream's done)."""
    svc = await start_service()
    async with (
        connect(ws_url(svc, "/events?stream=b&kind=music")) as music_b,
        connect(ws_url(svc, "/events?kind=speech,done")) as speech,
        connect(ws_url(svc, "/ingest/a")) as a,
        connect(ws_url(svc, "/ingest/b")) as b,
    ):
        await a.send(LINE)
        await receive(a, 1)
        await b.send(LINE)
        await receive(b, 1)
        got_b = await receive_until(music_b, lambda ms: count_done(ms) == 1)
        got_speech = await receive_until(speech, lambda ms: count_done(ms) == 2)
    assert [e.__struct_config__.tag for e in events_of(got_b)] == ["music"]
    assert {m.stream for m in got_b} == {"b"}
    assert {e.__struct_config__.tag for e in events_of(got_speech)} == {"speech"}
    assert {e.stream for e in events_of(got_speech)} == {"a", "b"}


async def test_bad_filter_is_refused_at_handshake(start_service: StartService) -> None:
    """An unknown kind is a 400 naming it."""
    svc = await start_service()
    with pytest.raises(InvalidStatus) as exc:
        async with connect(ws_url(svc, "/events?kind=spoken")):
            pass
    assert exc.value.response.status_code == 400
    assert b"spoken" in exc.value.response.body


async def send_lines(svc_url: str, stream: str, lines: int) -> list[OutboundMessage]:
    async with connect(svc_url + f"/ingest/{stream}") as ing:
        for i in range(lines):
            await ing.send(f"[00:00:{i % 60:02d}] [掌声] 主持人（对白）：第{i}句")
        return await receive(ing, lines, within=30)


async def test_order_and_no_loss_with_50_streams_of_20_lines(start_service: StartService) -> None:
    """50 concurrent streams x 20 lines: every line and event arrives, in per-stream order."""
    svc = await start_service()
    base = ws_url(svc, "")
    async with connect(ws_url(svc, "/events"), max_queue=None) as sub:
        acks = await asyncio.gather(*(send_lines(base, f"s{n}", 20) for n in range(50)))
        got = await receive_until(sub, lambda ms: count_done(ms) == 1000, within=30)
    assert all(len(a) == 20 and all(isinstance(m, Done) for m in a) for a in acks)
    per_stream: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for m in got:
        assert not isinstance(m, Error)
        per_stream[m.stream].append((m.seq, "done" if isinstance(m, Done) else "event"))
    assert len(per_stream) == 50
    for stream, seen in per_stream.items():
        # Line k's two events, then its done, before anything of line k+1.
        expected = [(k, what) for k in range(20) for what in ("event", "event", "done")]
        assert seen == expected, stream
    assert len(events_of(got)) == sum(d.events for d in done_of(got)) == 2000


async def anext_all(ws: ClientConnection) -> list[dict[str, object]]:
    return [msgspec.json.decode(frame) async for frame in ws]


async def test_shutdown_drains_lines_in_flight(start_service: StartService) -> None:
    """Leaving the service finishes queued lines and delivers their done before closing."""
    # A long batch wait keeps the lines queued when the shutdown starts.
    svc = await start_service(scheduler={"max_wait_ms": 300.0, "max_batch": 64})
    async with connect(ws_url(svc, "/events")) as sub:
        ingests = [await connect(ws_url(svc, f"/ingest/d{i}")) for i in range(10)]
        for ing in ingests:
            await ing.send(LINE)
        async with asyncio.timeout(5):
            while svc.pipeline.in_flight < 10:  # noqa: ASYNC110 - polling the service's state
                await asyncio.sleep(0.005)
        reader = asyncio.create_task(anext_all(sub))
        await svc.drain()
        got = await reader
        for ing in ingests:
            await ing.close()
    assert sum(m.get("type") == "done" for m in got) == 10
    assert svc.pipeline.in_flight == 0


async def test_lines_after_shutdown_get_shutting_down(start_service: StartService) -> None:
    """A line sent while the service drains is refused with shutting_down."""
    svc = await start_service()
    async with connect(ws_url(svc, "/ingest/z")) as ing:
        svc.pipeline.close()
        await ing.send(LINE)
        (reply,) = await receive(ing, 1)
    assert isinstance(reply, Error)
    assert reply.code == ErrorCode.SHUTTING_DOWN


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"text": ', ErrorCode.BAD_JSON),
        ('{"txt": "x"}', ErrorCode.BAD_MESSAGE),
        ('{"text": "x", "seq": "one"}', ErrorCode.BAD_MESSAGE),
        (b"\x00binary", ErrorCode.BINARY_FRAME),
        ("   ", ErrorCode.EMPTY_LINE),
        ("长" * 300, ErrorCode.LINE_TOO_LONG),
        ("x" * 3000, ErrorCode.FRAME_TOO_LARGE),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_goes_on(
    start_service: StartService, frame: str | bytes, code: str
) -> None:
    """Every bad frame is answered with its error code; the next good line still works."""
    svc = await start_service(limits={"max_line_chars": 200, "max_frame_bytes": 2048})
    async with connect(ws_url(svc, "/ingest/bad")) as ing:
        await ing.send(frame)
        await ing.send(CUE_ONLY)
        error, done = await receive(ing, 2)
    assert isinstance(error, Error)
    assert error.code == code
    assert error.stream == "bad"
    assert isinstance(done, Done)
    assert done.events == 1


async def test_oversized_frame_beyond_four_times_the_limit_closes_1009(
    start_service: StartService,
) -> None:
    """A frame far over the limit is not buffered: the connection closes with 1009."""
    svc = await start_service(limits={"max_frame_bytes": 1024})
    async with connect(ws_url(svc, "/ingest/huge"), max_size=None) as ing:
        await ing.send("x" * 10000)
        with pytest.raises(ConnectionClosed) as exc:
            await ing.recv()
    assert exc.value.rcvd is not None
    assert exc.value.rcvd.code == 1009


async def test_rate_limit_drops_excess_lines_only_for_that_connection(
    start_service: StartService,
) -> None:
    """Lines past the per-connection rate get rate_limited; another connection is unaffected."""
    svc = await start_service(limits={"lines_per_second": 1.0, "burst": 3})
    async with (
        connect(ws_url(svc, "/ingest/fast")) as fast,
        connect(ws_url(svc, "/ingest/calm")) as calm,
    ):
        for _ in range(6):
            await fast.send(CUE_ONLY)
        got = await receive(fast, 6)
        await calm.send(CUE_ONLY)
        (calm_reply,) = await receive(calm, 1)
    codes = [m.code if isinstance(m, Error) else "done" for m in got]
    assert codes.count("done") == 3
    assert codes.count(ErrorCode.RATE_LIMITED) == 3
    assert isinstance(calm_reply, Done)
    status, _, body = await http_get(svc, "/metrics")
    assert status == 200
    assert b'subtag_errors_total{code="rate_limited"} 3.0' in body


async def test_too_many_streams_is_refused_without_disturbing_others(
    start_service: StartService,
) -> None:
    """Past max_streams (all busy) a new stream is refused; live ones go on."""
    svc = await start_service(limits={"max_streams": 2})
    async with connect(ws_url(svc, "/ingest/one")) as one, connect(ws_url(svc, "/ingest/two")):
        async with connect(ws_url(svc, "/ingest/three")) as three:
            (refused,) = await receive(three, 1)
            with pytest.raises(ConnectionClosed):
                await three.recv()
        await one.send(CUE_ONLY)
        (ok,) = await receive(one, 1)
    assert isinstance(refused, Error)
    assert refused.code == ErrorCode.TOO_MANY_STREAMS
    assert isinstance(ok, Done)


async def test_subscriber_limit(start_service: StartService) -> None:
    """Past max_subscribers a subscriber gets an overloaded error and close 1013."""
    svc = await start_service(limits={"max_subscribers": 1})
    async with connect(ws_url(svc, "/events")), connect(ws_url(svc, "/events")) as extra:
        (refused,) = await receive(extra, 1)
        with pytest.raises(ConnectionClosed) as exc:
            await extra.recv()
    assert isinstance(refused, Error)
    assert refused.code == ErrorCode.OVERLOADED
    assert exc.value.rcvd is not None
    assert exc.value.rcvd.code == 1013


async def test_slow_subscriber_drops_oldest_and_others_get_everything(
    start_service: StartService,
) -> None:
    """A subscriber that does not read loses its oldest messages; a reading one loses nothing."""
    svc = await start_service(
        fanout={"subscriber_queue": 8},
        limits={"lines_per_second": 0.0},
        scheduler={"queue_per_stream": 1000},
    )
    async with (
        connect(ws_url(svc, "/events"), max_queue=1) as stalled,
        connect(ws_url(svc, "/events"), max_queue=None) as reader,
        connect(ws_url(svc, "/ingest/flood"), max_queue=None) as ing,
    ):
        stalled.transport.pause_reading()  # never reads: its socket and queue fill up
        for i in range(400):
            await ing.send(f"[掌声] 甲：{'很长的一句话' * 40}{i}")
        got = await receive_until(reader, lambda ms: count_done(ms) == 400, within=30)
        assert len(events_of(got)) == sum(d.events for d in done_of(got)) >= 400
        stalled.transport.abort()  # it never reads, so it cannot close politely
    _, _, body = await http_get(svc, "/metrics")
    assert b'subtag_drops_total{reason="subscriber_queue"}' in body


async def test_engine_failure_fails_only_that_line(start_service: StartService) -> None:
    """A line the engine fails on gets engine_failed; its neighbours and the stream go on."""
    svc = await start_service(tagger=FaultyTagger())
    async with connect(ws_url(svc, "/events")) as sub:
        conns = [await connect(ws_url(svc, f"/ingest/f{i}")) for i in range(3)]
        await conns[0].send(CUE_ONLY)
        await conns[1].send("[掌声] BOOM")
        await conns[2].send(CUE_ONLY)
        await conns[1].send(CUE_ONLY)
        got = await receive_until(sub, lambda ms: count_done(ms) == 3 and len(ms) >= 7)
        for conn in conns:
            await conn.close()
    errors = [m for m in got if isinstance(m, Error)]
    assert [(e.code, e.stream, e.seq) for e in errors] == [(ErrorCode.ENGINE_FAILED, "f1", 0)]
    assert sorted((d.stream, d.seq) for d in done_of(got)) == [("f0", 0), ("f1", 1), ("f2", 0)]
    assert len(events_of(got)) == 3


async def test_hung_engine_step_times_out(start_service: StartService) -> None:
    """A model step past line_timeout_ms gives engine_timeout; the next line is tagged."""
    tagger = FaultyTagger()
    svc = await start_service(tagger=tagger, engine={"line_timeout_ms": 200.0, "inline": "never"})
    try:
        async with connect(ws_url(svc, "/ingest/h")) as ing:
            started = time.monotonic()
            await ing.send("[掌声] HANG")
            await ing.send(CUE_ONLY)
            error, done = await receive(ing, 2)
            assert time.monotonic() - started < 5
    finally:
        tagger.release.set()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.ENGINE_TIMEOUT
    assert isinstance(done, Done)
    assert done.events == 1


TOKENS = AuthConfig(
    enabled="on",
    tokens=(
        TokenConfig(token="in-tok", scopes=("ingest",), streams=("news-*",), name="writer"),
        TokenConfig(token="sub-tok", scopes=("subscribe",), streams=("news-*",), name="reader"),
    ),
)


async def test_auth_refuses_missing_wrong_and_out_of_scope_tokens(
    start_service: StartService,
) -> None:
    """Without a valid token the handshake is 401; a stream outside the token is 403."""
    svc = await start_service(auth=dict(enabled="on", tokens=TOKENS.tokens))
    for path, headers, status in [
        ("/ingest/news-1", None, 401),
        ("/ingest/news-1?token=wrong", None, 401),
        ("/ingest/sports", {"Authorization": "Bearer in-tok"}, 403),
        ("/events", {"Authorization": "Bearer in-tok"}, 403),
        ("/events?stream=sports", {"Authorization": "Bearer sub-tok"}, 403),
    ]:
        with pytest.raises(InvalidStatus) as exc:
            async with connect(ws_url(svc, path), additional_headers=headers):
                pass
        assert exc.value.response.status_code == status, path
        assert b"in-tok" not in exc.value.response.body


async def test_auth_allows_tokens_and_restricts_subscribers(start_service: StartService) -> None:
    """Header and query tokens work; a restricted subscriber sees only its streams."""
    svc = await start_service(auth=dict(enabled="on", tokens=TOKENS.tokens))
    async with (
        connect(ws_url(svc, "/events?token=sub-tok")) as sub,
        connect(
            ws_url(svc, "/ingest/news-1"), additional_headers={"Authorization": "Bearer in-tok"}
        ) as news,
    ):
        await news.send(CUE_ONLY)
        (ack,) = await receive(news, 1)
        got = await receive_until(sub, lambda ms: count_done(ms) == 1)
    assert isinstance(ack, Done)
    assert {m.stream for m in got} == {"news-1"}


async def test_http_routes(start_service: StartService) -> None:
    """/healthz, /metrics, / and /static/ are served on the WebSocket port."""
    svc = await start_service()
    async with connect(ws_url(svc, "/ingest/m")) as ing:
        await ing.send(LINE)
        await receive(ing, 1)
    status, _, body = await http_get(svc, "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, kind, body = await http_get(svc, "/metrics")
    assert status == 200
    assert kind.startswith("text/plain")
    for name in (
        "subtag_line_latency_seconds_count 1.0",
        "subtag_first_event_seconds_count 1.0",
        "subtag_queue_wait_seconds_count 1.0",
        "subtag_model_seconds_count 1.0",
        'subtag_lines_total{transport="ws"} 1.0',
        'subtag_events_total{kind="speech"} 1.0',
        "subtag_queue_depth",
        "subtag_live_streams",
    ):
        assert name.encode() in body, name
    status, kind, body = await http_get(svc, "/")
    assert status == 200
    assert kind == "text/html; charset=utf-8"
    assert b"<html" in body.lower()
    assert (await http_get(svc, "/static/nothing.js"))[0] == 404
    assert (await http_get(svc, "/static/../config.py"))[0] == 404
    assert (await http_get(svc, "/nowhere"))[0] == 404


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_command_logs_its_engine_and_drains_on_sigterm() -> None:
    """`subtag serve` says which engine and why, serves, and exits 0 after draining on SIGTERM."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stream.cli", "serve", "--port", str(port),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    ing = await connect(f"ws://127.0.0.1:{port}/ingest/cli")
                    break
                except OSError:
                    assert proc.returncode is None, "subtag serve exited at start-up"
                    await asyncio.sleep(0.1)
            async with ing:
                await ing.send(LINE)
                (ack,) = await receive(ing, 1)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert isinstance(ack, Done)
    assert "engine: loading rules because no engine.model is configured" in log
    assert "shutdown: drained" in log


def test_serve_with_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    """A bad config key ends `subtag serve` with exit 2 and a message naming the key."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nmax_batch = 'a'\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{bad}: [scheduler] max_batch must be an integer >= 1, got 'a'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_service_runs_the_tiny_seqgpt_export(
    start_service: StartService, tiny_export_dir: Path
) -> None:
    """With engine.model set the service loads seqgpt in a worker thread and streams its events."""
    svc = await start_service(engine={"model": str(tiny_export_dir)})
    assert svc.tagger is not None
    assert svc.tagger.name == "seqgpt"
    assert not svc.pipeline.inline
    async with connect(ws_url(svc, "/events")) as sub, connect(ws_url(svc, "/ingest/m")) as ing:
        await ing.send(LINE)
        got = await receive_until(sub, lambda ms: count_done(ms) == 1, within=60)
        (ack,) = await receive(ing, 1)
    assert isinstance(ack, Done)
    assert ack.backend == "seqgpt"
    assert len(events_of(got)) == ack.events
    assert all(e.backend == "seqgpt" for e in events_of(got))
    assert ack.latency.model > 0
    # The tagger's own counters (dropped spans, generated tokens) are exported at scrape time.
    status, _, body = await http_get(svc, "/metrics")
    assert status == 200
    assert b'subtag_engine_total{counter="dropped_spans"}' in body
    assert b'subtag_engine_total{counter="generated_tokens"}' in body
