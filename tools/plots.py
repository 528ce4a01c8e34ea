"""PNG plots for the benchmarks: latency CDF per mode, throughput and latency vs offered load.

Each function takes plain numbers (what a benchmark already has in its table), writes one PNG
and returns its path, so a benchmark writes ``results.md`` and its plots side by side::

    from tools.plots import latency_cdf, throughput_vs_load   # python -m tools.bench_x
    from plots import latency_cdf, throughput_vs_load         # python tools/bench_x.py

    latency_cdf({"rules": rules_ms, "seqgpt-cpu": cpu_ms}, "artifacts/bench/latency_cdf.png")
    throughput_vs_load({"rules": [(100, 99.8), (1000, 990.0)]}, "artifacts/bench/throughput.png")

matplotlib is imported lazily with the non-interactive Agg backend (no display needed); it is the
``plots`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["latency_cdf", "latency_vs_load", "throughput_vs_load"]

# One colour per series, in order; readable on white and for the common colour blindnesses.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        from stream.errors import MissingExtraError

        raise MissingExtraError("matplotlib", "plots") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150, format="png")
    _pyplot().close(fig)
    return out


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Nearest rank, the same definition the benchmarks' tables and the viewer use.
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_cdf(
    samples: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "Per-line latency",
    unit: str = "ms",
    log_x: bool = True,
    marks: Sequence[float] = (50, 99),
) -> Path:
    """Plot the empirical CDF of latency samples, one line per mode.

    Args:
        samples: Mode name -> latency samples (any order). Empty series are left out.
        path: Where to write the PNG (parent folders are created).
        title: The plot title.
        unit: The samples' unit, for the axis label.
        log_x: Logarithmic latency axis (latencies span orders of magnitude across modes).
        marks: Percentiles to mark on each curve (and name in the legend).

    Returns:
        The path written.

    Raises:
        ValueError: No series has any sample, or a sample is negative or not finite.
    """
    series = {name: sorted(values) for name, values in samples.items() if len(values)}
    if not series:
        raise ValueError("latency_cdf needs at least one non-empty series")
    for name, values in series.items():
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"series {name!r} has a negative or non-finite latency")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, values) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        n = len(values)
        fractions = [(k + 1) / n for k in range(n)]
        marked = ", ".join(f"p{q:g} {_percentile(values, q):.3g}" for q in marks)
        ax.step(values, fractions, where="post", color=color, lw=1.8, label=f"{name} ({marked})")
        for q in marks:
            ax.plot([_percentile(values, q)], [q / 100], "o", color=color, ms=4)
    if log_x and min(v for values in series.values() for v in values) > 0:
        ax.set_xscale("log")
    for q in marks:
        ax.axhline(q / 100, color="#999", lw=0.6, ls=":")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"latency ({unit})")
    ax.set_ylabel("fraction of lines")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _load_axes(
    series: Mapping[str, Sequence[Sequence[float]]], width: int, name: str
) -> dict[str, list[tuple[float, ...]]]:
    points = {k: sorted(tuple(map(float, p)) for p in v) for k, v in series.items() if len(v)}
    if not points:
        raise ValueError(f"{name} needs at least one non-empty series")
    for key, rows in points.items():
        if any(len(row) != width for row in rows):
            raise ValueError(f"series {key!r}: every point must have {width} numbers")
    return points


def throughput_vs_load(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    title: str = "Throughput vs offered load",
    unit: str = "lines/s",
    ideal: bool = True,
    log_axes: bool = False,
) -> Path:
    """Plot achieved throughput against offered load, one line per mode.

    Args:
        series: Mode name -> ``(offered, achieved)`` points, in ``unit``.
        path: Where to write the PNG.
        title: The plot title.
        unit: Unit of both axes.
        ideal: Draw the ``achieved = offered`` diagonal (where a service that keeps up sits).
        log_axes: Log-log axes, for modes whose capacities differ by orders of magnitude
            (the rules tagger and a model on CPU).

    Returns:
        The path written.

    Raises:
        ValueError: No points, or a point that is not a pair.
    """
    points = _load_axes(series, 2, "throughput_vs_load")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = 0.0
    for i, (name, rows) in enumerate(points.items()):
        offered, achieved = zip(*rows, strict=True)
        top = max(top, *offered, *achieved)
        ax.plot(
            offered, achieved, "o-", color=_PALETTE[i % len(_PALETTE)], lw=1.8, ms=4, label=name
        )
    low = min(v for rows in points.values() for row in rows for v in row)
    if log_axes and low > 0:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        low = 0.0
    if ideal:
        ax.plot([low, top], [low, top], color="#999", lw=0.8, ls="--", label="offered = achieved")
    ax.set_xlabel(f"offered load ({unit})")
    ax.set_ylabel(f"throughput ({unit})")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def latency_vs_load(
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    path: str | Path,
    *,
    title: str = "Latency vs offered load",
    load_unit: str = "lines/s",
    unit: str = "ms",
    log_y: bool = True,
) -> Path:
    """Plot p50 (solid) and p99 (dashed) latency against offered load, one colour per mode.

    Args:
        series: Mode name -> ``(offered, p50, p99)`` points.
        path: Where to write the PNG.
        title: The plot title.
        load_unit: Unit of the load axis.
        unit: Unit of the latency axis.
        log_y: Logarithmic latency axis.

    Returns:
        The path written.

    Raises:
        ValueError: No points, or a point that is not a triple.
    """
    points = _load_axes(series, 3, "latency_vs_load")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, rows) in enumerate(points.items()):
        color = _PALETTE[i % len(_PALETTE)]
        offered, p50, p99 = zip(*rows, strict=True)
        ax.plot(offered, p50, "o-", color=color, lw=1.8, ms=4, label=f"{name} p50")
        ax.plot(offered, p99, "s--", color=color, lw=1.2, ms=3, label=f"{name} p99")
    if log_y and all(v > 0 for rows in points.values() for row in rows for v in row[1:]):
        ax.set_yscale("log")
    ax.set_xlabel(f"offered load ({load_unit})")
    ax.set_ylabel(f"latency ({unit})")
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
