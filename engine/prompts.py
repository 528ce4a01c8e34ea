"""SeqGPT prompt bytes, the questions the tagger asks, and the incremental output parser.

Pure: no model, no tokenizer import, no clock. The prompt format is the authors' own
(Alibaba-NLP/SeqGPT ``inference.py``), byte for byte, because they warn that changing the
instruction harms quality::

    输入: {text}\\n{task}: {labels}\\n输出: [GEN]

``{task}`` is ``分类`` (classify) or ``抽取`` (extract); labels are joined by the full-width comma
``，`` (ASCII commas are converted to it, as the authors do with user-typed label sets), and an
extraction label set is split into chunks of at most six labels the way the authors split it
(``numpy.array_split`` into ``ceil(n / 6)`` near-equal chunks, larger chunks first).

Extraction output is one line per label, ``label: span`` with further spans separated by a tab
and ``None`` for a label without a span. :class:`AnswerParser` reads that output as it is
generated and hands back each ``label: spans`` line the moment its newline arrives, so the
tagger can publish an event before generation ends; :class:`IncrementalDetokenizer` turns
generated token ids into text without ever emitting half of a UTF-8 character that byte-level
BPE split across tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, NamedTuple

__all__ = [
    "ACTION_LABELS",
    "CLASSIFY",
    "CUE_KIND_LABELS",
    "EXTRACT",
    "EXTRACT_CHUNK",
    "GEN_TOKEN",
    "INPUT_SEPARATOR",
    "LINE_LABELS",
    "MUSIC_MOOD_LABELS",
    "MUSIC_TYPE_LABELS",
    "Answer",
    "AnswerParser",
    "IncrementalDetokenizer",
    "build_prompt",
    "chunk_labels",
    "compose_input",
    "extraction_prompts",
    "normalize_label",
    "parse_answers",
    "select_context",
    "stream_answers",
]

GEN_TOKEN: Final = "[GEN]"
CLASSIFY: Final = "分类"
EXTRACT: Final = "抽取"
# The authors' default extraction chunk: "smaller N results higher recall".
EXTRACT_CHUNK: Final = 6
# Segments of one input (earlier lines, the line, the cue asked about) are tab-separated: the
# tab is how SeqGPT's training data joins the two sentences of a pair task, and unlike a
# newline it cannot be mistaken for the prompt's own `\n{task}:` section break.
INPUT_SEPARATOR: Final = "\t"

# The questions the tagger asks (docs/seqgpt-tagging.md explains the choice). Closed sets are
# answered by label-constrained scoring, so their size costs prefill, never generated tokens.
# Music vs sound effect: 音效 (a sound effect) is the natural opposite of 音乐 for a bracketed
# cue; its events are the schema's "action" kind.
CUE_KIND_LABELS: Final = ("音乐", "音效")
MUSIC_TYPE_LABELS: Final = (
    "钢琴",
    "吉他",
    "竖琴",
    "提琴",
    "交响乐",
    "电子乐",
    "鼓点",
    "口哨",
    "人声",
    "其他",
)
MUSIC_MOOD_LABELS: Final = (
    "欢快",
    "轻柔",
    "温暖",
    "悬疑",
    "紧张",
    "悲伤",
    "悲壮",
    "激昂",
    "科技感",
    "平静",
)
# The physical event a sound or on-screen cue implies.
ACTION_LABELS: Final = (
    "敲门",
    "开关门",
    "脚步",
    "爆炸",
    "破碎",
    "撞击",
    "打斗",
    "枪击",
    "手机来电",
    "按键",
    "计时提示",
    "摇晃",
    "倒水",
    "鼓掌",
    "警报",
    "天气",
    "交通工具",
    "字幕弹出",
    "其他",
)
# Text the grammar could not place: four labels, one chunk, one generated answer line each.
LINE_LABELS: Final = ("说话人", "台词", "音乐", "音效")

_FULL_WIDTH_COMMA: Final = "，"
_NONE: Final = "None"
_REPLACEMENT_CHAR: Final = "\ufffd"


def normalize_label(label: str) -> str:
    """A label as it appears in the prompt: trimmed, ASCII commas made full-width.

    Raises:
        ValueError: The label is empty, or holds a newline or colon (it would break the prompt
            or the ``label: span`` output lines).
    """
    cleaned = label.strip().replace(",", _FULL_WIDTH_COMMA)
    if not cleaned or any(ch in cleaned for ch in "\n\r:："):
        raise ValueError(f"label {label!r} cannot go in a SeqGPT prompt")
    return cleaned


def _one_line(text: str) -> str:
    # A newline inside the input would open a new prompt section; subtitle lines have none, but
    # a sender's stray CR/LF must not be able to forge one.
    return " ".join(text.replace("\r", "\n").split("\n"))


def build_prompt(text: str, task: str, labels: Sequence[str]) -> str:
    """The exact prompt for one question.

    Args:
        text: The input text (already composed, see :func:`compose_input`); newlines inside it
            become spaces.
        task: :data:`CLASSIFY` or :data:`EXTRACT`.
        labels: The label set, in order.

    Returns:
        ``输入: {text}\\n{task}: {labels}\\n输出: [GEN]`` with labels joined by ``，``.

    Raises:
        ValueError: Unknown task, empty label set, or a label that cannot be put in a prompt.
    """
    if task not in (CLASSIFY, EXTRACT):
        raise ValueError(f"task must be {CLASSIFY!r} or {EXTRACT!r}, not {task!r}")
    if not labels:
        raise ValueError("a SeqGPT prompt needs at least one label")
    joined = _FULL_WIDTH_COMMA.join(normalize_label(label) for label in labels)
    return f"输入: {_one_line(text)}\n{task}: {joined}\n输出: {GEN_TOKEN}"


def chunk_labels(labels: Sequence[str], size: int = EXTRACT_CHUNK) -> list[tuple[str, ...]]:
    """Split a label set the way the authors do: ``ceil(n / size)`` near-equal chunks.

    Seven labels become chunks of 4 and 3, not 6 and 1 (``numpy.array_split`` semantics), so no
    chunk is a lonely label that the model answers with less context.

    Raises:
        ValueError: ``size`` is not positive.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    if not labels:
        return []
    count = math.ceil(len(labels) / size)
    base, extra = divmod(len(labels), count)
    chunks: list[tuple[str, ...]] = []
    start = 0
    for index in range(count):
        stop = start + base + (1 if index < extra else 0)
        chunks.append(tuple(labels[start:stop]))
        start = stop
    return chunks


