"""Progress bars: on stderr, off when not a terminal, items passed through unchanged."""

from __future__ import annotations

import pytest

from stream.progress import progress_bar, track


def test_track_yields_items_and_draws_on_stderr_when_enabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An enabled bar shows its description and count on stderr, never on stdout."""
    assert list(track(iter(range(5)), description="tagging demo", total=5, enabled=True)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "tagging demo" in captured.err
    assert "5/5" in captured.err


def test_bars_are_silent_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """By default (stderr captured, so not a terminal) nothing is drawn."""
    with progress_bar("exporting", total=2) as advance:
        advance()
        advance()
    assert list(track([1, 2], description="x")) == [1, 2]
    assert capsys.readouterr().err == ""
