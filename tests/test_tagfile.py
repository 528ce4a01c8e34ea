"""``subtag tag`` as a user runs it: a subprocess on real files and stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from stream.schema import ActionEvent, MusicEvent, SpeechEvent, decode_outbound

SUBTAG = [sys.executable, "-m", "stream.cli"]


def subtag(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command and capture its output."""
    return subprocess.run(
        [*SUBTAG, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_text_file_jsonl(tmp_path: Path) -> None:
    """A text file gives one JSON event per line of output, seq = the line number."""
    path = tmp_path / "ep1.txt"
    path.write_text("[00:00:01] [敲门声] 小林（OS）：谁？\n\n♪ 轻快的钢琴曲 ♪\n", encoding="utf-8")
    result = subtag("tag", str(path))
    assert result.returncode == 0, result.stderr
    events = [decode_outbound(line) for line in result.stdout.splitlines()]
    assert [type(e) for e in events] == [ActionEvent, SpeechEvent, MusicEvent]
    assert [(e.stream, e.seq) for e in events] == [("ep1", 1), ("ep1", 1), ("ep1", 3)]  # type: ignore[union-attr]
    assert events[0].t == "00:00:01"  # type: ignore[union-attr]


def test_srt_file_csv(tmp_path: Path) -> None:
    """An SRT file can be written as CSV, one row per event, with the cue timing."""
    path = tmp_path / "a.srt"
    path.write_text("1\n00:00:02,000 --> 00:00:03,000\n[爆炸声]\n", encoding="utf-8")
    result = subtag("tag", str(path), "--format", "csv", "--stream", "cam1")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.startswith("stream,seq,kind")
    assert row.startswith("cam1,1,action,00:00:02.000")


def test_stdin() -> None:
    """``-`` (the default) reads standard input; the stream is ``stdin``."""
    result = subtag("tag", stdin="旁白：你好\n")
    assert result.returncode == 0, result.stderr
    event = msgspec.json.decode(result.stdout.splitlines()[0])
    assert (event["kind"], event["stream"], event["speaker"]) == ("speech", "stdin", "旁白")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file exits 2 with one line naming it, no traceback."""
    result = subtag("tag", str(tmp_path / "nope.txt"))
    assert result.returncode == 2
    assert "nope.txt: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_encoding_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 exits 2 and says how to convert it."""
    path = tmp_path / "gbk.txt"
    path.write_bytes("[敲门声]".encode("gb18030"))
    result = subtag("tag", str(path))
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr
    assert "iconv" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_backend_without_model() -> None:
    """A model backend without --model is refused with the flag to add."""
    result = subtag("tag", "--backend", "seqgpt", stdin="x\n")
    assert result.returncode == 2
    assert "--model" in result.stderr
