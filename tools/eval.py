"""Score a tagger against gold lines: precision, recall and F1 per kind and overall.

    python tools/eval.py GOLD.jsonl [--backend rules|seqgpt|seqgpt-torch] [--model DIR]

Gold rows are as in ../shared/samples/cases.jsonl: ``{"id", "text", "events": [...]}``, each
event with ``kind`` (``speech``, ``music``, ``action`` or ``either`` — music or action both
accepted), ``t`` and, by kind, ``speaker``/``status``/``text`` or ``cue``. A predicted event
matches a gold event of its line when the kind is compatible and the identifying fields and the
timestamp are equal; each gold event matches at most one prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.base import BACKENDS, Tagger, load_tagger  # noqa: E402
from stream.errors import InputError, SubtagError  # noqa: E402
from stream.schema import Event, SpeechEvent, event_kind  # noqa: E402
from stream.sources import SourceLine  # noqa: E402
from stream.tagfile import tag_lines  # noqa: E402

__all__ = ["Counts", "GoldLine", "evaluate", "format_report", "load_gold", "match_line"]

KINDS = ("speech", "music", "action", "either")


@dataclass(frozen=True)
class GoldLine:
    """One gold row: its id, text and expected events (as dicts)."""

    id: str
    text: str
    events: tuple[Mapping[str, Any], ...]


@dataclass
class Counts:
    """True positives, false positives and false negatives of one kind."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp), or ``None`` with no prediction."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn), or ``None`` with no gold event."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        """The harmonic mean of precision and recall (``None`` if either is undefined)."""
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass
class Report:
    """Counts per kind and overall, plus the mismatches for a reader."""

    kinds: dict[str, Counts] = field(default_factory=lambda: {k: Counts() for k in KINDS})
    overall: Counts = field(default_factory=Counts)
    misses: list[str] = field(default_factory=list)


def load_gold(path: str) -> list[GoldLine]:
    """Read gold rows from a JSONL file.

    Raises:
        InputError: The file is missing or a row is not a gold row.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read gold file ({exc})") from exc
    rows: list[GoldLine] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(GoldLine(str(row.get("id", number)), row["text"], tuple(row["events"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{number}: not a gold row ({exc})") from exc
    return rows


def _matches(gold: Mapping[str, Any], event: Event) -> bool:
    kind = event_kind(event)
    gold_kind = gold.get("kind")
    if not (gold_kind == kind or (gold_kind == "either" and kind in ("music", "action"))):
        return False
    if gold.get("t") != event.t:
        return False
    if isinstance(event, SpeechEvent):
        return (gold.get("speaker"), gold.get("status", ""), gold.get("text")) == (
            event.speaker,
            event.status,
            event.text,
        )
    return bool(gold.get("cue") == event.cue)


def match_line(
    gold: Sequence[Mapping[str, Any]], predicted: Sequence[Event], report: Report
) -> None:
    """Match one line's predictions to its gold events and add the counts to ``report``."""
    unmatched = list(range(len(gold)))
    for event in predicted:
        kind = event_kind(event)
        hit = next((g for g in unmatched if _matches(gold[g], event)), None)
        if hit is None:
            report.kinds[kind].fp += 1
            report.overall.fp += 1
            report.misses.append(f"unexpected {kind}: {_describe_event(event)}")
            continue
        unmatched.remove(hit)
        report.kinds[kind].tp += 1
        if gold[hit]["kind"] == "either":
            report.kinds["either"].tp += 1
        report.overall.tp += 1
    for g in unmatched:
        kind = str(gold[g].get("kind"))
        report.kinds.setdefault(kind, Counts()).fn += 1
        report.overall.fn += 1
        report.misses.append(f"missed {kind}: {json.dumps(gold[g], ensure_ascii=False)}")


def _describe_event(event: Event) -> str:
    if isinstance(event, SpeechEvent):
        return f"{event.speaker}（{event.status}）：{event.text} t={event.t}"
    return f"{event.cue} t={event.t}"


def evaluate(tagger: Tagger, rows: Iterable[GoldLine], *, context: int = 0) -> Report:
    """Tag each gold line and score it."""
    rows = list(rows)
    report = Report()
    lines = [SourceLine(seq=i, text=row.text) for i, row in enumerate(rows, start=1)]
    tagged = tag_lines(tagger, lines, stream="eval", context=context, progress=False)
    for row, line in zip(rows, tagged, strict=True):
        before = len(report.misses)
        match_line(row.events, line.events, report)
        report.misses[before:] = [f"{row.id}: {m}" for m in report.misses[before:]]
    return report


def _cell(value: float | None) -> str:
    return "   -" if value is None else f"{value:.2f}"


def format_report(report: Report) -> str:
    """The report as a plain-text table, then the mismatches."""
    lines = [f"{'kind':<8} {'tp':>4} {'fp':>4} {'fn':>4} {'P':>5} {'R':>5} {'F1':>5}"]
    rows = [*report.kinds.items(), ("overall", report.overall)]
    for name, c in rows:
        cells = f"{_cell(c.precision):>5} {_cell(c.recall):>5} {_cell(c.f1):>5}"
        lines.append(f"{name:<8} {c.tp:>4} {c.fp:>4} {c.fn:>4} {cells}")
    lines.extend(report.misses)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; 0 on success, 2 on a user error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gold", help="gold JSONL file")
    parser.add_argument("--backend", choices=BACKENDS, default="rules")
    parser.add_argument("--model", help="export or model directory for model backends")
    parser.add_argument("--context", type=int, default=0, help="earlier gold lines as context")
    args = parser.parse_args(argv)
    try:
        tagger = load_tagger(args.backend, args.model)
        report = evaluate(tagger, load_gold(args.gold), context=args.context)
    except SubtagError as exc:
        print(f"eval: error: {exc}", file=sys.stderr)
        return 2
    print(f"backend: {tagger.name}")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
