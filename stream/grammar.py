"""The subtitle line grammar: one line in, verbatim spans with offsets out.

Pure: no I/O, no clocks. :func:`parse_line` never raises, and every span it returns is a
verbatim slice of its input (``line[span.start:span.end]``). What it cannot place is kept as a
:class:`TextSpan`, never dropped.

Recognised, left to right:

- timestamps: ``[00:05:22]``, ``[00:05:22.500]``, ``[05:22]``, ``【00:05:22】``, bare
  ``00:05:22,500`` (SRT, also ``A --> B``);
- cues: ``[...]``, ``【...】``, ``(...)``, ``（...）``, ``♪ ... ♪`` (an unclosed ``♪`` runs to
  the end of the line, as English lyric captions do); ``+`` inside one bracket pair separates
  cues;
- speech: ``speaker（status）：words``, ``speaker(status): words``, ``speaker：words``,
  ``NAME: words``, ``- words`` (a dialogue dash), WebVTT ``<v Speaker>words</v>``; several
  speakers on one line when each starts after whitespace or sentence-ending punctuation; a
  bracket right after a speaker name and before the colon is the speaker's status, not a cue;
- on-screen text: a label such as ``字幕弹出：`` / ``画面：`` runs to the end of the line, and a
  bracketed ``【画面：...】`` is on-screen text too.

Words that follow a cue inside someone's speech (``JOHN: (laughs) Okay.``) stay that speaker's
speech: a second :class:`SpeechSpan` with the same speaker, so no utterance is cut in half.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CueSpan",
    "OnScreenSpan",
    "ParsedLine",
    "Span",
    "SpeechSpan",
    "TextSpan",
    "TimestampSpan",
    "parse_line",
]


@dataclass(frozen=True, slots=True)
class TimestampSpan:
    """A timestamp; ``value`` is verbatim without brackets (``00:05:22``)."""

    start: int
    end: int
    value: str


@dataclass(frozen=True, slots=True)
class CueSpan:
    """One cue. ``start``/``end`` include the brackets; ``line[cue_start:cue_end] == cue``."""

    start: int
    end: int
    cue: str
    cue_start: int
    cue_end: int
    bracket: str


@dataclass(frozen=True, slots=True)
class SpeechSpan:
    """Someone speaking: the speaker, the status and the words, each with its offsets.

    ``status`` is ``""`` (with ``status_start == status_end``) when absent; ``speaker`` is ``""``
    for a dialogue dash. A continuation (words after a cue inside someone's speech) repeats the
    speaker's fields and offsets; its own ``start``/``end`` cover only the words.
    """

    start: int
    end: int
    speaker: str
    speaker_start: int
    speaker_end: int
    status: str
    status_start: int
    status_end: int
    text: str
    text_start: int
    text_end: int


@dataclass(frozen=True, slots=True)
class OnScreenSpan:
    """On-screen text (``字幕弹出：【薛定谔方程】``, the inside of ``【画面：门被推开】``)."""

    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class TextSpan:
    """Text the grammar could not place, kept verbatim (whitespace trimmed)."""

    start: int
    end: int
    text: str


Span = TimestampSpan | CueSpan | SpeechSpan | OnScreenSpan | TextSpan


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A parsed line: the text and its spans in order of position."""

    text: str
    spans: tuple[Span, ...]

    @property
    def timestamp(self) -> str | None:
        """The first timestamp of the line, verbatim, or ``None``."""
        for span in self.spans:
            if isinstance(span, TimestampSpan):
                return span.value
        return None

    @property
    def cues(self) -> tuple[CueSpan, ...]:
        """The cue spans, in order."""
        return tuple(s for s in self.spans if isinstance(s, CueSpan))

    @property
    def speech(self) -> tuple[SpeechSpan, ...]:
        """The speech spans, in order."""
        return tuple(s for s in self.spans if isinstance(s, SpeechSpan))


_CLOSERS: Final = {"[": "]", "【": "】", "(": ")", "（": "）", "♪": "♪"}
_CUE_SPLIT: Final = re.compile(r"[+＋]")
_TIME: Final = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d{1,3})?"
_BRACKET_TS: Final = re.compile(rf"[\[【]\s*({_TIME})\s*[\]】]")
_BARE_TS: Final = re.compile(
    r"(?<![\d:.,])(\d{1,2}:\d{2}:\d{2}(?:[.,]\d{1,3})?)(?:\s*-->\s*\d{1,2}:\d{2}:\d{2}(?:[.,]\d{1,3})?)?(?![\d:])"
)
# A speaker: a CJK-style name (no spaces) or an English name (letters, digits, spaces), an
# optional status in parentheses, then a colon. An ASCII colon must not start a time or URL.
_NAME_CJK: Final = r"[^\s\[\]【】()（）：:，,。！？!?…\"“”<>♪|/+＋\-–—]{1,12}"
_NAME_EN: Final = r"[A-Za-z][A-Za-z0-9.'#]*(?: [A-Za-z0-9.'#]+){0,3}"
_SPEAKER: Final = re.compile(
    rf"(?P<name>{_NAME_EN}|{_NAME_CJK})"
    r"(?:\s*(?P<open>[（(])(?P<status>[^（）()\n]{0,24})[）)])?"
    r"\s*(?:：|:(?![/\d]))"
)
_DASH: Final = re.compile(r"[-–—]\s+")
_VOICE: Final = re.compile(r"<v(?:\.[\w.-]{1,32}){0,4}\s+([^>]{0,64})>")
_VOICE_END: Final = "</v>"
_ONSCREEN_WORDS: Final = ("字幕", "画面", "屏幕", "弹幕", "标题", "字卡", "花字", "文字", "卡片")
_ONSCREEN_EN: Final = frozenset({"ON SCREEN", "ON-SCREEN", "ONSCREEN", "CAPTION", "SCREEN", "TEXT"})
_SENTENCE_END: Final = frozenset("。！？!?…|/；;")
_DASH_AFTER: Final = frozenset("。！？!?….;；")
# Where words of an utterance stop: a cue bracket, a voice span.
_UTTERANCE_STOP: Final = frozenset("[【(（♪<")


