"""Fan-out: who gets which outbound message, through bounded per-subscriber queues.

Pure core: no sockets, no event loop. Each message is encoded once by the caller; the same bytes
object goes into every matching subscriber's queue. An adapter (stream.ws, stream.mqtt) drains a
subscriber's queue to its socket and is woken through the ``wake`` callback it supplies.

Queue policy when a subscriber is slower than the stream of events (``[fanout] policy``):

* ``drop_oldest`` (default): the oldest queued message is dropped and counted
  (``subtag_drops_total{reason="subscriber_queue"}``); a slow subscriber loses messages, never
  the service's memory, never the other subscribers' or the ingest's pace.
* ``disconnect``: the subscriber is marked overflowed and its adapter closes it (code 1013,
  try again later) so it can reconnect and knows it missed messages.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Final, Literal

__all__ = ["KINDS", "Fanout", "Filter", "Subscriber"]

# ``kind`` values a filter may name: the event kinds, plus the two status message types.
KINDS: Final = frozenset({"speech", "music", "action", "done", "error"})


class Filter:
    """Which messages a subscriber wants: by stream (exact ids or fnmatch patterns) and kind.

    An empty criterion matches everything. ``kind`` filters events; each line's ``done`` and
    ``error`` messages pass it too (a subscriber asking ``kind=speech`` still learns when a
    line is finished) unless ``kind`` names ``done`` or ``error`` itself, which then chooses
    the status messages explicitly.
    """

    __slots__ = ("_exact", "_kinds", "_patterns")

    def __init__(self, streams: Iterable[str] = (), kinds: Iterable[str] = ()) -> None:
        names = [s for s in streams if s]
        exact = frozenset(s for s in names if not _is_pattern(s))
        self._patterns = tuple(s for s in names if _is_pattern(s))
        self._exact: frozenset[str] | None = exact if names else None
        wanted = frozenset(k for k in kinds if k)
        unknown = wanted - KINDS
        if unknown:
            raise ValueError(
                f"unknown kind {', '.join(sorted(unknown))}; use {', '.join(sorted(KINDS))}"
            )
        if wanted and not wanted & _STATUS:
            wanted |= _STATUS
        self._kinds = wanted or None

    @classmethod
    def from_query(cls, streams: str | None, kinds: str | None) -> Filter:
        """Build from the ``?stream=a,b&kind=speech,music`` query values.

        Raises:
            ValueError: A kind is unknown (the message lists the known ones).
        """
        return cls((streams or "").split(","), (kinds or "").split(","))

    def wants_stream(self, stream: str) -> bool:
        """Whether messages of ``stream`` pass."""
        if self._exact is None:
            return True
        return stream in self._exact or any(fnmatch.fnmatchcase(stream, p) for p in self._patterns)

    def matches(self, stream: str, kind: str) -> bool:
        """Whether a message of ``kind`` (event kind, done, error) on ``stream`` passes."""
        if self._kinds is not None and kind not in self._kinds:
            return False
        return self.wants_stream(stream)

    def restricted_to(self, patterns: Collection[str]) -> Filter:
        """This filter, limited to streams matching ``patterns`` when it names no stream.

        A subscriber whose token allows only some streams and who names none gets exactly
        the allowed ones.
        """
        if self._exact is not None or "*" in patterns:
            return self
        narrowed = Filter(patterns)
        narrowed._kinds = self._kinds
        return narrowed

    @property
    def streams(self) -> tuple[str, ...] | None:
        """The stream ids and patterns named (``None`` = every stream)."""
        if self._exact is None:
            return None
        return tuple(sorted(self._exact)) + self._patterns


_STATUS: Final = frozenset({"done", "error"})


def _is_pattern(stream: str) -> bool:
    return any(ch in stream for ch in "*?[")


class Subscriber:
    """One subscriber's bounded outbound queue.

    Attributes:
        filter: What it wants.
        queue: Encoded messages waiting to be sent, oldest first.
        dropped: Messages dropped because the queue was full.
        overflowed: Set under the ``disconnect`` policy when the queue filled up.
    """

    __slots__ = ("_capacity", "_policy", "dropped", "filter", "name", "overflowed", "queue", "wake")

    def __init__(
        self,
        filter: Filter,
        *,
        capacity: int,
        policy: Literal["drop_oldest", "disconnect"],
        wake: Callable[[], None],
        name: str = "",
    ) -> None:
        self.filter = filter
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.overflowed = False
        self.wake = wake
        self.name = name
        self._capacity = capacity
        self._policy = policy

    def offer(self, payload: bytes) -> bool:
        """Queue ``payload``; return ``False`` when something was dropped or it overflowed."""
        if self.overflowed:
            return False
        queue = self.queue
        ok = True
        if len(queue) >= self._capacity:
            if self._policy == "disconnect":
                self.overflowed = True
                self.wake()
                return False
            queue.popleft()
            self.dropped += 1
            ok = False
        queue.append(payload)
        if len(queue) == 1:
            self.wake()
        return ok


class Fanout:
    """The set of subscribers and the routing of each message to those that want it."""

    __slots__ = ("_subscribers", "drops")

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.drops = 0

    def add(self, subscriber: Subscriber) -> None:
        """Start delivering to ``subscriber``."""
        self._subscribers.append(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` (no error if it is already gone)."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)

    def publish(self, stream: str, kind: str, payload: bytes) -> int:
        """Offer one encoded message to every matching subscriber; return how many dropped."""
        dropped = 0
        for sub in self._subscribers:
            if sub.filter.matches(stream, kind) and not sub.offer(payload):
                dropped += 1
        self.drops += dropped
        return dropped

    def __len__(self) -> int:
        return len(self._subscribers)

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(self._subscribers)
