"""The rules tagger: the embedded default that needs no model.

The grammar (:mod:`stream.grammar`) finds the structure; this module decides what the grammar
cannot: whether a cue is music or an action, and its music type and mood or its implied action,
from the curated lexicon in ``stream/data/lexicon.toml``. The decision (docs/rules.md):

1. a ``♪ … ♪`` cue is music (lyrics or a tune);
2. otherwise the longest musical word (instrument, genre, technique) is weighed against the
   longest sound-source word; the longer match wins, because a longer word is the more specific
   reading (``低音提琴滑音`` is an instrument, ``玻璃瓶晃动声`` a bottle being shaken);
3. with no lexicon word at all, a cue with a mood word is music and anything else is an action
   whose implied action is the cue without its ``声``/``音`` suffix.

Ambient sounds (rain, sirens, crowd, UI beeps) are actions: they imply something happening in
the picture. Only a musical word makes a cue music.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final, Literal

from engine.base import LineJob
from stream.grammar import CueSpan, OnScreenSpan, ParsedLine, SpeechSpan, TextSpan, parse_line
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent

__all__ = [
    "CONFIDENCE",
    "CueVerdict",
    "Lexicon",
    "RulesTagger",
    "classify_cue",
    "events_for_line",
    "load_lexicon",
]

CueKind = Literal["music", "action"]

CONFIDENCE: Final = {
    "structure": 1.0,  # what the grammar states: a speaker and words, on-screen text
    "strong": 0.9,  # a lexicon word of two or more characters (or an English word)
    "weak": 0.7,  # a single-character word such as 曲 or 叮
    "fallback": 0.5,  # no lexicon word: the suffix or mood rule decided
}
"""Fixed confidences of the rules backend, by the strength of the rule that decided."""


@dataclass(frozen=True, slots=True)
class CueVerdict:
    """What a cue is: music (with type and mood) or an action (with the implied action)."""

    kind: CueKind
    type: str
    mood: str
    action: str
    confidence: float


@dataclass(frozen=True, slots=True)
class _Table:
    """One lexicon table compiled to a single longest-first alternation."""

    pattern: re.Pattern[str] | None
    values: Mapping[str, str]

    @classmethod
    def build(cls, entries: Mapping[str, str]) -> _Table:
        keys = sorted(entries, key=len, reverse=True)
        if not keys:
            return cls(None, {})
        # ASCII words match on word boundaries ("rain" is not in "training"); CJK anywhere.
        alternatives = [rf"\b{re.escape(k)}\b" if k.isascii() else re.escape(k) for k in keys]
        return cls(re.compile("|".join(alternatives)), {k.lower(): v for k, v in entries.items()})

    def best(self, text: str) -> tuple[str, str, int] | None:
        """The longest match in ``text`` as ``(word, value, weight)``; first one on ties."""
        if self.pattern is None:
            return None
        best: tuple[str, str, int] | None = None
        for match in self.pattern.finditer(text):
            word = match.group(0)
            weight = _weight(word)
            if best is None or weight > best[2]:
                best = (word, self.values[word], weight)
        return best


def _weight(word: str) -> int:
    # An English word is as specific as a two-character Chinese word.
    return 2 * len(word.split()) if word.isascii() else len(word)


@dataclass(frozen=True, slots=True)
class Lexicon:
    """The rules tagger's word lists, compiled."""

    instruments: _Table
    genres: _Table
    moods: _Table
    actions: _Table

    @classmethod
    def from_mapping(cls, data: Mapping[str, Mapping[str, str]]) -> Lexicon:
        """Build from the TOML tables ``instruments``, ``genres``, ``moods``, ``actions``."""
        return cls(*(_Table.build(data.get(name, {})) for name in _TABLES))


_TABLES: Final = ("instruments", "genres", "moods", "actions")
_SOUND_SUFFIX: Final = re.compile(r"(?:的)?(?:声音|音效|声响|声|音)$")


@functools.cache
def load_lexicon() -> Lexicon:
    """The packaged lexicon (``stream/data/lexicon.toml``), loaded once."""
    text = resources.files("stream").joinpath("data/lexicon.toml").read_text(encoding="utf-8")
    return Lexicon.from_mapping(tomllib.loads(text))


