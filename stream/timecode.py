"""Frame rates, SMPTE timecodes (drop-frame included) and rational times for editor exports.

Pure arithmetic on integers: no clocks, no floats where a frame count is decided, so a marker
lands on the same frame in every format. Drop-frame timecode (29.97 and 59.94) skips the frame
numbers 0 and 1 (0-3 at 59.94) at the start of every minute except each tenth minute, so that
the timecode keeps up with the wall clock while every frame is still counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from stream.errors import ConfigError

__all__ = [
    "FPS_CHOICES",
    "FrameRate",
    "format_clock_ms",
    "parse_clock_ms",
    "parse_fps",
]


@dataclass(frozen=True, slots=True)
class FrameRate:
    """A video frame rate and the timecode that counts it.

    Attributes:
        name: The name the user gave (``"29.97"``, ``"25"``...).
        num: Frames per ``den`` seconds (30000 for 29.97).
        den: The seconds that ``num`` frames take (1001 for 29.97).
        nominal: Timecode frames per second (30 for 29.97): the ``FF`` field counts up to it.
        drop_frame: Whether timecodes skip frame numbers (``HH:MM:SS;FF``).
    """

    name: str
    num: int
    den: int
    nominal: int
    drop_frame: bool

    @property
    def dropped_per_minute(self) -> int:
        """Frame numbers skipped at each minute that is not a tenth minute (0 for non-drop)."""
        return self.nominal // 15 if self.drop_frame else 0

    @property
    def frame_duration(self) -> Fraction:
        """One frame's length in seconds."""
        return Fraction(self.den, self.num)

    def frames_at_ms(self, ms: int) -> int:
        """The frame showing at ``ms`` milliseconds, rounded to the nearest frame.

        Args:
            ms: A non-negative time in milliseconds.
        """
        # frames = ms / 1000 * num / den, rounded half up in integers.
        scaled = ms * self.num * 2 + self.den * 1000
        return scaled // (self.den * 2000)

    def ms_at_frame(self, frames: int) -> int:
        """The start of frame ``frames`` in milliseconds (rounded down)."""
        return frames * self.den * 1000 // self.num

    def timecode(self, frames: int) -> str:
        """Format a frame count as ``HH:MM:SS:FF`` (``HH:MM:SS;FF`` when drop-frame).

        Args:
            frames: Frames since ``00:00:00:00``, non-negative.

        Raises:
            ValueError: ``frames`` is negative.
        """
        if frames < 0:
            raise ValueError(f"a timecode cannot be negative ({frames} frames)")
        drop = self.dropped_per_minute
        if drop:
            per_ten_minutes = 600 * self.nominal - 9 * drop
            per_minute = 60 * self.nominal - drop
            tens, rest = divmod(frames, per_ten_minutes)
            # Put back the frame numbers the timecode skipped, so the digits can be read off
            # as if every number were used.
            skipped = 9 * drop * tens
            if rest >= drop:
                skipped += drop * ((rest - drop) // per_minute)
            frames += skipped
        seconds, ff = divmod(frames, self.nominal)
        minutes, ss = divmod(seconds, 60)
        hh, mm = divmod(minutes, 60)
        separator = ";" if drop else ":"
        return f"{hh:02d}:{mm:02d}:{ss:02d}{separator}{ff:02d}"

    def frames_from_timecode(self, timecode: str) -> int:
        """Parse ``HH:MM:SS:FF`` / ``HH:MM:SS;FF`` back to a frame count.

        Raises:
            ValueError: Not a timecode of this rate (bad shape, ``FF`` too large, or a frame
                number that drop-frame skips).
        """
        match = _TIMECODE.fullmatch(timecode)
        if match is None:
            raise ValueError(f"not a timecode: {timecode!r}")
        hh, mm, ss, ff = (int(match[name]) for name in ("hh", "mm", "ss", "ff"))
        drop = self.dropped_per_minute
        if mm >= 60 or ss >= 60 or ff >= self.nominal:
            raise ValueError(f"timecode {timecode!r} is out of range at {self.name} fps")
        if drop and ss == 0 and mm % 10 != 0 and ff < drop:
            raise ValueError(f"timecode {timecode!r} does not exist in drop-frame")
        total_minutes = hh * 60 + mm
        frames = ((hh * 3600 + mm * 60 + ss) * self.nominal) + ff
        return frames - drop * (total_minutes - total_minutes // 10)

    def rational(self, frames: int) -> str:
        """A frame count as an FCPXML rational time in seconds.

        Whole seconds are written ``"3s"``; anything else over the rate's own timebase, as
        Final Cut Pro writes it (``"2002/30000s"`` at 29.97, ``"51/25s"`` at 25), so every
        time reads as a whole number of ``frameDuration``.
        """
        if (frames * self.den) % self.num == 0:
            return f"{frames * self.den // self.num}s"
        return f"{frames * self.den}/{self.num}s"


_TIMECODE: Final = re.compile(r"(?P<hh>\d{2,}):(?P<mm>\d{2}):(?P<ss>\d{2})[:;.](?P<ff>\d{2})")

_RATES: Final[dict[str, FrameRate]] = {
    "23.976": FrameRate("23.976", 24000, 1001, 24, drop_frame=False),
    "24": FrameRate("24", 24, 1, 24, drop_frame=False),
    "25": FrameRate("25", 25, 1, 25, drop_frame=False),
    "29.97": FrameRate("29.97", 30000, 1001, 30, drop_frame=True),
    "29.97ndf": FrameRate("29.97ndf", 30000, 1001, 30, drop_frame=False),
    "30": FrameRate("30", 30, 1, 30, drop_frame=False),
    "50": FrameRate("50", 50, 1, 50, drop_frame=False),
    "59.94": FrameRate("59.94", 60000, 1001, 60, drop_frame=True),
    "60": FrameRate("60", 60, 1, 60, drop_frame=False),
}

_ALIASES: Final = {
    "23.98": "23.976",
    "29.97df": "29.97",
    "29.97-df": "29.97",
    "29.97-ndf": "29.97ndf",
    "59.94df": "59.94",
}

FPS_CHOICES: Final = tuple(_RATES)
"""Frame rates ``--fps`` accepts; ``29.97`` and ``59.94`` are drop-frame."""


def parse_fps(text: str) -> FrameRate:
    """Look up a frame rate by name (``"25"``, ``"29.97"`` = drop-frame, ``"29.97ndf"``...).

    Raises:
        ConfigError: The rate is not one editors use; the message lists those that are.
    """
    key = text.strip().lower()
    key = _ALIASES.get(key, key)
    rate = _RATES.get(key)
    if rate is None:
        raise ConfigError(
            f"unsupported frame rate {text!r}; choose one of {', '.join(FPS_CHOICES)} "
            "(29.97 and 59.94 are drop-frame; 29.97ndf is non-drop)"
        )
    return rate


# Timestamps as subtitle lines write them: [HH:]MM:SS with optional .mmm or ,mmm.
_CLOCK: Final = re.compile(
    r"\s*\[?\s*(?:(?P<h>\d{1,3}):)?(?P<m>\d{1,2}):(?P<s>\d{1,2})(?:[.,](?P<frac>\d{1,3}))?\s*\]?\s*"
)


def parse_clock_ms(text: str | None) -> int | None:
    """Parse a subtitle timestamp (``00:05:22``, ``00:05:22.500``, ``05:22``, ``00:05:22,5``).

    Returns:
        Milliseconds, or ``None`` when ``text`` is absent or not a timestamp.
    """
    if text is None:
        return None
    match = _CLOCK.fullmatch(text)
    if match is None:
        return None
    minutes, seconds = int(match["m"]), int(match["s"])
    if seconds >= 60 or (match["h"] is not None and minutes >= 60):
        return None
    hours = int(match["h"] or 0)
    # "22.5" means half a second: the fraction is decimal, padded on the right.
    millis = int((match["frac"] or "0").ljust(3, "0"))
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def format_clock_ms(ms: int, separator: str = ".") -> str:
    """Format milliseconds as ``HH:MM:SS.mmm`` (``separator="," `` for SRT)."""
    seconds, millis = divmod(ms, 1000)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}{separator}{millis:03d}"
