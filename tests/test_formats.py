"""Export formats: each one parsed back with a real parser and compared with a golden file.

Regenerate the golden files after an intended change with
``SUBTAG_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_formats.py`` and review the diff.
"""

from __future__ import annotations

import csv
import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pysubs2
import pytest

from stream.errors import ConfigError
from stream.formats import (
    CSV_COLUMNS,
    EDL_COLORS,
    FORMATS,
    PREMIERE_COLUMNS,
    LineClock,
    TaggedLine,
    write_events,
)
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent, decode_outbound
from stream.timecode import parse_fps

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


# --- vtt and srt ----------------------------------------------------------------------------


def _expected_timings() -> list[tuple[int, int]]:
    clock = LineClock()
    return [(p.start_ms, p.end_ms) for p in map(clock.place, sample_lines())]


def test_vtt_parses_with_pysubs2_and_keeps_voices_cues_and_tags() -> None:
    """vtt: one cue per line at its timing, <v Speaker> spans, [cues], tags in a NOTE."""
    text = _export("vtt")
    subs = pysubs2.SSAFile.from_string(text, format_="vtt")
    assert [(cue.start, cue.end) for cue in subs] == _expected_timings()
    assert subs[0].plaintext == "[轻柔竖琴泛音]\n姐妹们！这个精华水真的绝了！"
    assert subs[3].plaintext == "……"
    # WebVTT structure pysubs2 does not check: header, blank-line blocks, voice spans, escapes.
    assert text.startswith("WEBVTT")
    blocks = text.strip("\n").split("\n\n")
    assert blocks[0].startswith("WEBVTT")
    assert blocks[1].startswith("NOTE ")
    cue_blocks = blocks[2:]
    assert len(cue_blocks) == len(sample_lines())
    for block in cue_blocks:
        timing, *payload = block.split("\n")
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", timing)
        assert payload
        assert all("-->" not in row for row in payload)
    assert "<v 李佳琦>姐妹们！这个精华水真的绝了！</v>" in cue_blocks[0]
    assert "<v 主讲人>&lt;b&gt;x&lt;/b&gt; &amp; y --&gt; z</v>" in cue_blocks[1]
    # The NOTE rows are schema events (a NOTE cannot hold "-->": it is JSON-escaped).
    note_rows = blocks[1].split("\n")[1:]
    assert "-->" not in blocks[1]
    assert [decode_outbound(row) for row in note_rows] == _all_events()
    _check_golden("sample.vtt", text)


_SRT_TAG = re.compile(r"\[(?P<kind>MUSIC|ACTION|SPEECH): (?P<fields>.*?)\](?: (?P<text>.*))?")


def test_srt_parses_with_pysubs2_and_carries_tags_in_the_text() -> None:
    """srt: numbered cues at each line's timing, one tag row per event in the text."""
    text = _export("srt")
    subs = pysubs2.SSAFile.from_string(text, format_="srt", keep_html_tags=True)
    assert [(cue.start, cue.end) for cue in subs] == _expected_timings()
    rows = [row for cue in subs for row in cue.plaintext.split("\n")]
    tags = [_SRT_TAG.fullmatch(row) for row in rows]
    assert rows[5] == "……"
    assert tags[5] is None
    parsed = [(m["kind"], m["fields"].split(" | "), m["text"]) for m in tags if m is not None]
    assert parsed == [
        ("MUSIC", ["轻柔竖琴泛音", "type: 竖琴", "mood: 轻柔"], None),
        ("SPEECH", ["李佳琦", "status: 画外音"], "姐妹们！这个精华水真的绝了！"),
        ("ACTION", ["字幕弹出：A|B", "action: 弹出字幕"], None),
        ("SPEECH", ["主讲人"], "<b>x</b> & y --> z"),
        ("MUSIC", ["欢快口哨声", "type: 口哨", "mood: 欢快"], None),
        ("ACTION", ["手机震动声", "action: 手机来电"], None),
    ]
    assert [block.split("\n")[0] for block in text.strip().split("\n\n")] == list("12345")
    _check_golden("sample.srt", text)