def extraction_prompts(
    text: str, labels: Sequence[str], size: int = EXTRACT_CHUNK
) -> list[tuple[tuple[str, ...], str]]:
    """One ``抽取`` prompt per label chunk, each with the labels it asks for."""
    return [(chunk, build_prompt(text, EXTRACT, chunk)) for chunk in chunk_labels(labels, size)]


def select_context(context: Sequence[str], seq: int, period: int) -> tuple[str, ...]:
    """The earlier lines to put in a line's prompt, chosen so consecutive prompts share a prefix.

    With ``period`` p > 0, line ``seq`` keeps its last ``1 + seq % p`` earlier lines: the first
    context line stays the same for p consecutive lines of a stream, so each prompt starts with
    the previous prompt's text and the engine can reuse that prefix's KV cache. The price is a
    context of 1..p lines instead of always p. ``period`` 0 keeps the whole window (longest
    context, but the oldest line changes every time the window slides, so no prefix is shared).

    Args:
        context: The stream's earlier lines, oldest first.
        seq: The line's sequence number in its stream.
        period: The prefix-stability period, 0 to disable.

    Returns:
        The chosen lines, oldest first (fewer when the window holds fewer).
    """
    if period <= 0:
        return tuple(context)
    keep = 1 + seq % period
    return tuple(context[-keep:]) if context else ()


