"""``subtag demo``: the terminal view's bookkeeping, and the command run bounded as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from stream.demo import DemoView, describe
from stream.schema import Done, Error, Latency, MusicEvent, SpeechEvent

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "stream" / "samples" / "demo.srt"


def _done(seq: int, total: float) -> Done:
    return Done(
        stream="demo",
        seq=seq,
        events=1,
        latency=Latency(received_to_queued=0.1, queue=0.2, model=0.3, first_event=0.5, total=total),
        backend="rules",
    )


def _speech(seq: int) -> SpeechEvent:
    return SpeechEvent(
        stream="demo", seq=seq, t="00:00:01", start=0, end=4, confidence=1.0,
        backend="rules", speaker="阿梅", status="对白", text="大爷，给我来两斤。",
    )  # fmt: skip


def test_demo_view_counts_messages_and_renders_the_latest_events() -> None:
    """Events fill the table (bounded), done messages feed the percentiles, errors are counted."""
    view = DemoView(rows=3)
    for seq in range(5):
        view.add(_speech(seq))
        view.add(_done(seq, total=float(seq + 1)))
    view.add(Error(code="line_too_long", message="too long", seq=9, stream="demo"))
    assert view.events == 5
    assert view.lines == 5
    assert [event.seq for event in view.recent] == [2, 3, 4]
    assert view.percentile(50) == 3.0
    assert view.percentile(99) == 5.0
    assert view.summary() == "5 line(s), 5 event(s), 1 error(s), latency p50 3.00 ms p99 5.00 ms"
    console = Console(width=120, record=True, color_system=None)
    console.print(view.table())
    rendered = console.export_text()
    assert "阿梅（对白）" in rendered
    assert "大爷，给我来两斤。" in rendered
    assert "p99 5.00 ms" in rendered


def test_describe_gives_kind_who_and_details() -> None:
    """describe() names each kind's who/cue and details as the table shows them."""
    music = MusicEvent(
        stream="s", seq=1, t=None, start=0, end=2, confidence=0.9,
        backend="rules", cue="轻快尤克里里", type="尤克里里", mood="",
    )  # fmt: skip
    assert describe(music) == ("music", "轻快尤克里里", "type: 尤克里里  mood: -")
    assert describe(_speech(1))[1] == "阿梅（对白）"


def test_bundled_sample_lasts_thirty_to_sixty_seconds() -> None:
    """The demo sample plays for 30-60 s at real pace and has lines of every shape."""
    stamps = re.findall(r"(\d\d):(\d\d):(\d\d),(\d{3}) -->", SAMPLE.read_text(encoding="utf-8"))
    starts = [((int(h) * 60 + int(m)) * 60 + int(s)) + int(ms) / 1000 for h, m, s, ms in stamps]
    assert 30 <= starts[-1] - starts[0] <= 60
    assert len(starts) >= 20


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    env.pop("SUBTAG_TOKENS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_demo_replays_the_sample_and_prints_events_and_the_viewer_url() -> None:
    """A bounded run prints the viewer URL and the sample's events, moving off a busy port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = _demo("--port", str(port), "--no-pace", "--plain", "--duration", "60")
        out, _ = process.communicate(timeout=90)
    assert process.returncode == 0, out
    assert f"port {port} is busy; using a free port instead" in out
    url = re.search(r"live viewer at (http://127\.0\.0\.1:(\d+)/)", out)
    assert url is not None, out
    assert int(url[2]) != port
    assert re.search(r"#\d+\s+speech\s+卖菜大爷（对白）\s+新鲜的豆角", out), out
    assert re.search(r"#\d+\s+music\s+", out), out
    assert re.search(r"#\d+\s+action\s+", out), out
    summary = re.search(r"done: (\d+) line\(s\), (\d+) event\(s\), 0 error\(s\)", out)
    assert summary is not None, out
    assert int(summary[1]) == SAMPLE.read_text(encoding="utf-8").count(" --> ")


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    """SIGINT while serving (--stay) drains the service and exits 130 with a summary."""
    process = _demo("--port", "0", "--speed", "50", "--plain", "--stay")
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    for row in process.stdout:
        seen.append(row)
        if "still serving at" in row or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    out = "".join(seen) + rest
    assert process.returncode == 130, out
    assert "interrupted;" in out
    assert re.search(r"interrupted; \d+ line\(s\)", out), out
