"""SeqGPT prompt bytes, label chunking, context selection and the incremental output parser."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from engine.prompts import (
    CLASSIFY,
    EXTRACT,
    Answer,
    AnswerParser,
    IncrementalDetokenizer,
    build_prompt,
    chunk_labels,
    compose_input,
    extraction_prompts,
    parse_answers,
    select_context,
    stream_answers,
)


def _byte_tokenizer() -> Tokenizer:
    """A byte-level BPE with no merges: every CJK character becomes three tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_prompt_bytes_are_the_authors_format() -> None:
    """The prompt is 输入/task/输出 with ASCII colon+space, \\n breaks, ， joins, [GEN] last."""
    prompt = build_prompt("[滴答声] 助理：老师", CLASSIFY, ["音乐", "动作"])
    expected = (
        "\u8f93\u5165: [\u6ef4\u7b54\u58f0] \u52a9\u7406\uff1a\u8001\u5e08\n"
        "\u5206\u7c7b: \u97f3\u4e50\uff0c\u52a8\u4f5c\n"
        "\u8f93\u51fa: [GEN]"
    )
    assert prompt.encode("utf-8") == expected.encode("utf-8")
    assert not prompt.endswith("\n")


def test_ascii_commas_in_labels_become_full_width() -> None:
    """An ASCII comma inside a label is converted to ，, as the authors do."""
    prompt = build_prompt("x", EXTRACT, ["说话人, 旁白", "台词"])
    assert prompt.split("\n")[1] == "抽取: 说话人， 旁白，台词"


def test_newlines_in_the_input_cannot_forge_a_section() -> None:
    """A CR/LF inside the text becomes a space, so the prompt keeps exactly three lines."""
    prompt = build_prompt("a\nb\r\nc", CLASSIFY, ["音乐"])
    assert prompt.count("\n") == 2
    assert prompt.startswith("输入: a b  c\n")


@pytest.mark.parametrize(
    ("task", "labels"), [("翻译", ["a"]), (CLASSIFY, []), (CLASSIFY, ["a:b"]), (EXTRACT, [" "])]
)
def test_bad_questions_are_rejected(task: str, labels: list[str]) -> None:
    """Unknown tasks, empty label sets and labels with colons raise ValueError."""
    with pytest.raises(ValueError, match=r"task|label"):
        build_prompt("x", task, labels)


