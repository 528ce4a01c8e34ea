"""The benchmark plot helpers write real PNG files and refuse empty or malformed data."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tools.plots import latency_cdf, latency_vs_load, throughput_vs_load

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_latency_cdf_writes_a_png(tmp_path: Path) -> None:
    """latency_cdf writes a PNG (creating folders) with one curve per non-empty mode."""
    out = latency_cdf(
        {"rules": [0.2, 0.3, 0.25, 1.5], "seqgpt": [12.0, 15.0, 40.0], "empty": []},
        tmp_path / "deep" / "cdf.png",
    )
    assert out == tmp_path / "deep" / "cdf.png"
    width, height = _png_size(out)
    assert width > 500
    assert height > 300


def test_load_plots_write_pngs(tmp_path: Path) -> None:
    """throughput_vs_load and latency_vs_load write PNGs from (load, value) points."""
    throughput = throughput_vs_load(
        {"rules": [(100, 100), (1000, 990), (5000, 2100)], "cpu": [(10, 10), (50, 31)]},
        tmp_path / "tput.png",
        log_axes=True,
    )
    latency = latency_vs_load(
        {"rules": [(100, 0.4, 1.2), (1000, 0.6, 3.5)], "cpu": [(10, 20, 45)]},
        tmp_path / "lat.png",
    )
    assert _png_size(throughput)[0] > 500
    assert _png_size(latency)[0] > 500


def test_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    """No samples, negative latencies or malformed points raise ValueError, write nothing."""
    with pytest.raises(ValueError, match="non-empty"):
        latency_cdf({"a": []}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="negative"):
        latency_cdf({"a": [1.0, -2.0]}, tmp_path / "b.png")
    with pytest.raises(ValueError, match="2 numbers"):
        throughput_vs_load({"a": [(1.0, 2.0, 3.0)]}, tmp_path / "c.png")  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []
