"""Export formats: each one parsed back with a real parser and compared with a golden file.

Regenerate the golden files after an intended change with
``SUBTAG_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_formats.py`` and review the diff.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.errors import ConfigError
from stream.formats import CSV_COLUMNS, FORMATS, LineClock, TaggedLine, write_events
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent, decode_outbound

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SUBTAG_UPDATE_GOLDEN") == "1"


def _speech(seq: int, t: str | None, speaker: str, status: str, text: str) -> SpeechEvent:
    return SpeechEvent(
        stream="demo", seq=seq, t=t, start=0, end=len(text), confidence=1.0,
        backend="rules", speaker=speaker, status=status, text=text,
    )  # fmt: skip


def _music(seq: int, t: str | None, cue: str, type_: str, mood: str) -> MusicEvent:
    return MusicEvent(
        stream="demo", seq=seq, t=t, start=0, end=len(cue), confidence=0.9,
        backend="rules", cue=cue, type=type_, mood=mood,
    )  # fmt: skip


def _action(seq: int, t: str | None, cue: str, action: str) -> ActionEvent:
    return ActionEvent(
        stream="demo", seq=seq, t=t, start=0, end=len(cue), confidence=0.75,
        backend="rules", cue=cue, action=action,
    )  # fmt: skip


def sample_lines() -> list[TaggedLine]:
    """The fixed small input every golden file is made from: all three timing rules."""
    return [
        # Cue timing from a subtitle file.
        TaggedLine(
            1,
            "[轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！",
            62_000,
            64_500,
            (
                _music(1, None, "轻柔竖琴泛音", "竖琴", "轻柔"),
                _speech(1, None, "李佳琦", "画外音", "姐妹们！这个精华水真的绝了！"),
            ),
        ),
        # Only an in-line timestamp; the cue has a '|' and a "-->" that formats must survive.
        TaggedLine(
            2,
            "[00:10:00.250] [字幕弹出：A|B] 主讲人：<b>x</b> & y --> z",
            None,
            None,
            (
                _action(2, "00:10:00.250", "字幕弹出：A|B", "弹出字幕"),
                _speech(2, "00:10:00.250", "主讲人", "", "<b>x</b> & y --> z"),
            ),
        ),
        # No timing at all: placeholder after the previous line.
        TaggedLine(3, "[欢快口哨声]", None, None, (_music(3, None, "欢快口哨声", "口哨", "欢快"),)),
        # A line without events still takes its place on the timeline.
        TaggedLine(4, "……", None, None, ()),
        TaggedLine(
            5, "[手机震动声]", 3_601_000, None, (_action(5, None, "手机震动声", "手机来电"),)
        ),
    ]


def _export(fmt: str, fps: str = "25") -> str:
    out = io.StringIO(newline="")
    write_events(sample_lines(), fmt, out, fps=fps)
    return out.getvalue()


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8", newline="")
    assert path.exists(), f"missing golden file {path}; run with SUBTAG_UPDATE_GOLDEN=1"
    assert text == path.read_bytes().decode("utf-8")


def _all_events() -> list[Event]:
    return [event for line in sample_lines() for event in line.events]


# --- timing policy --------------------------------------------------------------------------


def test_line_clock_prefers_cue_then_stamp_then_placeholder() -> None:
    """Lines are placed by cue timing, else their timestamp, else after the previous line."""
    clock = LineClock()
    placed = [clock.place(line) for line in sample_lines()]
    assert [(p.start_ms, p.end_ms, p.source) for p in placed] == [
        (62_000, 64_500, "cue"),
        (600_250, 602_250, "stamp"),
        (602_250, 604_250, "placeholder"),
        (604_250, 606_250, "placeholder"),
        (3_601_000, 3_603_000, "cue"),
    ]


def test_placeholder_timing_of_plain_text_is_two_seconds_per_line() -> None:
    """Untimed lines of a plain text file sit 2 s apart from zero, in order."""
    clock = LineClock()
    starts = [clock.place(TaggedLine(i, "x", None, None, ())).start_ms for i in range(1, 4)]
    assert starts == [0, 2000, 4000]


# --- jsonl ----------------------------------------------------------------------------------


def test_jsonl_is_one_schema_event_per_row() -> None:
    """jsonl rows decode with the wire schema back to exactly the input events."""
    text = _export("jsonl")
    decoded = [decode_outbound(row) for row in text.splitlines()]
    assert decoded == _all_events()
    _check_golden("sample.jsonl", text)


def test_streaming_formats_write_each_line_before_the_next_is_read() -> None:
    """jsonl and csv emit a line's rows before pulling the next line from the iterator."""
    for fmt in ("jsonl", "csv"):
        out = io.StringIO(newline="")
        seen: list[int] = []

        def lines(out: io.StringIO = out, seen: list[int] = seen) -> Iterator[TaggedLine]:
            for line in sample_lines():
                seen.append(out.getvalue().count("\n"))
                yield line

        write_events(lines(), fmt, out)
        header = 1 if fmt == "csv" else 0
        # Before line 2 is pulled, line 1's two events are out; before line 3, four.
        assert seen[:3] == [header, header + 2, header + 4], fmt


# --- csv ------------------------------------------------------------------------------------


def test_csv_has_the_documented_columns_and_one_row_per_event() -> None:
    """csv parses with the csv module: fixed header, one row per event, fields by kind."""
    text = _export("csv")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == len(_all_events())
    assert rows[0]["kind"] == "music"
    assert rows[0]["mood"] == "轻柔"
    assert rows[0]["speaker"] == ""
    assert rows[1]["speaker"] == "李佳琦"
    assert rows[1]["status"] == "画外音"
    assert rows[3]["text"] == "<b>x</b> & y --> z"
    assert rows[2]["action"] == "弹出字幕"
    assert rows[2]["cue"] == "字幕弹出：A|B"
    assert [(r["line_start_ms"], r["timing"]) for r in rows] == [
        ("62000", "cue"),
        ("62000", "cue"),
        ("600250", "stamp"),
        ("600250", "stamp"),
        ("602250", "placeholder"),
        ("3601000", "cue"),
    ]
    assert rows[5]["confidence"] == "0.75"
    _check_golden("sample.csv", text)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_format_and_fps_are_config_errors() -> None:
    """A bad --format or --fps names the valid choices."""
    with pytest.raises(ConfigError, match="jsonl"):
        write_events([], "docx", io.StringIO())
    with pytest.raises(ConfigError, match=r"29\.97"):
        write_events([], "jsonl", io.StringIO(), fps="31")


def test_every_format_is_listed() -> None:
    """FORMATS lists the streaming formats first."""
    assert FORMATS[:2] == ("jsonl", "csv")
