"""Reading subtitle files: plain text numbering, SRT/WebVTT/ASS timing, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import InputError
from stream.sources import SourceLine, format_ms, read_subtitle_file


def test_plain_text_keeps_line_numbers(tmp_path: Path) -> None:
    """Blank lines are skipped but numbering follows the file's lines."""
    path = tmp_path / "a.txt"
    path.write_text("\ufeff[敲门声]\n\n小林：谁？\n", encoding="utf-8")
    assert read_subtitle_file(str(path)) == [
        SourceLine(1, "[敲门声]"),
        SourceLine(3, "小林：谁？"),
    ]


def test_srt_timing_and_tags(tmp_path: Path) -> None:
    """SRT cues give timing; formatting tags are removed and cue lines joined."""
    path = tmp_path / "a.srt"
    path.write_text(
        "1\n00:00:01,000 --> 00:00:02,500\n[敲门声] 小林：谁？\n\n"
        "2\n00:01:03,250 --> 00:01:04,000\n<i>hello</i>\nworld\n",
        encoding="utf-8",
    )
    assert read_subtitle_file(path) == [
        SourceLine(1, "[敲门声] 小林：谁？", "00:00:01.000", 1000, 2500),
        SourceLine(2, "hello world", "00:01:03.250", 63250, 64000),
    ]


def test_webvtt_voice_spans_survive(tmp_path: Path) -> None:
    """WebVTT ``<v Speaker>`` spans reach the grammar (pysubs2 alone would drop them)."""
    path = tmp_path / "a.vtt"
    path.write_text(
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<v Roger Bingham>We are here</v>\n",
        encoding="utf-8",
    )
    (line,) = read_subtitle_file(path)
    assert line.text == "<v Roger Bingham>We are here</v>"
    assert line.start_ms == 1000


def test_ass_override_tags(tmp_path: Path) -> None:
    """ASS override tags and ``\\N`` breaks are handled."""
    path = tmp_path / "a.ass"
    path.write_text(
        "[Script Info]\nScriptType: v4.00+\n\n[Events]\n"
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
        "Dialogue: 0,0:00:05.00,0:00:06.00,Default,,0,0,0,,{\\b1}旁白{\\b0}：你好\\N世界\n",
        encoding="utf-8",
    )
    assert read_subtitle_file(path) == [
        SourceLine(1, "旁白：你好 世界", "00:00:05.000", 5000, 6000)
    ]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".txt", "no such file"),
        (b"\xff\xfe\x00bad", ".txt", "not UTF-8"),
        (b"1\nnot a time\nxx\n", ".ass", "no ASS cues"),
    ],
)
def test_clear_errors(tmp_path: Path, content: bytes | None, suffix: str, message: str) -> None:
    """Missing, undecodable and malformed files raise InputError naming the file."""
    path = tmp_path / f"x{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_subtitle_file(path)
    assert str(path) in str(info.value)


def test_format_ms() -> None:
    """Milliseconds format as HH:MM:SS.mmm."""
    assert format_ms(3_723_004) == "01:02:03.004"
