"""Scheduling decisions: fairness, per-stream order, batch size and wait (pure core)."""

from __future__ import annotations

from stream.scheduler import FairQueue, PushResult

MS = 1_000_000


def make(
    max_batch: int = 4, wait_ms: float = 2.0, per_stream: int = 8, total: int = 100
) -> FairQueue[str]:
    return FairQueue(
        max_batch=max_batch,
        max_wait_ns=int(wait_ms * MS),
        max_per_stream=per_stream,
        max_total=total,
    )


def test_nothing_ready_means_no_deadline() -> None:
    """An empty queue has nothing due."""
    assert make().due_in(0) is None


def test_batch_waits_up_to_max_wait_then_is_due() -> None:
    """A lone line waits at most max_wait for company."""
    queue = make(wait_ms=2.0)
    queue.push("a", "a0", 10 * MS)
    assert queue.due_in(10 * MS) == 2 * MS
    assert queue.due_in(11 * MS) == 1 * MS
    assert queue.due_in(13 * MS) == 0


def test_full_batch_is_due_at_once() -> None:
    """max_batch ready streams dispatch without waiting."""
    queue = make(max_batch=2)
    queue.push("a", "a0", 0)
    queue.push("b", "b0", 0)
    assert queue.due_in(0) == 0


def test_batch_takes_one_line_per_stream() -> None:
    """A batch never holds two lines of one stream."""
    queue = make()
    for item in ("a0", "a1", "b0"):
        queue.push(item[0], item, 0)
    assert queue.take(0) == ["a0", "b0"]
    assert queue.depth == 1


def test_stream_waits_until_its_line_is_released() -> None:
    """Line k+1 is not ready while line k is in the engine."""
    queue = make()
    queue.push("a", "a0", 0)
    queue.push("a", "a1", 0)
    assert queue.take(0) == ["a0"]
    assert queue.due_in(0) is None
    assert queue.take(0) == []
    queue.release("a", 5 * MS)
    assert queue.take(10 * MS) == ["a1"]


def test_round_robin_does_not_starve_a_quiet_stream() -> None:
    """A stream with many lines takes turns with a stream with one."""
    queue = make(max_batch=1)
    for i in range(3):
        queue.push("busy", f"busy{i}", 0)
    queue.push("quiet", "quiet0", 0)
    order = []
    for _ in range(4):
        (item,) = queue.take(0)
        order.append(item)
        queue.release(item[:-1], 0)
    assert order == ["busy0", "quiet0", "busy1", "busy2"]


def test_per_stream_and_total_bounds_refuse() -> None:
    """A full stream queue or a full service refuses instead of growing."""
    queue = make(per_stream=2, total=3)
    assert queue.push("a", "a0", 0) == PushResult.OK
    assert queue.push("a", "a1", 0) == PushResult.OK
    assert queue.push("a", "a2", 0) == PushResult.STREAM_FULL
    assert queue.push("b", "b0", 0) == PushResult.OK
    assert queue.push("c", "c0", 0) == PushResult.QUEUE_FULL
    assert len(queue) == 3


def test_leftover_ready_lines_stay_due() -> None:
    """Lines left out of a full batch are due at once for the next one."""
    queue = make(max_batch=1, wait_ms=50)
    queue.push("a", "a0", 0)
    queue.push("b", "b0", 0)
    assert queue.take(60 * MS) == ["a0"]
    assert queue.due_in(60 * MS) == 0


def test_drop_stream_removes_its_lines() -> None:
    """Dropping a stream returns its queued lines and forgets it."""
    queue = make()
    queue.push("a", "a0", 0)
    queue.push("a", "a1", 0)
    assert queue.drop_stream("a") == ["a0", "a1"]
    assert queue.due_in(0) is None
    assert queue.depth == 0