@functools.lru_cache(maxsize=65_536)
def classify_cue(cue: str, bracket: str = "") -> CueVerdict:
    """Decide music or action for one cue from the lexicon.

    Args:
        cue: The cue text without brackets, verbatim.
        bracket: The cue's opening bracket; ``♪`` marks music whatever the words.

    Returns:
        The verdict with its type/mood or action and a rule-strength confidence.
    """
    lexicon = load_lexicon()
    text = cue.lower()
    instrument = lexicon.instruments.best(text)
    genre = lexicon.genres.best(text)
    mood = lexicon.moods.best(text)
    action = lexicon.actions.best(text)
    musical = max(
        (m for m in (instrument, genre) if m is not None), key=lambda m: m[2], default=None
    )
    mood_value = mood[1] if mood is not None else ""
    music_type = musical[1] if musical is not None else ""

    if bracket == "♪" or (musical is not None and (action is None or musical[2] >= action[2])):
        weight = max(musical[2] if musical else 2, 2 if bracket == "♪" else 0)
        return CueVerdict(
            kind="music",
            type=music_type or "歌曲",
            mood=mood_value,
            action="",
            confidence=CONFIDENCE["strong" if weight >= 2 else "weak"],
        )
    if action is not None:
        return CueVerdict(
            kind="action",
            type="",
            mood="",
            action=action[1],
            confidence=CONFIDENCE["strong" if action[2] >= 2 else "weak"],
        )
    if mood is not None:
        return CueVerdict("music", "配乐", mood_value, "", CONFIDENCE["fallback"])
    implied = _SOUND_SUFFIX.sub("", cue).strip() or cue
    return CueVerdict("action", "", "", implied, CONFIDENCE["fallback"])


def _onscreen_action(text: str) -> str:
    """The on-screen event's action: its label (``字幕弹出``), else ``画面文字``."""
    for colon in ("：", ":"):
        label, sep, _ = text.partition(colon)
        if sep and 0 < len(label.strip()) <= 8:
            return label.strip()
    return "画面文字"


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def events_for_line(
    job: LineJob,
    parsed: ParsedLine,
    verdicts: Sequence[CueVerdict],
    *,
    backend: str,
    speech_confidence: float = CONFIDENCE["structure"],
) -> list[Event]:
    """Turn a parsed line and one verdict per cue into events, in position order.

    Speech events point at the words (``start``/``end`` = the utterance's offsets), cue events
    at the cue text inside its brackets, on-screen events at the on-screen text. Speech without
    words (``JOHN:`` right before a cue) makes no event; unplaced text with letters in it is
    speech by an unknown speaker (``speaker == ""``) at the fallback confidence.

    Args:
        job: The line's stream, seq and sender timestamp.
        parsed: The grammar's reading of ``job.text``.
        verdicts: One verdict per :class:`CueSpan` of ``parsed``, in order.
        backend: The backend name for the events' ``backend`` field.
        speech_confidence: Confidence of speech events the grammar placed.

    Raises:
        ValueError: ``verdicts`` does not have one entry per cue.
    """
    cues = parsed.cues
    if len(verdicts) != len(cues):
        raise ValueError(f"{len(verdicts)} verdicts for {len(cues)} cues")
    t = parsed.timestamp or job.t
    stream, seq = job.stream, job.seq
    events: list[Event] = []
    verdict_of = iter(verdicts)
    for span in parsed.spans:
        match span:
            case SpeechSpan() if span.text:
                events.append(
                    SpeechEvent(
                        stream,
                        seq,
                        t,
                        span.text_start,
                        span.text_end,
                        speech_confidence,
                        backend,
                        speaker=span.speaker,
                        status=span.status,
                        text=span.text,
                    )
                )
            case CueSpan():
                verdict = next(verdict_of)
                if verdict.kind == "music":
                    events.append(
                        MusicEvent(
                            stream,
                            seq,
                            t,
                            span.cue_start,
                            span.cue_end,
                            verdict.confidence,
                            backend,
                            cue=span.cue,
                            type=verdict.type,
                            mood=verdict.mood,
                        )
                    )
                else:
                    events.append(
                        ActionEvent(
                            stream,
                            seq,
                            t,
                            span.cue_start,
                            span.cue_end,
                            verdict.confidence,
                            backend,
                            cue=span.cue,
                            action=verdict.action,
                        )
                    )
            case OnScreenSpan():
                events.append(
                    ActionEvent(
                        stream,
                        seq,
                        t,
                        span.start,
                        span.end,
                        CONFIDENCE["structure"],
                        backend,
                        cue=span.text,
                        action=_onscreen_action(span.text),
                    )
                )
            case TextSpan() if _has_words(span.text):
                events.append(
                    SpeechEvent(
                        stream,
                        seq,
                        t,
                        span.start,
                        span.end,
                        CONFIDENCE["fallback"],
                        backend,
                        speaker="",
                        status="",
                        text=span.text,
                    )
                )
            case _:
                pass
    return events


class RulesTagger:
    """The model-free backend: the grammar plus the lexicon, microseconds per line."""

    @property
    def name(self) -> str:
        """``rules``."""
        return "rules"

    def tag(self, jobs: Sequence[LineJob]) -> Iterator[tuple[int, Event]]:
        """Tag each line on its own; events of line ``i`` come before those of line ``i+1``."""
        for i, job in enumerate(jobs):
            parsed = parse_line(job.text)
            verdicts = [classify_cue(c.cue, c.bracket) for c in parsed.cues]
            for event in events_for_line(job, parsed, verdicts, backend="rules"):
                yield i, event
