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
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TextIO

from stream.errors import ConfigError
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent, encode_str, event_kind
from stream.timecode import FrameRate, format_clock_ms, parse_clock_ms, parse_fps

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_DURATION_MS",
    "EDL_COLORS",
    "FORMATS",
    "PREMIERE_COLUMNS",
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


# --- collected formats: subtitles and editor markers ----------------------------------------


@dataclass(frozen=True, slots=True)
class _Placed:
    line: TaggedLine
    timing: Timing


def _place_all(lines: Iterable[TaggedLine]) -> list[_Placed]:
    clock = LineClock()
    return [_Placed(line, clock.place(line)) for line in lines]


def _one_line(text: str) -> str:
    # Subtitle cues and marker fields are single-line records: a newline or tab inside an
    # event field would end the record early.
    return " ".join(text.split())


def _marker_name(event: Event) -> str:
    match event:
        case SpeechEvent():
            return f"speech: {_one_line(event.speaker) or '(unknown speaker)'}"
        case MusicEvent():
            return f"music: {_one_line(event.cue)}"
        case ActionEvent():
            return f"action: {_one_line(event.cue)}"


def _marker_description(event: Event) -> str:
    match event:
        case SpeechEvent():
            status = f"（{event.status}）" if event.status else ""
            return _one_line(f"{event.speaker}{status}：{event.text}")
        case MusicEvent():
            return _one_line(f"type: {event.type or '-'}; mood: {event.mood or '-'}")
        case ActionEvent():
            return _one_line(f"action: {event.action or '-'}")


def _vtt_escape(text: str) -> str:
    # WebVTT cue text: '&' and '<' start entities/tags; escaping '>' also rules out "-->".
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_cue_text(placed: _Placed) -> str:
    if not placed.line.events:
        return _vtt_escape(placed.line.text) or "&nbsp;"
    rows = []
    for event in placed.line.events:
        match event:
            case SpeechEvent():
                text = _vtt_escape(event.text)
                speaker = _vtt_escape(event.speaker)
                rows.append(f"<v {speaker}>{text}</v>" if speaker else text)
            case MusicEvent() | ActionEvent():
                rows.append(f"[{_vtt_escape(event.cue)}]")
    return "\n".join(rows)


def _write_vtt(lines: Iterable[TaggedLine], out: TextIO) -> None:
    placed = _place_all(lines)
    out.write("WEBVTT - subtag\n\n")
    # The tags go in one NOTE block before the first cue, one schema JSON event per row (its
    # ``seq`` names the cue's line): NOTE blocks between cues are valid WebVTT, but common
    # parsers (pysubs2 among them) glue them onto the previous cue's text.
    rows = [
        encode_str(event).replace("-->", "--\\u003e")  # a NOTE must not contain "-->"
        for item in placed
        for event in item.line.events
    ]
    if rows:
        out.write("NOTE subtag events (JSON, one per row; seq = cue line)\n")
        out.write("\n".join(rows))
        out.write("\n\n")
    for item in placed:
        start = format_clock_ms(item.timing.start_ms)
        end = format_clock_ms(item.timing.end_ms)
        out.write(f"{start} --> {end}\n{_vtt_cue_text(item)}\n\n")


def _srt_tag(event: Event) -> str:
    match event:
        case SpeechEvent():
            head = f"[SPEECH: {_one_line(event.speaker)}"
            if event.status:
                head += f" | status: {_one_line(event.status)}"
            return f"{head}] {_one_line(event.text)}"
        case MusicEvent():
            parts = [f"MUSIC: {_one_line(event.cue)}"]
            if event.type:
                parts.append(f"type: {_one_line(event.type)}")
            if event.mood:
                parts.append(f"mood: {_one_line(event.mood)}")
            return f"[{' | '.join(parts)}]"
        case ActionEvent():
            parts = [f"ACTION: {_one_line(event.cue)}"]
            if event.action:
                parts.append(f"action: {_one_line(event.action)}")
            return f"[{' | '.join(parts)}]"


def _write_srt(lines: Iterable[TaggedLine], out: TextIO) -> None:
    for number, item in enumerate(_place_all(lines), start=1):
        start = format_clock_ms(item.timing.start_ms, ",")
        end = format_clock_ms(item.timing.end_ms, ",")
        rows = [_srt_tag(event) for event in item.line.events] or [_one_line(item.line.text) or "…"]
        body = "\n".join(rows)
        out.write(f"{number}\n{start} --> {end}\n{body}\n\n")


@dataclass(frozen=True, slots=True)
class _Marker:
    event: Event
    start_frame: int
    frames: int  # at least one: a zero-length marker is invisible in every editor


def _markers(lines: Iterable[TaggedLine], rate: FrameRate) -> list[_Marker]:
    markers: list[_Marker] = []
    for item in _place_all(lines):
        start = rate.frames_at_ms(item.timing.start_ms)
        frames = max(1, rate.frames_at_ms(item.timing.end_ms) - start)
        markers.extend(_Marker(event, start, frames) for event in item.line.events)
    return markers


PREMIERE_COLUMNS: Final = ("Marker Name", "Description", "In", "Out", "Duration", "Marker Type")
"""The header of Premiere Pro's marker list (File > Export > Markers, tab-delimited)."""


