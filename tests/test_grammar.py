"""The subtitle line grammar: exact spans for every form, and properties on any string."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.grammar import (
    CueSpan,
    OnScreenSpan,
    ParsedLine,
    Span,
    SpeechSpan,
    TextSpan,
    TimestampSpan,
    parse_line,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "cases.jsonl"


def kinds(parsed: ParsedLine) -> list[tuple[str, str]]:
    """(span kind, its main verbatim field) for compact assertions."""
    out: list[tuple[str, str]] = []
    for span in parsed.spans:
        match span:
            case TimestampSpan(value=value):
                out.append(("ts", value))
            case CueSpan(cue=cue):
                out.append(("cue", cue))
            case SpeechSpan(speaker=speaker, status=status, text=text):
                out.append(("speech", f"{speaker}|{status}|{text}"))
            case OnScreenSpan(text=text):
                out.append(("screen", text))
            case TextSpan(text=text):
                out.append(("text", text))
    return out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[00:05:22] hi", [("ts", "00:05:22"), ("text", "hi")]),
        ("[00:05:22.500]", [("ts", "00:05:22.500")]),
        ("[05:22] x", [("ts", "05:22"), ("text", "x")]),
        ("00:05:22,500 --> 00:05:24,000 Hello", [("ts", "00:05:22,500"), ("text", "Hello")]),
        ("【00:01:02】", [("ts", "00:01:02")]),
    ],
)
def test_timestamps(line: str, expected: list[tuple[str, str]]) -> None:
    """Bracketed, short and SRT timestamps are recognised verbatim."""
    assert kinds(parse_line(line)) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[敲门声]", [("cue", "敲门声")]),
        ("【雷声】", [("cue", "雷声")]),
        ("(laughs)", [("cue", "laughs")]),
        ("（敲门声）", [("cue", "敲门声")]),
        ("♪ 轻快的钢琴曲 ♪", [("cue", "轻快的钢琴曲")]),
        ("♪ la la la", [("cue", "la la la")]),
        ("[玻璃爆裂声+警笛由远及近]", [("cue", "玻璃爆裂声"), ("cue", "警笛由远及近")]),
        ("[MUSIC]", [("cue", "MUSIC")]),
    ],
)
def test_cues(line: str, expected: list[tuple[str, str]]) -> None:
    """Every bracket kind makes a cue, and ``+`` splits one bracket into several cues."""
    assert kinds(parse_line(line)) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("李佳琦（画外音）：姐妹们！", [("speech", "李佳琦|画外音|姐妹们！")]),
        ("Bob(OS): hi there", [("speech", "Bob|OS|hi there")]),
        ("旁白：这是一个故事。", [("speech", "旁白||这是一个故事。")]),
        ("女主（对白，颤抖）：门…", [("speech", "女主|对白，颤抖|门…")]),
        ("男主：你好 女主：再见", [("speech", "男主||你好"), ("speech", "女主||再见")]),
        ("JOHN: Where is she?", [("speech", "JOHN||Where is she?")]),
        ("- Where are you? - Home.", [("speech", "||Where are you?"), ("speech", "||Home.")]),
        ("<v Roger Bingham>We are here</v>", [("speech", "Roger Bingham||We are here")]),
        (
            "JOHN: (laughs) Okay.",
            [("speech", "JOHN||"), ("cue", "laughs"), ("speech", "JOHN||Okay.")],
        ),
        (
            "队长（对白）：撤！快撤！ [爆炸声] [悲壮交响乐]",
            [("speech", "队长|对白|撤！快撤！"), ("cue", "爆炸声"), ("cue", "悲壮交响乐")],
        ),
    ],
)
def test_speech(line: str, expected: list[tuple[str, str]]) -> None:
    """Speaker, status and words; a bracket before the colon is the status, not a cue."""
    assert kinds(parse_line(line)) == expected


def test_onscreen_text() -> None:
    """A ``字幕弹出：`` label runs to the end of the line; ``【画面：…】`` is on-screen text."""
    line = "[数据流刷屏声] 字幕弹出：【薛定谔方程】|【贝尔不等式】"
    assert kinds(parse_line(line)) == [
        ("cue", "数据流刷屏声"),
        ("screen", "字幕弹出：【薛定谔方程】|【贝尔不等式】"),
    ]
    assert kinds(parse_line("【画面：门被推开】")) == [("screen", "画面：门被推开")]


@pytest.mark.parametrize(
    "line",
    ["score 2 - 3 now", "Visit http://x.com at 10:30", "(（[【", "[]", "比分3:2"],
)
def test_unplaceable_text_is_kept(line: str) -> None:
    """Text the grammar cannot place is kept verbatim, not dropped."""
    parsed = parse_line(line)
    covered = "".join(line[s.start : s.end] for s in parsed.spans)
    assert covered.replace(" ", "") == line.replace(" ", "")


def test_offsets_point_at_fields() -> None:
    """Speech and cue field offsets slice the verbatim field out of the line."""
    line = "[00:01:18] [急促脚步声由远及近] 女主（对白，颤抖）：门…门锁被撬开了…"
    parsed = parse_line(line)
    cue = parsed.cues[0]
    assert line[cue.cue_start : cue.cue_end] == cue.cue == "急促脚步声由远及近"
    speech = parsed.speech[0]
    assert line[speech.speaker_start : speech.speaker_end] == "女主"
    assert line[speech.status_start : speech.status_end] == "对白，颤抖"
    assert line[speech.text_start : speech.text_end] == "门…门锁被撬开了…"
    assert parsed.timestamp == "00:01:18"


def test_samples_structure() -> None:
    """Every shared sample line yields its gold cues and speech, in order."""
    for row in map(json.loads, SAMPLES.read_text(encoding="utf-8").splitlines()):
        parsed = parse_line(row["text"])
        gold = [
            e["cue"] if e["kind"] != "speech" else (e["speaker"], e["status"], e["text"])
            for e in row["events"]
        ]
        got: list[object] = []
        for span in parsed.spans:
            if isinstance(span, CueSpan | OnScreenSpan):
                got.append(span.cue if isinstance(span, CueSpan) else span.text)
            elif isinstance(span, SpeechSpan):
                got.append((span.speaker, span.status, span.text))
        assert got == gold, row["id"]
        assert parsed.timestamp == row["events"][0]["t"]


BRACKETS = "[]【】()（）♪<>:：+＋-–—|/\\\n\t \x00\x1b"
line_text = st.text(
    alphabet=st.one_of(st.sampled_from(BRACKETS), st.characters(), st.sampled_from("声曲女主OS")),
    max_size=200,
)


def _check(parsed: ParsedLine, line: str) -> None:
    previous_end = 0
    for span in parsed.spans:
        assert 0 <= span.start <= span.end <= len(line)
        assert span.start >= previous_end, "spans overlap or are out of order"
        previous_end = span.end
        _check_fields(span, line)
    covered = [False] * len(line)
    for span in parsed.spans:
        for i in range(span.start, span.end):
            covered[i] = True
    for i, ch in enumerate(line):
        # Only whitespace and the brackets of a bracketed on-screen text may be left out.
        assert covered[i] or ch.isspace() or ch in "【】[]()（）", (i, ch)


def _check_fields(span: Span, line: str) -> None:
    match span:
        case CueSpan():
            assert line[span.cue_start : span.cue_end] == span.cue
            assert span.start <= span.cue_start <= span.cue_end <= span.end
        case SpeechSpan():
            assert line[span.speaker_start : span.speaker_end] == span.speaker
            assert line[span.status_start : span.status_end] == span.status
            assert line[span.text_start : span.text_end] == span.text
        case OnScreenSpan() | TextSpan():
            assert line[span.start : span.end] == span.text
        case TimestampSpan():
            assert span.value in line[span.start : span.end]


@settings(max_examples=300, deadline=None)
@given(line_text)
def test_never_raises_and_spans_are_verbatim(line: str) -> None:
    """On any string: no exception, ordered non-overlapping verbatim spans, nothing dropped."""
    _check(parse_line(line), line)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["[", "【", "(", "（", "♪", "]", "】", ")", "）", "x", "："]),
                max_size=400))  # fmt: skip
def test_unbalanced_brackets(parts: list[str]) -> None:
    """Lines of only brackets, balanced or not, parse without loss."""
    line = "".join(parts)
    _check(parse_line(line), line)


@pytest.mark.parametrize(
    "line",
    [
        ("[敲门声] 女主：你好 " * 60_000)[:1_000_000],
        "[" * 200_000,
        "♪" * 200_000,
        "<v.a A>x" * 25_000,
        "女主：" * 70_000,
        "- " * 100_000,
    ],
    ids=["megabyte", "openers", "notes", "voices", "colons", "dashes"],
)
def test_huge_lines(line: str) -> None:
    """Huge and pathological lines parse in one linear pass without loss."""
    _check(parse_line(line), line)
