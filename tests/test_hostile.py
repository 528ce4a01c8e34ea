"""Hostile and broken input against a live server socket.

Each test talks to the real service over real WebSocket connections: every bad message gets a
clear ``error`` (or, where the protocol itself is broken, a close code), the good lines around
it are tagged as usual, other clients notice nothing, and the server keeps running.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from stream.schema import (
    Done,
    Error,
    ErrorCode,
    InputLine,
    OutboundMessage,
    encode_str,
)
from stream.service import Service
from tests.support.service import StartService, http_get, receive, receive_until, ws_url

# Limits small enough that breaching them is cheap, large enough for every good line.
LIMITS = {"max_frame_bytes": 8192, "max_line_chars": 2000, "lines_per_second": 0.0}
SCHEDULER = {"queue_per_stream": 4096, "max_queued": 20000}

GOOD = (
    "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！",
    "[00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…",
    "[00:05:31] [玻璃瓶晃动声] 李佳琦（对白）：看！摇一摇，全是绵密泡泡！",
)

# (frame, the error code it must get); None = not an error: the line is tagged (``done``).
HOSTILE: list[tuple[str | bytes, str | None]] = [
    (b"\x00\x01\x02binary", ErrorCode.BINARY_FRAME),
    (b"", ErrorCode.BINARY_FRAME),
    ('{"text": "a",', ErrorCode.BAD_JSON),
    ("{not json at all", ErrorCode.BAD_JSON),
    ("{" * 3000, ErrorCode.BAD_JSON),
    ('{"text": ' + "[" * 3000 + "]" * 3000 + "}", ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "t": ' + "[" * 3000, ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "seq": 1', ErrorCode.BAD_JSON),
    ('{"text": 5}', ErrorCode.BAD_MESSAGE),
    ('{"text": null}', ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "seq": "7"}', ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "seq": 1.5}', ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "seq": true}', ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "t": 12}', ErrorCode.BAD_MESSAGE),
    ('{"text": "a", "admin": true}', ErrorCode.BAD_MESSAGE),
    ('{"seq": 3}', ErrorCode.BAD_MESSAGE),
    ("{}", ErrorCode.BAD_MESSAGE),
    ("", ErrorCode.EMPTY_LINE),
    ("   \t  ", ErrorCode.EMPTY_LINE),
    ("\n\r\n", ErrorCode.EMPTY_LINE),
    ('{"text": "  "}', ErrorCode.EMPTY_LINE),
    ("x" * 2001, ErrorCode.LINE_TOO_LONG),
    ("字" * 2001, ErrorCode.LINE_TOO_LONG),
    ("y" * 9000, ErrorCode.FRAME_TOO_LARGE),
    ("\x00\x07\x1b[31m\x7f", None),
    ("[00:00:01] \x00[门铃]\x07 旁白：\u200b好\ufeff", None),
    ("[[[[[[[[[[", None),
    ("]]]]]]]]]]", None),
    ("[]", None),
    ("【】【】【】", None),
    ("（（（（", None),
    ("）", None),
    ("♪", None),
    ("♪ ♪ ♪", None),
    ("[门铃", None),
    ("门铃]", None),
    ("【雷声", None),
    ("雷声】", None),
    ("[雷声】", None),
    ("【雷声]", None),
    ("李佳琦（画外音：好", None),
    ("李佳琦画外音）：好", None),
    ("[00:05:22", None),
    ("[[00:05:22]] [[门铃]]", None),
    ("[" * 1999, None),
    ("[1, 2, 3]", None),
    ('"just a json string"', None),
    ("null", None),
]


# Every kind of unbalanced bracket: each opener or closer alone, and each opener closed by
# every other kind's closer. All are legal text: tagged (done), never an error or a crash.
PAIRS = (("[", "]"), ("【", "】"), ("（", "）"), ("(", ")"), ("〔", "〕"), ("「", "」"), ("♪", "♪"))
HOSTILE += [(f"[00:00:03] {o}门铃 旁白（OS）：好", None) for o, _ in PAIRS]
HOSTILE += [(f"[00:00:03] 门铃{c} 旁白（OS）：好", None) for _, c in PAIRS]
HOSTILE += [
    (f"{o}雷声{c} 旁白：{o}{o}{c}", None)
    for i, (o, _) in enumerate(PAIRS)
    for j, (_, c) in enumerate(PAIRS)
    if i != j
]


async def _collect(
    ws: ClientConnection, frames: int, within: float = 20.0
) -> list[OutboundMessage]:
    """One ``done`` or ``error`` per frame sent on an ingest connection."""
    return await receive_until(
        ws, lambda ms: sum(isinstance(m, Done | Error) for m in ms) >= frames, within
    )


async def _error_count(svc: Service, code: str) -> float:
    status, _, body = await http_get(svc, "/metrics")
    assert status == 200
    match = re.search(rf'subtag_errors_total{{code="{code}"}} (\S+)', body.decode())
    return float(match.group(1)) if match else 0.0


async def _counted_soon(svc: Service, code: str, count: int) -> None:
    """Wait until the server's handler has counted the breach (it may finish after the client)."""
    async with asyncio.timeout(5):
        while await _error_count(svc, code) != count:  # noqa: ASYNC110 - a metric has no event
            await asyncio.sleep(0.01)


