"""Scheduling decisions: which queued lines go to the engine together, and when.

Pure core: no event loop, no clocks (``now_ns`` is passed in). The async side (stream.runner)
asks :meth:`FairQueue.due_in` how long to wait, then takes a batch with :meth:`FairQueue.take`.

Rules, each chosen for a reason:

* One bounded queue per stream, plus a global bound: a flood on one stream is refused
  (``overloaded``) instead of growing memory or starving others.
* A batch takes at most one line per stream, and a stream with a line in the engine is not
  *ready* until that line is released. So all of line k's events precede line k+1's with no
  extra bookkeeping, and line k+1's rolling-window context already holds line k.
* Ready streams form a round-robin ring: a stream that had a turn goes to the back, so a busy
  stream cannot starve a quiet one, whatever the arrival pattern.
* A batch is dispatched when ``max_batch`` streams are ready, or when the first ready line
  has waited ``max_wait_ns`` (bounding the latency micro-batching adds).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["FairQueue", "PushResult"]

T = TypeVar("T")


class PushResult:
    """Why :meth:`FairQueue.push` accepted or refused a line."""

    OK = "ok"
    STREAM_FULL = "stream_full"
    QUEUE_FULL = "queue_full"


class FairQueue(Generic[T]):
    """Per-stream FIFO queues served round-robin, one line per stream per batch."""

    __slots__ = (
        "_busy",
        "_depth",
        "_max_batch",
        "_max_per_stream",
        "_max_total",
        "_max_wait_ns",
        "_queues",
        "_ready",
        "_ready_since_ns",
    )

    def __init__(
        self, *, max_batch: int, max_wait_ns: int, max_per_stream: int, max_total: int
    ) -> None:
        self._max_batch = max_batch
        self._max_wait_ns = max_wait_ns
        self._max_per_stream = max_per_stream
        self._max_total = max_total
        self._queues: dict[str, deque[T]] = {}
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
        self._depth = 0
        self._ready_since_ns: int | None = None

    def push(self, stream: str, item: T, now_ns: int) -> str:
        """Queue a line of ``stream``; return a :class:`PushResult` value."""
        if self._depth >= self._max_total:
            return PushResult.QUEUE_FULL
        queue = self._queues.get(stream)
        if queue is None:
            queue = self._queues[stream] = deque()
        elif len(queue) >= self._max_per_stream:
            return PushResult.STREAM_FULL
        queue.append(item)
        self._depth += 1
        if len(queue) == 1 and stream not in self._busy:
            self._make_ready(stream, now_ns)
        return PushResult.OK

    def _make_ready(self, stream: str, now_ns: int) -> None:
        self._ready.append(stream)
        if self._ready_since_ns is None:
            self._ready_since_ns = now_ns

    def due_in(self, now_ns: int) -> int | None:
        """Nanoseconds until a batch should be taken: 0 = now, ``None`` = nothing is ready."""
        if self._ready_since_ns is None:
            return None
        if len(self._ready) >= self._max_batch:
            return 0
        return max(0, self._ready_since_ns + self._max_wait_ns - now_ns)

    def take(self, now_ns: int) -> list[T]:
        """Take the next batch: the head line of up to ``max_batch`` ready streams, in turn.

        The streams taken are busy until :meth:`release`.
        """
        batch: list[T] = []
        ready = self._ready
        while ready and len(batch) < self._max_batch:
            stream = ready.popleft()
            queue = self._queues[stream]
            batch.append(queue.popleft())
            self._busy.add(stream)
        self._depth -= len(batch)
        if not ready:
            self._ready_since_ns = None
        # Else the lines left behind have waited a full batch already: keep the old stamp
        # so they are due at once.
        return batch

    def release(self, stream: str, now_ns: int) -> None:
        """The engine is done with ``stream``'s line: its next line (if any) becomes ready."""
        self._busy.discard(stream)
        queue = self._queues.get(stream)
        if queue:
            self._make_ready(stream, now_ns)
        elif queue is not None:
            del self._queues[stream]

    def drop_stream(self, stream: str) -> list[T]:
        """Remove and return every queued line of ``stream`` (e.g. its window was evicted)."""
        queue = self._queues.pop(stream, None)
        if not queue:
            return []
        if stream in self._ready:
            self._ready.remove(stream)
            if not self._ready:
                self._ready_since_ns = None
        self._depth -= len(queue)
        return list(queue)

    @property
    def depth(self) -> int:
        """Lines queued (not counting those in the engine)."""
        return self._depth

    @property
    def busy(self) -> int:
        """Streams with a line in the engine."""
        return len(self._busy)

    def __len__(self) -> int:
        return self._depth
