"""Per-client limits: line checks and a token-bucket rate limit.

Pure core: time comes in as ``now_ns``. Each breach is answered by the adapter with an
``error`` message carrying the code returned here; the connection stays open.
"""

from __future__ import annotations

from stream.config import LimitsConfig
from stream.schema import ErrorCode

__all__ = ["RateLimiter", "check_line"]


class RateLimiter:
    """A token bucket: ``rate`` lines per second sustained, ``burst`` at once (0 = no limit)."""

    __slots__ = ("_burst", "_last_ns", "_rate_per_ns", "_tokens")

    def __init__(self, rate: float, burst: int, now_ns: int) -> None:
        self._rate_per_ns = rate / 1e9
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last_ns = now_ns

    def allow(self, now_ns: int) -> bool:
        """Take one token if there is one."""
        if self._rate_per_ns == 0:
            return True
        tokens = self._tokens + (now_ns - self._last_ns) * self._rate_per_ns
        self._last_ns = now_ns
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def check_line(text: str, limits: LimitsConfig) -> tuple[str, str] | None:
    """``(code, message)`` when a decoded line breaks a limit, else ``None``."""
    if not text.strip():
        return ErrorCode.EMPTY_LINE, "the line is empty"
    if len(text) > limits.max_line_chars:
        return (
            ErrorCode.LINE_TOO_LONG,
            f"the line has {len(text)} characters; the limit is {limits.max_line_chars}",
        )
    return None