@pytest.fixture
async def svc(start_service: StartService) -> Service:
    """The real service (rules backend) with small, cheap-to-breach limits."""
    return await start_service(limits=LIMITS, scheduler=SCHEDULER)


async def test_every_hostile_frame_gets_a_clear_answer_and_good_lines_are_tagged(
    svc: Service,
) -> None:
    """Each hostile frame gets its error code (or is tagged), good lines between them get done."""
    sent_good: list[int] = []
    expected_codes: Counter[str] = Counter()
    async with (
        connect(ws_url(svc, "/events?stream=clean")) as watcher,
        connect(ws_url(svc, "/ingest/clean")) as clean,
        connect(ws_url(svc, "/ingest/hostile"), max_size=None) as ws,
    ):
        seq = 0
        for frame, code in HOSTILE:
            await ws.send(encode_str(InputLine(text=GOOD[seq % len(GOOD)], seq=seq)))
            sent_good.append(seq)
            seq += 1
            await ws.send(frame)
            if code is not None:
                expected_codes[code] += 1
            # A neighbouring stream on another connection, fed at the same time.
            await clean.send(GOOD[seq % len(GOOD)])
        await ws.send(encode_str(InputLine(text=GOOD[0], seq=seq)))
        sent_good.append(seq)
        got = await _collect(ws, len(HOSTILE) + len(sent_good))
        clean_acks = await _collect(clean, len(HOSTILE))
        watched = await receive_until(
            watcher, lambda ms: sum(isinstance(m, Done) for m in ms) >= len(HOSTILE)
        )
    errors = [m for m in got if isinstance(m, Error)]
    dones = [m for m in got if isinstance(m, Done)]
    assert Counter(e.code for e in errors) == expected_codes
    for error in errors:
        assert error.stream == "hostile"
        assert len(error.message) > 10, error
    # Every good line was tagged like any other: done with its own seq and its events.
    done_by_seq = {d.seq: d for d in dones}
    for good_seq in sent_good:
        assert done_by_seq[good_seq].events == 2, done_by_seq[good_seq]
    # Hostile-but-legal text lines were tagged too (one done each, never a crash).
    assert len(dones) == len(sent_good) + sum(code is None for _, code in HOSTILE)
    # The neighbouring stream and its subscriber noticed nothing.
    assert all(isinstance(m, Done) and m.events == 2 for m in clean_acks)
    assert {m.stream for m in watched} == {"clean"}
    assert not [m for m in watched if isinstance(m, Error)]
    for code, count in expected_codes.items():
        assert await _error_count(svc, code) >= count


async def test_invalid_utf8_text_frame_closes_with_1007_and_others_go_on(svc: Service) -> None:
    """A text frame that is not UTF-8 is closed with 1007; the next connection is tagged."""
    async with connect(ws_url(svc, "/ingest/bad-utf8")) as ws:
        await ws.send(b"[00:00:01] \xff\xfe\xc3\x28", text=True)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == CloseCode.INVALID_DATA
    await _counted_soon(svc, ErrorCode.BAD_ENCODING, 1)
    async with connect(ws_url(svc, "/ingest/bad-utf8")) as again:
        await again.send(GOOD[0])
        (done,) = await receive(again, 1)
    assert isinstance(done, Done)
    assert done.events == 2


