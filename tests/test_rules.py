"""The rules tagger: every sample line exactly, unseen lines of the same shapes, the policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.base import LineJob, Tagger
from stream.grammar import parse_line
from stream.rules import CONFIDENCE, CueVerdict, RulesTagger, classify_cue, events_for_line
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "cases.jsonl"


def tag_one(text: str, t: str | None = None) -> list[Event]:
    """All events of one line from the rules backend."""
    return [event for _, event in RulesTagger().tag([LineJob("s", 1, text, t)])]


def _agrees(gold: dict[str, Any], event: Event) -> bool:
    if gold["t"] != event.t:
        return False
    match event:
        case SpeechEvent():
            return gold["kind"] == "speech" and (gold["speaker"], gold["status"], gold["text"]) == (
                event.speaker,
                event.status,
                event.text,
            )
        case MusicEvent() | ActionEvent():
            kind = "music" if isinstance(event, MusicEvent) else "action"
            return gold["kind"] in (kind, "either") and gold["cue"] == event.cue


@pytest.mark.parametrize(
    "row",
    [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines()],
    ids=lambda row: row["id"],
)
def test_sample_lines(row: dict[str, Any]) -> None:
    """Each shared sample line gives exactly its gold events, in order."""
    events = tag_one(row["text"])
    assert len(events) == len(row["events"])
    for gold, event in zip(row["events"], events, strict=True):
        assert _agrees(gold, event), (gold, event)
        assert row["text"][event.start : event.end] in (
            getattr(event, "cue", None),
            getattr(event, "text", None),
        )


@pytest.mark.parametrize(
    ("cue", "kind", "detail", "mood"),
    [
        ("激昂的鼓点", "music", "鼓点", "激昂"),
        ("忧伤的大提琴独奏", "music", "大提琴", "忧伤"),
        ("悠扬的笛子", "music", "笛子", "悠扬"),
        ("紧张的弦乐", "music", "弦乐", "紧张"),
        ("upbeat piano music", "music", "钢琴", "欢快"),
        ("MUSIC", "music", "背景音乐", ""),
        ("training montage music", "music", "背景音乐", ""),
        ("关门声", "action", "关门", ""),
        ("远处传来狗叫", "action", "狗叫", ""),
        ("高跟鞋声渐近", "action", "走动", ""),
        ("雷声", "action", "打雷", ""),
        ("laughs", "action", "笑", ""),
        ("door slams", "action", "开关门", ""),
        ("刹车声", "action", "刹车", ""),
        ("咔嚓声", "action", "咔嚓", ""),
    ],
)
def test_unseen_cues(cue: str, kind: str, detail: str, mood: str) -> None:
    """Cues that are not in the samples are decided by the lexicon rules, not a lookup."""
    verdict = classify_cue(cue)
    assert verdict.kind == kind
    assert (verdict.type if kind == "music" else verdict.action) == detail
    assert verdict.mood == mood


def test_ambient_sounds_are_actions() -> None:
    """Policy: sirens, rain, crowds and UI beeps imply something in the picture."""
    for cue in ("警笛声", "雨声", "人群喧哗", "提示音", "键盘敲击声", "sirens", "rain"):
        assert classify_cue(cue).kind == "action", cue


def test_lyrics_bracket_is_music() -> None:
    """A ``♪ … ♪`` cue is music whatever its words are."""
    events = tag_one("♪ 我和我的祖国 ♪")
    assert isinstance(events[0], MusicEvent)
    assert events[0].type == "歌曲"


def test_fallback_confidences() -> None:
    """Lexicon matches are confident; the suffix and mood rules are marked as weaker."""
    assert classify_cue("敲门声").confidence == CONFIDENCE["strong"]
    assert classify_cue("咔嚓声").confidence == CONFIDENCE["fallback"]
    assert classify_cue("神秘氛围") == CueVerdict("music", "配乐", "神秘", "", 0.5)


def test_timestamp_falls_back_to_sender_time() -> None:
    """A line without its own timestamp carries the sender's ``t``."""
    assert {e.t for e in tag_one("[敲门声]", t="00:00:09.000")} == {"00:00:09.000"}
    assert {e.t for e in tag_one("[00:00:01] [敲门声]", t="00:00:09.000")} == {"00:00:01"}


def test_unplaced_text_is_unknown_speaker() -> None:
    """Plain words are speech by an unknown speaker; punctuation alone makes no event."""
    events = tag_one("Hello there")
    assert events == [SpeechEvent("s", 1, None, 0, 11, 0.5, "rules", "", "", "Hello there")]
    assert tag_one("……") == []


def test_events_for_line_needs_one_verdict_per_cue() -> None:
    """Passing the wrong number of verdicts is a programming error, reported plainly."""
    parsed = parse_line("[a][b]")
    with pytest.raises(ValueError, match="1 verdicts for 2 cues"):
        events_for_line(LineJob("s", 1, "[a][b]"), parsed, [classify_cue("a")], backend="x")


def test_tagger_is_lazy_and_ordered() -> None:
    """Nothing runs before iteration; line i's events come before line i+1's."""
    tagger: Tagger = RulesTagger()
    jobs = [LineJob("a", 1, "[敲门声] 小林：谁？"), LineJob("b", 7, "[钢琴曲]")]
    iterator = tagger.tag(jobs)
    pairs = list(iterator)
    assert [i for i, _ in pairs] == [0, 0, 1]
    assert [(e.stream, e.seq) for _, e in pairs] == [("a", 1), ("a", 1), ("b", 7)]
    assert tagger.name == "rules"
