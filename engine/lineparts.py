"""A subtitle line's parts as the SeqGPT tagger needs them: speech, cues, on-screen text, rest.

Pure. Every part is a verbatim span of the line with its offsets (``line[start:end] == text``).
The tagger publishes speech as is, asks the model about cues, and extracts from the rest.

Interim: this is a small reader of the shapes in /work/shared/samples (timestamps, ``[…]``,
``（…）`` and ``♪ … ♪`` cues, ``+``-joined cues, ``speaker（status）：text``, ``字幕…：`` on-screen
text). The project's authoritative line grammar is stream.grammar; when it lands this module
becomes a thin mapping from its ``ParsedLine`` so both taggers agree on structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["LinePart", "line_parts"]

PartKind = Literal["speech", "cue", "screen", "text"]

_TIMESTAMP: Final = re.compile(r"\s*\[(\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d{1,3})?)\]")
_CUE: Final = re.compile(r"\[([^\[\]]*)\]|♪([^♪]*)♪|（([^（）：:]*)）(?!\s*[：:])")
_SPEAKER: Final = re.compile(
    r"(?P<speaker>[^\s\[\]（）：:♪]{1,24})(?:（(?P<status>[^（）]*)）)?\s*[：:]\s*"
)
_SCREEN_SPEAKERS: Final = ("字幕", "屏幕", "弹幕", "画面", "标题", "文字")
_CUE_JOINER: Final = "+"


@dataclass(frozen=True, slots=True)
class LinePart:
    """One verbatim part of a line.

    Attributes:
        kind: ``speech``, ``cue`` (heard: music or a sound), ``screen`` (on-screen text) or
            ``text`` (anything the reader could not place).
        start: Offset of ``text`` in the line.
        end: End offset of ``text``.
        text: The utterance, the cue's inner text, the on-screen text or the unplaced text.
        speaker: The speaker (speech only).
        status: The part in parentheses after the speaker, verbatim, may be empty.
    """

    kind: PartKind
    start: int
    end: int
    text: str
    speaker: str = ""
    status: str = ""


def _trimmed(line: str, start: int, end: int) -> tuple[int, int]:
    while start < end and line[start].isspace():
        start += 1
    while end > start and line[end - 1].isspace():
        end -= 1
    return start, end


def _cue_parts(line: str, start: int, end: int) -> list[LinePart]:
    """A bracketed cue's inner text, split on ``+`` into separate cues."""
    parts: list[LinePart] = []
    position = start
    for piece in line[start:end].split(_CUE_JOINER):
        a, b = _trimmed(line, position, position + len(piece))
        if a < b:
            parts.append(LinePart("cue", a, b, line[a:b]))
        position += len(piece) + len(_CUE_JOINER)
    return parts


def _free_parts(line: str, start: int, end: int) -> list[LinePart]:
    """Speech (``speaker（status）：text``), on-screen text or unplaced text between cues."""
    a, b = _trimmed(line, start, end)
    if a >= b:
        return []
    match = _SPEAKER.match(line, a, b)
    if match is None:
        return [LinePart("text", a, b, line[a:b])]
    speaker = match.group("speaker")
    if speaker.startswith(_SCREEN_SPEAKERS):
        return [LinePart("screen", a, b, line[a:b])]
    text_start, text_end = _trimmed(line, match.end(), b)
    if text_start >= text_end:
        return [LinePart("text", a, b, line[a:b])]
    return [
        LinePart(
            "speech",
            text_start,
            text_end,
            line[text_start:text_end],
            speaker=speaker,
            status=match.group("status") or "",
        )
    ]


def line_parts(line: str) -> tuple[str | None, list[LinePart]]:
    """Split a line into its timestamp and parts, in line order.

    Returns:
        ``(timestamp or None, parts)``.
    """
    timestamp = None
    position = 0
    stamp = _TIMESTAMP.match(line)
    if stamp is not None:
        timestamp = stamp.group(1)
        position = stamp.end()
    parts: list[LinePart] = []
    for cue in _CUE.finditer(line, position):
        parts += _free_parts(line, position, cue.start())
        group = next(g for g in (1, 2, 3) if cue.group(g) is not None)
        parts += _cue_parts(line, cue.start(group), cue.end(group))
        position = cue.end()
    parts += _free_parts(line, position, len(line))
    return timestamp, parts
