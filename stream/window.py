"""Per-stream state: the rolling context window and the bounded table of live streams.

Pure core: no clocks, no I/O. Time comes in as ``now_ns`` (monotonic nanoseconds), so idle
expiry and LRU eviction are tested by passing numbers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["RecentKeys", "RollingWindow", "StreamState", "StreamTable", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    """Approximate a line's token count without a tokenizer.

    CJK text costs about one token per character in the SeqGPT (BLOOMZ) vocabulary; Latin
    text about one per four characters. Close enough to keep the prompt within budget.
    """
    if text.isascii():
        return (len(text) + 3) // 4
    # CJK characters take 3 bytes in UTF-8: counting bytes beats a per-character loop.
    wide = min(len(text), (len(text.encode("utf-8")) - len(text)) // 2)
    return wide + (len(text) - wide + 3) // 4


class RollingWindow:
    """The most recent lines of one stream, bounded by a line count and a token budget."""

    __slots__ = ("_lines", "_max_lines", "_max_tokens", "_tokens")

    def __init__(self, max_lines: int, max_tokens: int) -> None:
        self._max_lines = max_lines
        self._max_tokens = max_tokens
        self._lines: deque[tuple[str, int]] = deque()
        self._tokens = 0

    def context(self) -> tuple[str, ...]:
        """The lines in the window, oldest first."""
        return tuple(text for text, _ in self._lines)

    def push(self, text: str) -> tuple[str, ...]:
        """Add a line; return the context it should be tagged with (the lines before it)."""
        before = self.context()
        if self._max_lines == 0:
            return before
        cost = estimate_tokens(text)
        self._lines.append((text, cost))
        self._tokens += cost
        while self._lines and (
            len(self._lines) > self._max_lines or self._tokens > self._max_tokens
        ):
            _, dropped = self._lines.popleft()
            self._tokens -= dropped
        return before

    @property
    def tokens(self) -> int:
        """The estimated tokens the window holds."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._lines)


@dataclass(slots=True)
class StreamState:
    """What the service remembers about one live stream.

    Attributes:
        name: The stream id.
        window: Its rolling context.
        next_seq: The ``seq`` the server assigns to the next line that carries none.
        last_seen_ns: When the stream last received a line or was pinned.
        pins: Holders that keep the stream from eviction (open ingest connections, lines in
            flight).
    """

    name: str
    window: RollingWindow
    next_seq: int = 0
    last_seen_ns: int = 0
    pins: int = 0

    def assign_seq(self, seq: int | None) -> int:
        """The line's sequence number: the client's, or the next free one."""
        if seq is None:
            seq = self.next_seq
        if seq >= self.next_seq:
            self.next_seq = seq + 1
        return seq


class StreamTable:
    """The live streams, bounded: the least recently used idle stream is evicted first.

    A stream is evictable when nothing pins it. When the table is full and every stream is
    pinned, :meth:`admit` refuses the new stream (the caller answers ``too_many_streams``);
    memory never grows past ``capacity`` streams.
    """

    def __init__(
        self, capacity: int, *, window_lines: int, window_tokens: int, idle_expiry_ns: int
    ) -> None:
        self._capacity = capacity
        self._window_lines = window_lines
        self._window_tokens = window_tokens
        self._idle_expiry_ns = idle_expiry_ns
        self._streams: OrderedDict[str, StreamState] = OrderedDict()
        self.evicted = 0

    def admit(self, name: str, now_ns: int) -> StreamState | None:
        """The stream's state, created if new; ``None`` when the table is full of busy streams."""
        state = self._streams.get(name)
        if state is not None:
            if now_ns - state.last_seen_ns > self._idle_expiry_ns and state.pins == 0:
                # Idle past expiry: the old context no longer describes the scene.
                state.window = RollingWindow(self._window_lines, self._window_tokens)
            self._streams.move_to_end(name)
            state.last_seen_ns = now_ns
            return state
        if len(self._streams) >= self._capacity and not self._evict_one():
            return None
        state = StreamState(
            name=name,
            window=RollingWindow(self._window_lines, self._window_tokens),
            last_seen_ns=now_ns,
        )
        self._streams[name] = state
        return state

    def _evict_one(self) -> bool:
        for name, state in self._streams.items():  # oldest first
            if state.pins == 0:
                del self._streams[name]
                self.evicted += 1
                return True
        return False

    def expire(self, now_ns: int) -> list[str]:
        """Forget unpinned streams idle longer than the expiry; return their names."""
        gone = []
        for name, state in self._streams.items():
            if now_ns - state.last_seen_ns <= self._idle_expiry_ns:
                break  # LRU order: every later stream was seen more recently
            if state.pins == 0:
                gone.append(name)
        for name in gone:
            del self._streams[name]
        self.evicted += len(gone)
        return gone

    def get(self, name: str) -> StreamState | None:
        """The stream's state if it is live."""
        return self._streams.get(name)

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)


class RecentKeys:
    """A bounded set of recently seen keys (e.g. ``(stream, seq)``), forgetting the oldest.

    Used to drop lines a broker delivers twice (QoS 1 redelivery after a reconnect) without
    remembering every line ever seen.
    """

    __slots__ = ("_capacity", "_keys")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[object, None] = OrderedDict()

    def add(self, key: object) -> bool:
        """Remember ``key``; return ``False`` when it was already remembered (a duplicate)."""
        if self._capacity == 0:
            return True
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)
