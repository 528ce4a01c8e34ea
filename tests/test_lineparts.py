"""The SeqGPT tagger's view of a line (stream.grammar underneath): verbatim parts in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.lineparts import LinePart, line_parts


def test_timestamp_cue_and_speech_with_status() -> None:
    """`[t] [cue] speaker（status）：text` gives the stamp, the cue and the utterance verbatim."""
    line = "[00:01:18] [急促脚步声由远及近] 女主（对白，颤抖）：门…门锁被撬开了…"
    stamp, parts = line_parts(line)
    assert stamp == "00:01:18"
    assert parts == [
        LinePart("cue", 12, 21, "急促脚步声由远及近"),
        LinePart("speech", 33, 42, "门…门锁被撬开了…", speaker="女主", status="对白，颤抖"),
    ]


def test_joined_cues_music_notes_and_parenthesised_cues() -> None:
    """`+` splits a cue; ♪ … ♪ and （…） not followed by a colon are cues too."""
    assert [p.text for p in line_parts("[00:01:22] [玻璃爆裂声+警笛由远及近]")[1]] == [
        "玻璃爆裂声",
        "警笛由远及近",
    ]
    _, parts = line_parts("♪ 轻快的钢琴曲 ♪ 旁白：这是一个关于勇气的故事。")
    assert [(p.kind, p.text, p.speaker) for p in parts] == [
        ("cue", "轻快的钢琴曲", ""),
        ("speech", "这是一个关于勇气的故事。", "旁白"),
    ]
    _, parts = line_parts("（敲门声）小林（OS）：这么晚了，会是谁？")
    assert [(p.kind, p.text, p.status) for p in parts] == [
        ("cue", "敲门声", ""),
        ("speech", "这么晚了，会是谁？", "OS"),
    ]


def test_speech_before_cues_and_on_screen_text() -> None:
    """Speech ends at the next cue; `字幕弹出：…` is on-screen text, not a speaker."""
    _, parts = line_parts("队长（对白）：撤！快撤！ [爆炸声]")
    assert [(p.kind, p.text) for p in parts] == [("speech", "撤！快撤！"), ("cue", "爆炸声")]
    _, parts = line_parts("[数据流刷屏声] 字幕弹出：【薛定谔方程】|【EPR佯谬】")
    assert [p.kind for p in parts] == ["cue", "screen"]
    assert parts[1].text == "字幕弹出：【薛定谔方程】|【EPR佯谬】"


def test_text_without_structure_is_left_for_the_model() -> None:
    """Text with no speaker colon and no brackets is one `text` part; no stamp, no guess."""
    assert line_parts("旁白 这是一个关于勇气的故事") == (
        None,
        [LinePart("text", 0, 14, "旁白 这是一个关于勇气的故事")],
    )


@given(st.text(alphabet=st.sampled_from("[]（）♪：:+ 声音乐a1"), max_size=30))
def test_every_part_is_a_verbatim_span_in_order(line: str) -> None:
    """Whatever the line, each part is line[start:end] and parts do not overlap."""
    _, parts = line_parts(line)
    end = 0
    for part in parts:
        assert line[part.start : part.end] == part.text
        assert part.start >= end
        end = part.end