def _is_onscreen_label(name: str) -> bool:
    return any(word in name for word in _ONSCREEN_WORDS) or name.upper() in _ONSCREEN_EN


class _Scanner:
    """One left-to-right pass over a line; the methods return the new position or -1."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.n = len(line)
        self.spans: list[Span] = []
        self.text_from = -1  # start of pending unplaced text, or -1
        self.speaker: SpeechSpan | None = None  # whose speech continues after a cue
        self.next_found: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------------------

    def flush_text(self, upto: int) -> None:
        """Emit pending unplaced text ending at ``upto`` (or continue the current speech)."""
        if self.text_from < 0:
            return
        start, self.text_from = self.text_from, -1
        end = upto
        while start < end and self.line[start].isspace():
            start += 1
        while end > start and self.line[end - 1].isspace():
            end -= 1
        if start >= end:
            return
        words = self.line[start:end]
        if self.speaker is not None:
            s = self.speaker
            self.spans.append(
                dataclasses.replace(
                    s, start=start, end=end, text=words, text_start=start, text_end=end
                )
            )
        else:
            self.spans.append(TextSpan(start, end, words))

    def at_boundary(self, pos: int) -> bool:
        """Whether a speaker or label may start at ``pos``."""
        if pos == 0 or self.text_from < 0:
            return True
        prev = self.line[pos - 1]
        return prev.isspace() or prev in _SENTENCE_END

    def utterance_end(self, pos: int) -> int:
        """Where the words starting at ``pos`` stop: a cue, a voice span or a new speaker."""
        line, n = self.line, self.n
        i = pos
        while i < n:
            ch = line[i]
            if ch in _UTTERANCE_STOP and self.closing(i) >= 0:
                return i
            if (ch.isspace() or ch in _SENTENCE_END) and i + 1 < n:
                j = i + 1
                while j < n and line[j].isspace():
                    j += 1
                if (
                    j < n
                    and j > pos
                    and (
                        self.speaker_at(j, strict=True) is not None
                        or (self.dash_allowed(j) and _DASH.match(line, j) is not None)
                    )
                ):
                    return j
            i += 1
        return n

    def dash_allowed(self, pos: int) -> bool:
        """A dialogue dash opens a line or follows the end of a sentence."""
        i = pos - 1
        while i >= 0 and self.line[i].isspace():
            i -= 1
        return i < 0 or self.line[i] in _DASH_AFTER

    def find_next(self, token: str, pos: int) -> int:
        """``line.find(token, pos)``, remembering the last hit so that a line of a million
        openers is scanned once, not a million times."""
        hit = self.next_found.get(token, -2)
        if hit == -2 or (hit != -1 and hit < pos):
            hit = self.line.find(token, pos)
            self.next_found[token] = hit
        return hit

    def closing(self, pos: int) -> int:
        """The index just past the bracket pair opening at ``pos``, or -1 when unclosed."""
        ch = self.line[pos]
        if ch == "<":
            return pos if _VOICE.match(self.line, pos) else -1
        closer = _CLOSERS.get(ch)
        if closer is None:
            return -1
        end = self.find_next(closer, pos + 1)
        if end < 0:
            # English lyric captions often open with a lone ♪ and never close it.
            return self.n if ch == "♪" and pos + 1 < self.n else -1
        return end + 1

    def speaker_at(self, pos: int, *, strict: bool = False) -> re.Match[str] | None:
        match = _SPEAKER.match(self.line, pos)
        if match is None:
            return None
        name = match.group("name")
        if name.isdigit() or (strict and name[0].isascii() and not name[0].isupper()):
            # Mid-line English speakers must look like names (``MARY:``), not ``so:``.
            return None
        return match

    # -- recognisers -----------------------------------------------------------------------

    def timestamp(self, pos: int) -> int:
        match = _BRACKET_TS.match(self.line, pos) or _BARE_TS.match(self.line, pos)
        if match is None:
            return -1
        self.flush_text(pos)
        self.spans.append(TimestampSpan(pos, match.end(), match.group(1)))
        return match.end()

    def bracket(self, pos: int) -> int:
        end = self.closing(pos)
        if end < 0 or self.line[pos] == "<":
            return -1
        opener = self.line[pos]
        inner_start = pos + 1
        inner_end = end - 1 if end <= self.n and self.line[end - 1] == _CLOSERS[opener] else end
        if inner_end < inner_start:
            inner_end = inner_start
        inner = self.line[inner_start:inner_end]
        self.flush_text(pos)
        label = _SPEAKER.match(inner)
        if label is not None and _is_onscreen_label(label.group("name")):
            a, b = _strip(self.line, inner_start, inner_end)
            if a < b:
                self.spans.append(OnScreenSpan(a, b, self.line[a:b]))
            return end
        cues: list[tuple[int, int]] = []
        piece_start = inner_start
        for sep in _CUE_SPLIT.finditer(inner):
            cues.append((piece_start, inner_start + sep.start()))
            piece_start = inner_start + sep.end()
        cues.append((piece_start, inner_end))
        kept = [(a, b) for a, b in (_strip(self.line, x, y) for x, y in cues) if a < b]
        if not kept:
            # Empty brackets (``[]``, ``（ ）``) place nothing: keep them as text (trimmed: a
            # lone ``♪`` runs to the end of the line, trailing spaces included).
            a, b = _strip(self.line, pos, end)
            self.spans.append(TextSpan(a, b, self.line[a:b]))
            return end
        for k, (a, b) in enumerate(kept):
            span_start = pos if k == 0 else a
            span_end = end if k == len(kept) - 1 else b
            self.spans.append(CueSpan(span_start, span_end, self.line[a:b], a, b, opener))
        return end

    def voice(self, pos: int) -> int:
        match = _VOICE.match(self.line, pos)
        if match is None:
            return -1
        self.flush_text(pos)
        name_start, name_end = _strip(self.line, match.start(1), match.end(1))
        text_start = match.end()
        close = self.find_next(_VOICE_END, text_start)
        nxt = self.find_next("<v", text_start)
        stop = min(x for x in (close, nxt, self.n) if x >= 0)
        a, b = _strip(self.line, text_start, stop)
        if a >= b:
            a = b = text_start
        end = stop + len(_VOICE_END) if stop == close else max(b, match.end())
        speech = SpeechSpan(
            start=pos,
            end=end,
            speaker=self.line[name_start:name_end],
            speaker_start=name_start,
            speaker_end=name_end,
            status="",
            status_start=name_end,
            status_end=name_end,
            text=self.line[a:b],
            text_start=a,
            text_end=b,
        )
        self.spans.append(speech)
        self.speaker = speech
        return end

    def speech(self, pos: int) -> int:
        match = self.speaker_at(pos)
        dash = None
        if match is None and self.dash_allowed(pos):
            dash = _DASH.match(self.line, pos)
        if match is None and dash is None:
            return -1
        if match is not None and _is_onscreen_label(match.group("name")):
            self.flush_text(pos)
            a, b = _strip(self.line, pos, self.n)
            self.spans.append(OnScreenSpan(a, b, self.line[a:b]))
            self.speaker = None
            return self.n
        self.flush_text(pos)
        if match is not None:
            name_start, name_end = match.start("name"), match.end("name")
            if match.group("open"):
                st_start, st_end = _strip(self.line, match.start("status"), match.end("status"))
            else:
                st_start = st_end = name_end
            words_from = match.end()
        else:
            assert dash is not None
            name_start = name_end = st_start = st_end = pos
            words_from = dash.end()
        stop = self.utterance_end(words_from)
        a, b = _strip(self.line, words_from, stop)
        if a >= b:
            a = b = words_from
        speech = SpeechSpan(
            start=pos,
            end=max(b, words_from),
            speaker=self.line[name_start:name_end],
            speaker_start=name_start,
            speaker_end=name_end,
            status=self.line[st_start:st_end],
            status_start=st_start,
            status_end=st_end,
            text=self.line[a:b],
            text_start=a,
            text_end=b,
        )
        self.spans.append(speech)
        self.speaker = speech
        return speech.end

    # -- the pass --------------------------------------------------------------------------

    def run(self) -> ParsedLine:
        line, pos, n = self.line, 0, self.n
        while pos < n:
            ch = line[pos]
            if ch.isspace():
                pos += 1
                continue
            nxt = -1
            if ch.isdigit() or ch in "[【":
                nxt = self.timestamp(pos)
            if nxt < 0 and ch in _CLOSERS:
                nxt = self.bracket(pos)
            if nxt < 0 and ch == "<":
                nxt = self.voice(pos)
            if nxt < 0 and self.at_boundary(pos):
                nxt = self.speech(pos)
            if nxt < 0:
                if self.text_from < 0:
                    self.text_from = pos
                nxt = pos + 1
            pos = nxt
        self.flush_text(n)
        return ParsedLine(line, tuple(self.spans))


def _strip(line: str, start: int, end: int) -> tuple[int, int]:
    while start < end and line[start].isspace():
        start += 1
    while end > start and line[end - 1].isspace():
        end -= 1
    return start, end


def parse_line(text: str) -> ParsedLine:
    """Parse one subtitle line into spans. Never raises; every span is a verbatim slice.

    Args:
        text: The subtitle line, verbatim.

    Returns:
        The line and its spans in order of position.
    """
    try:
        return _Scanner(text).run()
    except Exception:  # pragma: no cover - a grammar bug must never take a stream down
        # The contract is "never raises": fall back to the whole line as plain text.
        a, b = _strip(text, 0, len(text))
        return ParsedLine(text, (TextSpan(a, b, text[a:b]),) if a < b else ())