async def test_megabyte_frame_closes_with_1009_and_others_go_on(svc: Service) -> None:
    """A megabyte line closes only its own connection (1009, too big); a neighbour keeps going."""
    async with connect(ws_url(svc, "/ingest/neighbour")) as neighbour:
        async with connect(ws_url(svc, "/ingest/huge"), max_size=None) as ws:
            await ws.send("[" + "巨" * (1 << 20) + "]")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == CloseCode.MESSAGE_TOO_BIG
        await _counted_soon(svc, ErrorCode.FRAME_TOO_LARGE, 1)
        await neighbour.send(GOOD[1])
        (done,) = await receive(neighbour, 1)
    assert isinstance(done, Done)
    assert done.events == 2


async def test_bad_handshakes_are_refused_with_a_status(svc: Service) -> None:
    """Bad stream ids, unknown routes and bad filters are refused at the handshake, with a body."""
    for path, status in [
        ("/ingest/a%2Fb", 400),
        ("/ingest/" + "s" * 200, 400),
        ("/ingest/%00", 400),
        ("/ingest/", 400),
        ("/events?kind=gossip", 400),
        ("/nowhere", 404),
    ]:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(svc, path)):
                pass
        assert caught.value.response.status_code == status, path
        assert caught.value.response.body, path
    status, _, body = await http_get(svc, "/healthz")
    assert (status, body) == (200, b"ok\n")


def _random_frame(rng: random.Random) -> str | bytes:
    """One frame from a mix of garbage shapes (seeded, so a failure replays)."""
    shape = rng.randrange(8)
    if shape == 0:
        return rng.randbytes(rng.randrange(0, 64))
    if shape == 1:
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x4E00, 0x4F00)]))
            for _ in range(rng.randrange(1, 80))
        )
    if shape == 2:
        return "".join(rng.choice("[]【】（）()♪：:+ \t") for _ in range(rng.randrange(1, 60)))
    if shape == 3:
        value: object = rng.choice([1, "x", None, [1], {"a": 1}, True, 1.5, "", "  "])
        key = rng.choice(["text", "seq", "t", "bogus"])
        return json.dumps({key: value} if rng.random() < 0.5 else {"text": "行", key: value})
    if shape == 4:
        return "{" + rng.choice(['"text"', "", "[", '"text": "a"', '"text": "a",']) * rng.randrange(
            1, 50
        )
    if shape == 5:
        return "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 20)))
    if shape == 6:
        return rng.choice(["", " ", "\n", "\t\t"])
    return rng.choice(GOOD)


async def test_fuzzed_frames_on_a_live_socket_get_one_answer_each(svc: Service) -> None:
    """400 seeded random frames: zero crashes, exactly one done or error each, good lines tagged."""
    rng = random.Random(20261123)
    frames = [_random_frame(rng) for _ in range(400)]
    async with (
        connect(ws_url(svc, "/events?stream=fuzz")) as watcher,
        connect(ws_url(svc, "/ingest/fuzz"), max_size=None) as ws,
    ):
        for frame in frames:
            await ws.send(frame)
        got = await _collect(ws, len(frames), within=30)
        tagged = sum(isinstance(m, Done) for m in got)
        watched = await receive_until(
            watcher, lambda ms: sum(isinstance(m, Done) for m in ms) >= tagged
        )
    answers = [m for m in got if isinstance(m, Done | Error)]
    assert len(answers) == len(frames)
    good = sum(frame in GOOD for frame in frames)
    tagged_good = [m for m in got if isinstance(m, Done) and m.events == 2]
    assert len(tagged_good) >= good
    errors = Counter(m.code for m in got if isinstance(m, Error))
    assert set(errors) <= {
        ErrorCode.BINARY_FRAME,
        ErrorCode.BAD_JSON,
        ErrorCode.BAD_MESSAGE,
        ErrorCode.EMPTY_LINE,
    }, errors
    assert sum(isinstance(m, Done) for m in watched) == tagged
    status, _, _ = await http_get(svc, "/healthz")
    assert status == 200