def compose_input(context: Sequence[str], line: str, focus: str | None = None) -> str:
    """The ``输入`` text: earlier lines, the line, and optionally the part of it asked about.

    Segments are tab-separated, earlier lines first, so the line to tag is always the last
    segment (or the one before the ``focus`` cue); keeping the history in front is what lets
    consecutive prompts of a stream share a prefix.
    """
    segments = [*context, line]
    if focus is not None:
        segments.append(focus)
    return INPUT_SEPARATOR.join(
        _one_line(segment).replace(INPUT_SEPARATOR, " ") for segment in segments
    )


class Answer(NamedTuple):
    """One output line of SeqGPT: a label and its spans (``None`` dropped, maybe none left)."""

    label: str
    spans: tuple[str, ...]


def _parse_line(line: str) -> Answer | None:
    line = line.strip()
    if not line:
        return None
    # Split on the first colon, ASCII or full-width: SeqGPT writes "label: span", but a
    # full-width colon before the first ASCII one is the label's end as well.
    cut = min((pos for pos in (line.find(":"), line.find("：")) if pos >= 0), default=-1)
    if cut < 0:
        # A classification answer is the bare label.
        return Answer(line, ())
    label = line[:cut].strip()
    spans = tuple(
        span
        for span in (part.strip() for part in line[cut + 1 :].split("\t"))
        if span and span != _NONE
    )
    return Answer(label, spans)


class AnswerParser:
    """Incremental parser of SeqGPT output text.

    Feed decoded text in pieces of any size; :meth:`feed` returns the answers whose line
    became complete (ended by ``\\n``) with that piece, :meth:`close` the last, unterminated one
    when generation ends. Blank lines are skipped.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, piece: str) -> list[Answer]:
        """Add generated text; return the answers completed by it, in order."""
        self._pending += piece
        if "\n" not in piece:
            return []
        *complete, self._pending = self._pending.split("\n")
        return [answer for answer in map(_parse_line, complete) if answer is not None]

    def close(self) -> list[Answer]:
        """End of generation: the answer on the last line, if any."""
        answer = _parse_line(self._pending)
        self._pending = ""
        return [] if answer is None else [answer]


def parse_answers(text: str) -> list[Answer]:
    """Parse a complete SeqGPT output."""
    parser = AnswerParser()
    return [*parser.feed(text), *parser.close()]


class IncrementalDetokenizer:
    """Token ids in, newly completed text out, never half a character.

    Byte-level BPE can split one UTF-8 character across tokens; decoding the tokens one by one
    would print replacement characters. This decodes the cumulative ids and returns only the
    text beyond what it already returned, holding back a trailing incomplete character until
    the token that completes it arrives.

    Args:
        decode: Turns a list of token ids into text (e.g. ``tokenizers.Tokenizer.decode``).
    """

    __slots__ = ("_decode", "_emitted", "_ids")

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = 0

    def feed(self, ids: Iterable[int]) -> str:
        """Add generated token ids; return the text they complete (maybe empty)."""
        self._ids.extend(ids)
        text = self._decode(self._ids)
        stable = len(text.rstrip(_REPLACEMENT_CHAR))
        new = text[self._emitted : stable]
        self._emitted = max(self._emitted, stable)
        return new

    def close(self) -> str:
        """End of generation: whatever is left, replacement characters included."""
        text = self._decode(self._ids)
        rest = text[self._emitted :]
        self._emitted = len(text)
        return rest


def stream_answers(
    steps: Iterable[Sequence[int]], decode: Callable[[list[int]], str]
) -> Iterator[Answer]:
    """Answers from a stream of generated token-id chunks, each as soon as its line ends."""
    detokenizer = IncrementalDetokenizer(decode)
    parser = AnswerParser()
    for ids in steps:
        yield from parser.feed(detokenizer.feed(ids))
    yield from parser.feed(detokenizer.close())
    yield from parser.close()
