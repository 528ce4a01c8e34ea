"""Export tagged lines for machines, players and editors.

``jsonl`` and ``csv`` stream: each line's rows are written (and flushed) the moment the line
arrives, so ``subtag tag`` on a long file or stdin shows output as it goes. The subtitle and
editor formats collect every line first, because they number cues or wrap markers in a document.

Timing of a line (every event of a line shares it), in order of precedence:

1. the line's cue timing (``TaggedLine.start_ms``/``end_ms``, from an SRT/VTT/ASS file);
2. the first event timestamp ``t`` that parses (``00:05:22``, ``00:05:22.500``, ``05:22``,
   ``00:05:22,500``), lasting :data:`DEFAULT_DURATION_MS`;
3. a placeholder: the line starts where the previous line ended (0 for the first line) and lasts
   :data:`DEFAULT_DURATION_MS`. A plain text file without timestamps thus puts line *n* at
   ``2 n`` seconds, in order, so markers stay distinct and in reading order.

A cue without an end lasts :data:`DEFAULT_DURATION_MS` too.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TextIO

from stream.errors import ConfigError
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent, encode_str
from stream.timecode import parse_clock_ms, parse_fps

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_DURATION_MS",
    "FORMATS",
    "LineClock",
    "TaggedLine",
    "Timing",
    "write_events",
]

DEFAULT_DURATION_MS: Final = 2000
"""How long a line lasts when nothing says otherwise (placeholder and timestamp-only lines)."""


@dataclass(frozen=True)
class TaggedLine:
    """One input line and the events the tagger found in it.

    Attributes:
        seq: The line's sequence number (1-based in files).
        text: The line, verbatim.
        start_ms: Cue start from the subtitle file, if it has cue timing.
        end_ms: Cue end from the subtitle file, if it has cue timing.
        events: The line's events, in order of position in the line.
    """

    seq: int
    text: str
    start_ms: int | None
    end_ms: int | None
    events: tuple[Event, ...]


TimingSource = Literal["cue", "stamp", "placeholder"]


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a line sits on the timeline, and which rule put it there."""

    start_ms: int
    end_ms: int
    source: TimingSource


class LineClock:
    """Places lines on a timeline in order (the policy in the module docstring).

    Stateful only in the end of the last line placed, so it works on a stream.
    """

    def __init__(self, default_duration_ms: int = DEFAULT_DURATION_MS) -> None:
        self._default = default_duration_ms
        self._next_ms = 0

    def place(self, line: TaggedLine) -> Timing:
        """Return the line's timing and advance past it."""
        timing = self._timing(line)
        self._next_ms = timing.end_ms
        return timing

    def _timing(self, line: TaggedLine) -> Timing:
        if line.start_ms is not None:
            end = line.end_ms if line.end_ms is not None else line.start_ms + self._default
            return Timing(line.start_ms, max(end, line.start_ms), "cue")
        for event in line.events:
            stamp = parse_clock_ms(event.t)
            if stamp is not None:
                return Timing(stamp, stamp + self._default, "stamp")
        return Timing(self._next_ms, self._next_ms + self._default, "placeholder")


# --- streaming formats ----------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "stream",
    "seq",
    "kind",
    "t",
    "line_start_ms",
    "line_end_ms",
    "timing",
    "speaker",
    "status",
    "text",
    "cue",
    "type",
    "mood",
    "action",
    "start",
    "end",
    "confidence",
    "backend",
)
"""The ``csv`` header. ``start``/``end`` are the event's span in the line, as on the wire;
``line_start_ms``/``line_end_ms``/``timing`` are the line's place on the timeline. Fields an
event kind does not have are empty."""


def _event_fields(event: Event) -> dict[str, str]:
    match event:
        case SpeechEvent():
            return {
                "kind": "speech",
                "speaker": event.speaker,
                "status": event.status,
                "text": event.text,
            }
        case MusicEvent():
            return {"kind": "music", "cue": event.cue, "type": event.type, "mood": event.mood}
        case ActionEvent():
            return {"kind": "action", "cue": event.cue, "action": event.action}


def _write_jsonl(lines: Iterable[TaggedLine], out: TextIO) -> None:
    for line in lines:
        for event in line.events:
            out.write(encode_str(event))
            out.write("\n")
        out.flush()


def _write_csv(lines: Iterable[TaggedLine], out: TextIO) -> None:
    # RFC 4180 line endings; the caller opens ``out`` with newline="" (or it is stdout).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    out.flush()
    clock = LineClock()
    for line in lines:
        timing = clock.place(line)
        for event in line.events:
            row = {
                "stream": event.stream,
                "seq": str(event.seq),
                "t": event.t or "",
                "line_start_ms": str(timing.start_ms),
                "line_end_ms": str(timing.end_ms),
                "timing": timing.source,
                "start": str(event.start),
                "end": str(event.end),
                "confidence": f"{event.confidence:g}",
                "backend": event.backend,
                **_event_fields(event),
            }
            writer.writerow([row.get(column, "") for column in CSV_COLUMNS])
        out.flush()


_Writer = Callable[[Iterable[TaggedLine], TextIO], None]

_STREAMING: Final[dict[str, _Writer]] = {"jsonl": _write_jsonl, "csv": _write_csv}

FORMATS: Final[tuple[str, ...]] = tuple(_STREAMING)
"""Every ``--format`` name, in the order the help lists them."""


def write_events(lines: Iterable[TaggedLine], fmt: str, out: TextIO, *, fps: str = "25") -> None:
    """Write tagged lines in one export format.

    Args:
        lines: The tagged lines, in order; consumed lazily by the streaming formats.
        fmt: One of :data:`FORMATS`.
        out: Where to write (text mode; for ``csv`` open files with ``newline=""``).
        fps: Frame rate for timecoded formats (see :data:`stream.timecode.FPS_CHOICES`).

    Raises:
        ConfigError: Unknown format or frame rate.
    """
    parse_fps(fps)  # a bad --fps fails before any output, whatever the format
    writer = _STREAMING.get(fmt)
    if writer is None:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    writer(lines, out)