def _write_premiere(lines: Iterable[TaggedLine], out: TextIO, rate: FrameRate) -> None:
    writer = csv.writer(out, delimiter="\t", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(PREMIERE_COLUMNS)
    for marker in _markers(lines, rate):
        writer.writerow(
            (
                _marker_name(marker.event),
                _marker_description(marker.event),
                rate.timecode(marker.start_frame),
                rate.timecode(marker.start_frame + marker.frames),
                rate.timecode(marker.frames),
                "Comment",
            )
        )


EDL_COLORS: Final = {
    "speech": "ResolveColorBlue",
    "music": "ResolveColorPurple",
    "action": "ResolveColorYellow",
}
"""The Resolve marker colour of each event kind."""


def _write_edl(lines: Iterable[TaggedLine], out: TextIO, rate: FrameRate) -> None:
    out.write("TITLE: subtag markers\n")
    out.write(f"FCM: {'DROP FRAME' if rate.drop_frame else 'NON-DROP FRAME'}\n\n")
    # Resolve keeps one timeline marker per frame: a second event on a taken frame (speech
    # and a cue of the same line) moves to the next free frame instead of replacing the first.
    taken: set[int] = set()
    for number, marker in enumerate(_markers(lines, rate), start=1):
        frame = marker.start_frame
        while frame in taken:
            frame += 1
        taken.add(frame)
        tc_in, tc_out = rate.timecode(frame), rate.timecode(frame + 1)
        name = _marker_name(marker.event).replace("|", "/")  # '|' separates the note fields
        kind = event_kind(marker.event)
        out.write(f"{number:03d}  001      V     C        {tc_in} {tc_out} {tc_in} {tc_out}\n")
        out.write(f" |C:{EDL_COLORS[kind]} |M:{name} |D:{marker.frames}\n\n")


_FCP_FORMAT_NAMES: Final = {
    "23.976": "2398",
    "24": "24",
    "25": "25",
    "29.97": "2997",
    "29.97ndf": "2997",
    "30": "30",
    "50": "50",
    "59.94": "5994",
    "60": "60",
}


def _write_fcpxml(lines: Iterable[TaggedLine], out: TextIO, rate: FrameRate) -> None:
    markers = _markers(lines, rate)
    total = max((m.start_frame + m.frames for m in markers), default=1)
    root = ET.Element("fcpxml", version="1.10")
    resources = ET.SubElement(root, "resources")
    ET.SubElement(
        resources,
        "format",
        id="r1",
        name=f"FFVideoFormat1080p{_FCP_FORMAT_NAMES[rate.name]}",
        frameDuration=rate.rational(1),
        width="1920",
        height="1080",
    )
    event = ET.SubElement(ET.SubElement(root, "library"), "event", name="subtag")
    project = ET.SubElement(event, "project", name="subtag markers")
    sequence = ET.SubElement(
        project,
        "sequence",
        format="r1",
        duration=rate.rational(total),
        tcStart="0s",
        tcFormat="DF" if rate.drop_frame else "NDF",
    )
    # Markers need a parent clip on the timeline: one gap spanning every marker.
    gap = ET.SubElement(
        ET.SubElement(sequence, "spine"),
        "gap",
        name="subtag",
        offset="0s",
        start="0s",
        duration=rate.rational(total),
    )
    for marker in markers:
        ET.SubElement(
            gap,
            "marker",
            start=rate.rational(marker.start_frame),
            duration=rate.rational(marker.frames),
            value=_marker_name(marker.event),
            note=_marker_description(marker.event),
        )
    ET.indent(root, space="    ")
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")


_Writer = Callable[[Iterable[TaggedLine], TextIO], None]
_TimecodedWriter = Callable[[Iterable[TaggedLine], TextIO, FrameRate], None]

_UNTIMED: Final[dict[str, _Writer]] = {
    "jsonl": _write_jsonl,
    "csv": _write_csv,
    "vtt": _write_vtt,
    "srt": _write_srt,
}
_TIMECODED: Final[dict[str, _TimecodedWriter]] = {
    "premiere": _write_premiere,
    "edl": _write_edl,
    "fcpxml": _write_fcpxml,
}

FORMATS: Final[tuple[str, ...]] = (*_UNTIMED, *_TIMECODED)
"""Every ``--format`` name, in the order the help lists them (streaming ones first)."""


def write_events(lines: Iterable[TaggedLine], fmt: str, out: TextIO, *, fps: str = "25") -> None:
    """Write tagged lines in one export format.

    Args:
        lines: The tagged lines, in order; consumed lazily by the streaming formats.
        fmt: One of :data:`FORMATS`.
        out: Where to write (text mode; for ``csv`` and ``premiere`` open files with
            ``newline=""``).
        fps: Frame rate of the timecoded formats (``premiere``, ``edl``, ``fcpxml``); see
            :data:`stream.timecode.FPS_CHOICES`. Checked for every format.

    Raises:
        ConfigError: Unknown format or frame rate.
    """
    rate = parse_fps(fps)  # a bad --fps fails before any output, whatever the format
    if fmt in _UNTIMED:
        _UNTIMED[fmt](lines, out)
    elif fmt in _TIMECODED:
        _TIMECODED[fmt](lines, out, rate)
    else:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