@pytest.mark.parametrize("count", [1, 5, 6, 7, 12, 13, 20])
def test_label_chunks_match_the_authors_array_split(count: int) -> None:
    """Chunks are numpy.array_split(labels, ceil(n/6)): near-equal, larger first, at most 6."""
    labels = [f"l{i}" for i in range(count)]
    expected = [tuple(str(x) for x in part) for part in np.array_split(labels, -(-count // 6))]
    assert chunk_labels(labels) == expected
    assert max(len(chunk) for chunk in chunk_labels(labels)) <= 6


def test_extraction_prompts_one_per_chunk() -> None:
    """Seven labels give two prompts, each listing its own chunk."""
    labels = ["说话人", "台词", "音乐", "动作", "地点", "时间", "人物"]
    prompts = extraction_prompts("x", labels)
    assert [chunk for chunk, _ in prompts] == [tuple(labels[:4]), tuple(labels[4:])]
    assert prompts[1][1] == "输入: x\n抽取: 地点，时间，人物\n输出: [GEN]"


def test_parser_reads_labels_spans_tabs_and_none() -> None:
    """Lines split on the first colon (ASCII or full-width), spans on tabs, None dropped."""
    text = "说话人: 助理\n台词: 老师：看\t变蓝了\n音乐: None\n动作：敲门\n\n音乐"
    assert parse_answers(text) == [
        Answer("说话人", ("助理",)),
        Answer("台词", ("老师：看", "变蓝了")),
        Answer("音乐", ()),
        Answer("动作", ("敲门",)),
        Answer("音乐", ()),
    ]


def test_parser_emits_each_line_when_its_newline_arrives() -> None:
    """Fed one character at a time, an answer appears exactly with its line's newline."""
    parser = AnswerParser()
    seen: list[tuple[int, Answer]] = []
    text = "台词: 喂？\n动作: 敲门"
    for position, char in enumerate(text):
        seen.extend((position, answer) for answer in parser.feed(char))
    assert seen == [(text.index("\n"), Answer("台词", ("喂？",)))]
    assert parser.close() == [Answer("动作", ("敲门",))]
    assert parser.close() == []


def test_detokenizer_never_emits_half_a_character() -> None:
    """Byte tokens of CJK text come out as whole characters, concatenating to the full text."""
    tokenizer = _byte_tokenizer()
    text = "台词: 门…门锁被撬开了\n音乐: None"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)  # the test is only meaningful if characters are split
    detokenizer = IncrementalDetokenizer(tokenizer.decode)
    pieces = [detokenizer.feed([token]) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + detokenizer.close() == text
    assert sum(1 for piece in pieces if piece) == len(text)


def test_streamed_answers_arrive_before_generation_ends() -> None:
    """stream_answers yields the first entry while the generator still has tokens to give."""
    tokenizer = _byte_tokenizer()
    text = "说话人: 女主\n台词: 他骗了我三年…\n动作: None"
    ids = tokenizer.encode(text).ids
    consumed = 0

    def steps() -> Iterator[list[int]]:
        nonlocal consumed
        for token in ids:
            consumed += 1
            yield [token]

    arrivals = [(consumed, answer) for answer in stream_answers(steps(), tokenizer.decode)]
    first_line_tokens = len(tokenizer.encode("说话人: 女主\n").ids)
    assert arrivals[0] == (first_line_tokens, Answer("说话人", ("女主",)))
    assert arrivals[1][0] < len(ids)
    assert [answer for _, answer in arrivals] == parse_answers(text)


def test_context_period_keeps_consecutive_prompts_prefix_stable() -> None:
    """Within one period, each line's prompt starts with the previous prompt's context+line."""
    lines = [f"[00:00:{i:02d}] 第{i}句台词" for i in range(12)]
    period, window = 4, 4
    inputs = []
    for seq, line in enumerate(lines):
        context = select_context(lines[max(0, seq - window) : seq], seq, period)
        assert len(context) == min(seq, 1 + seq % period)
        inputs.append(compose_input(context, line))
    for seq in range(1, len(lines)):
        shares = inputs[seq].startswith(inputs[seq - 1] + "\t")
        assert shares == (seq % period != 0)


def test_context_period_zero_keeps_the_whole_window() -> None:
    """Period 0 gives every earlier line the service passed."""
    assert select_context(("a", "b", "c"), 7, 0) == ("a", "b", "c")


@given(
    context=st.lists(st.text(max_size=8), max_size=4),
    line=st.text(min_size=1, max_size=12),
    focus=st.one_of(st.none(), st.text(max_size=6)),
)
def test_composed_input_has_one_segment_per_part(
    context: list[str], line: str, focus: str | None
) -> None:
    """Tabs or newlines inside parts never add segments: the line is always findable."""
    composed = compose_input(context, line, focus)
    segments = composed.split("\t")
    assert len(segments) == len(context) + 1 + (focus is not None)
    assert "\n" not in composed


@given(
    text=st.text(alphabet=st.sampled_from("台词说话人: ：\t\nNone音乐ab"), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_parsing_in_pieces_equals_parsing_whole(text: str, cuts: list[int]) -> None:
    """However the output is split into pieces, the answers are those of the whole text."""
    parser = AnswerParser()
    answers: list[Answer] = []
    previous = 0
    for cut in sorted({min(c, len(text)) for c in cuts}):
        answers += parser.feed(text[previous:cut])
        previous = cut
    answers += parser.feed(text[previous:])
    assert answers + parser.close() == parse_answers(text)
