"""tools/eval.py: matching rules and the scores it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.schema import ActionEvent, MusicEvent, SpeechEvent

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import eval as evaluation  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "cases.jsonl"


def _speech(text: str, t: str | None = "00:00:01") -> SpeechEvent:
    return SpeechEvent("s", 1, t, 0, 1, 1.0, "rules", "A", "", text)


def test_either_accepts_music_or_action() -> None:
    """A gold ``either`` cue is matched by a music or an action event with that cue."""
    gold = [{"kind": "either", "cue": "警笛", "t": "00:00:01"}]
    for event in (
        MusicEvent("s", 1, "00:00:01", 0, 1, 1.0, "r", "警笛", "", ""),
        ActionEvent("s", 1, "00:00:01", 0, 1, 1.0, "r", "警笛", ""),
    ):
        report = evaluation.Report()
        evaluation.match_line(gold, [event], report)
        assert (report.overall.tp, report.overall.fp, report.overall.fn) == (1, 0, 0)


def test_mismatches_count() -> None:
    """Wrong kind, wrong text and wrong timestamp are each a false positive and a miss."""
    gold = [
        {"kind": "music", "cue": "钢琴曲", "t": "00:00:01"},
        {"kind": "speech", "speaker": "A", "status": "", "text": "hi", "t": "00:00:01"},
        {"kind": "speech", "speaker": "A", "status": "", "text": "yo", "t": "00:00:01"},
    ]
    predicted = [
        ActionEvent("s", 1, "00:00:01", 0, 1, 1.0, "r", "钢琴曲", ""),
        _speech("hi!"),
        _speech("yo", t=None),
    ]
    report = evaluation.Report()
    evaluation.match_line(gold, predicted, report)
    assert (report.overall.tp, report.overall.fp, report.overall.fn) == (0, 3, 3)
    assert report.kinds["action"].precision == 0.0
    assert report.kinds["music"].recall == 0.0
    assert len(report.misses) == 6


def test_duplicate_prediction_matches_once() -> None:
    """One gold event absorbs at most one prediction."""
    gold = [{"kind": "speech", "speaker": "A", "status": "", "text": "hi", "t": "00:00:01"}]
    report = evaluation.Report()
    evaluation.match_line(gold, [_speech("hi"), _speech("hi")], report)
    assert (report.overall.tp, report.overall.fp) == (1, 1)
    assert report.overall.f1 == pytest.approx(2 / 3)


def test_samples_score_one(capsys: pytest.CaptureFixture[str]) -> None:
    """The rules backend scores F1 1.00 on the shared samples."""
    assert evaluation.main([str(SAMPLES)]) == 0
    out = capsys.readouterr().out
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    assert overall.split()[-3:] == ["1.00", "1.00", "1.00"]


def test_bad_gold_file(tmp_path: Path) -> None:
    """A row without text is a clear error with its line number."""
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"events": []}) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(TOOLS / "eval.py"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "g.jsonl:1: not a gold row" in result.stderr
