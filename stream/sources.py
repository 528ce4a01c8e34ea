"""Reading subtitle files: plain text (one line per line) or SRT/WebVTT/ASS through pysubs2."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from stream.errors import InputError

__all__ = ["SUBTITLE_SUFFIXES", "SourceLine", "format_ms", "read_subtitle_file"]

SUBTITLE_SUFFIXES: Final = frozenset({".srt", ".vtt", ".ass", ".ssa"})
# pysubs2 drops WebVTT voice spans (<v Speaker>); hide their '<' from it and put it back after,
# so the grammar sees the speaker.
_VOICE_TAG: Final = re.compile(r"<(/?v[\s.>])")
_HIDDEN_LT: Final = "\x01"


@dataclass(frozen=True, slots=True)
class SourceLine:
    """One subtitle line read from a file.

    Attributes:
        seq: 1-based line number (plain text) or cue number (subtitle files).
        text: The line, verbatim (a multi-line cue is joined with spaces).
        t: The cue's start as ``HH:MM:SS.mmm`` for subtitle files, else ``None``.
        start_ms: The cue's start in milliseconds, when the file gives timing.
        end_ms: The cue's end in milliseconds, when the file gives timing.
    """

    seq: int
    text: str
    t: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None


def format_ms(ms: int) -> str:
    """``HH:MM:SS.mmm`` for a time in milliseconds."""
    ms = max(ms, 0)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _read_text(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        where = path
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise InputError(f"{path}: no such file; check the path") from exc
        except IsADirectoryError as exc:
            raise InputError(f"{path}: is a directory, not a subtitle file") from exc
        except OSError as exc:
            raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        # utf-8-sig: files saved by Windows editors start with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{where}: not UTF-8 text (bad byte at offset {exc.start}); "
            "convert it first, e.g. iconv -f GB18030 -t UTF-8"
        ) from exc


def _plain_lines(text: str) -> list[SourceLine]:
    return [
        SourceLine(seq=number, text=line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _subtitle_lines(text: str, suffix: str, where: str) -> list[SourceLine]:
    import pysubs2

    fmt = {".srt": "srt", ".vtt": "vtt", ".ass": "ass", ".ssa": "ssa"}[suffix]
    if fmt == "vtt":
        text = _VOICE_TAG.sub(_HIDDEN_LT + r"\1", text)
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
    except Exception as exc:  # pysubs2 raises several unrelated types for bad files
        raise InputError(f"{where}: not a valid {fmt.upper()} file ({exc})") from exc
    lines: list[SourceLine] = []
    for event in subs:
        if event.is_comment:
            continue
        body = " ".join(part.strip() for part in event.plaintext.split("\n") if part.strip())
        body = body.replace(_HIDDEN_LT, "<")
        if not body:
            continue
        start, end = int(event.start), int(event.end)
        lines.append(SourceLine(len(lines) + 1, body, format_ms(start), start, end))
    if not lines and text.strip():
        # pysubs2 reads many malformed files as empty ones; silence would lose the whole file.
        raise InputError(
            f"{where}: no {fmt.upper()} cues found in a non-empty file; "
            "check that the file really is that format"
        )
    return lines


def read_subtitle_file(path: str | os.PathLike[str]) -> list[SourceLine]:
    """Read a subtitle file into lines.

    Plain text gives one line per non-blank line, numbered by its line number; ``.srt``,
    ``.vtt``, ``.ass`` and ``.ssa`` give one line per cue with its timing.

    Args:
        path: The file, or ``-`` for standard input (read as plain text).

    Raises:
        InputError: The file is missing, unreadable, not UTF-8 or not a valid subtitle file.
    """
    path = os.fspath(path)
    text = _read_text(path)
    suffix = Path(path).suffix.lower()
    if path != "-" and suffix in SUBTITLE_SUFFIXES:
        return _subtitle_lines(text, suffix, path)
    return _plain_lines(text)
