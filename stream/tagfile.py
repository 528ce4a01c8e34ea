"""``subtag tag``: tag a subtitle file (or standard input) and print its events."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from engine.base import BACKENDS, LineJob, Tagger, load_tagger
from stream.errors import ConfigError
from stream.formats import FORMATS, TaggedLine, write_events
from stream.progress import track
from stream.schema import Event
from stream.sources import SourceLine, read_subtitle_file

__all__ = ["configure", "run", "tag_lines"]

_PROGRESS_FROM: Final = 200
"""Files with more lines than this show a progress bar (on a terminal)."""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``tag`` command's arguments."""
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="text file (one line per line), .srt, .vtt, .ass/.ssa, or - for stdin (default)",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="rules", help="default: rules")
    parser.add_argument(
        "--model", help="seqgpt: an export directory; seqgpt-torch: a model directory or hub id"
    )
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="default: jsonl")
    parser.add_argument("--stream", help="stream id in the events (default: the file's stem)")
    parser.add_argument(
        "--context",
        type=int,
        default=3,
        metavar="N",
        help="earlier lines given to model backends as context (default 3)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        metavar="N",
        help="lines per engine call for model backends (default 8)",
    )
    parser.add_argument("--fps", default="25", help="frame rate of timecoded formats (default 25)")


def tag_lines(
    tagger: Tagger,
    lines: Sequence[SourceLine],
    *,
    stream: str,
    context: int = 3,
    batch: int = 1,
    progress: bool | None = None,
) -> Iterator[TaggedLine]:
    """Tag lines in order, ``batch`` lines per engine call, each with its ``context`` lines.

    Args:
        tagger: The backend.
        lines: The lines of one stream, in order.
        stream: The stream id the events carry.
        context: How many earlier lines each line gets as context.
        batch: Lines per :meth:`Tagger.tag` call.
        progress: Show a bar on stderr (``None``: on a terminal, for long inputs).

    Yields:
        One tagged line per input line, in input order.
    """
    texts = [line.text for line in lines]
    batches = [lines[i : i + batch] for i in range(0, len(lines), batch)]
    # None lets the bar decide by whether stderr is a terminal; short inputs never show one.
    show: bool | None = progress
    if progress is None and len(lines) <= _PROGRESS_FROM:
        show = False
    first = 0
    for chunk in track(batches, description=f"tagging {stream}", enabled=show):
        jobs = [
            LineJob(
                stream=stream,
                seq=line.seq,
                text=line.text,
                t=line.t,
                context=tuple(texts[max(0, first + k - context) : first + k]) if context else (),
            )
            for k, line in enumerate(chunk)
        ]
        found: list[list[Event]] = [[] for _ in jobs]
        for index, event in tagger.tag(jobs):
            found[index].append(event)
        for line, events in zip(chunk, found, strict=True):
            yield TaggedLine(line.seq, line.text, line.start_ms, line.end_ms, tuple(events))
        first += len(chunk)


def run(args: argparse.Namespace) -> int:
    """Tag the file and print it in the chosen format; 0 on success."""
    if args.context < 0:
        raise ConfigError("--context must be >= 0")
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    lines = read_subtitle_file(args.file)
    stream = args.stream or ("stdin" if args.file == "-" else Path(args.file).stem)
    tagger = load_tagger(args.backend, args.model)
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        # csv writes its own line endings; events are UTF-8 whatever the locale says.
        out.reconfigure(encoding="utf-8", newline="")
    batch = 1 if args.backend == "rules" else args.batch
    try:
        write_events(
            tag_lines(tagger, lines, stream=stream, context=args.context, batch=batch),
            args.format,
            out,
            fps=args.fps,
        )
        out.flush()
    except BrokenPipeError:
        # `subtag tag f | head`: the reader left; that is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