# --- premiere -------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["25", "29.97"])
def test_premiere_marker_list_is_tab_delimited_with_timecodes(fps: str) -> None:
    """premiere: the six Premiere columns, one Comment marker per event, In + Duration = Out."""
    rate = parse_fps(fps)
    text = _export("premiere", fps)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    assert tuple(rows[0]) == PREMIERE_COLUMNS
    body = rows[1:]
    assert len(body) == len(_all_events())
    tc = re.compile(r"\d\d:\d\d:\d\d;\d\d" if rate.drop_frame else r"\d\d:\d\d:\d\d:\d\d")
    for name, _description, tc_in, tc_out, duration, kind in body:
        assert kind == "Comment"
        assert name.split(": ", 1)[0] in {"speech", "music", "action"}
        assert all(tc.fullmatch(value) for value in (tc_in, tc_out, duration))
        frames_in, frames_out = map(rate.frames_from_timecode, (tc_in, tc_out))
        assert frames_out - frames_in == rate.frames_from_timecode(duration) >= 1
    starts = [rate.frames_from_timecode(row[2]) for row in body]
    assert starts == [rate.frames_at_ms(ms) for ms in (62_000, 62_000, 600_250, 600_250,
                                                        602_250, 3_601_000)]  # fmt: skip
    assert body[1][1] == "李佳琦（画外音）：姐妹们！这个精华水真的绝了！"
    _check_golden(f"sample.{fps}.premiere.txt", text)


def test_premiere_drop_frame_timecodes_follow_the_wall_clock() -> None:
    """At 29.97 DF a line at 00:10:00.250 is marked 00:10:00;08, not drifting 0.6 s."""
    body = list(csv.reader(io.StringIO(_export("premiere", "29.97")), delimiter="\t"))[1:]
    assert body[2][2] == "00:10:00;08"
    assert body[5][2] == "01:00:01;00"


# --- edl ------------------------------------------------------------------------------------

_EDL_EVENT = re.compile(
    r"(?P<num>\d{3,}) {2}(?P<reel>\S+) +V +C +"
    r"(?P<src_in>\S+) (?P<src_out>\S+) (?P<rec_in>\S+) (?P<rec_out>\S+)"
)
_EDL_NOTE = re.compile(r" \|C:(?P<color>ResolveColor\w+) \|M:(?P<name>[^|]*) \|D:(?P<frames>\d+)")


def _read_marker_edl(text: str, fps: str) -> list[tuple[int, str, str, int]]:
    """A strict reader of Resolve's timeline-marker EDL: (frame, colour, name, frames)."""
    rate = parse_fps(fps)
    lines = text.split("\n")
    assert lines[0].startswith("TITLE: ")
    assert lines[1] == ("FCM: DROP FRAME" if rate.drop_frame else "FCM: NON-DROP FRAME")
    assert lines[2] == ""
    assert text.endswith("\n\n")
    markers = []
    blocks = text[: -len("\n\n")].split("\n\n")[1:]
    for number, block in enumerate(blocks, start=1):
        event_line, note_line = block.split("\n")
        event, note = _EDL_EVENT.fullmatch(event_line), _EDL_NOTE.fullmatch(note_line)
        assert event is not None, event_line
        assert note is not None, note_line
        assert int(event["num"]) == number
        assert event["src_in"] == event["rec_in"]
        assert event["src_out"] == event["rec_out"]
        frame = rate.frames_from_timecode(event["rec_in"])
        assert rate.frames_from_timecode(event["rec_out"]) == frame + 1
        markers.append((frame, note["color"], note["name"], int(note["frames"])))
    return markers


