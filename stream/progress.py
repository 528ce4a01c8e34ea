"""Progress bars for long terminal steps (tagging a file, exports, benchmarks), on stderr.

Bars go to stderr so that stdout stays the data (``subtag tag file --format jsonl > out``), and
they switch themselves off when stderr is not a terminal (pipes, CI logs, tests) unless asked.

    for line in track(lines, description="tagging", total=len(lines)):
        ...

    with progress_bar("exporting", total=3) as advance:
        step_one(); advance()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar", "track"]

T = TypeVar("T")


def _progress(enabled: bool | None) -> Progress:
    console = Console(stderr=True)
    show = console.is_terminal if enabled is None else enabled
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=False,
    )


@contextmanager
def progress_bar(
    description: str, total: float | None = None, *, enabled: bool | None = None
) -> Iterator[Callable[[float], None]]:
    """Show one bar while the block runs; yields ``advance(steps=1)``.

    Args:
        description: What the step is doing ("tagging demo.srt").
        total: Steps in all; ``None`` shows a spinner and a count without a bar's end.
        enabled: Force the bar on or off; by default on only when stderr is a terminal.
    """
    with _progress(enabled) as progress:
        task = progress.add_task(description, total=total)

        def advance(steps: float = 1) -> None:
            progress.advance(task, steps)

        yield advance


def track(
    items: Iterable[T],
    *,
    description: str,
    total: float | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, advancing a bar after each one (lazily: it is a generator).

    Args:
        items: Anything iterable, consumed once.
        description: What the step is doing.
        total: How many items there are (``len(items)`` when it has one).
        enabled: Force the bar on or off; by default on only when stderr is a terminal.
    """
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress_bar(description, total, enabled=enabled) as advance:
        for item in items:
            yield item
            advance(1)
