"""A subtitle line's parts as the SeqGPT tagger needs them: speech, cues, on-screen text, rest.

Pure. A thin view of :func:`stream.grammar.parse_line`, the project's authoritative line grammar,
so the rules and SeqGPT backends agree on structure. Every part is a verbatim span of the line
with its offsets (``line[start:end] == text``): the utterance of a speech span (the speaker and
status travel as fields), the inside of a cue's brackets, the on-screen text, the unplaced text.
The tagger publishes speech as is, asks the model about cues, and extracts from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stream.grammar import CueSpan, OnScreenSpan, SpeechSpan, TextSpan, parse_line

__all__ = ["LinePart", "line_parts", "screen_action"]

PartKind = Literal["speech", "cue", "screen", "text"]


@dataclass(frozen=True, slots=True)
class LinePart:
    """One verbatim part of a line.

    Attributes:
        kind: ``speech``, ``cue`` (heard: music or a sound), ``screen`` (on-screen text) or
            ``text`` (anything the grammar could not place).
        start: Offset of ``text`` in the line.
        end: End offset of ``text``.
        text: The utterance, the cue's inner text, the on-screen text or the unplaced text.
        speaker: The speaker (speech only; empty for a dialogue dash).
        status: The part in parentheses after the speaker, verbatim, may be empty.
    """

    kind: PartKind
    start: int
    end: int
    text: str
    speaker: str = ""
    status: str = ""


def line_parts(line: str) -> tuple[str | None, list[LinePart]]:
    """Parse a line into its first timestamp and its parts, in line order.

    Speech without words (``队长（对白）：`` alone) is no part: there is nothing to publish.

    Returns:
        ``(timestamp or None, parts)``.
    """
    parsed = parse_line(line)
    parts: list[LinePart] = []
    for span in parsed.spans:
        if isinstance(span, SpeechSpan):
            if span.text:
                parts.append(
                    LinePart(
                        "speech",
                        span.text_start,
                        span.text_end,
                        span.text,
                        speaker=span.speaker,
                        status=span.status,
                    )
                )
        elif isinstance(span, CueSpan):
            parts.append(LinePart("cue", span.cue_start, span.cue_end, span.cue))
        elif isinstance(span, OnScreenSpan):
            parts.append(LinePart("screen", span.start, span.end, span.text))
        elif isinstance(span, TextSpan):
            parts.append(LinePart("text", span.start, span.end, span.text))
    return parsed.timestamp, parts


def screen_action(text: str) -> str:
    """What on-screen text implies: its label (``字幕弹出`` in ``字幕弹出：…``), else ``画面文字``.

    The rules backend's policy (stream.rules), so both backends report on-screen text alike.
    """
    for colon in ("：", ":"):
        label, found, _ = text.partition(colon)
        if found and 0 < len(label.strip()) <= 8:
            return label.strip()
    return "画面文字"