@pytest.mark.parametrize("fps", ["25", "29.97", "23.976"])
def test_edl_reads_back_as_resolve_markers_with_a_colour_per_kind(fps: str) -> None:
    """edl: CMX3600 events with |C:colour |M:name |D:frames notes; one marker per frame."""
    rate = parse_fps(fps)
    markers = _read_marker_edl(_export("edl", fps), fps)
    assert [(colour, name) for _, colour, name, _ in markers] == [
        (EDL_COLORS["music"], "music: 轻柔竖琴泛音"),
        (EDL_COLORS["speech"], "speech: 李佳琦"),
        (EDL_COLORS["action"], "action: 字幕弹出：A/B"),
        (EDL_COLORS["speech"], "speech: 主讲人"),
        (EDL_COLORS["music"], "music: 欢快口哨声"),
        (EDL_COLORS["action"], "action: 手机震动声"),
    ]
    frames = [frame for frame, *_ in markers]
    first = rate.frames_at_ms(62_000)
    # Two events of one line: the second marker moves to the next frame.
    assert frames[:2] == [first, first + 1]
    assert len(set(frames)) == len(frames)
    assert frames[5] == rate.frames_at_ms(3_601_000)
    assert markers[0][3] == rate.frames_at_ms(64_500) - first
    _check_golden(f"sample.{fps}.edl", _export("edl", fps))


# --- fcpxml ---------------------------------------------------------------------------------


def _seconds(value: str) -> Fraction:
    assert re.fullmatch(r"\d+(/\d+)?s", value), value
    return Fraction(value[:-1])


@pytest.mark.parametrize("fps", ["25", "29.97", "23.976"])
def test_fcpxml_parses_with_frame_aligned_rational_markers(fps: str) -> None:
    """fcpxml: version, format frameDuration, a gap holding markers on frame boundaries."""
    rate = parse_fps(fps)
    text = _export("fcpxml", fps)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>')
    root = ET.fromstring(text)
    assert root.tag == "fcpxml"
    assert root.get("version") == "1.10"
    fmt = root.find("resources/format")
    assert fmt is not None
    frame = _seconds(fmt.get("frameDuration", ""))
    assert frame == Fraction(rate.den, rate.num)
    sequence = root.find("library/event/project/sequence")
    assert sequence is not None
    assert sequence.get("format") == fmt.get("id")
    assert sequence.get("tcFormat") == ("DF" if rate.drop_frame else "NDF")
    gap = sequence.find("spine/gap")
    assert gap is not None
    gap_end = _seconds(gap.get("start", "")) + _seconds(gap.get("duration", ""))
    markers = gap.findall("marker")
    assert len(markers) == len(_all_events())
    for marker in markers:
        start, duration = _seconds(marker.get("start", "")), _seconds(marker.get("duration", ""))
        assert (start / frame).denominator == 1
        assert (duration / frame).denominator == 1
        assert duration >= frame
        assert start + duration <= gap_end
    assert [m.get("value") for m in markers][:2] == ["music: 轻柔竖琴泛音", "speech: 李佳琦"]
    assert markers[3].get("note") == "主讲人：<b>x</b> & y --> z"
    assert _seconds(markers[0].get("start", "")) / frame == rate.frames_at_ms(62_000)
    _check_golden(f"sample.{fps}.fcpxml", text)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_format_and_fps_are_config_errors() -> None:
    """A bad --format or --fps names the valid choices."""
    with pytest.raises(ConfigError, match="jsonl"):
        write_events([], "docx", io.StringIO())
    with pytest.raises(ConfigError, match=r"29\.97"):
        write_events([], "jsonl", io.StringIO(), fps="31")


def test_every_format_is_listed() -> None:
    """FORMATS lists the streaming formats first, then subtitles, then editor markers."""
    assert FORMATS == ("jsonl", "csv", "vtt", "srt", "premiere", "edl", "fcpxml")


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_lines_give_a_valid_empty_document(fmt: str) -> None:
    """An empty input still writes each format's header (or nothing for jsonl)."""
    out = io.StringIO(newline="")
    write_events([], fmt, out)
    expected_start = {"jsonl": "", "csv": "stream,", "vtt": "WEBVTT", "srt": "",
                      "premiere": "Marker Name", "edl": "TITLE:", "fcpxml": "<?xml"}  # fmt: skip
    assert out.getvalue().startswith(expected_start[fmt])
    if fmt == "fcpxml":
        assert ET.fromstring(out.getvalue()).find("library/event/project/sequence") is not None
