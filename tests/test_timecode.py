"""Frame rates, drop-frame timecodes, rational times and subtitle timestamps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.errors import ConfigError
from stream.timecode import FPS_CHOICES, format_clock_ms, parse_clock_ms, parse_fps


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (0, "00:00:00;00"),
        (1799, "00:00:59;29"),
        (1800, "00:01:00;02"),
        (3597, "00:01:59;29"),
        (3598, "00:02:00;02"),
        (17981, "00:09:59;29"),
        (17982, "00:10:00;00"),
        (17984, "00:10:00;02"),
        (19782, "00:11:00;02"),
        (107892, "01:00:00;00"),
    ],
)
def test_drop_frame_2997_known_values(frames: int, expected: str) -> None:
    """29.97 drop-frame skips ;00 and ;01 each minute except every tenth minute."""
    rate = parse_fps("29.97")
    assert rate.timecode(frames) == expected
    assert rate.frames_from_timecode(expected) == frames


def test_drop_frame_5994_skips_four_frame_numbers() -> None:
    """59.94 drop-frame skips four frame numbers a minute; one hour is 215784 frames."""
    rate = parse_fps("59.94")
    assert rate.timecode(3600) == "00:01:00;04"
    assert rate.timecode(215784) == "01:00:00;00"


def test_drop_frame_rejects_skipped_frame_numbers() -> None:
    """A drop-frame timecode that does not exist (00:01:00;00) is an error, not a guess."""
    with pytest.raises(ValueError, match="drop-frame"):
        parse_fps("29.97").frames_from_timecode("00:01:00;00")


@given(st.integers(min_value=0, max_value=24 * 3600 * 30), st.sampled_from(FPS_CHOICES))
def test_timecode_round_trips_for_every_rate(frames: int, name: str) -> None:
    """Every frame count formats to a timecode that parses back to it, at every rate."""
    rate = parse_fps(name)
    assert rate.frames_from_timecode(rate.timecode(frames)) == frames


@given(st.integers(min_value=0, max_value=10**6))
def test_drop_frame_timecodes_are_strictly_increasing(frames: int) -> None:
    """Consecutive frames never share a drop-frame timecode (none is skipped twice)."""
    rate = parse_fps("29.97")
    assert rate.frames_from_timecode(rate.timecode(frames + 1)) == frames + 1
    assert rate.timecode(frames) != rate.timecode(frames + 1)


def test_non_drop_rates_count_plain_frames() -> None:
    """Non-drop rates use ':' and wrap FF at the nominal rate."""
    assert parse_fps("25").timecode(25 * 62 + 12) == "00:01:02:12"
    assert parse_fps("23.976").timecode(24 * 3600) == "01:00:00:00"
    assert parse_fps("29.97ndf").timecode(1800) == "00:01:00:00"
    assert parse_fps("60").timecode(61) == "00:00:01:01"


def test_frames_at_ms_rounds_to_the_nearest_frame_of_the_real_rate() -> None:
    """Milliseconds map to frames at the true (1000/1001) rate, rounded to nearest."""
    ntsc = parse_fps("29.97")
    assert ntsc.frames_at_ms(60_000) == 1798  # 59.94 frames a second for one minute
    assert ntsc.frames_at_ms(600_600) == 18000  # exactly 18000 frames
    assert parse_fps("25").frames_at_ms(19) == 0
    assert parse_fps("25").frames_at_ms(20) == 1
    assert parse_fps("23.976").frames_at_ms(1001) == 24


def test_rational_times_are_exact_frame_multiples() -> None:
    """FCPXML times are frames times frameDuration over the rate's timebase, with an 's'."""
    assert parse_fps("29.97").rational(1) == "1001/30000s"
    assert parse_fps("29.97").rational(30) == "30030/30000s"
    assert parse_fps("29.97").rational(30000) == "1001s"
    assert parse_fps("25").rational(50) == "2s"
    assert parse_fps("25").rational(51) == "51/25s"
    assert parse_fps("23.976").rational(0) == "0s"


def test_fps_names_and_aliases() -> None:
    """Aliases resolve (23.98, 29.97df); an unknown rate lists the choices."""
    assert parse_fps("23.98").name == "23.976"
    assert parse_fps(" 29.97DF ").drop_frame
    assert not parse_fps("29.97ndf").drop_frame
    with pytest.raises(ConfigError, match="choose one of"):
        parse_fps("12")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("00:05:22", 322_000),
        ("00:05:22.500", 322_500),
        ("00:05:22,500", 322_500),
        ("05:22", 322_000),
        ("[00:01:10]", 70_000),
        ("1:02:03.5", 3_723_500),
        (None, None),
        ("soon", None),
        ("00:61:00", None),
    ],
)
def test_parse_clock_ms(text: str | None, ms: int | None) -> None:
    """Subtitle timestamps in the shapes lines use parse to milliseconds, others to None."""
    assert parse_clock_ms(text) == ms


def test_format_clock_ms() -> None:
    """Milliseconds format as HH:MM:SS.mmm, or with a comma for SRT."""
    assert format_clock_ms(3_723_045) == "01:02:03.045"
    assert format_clock_ms(62_000, ",") == "00:01:02,000"
