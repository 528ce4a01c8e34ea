"""Fan-out filters and bounded subscriber queues (pure core)."""

from __future__ import annotations

import pytest

from stream.fanout import Fanout, Filter, Subscriber


def sub(
    filter: Filter, capacity: int = 10, policy: str = "drop_oldest"
) -> tuple[Subscriber, list[int]]:
    wakes: list[int] = []
    subscriber = Subscriber(
        filter,
        capacity=capacity,
        policy=policy,  # type: ignore[arg-type]
        wake=lambda: wakes.append(1),
    )
    return subscriber, wakes


def test_empty_filter_matches_everything() -> None:
    """No criteria means every stream and kind."""
    f = Filter()
    assert f.matches("any", "speech")
    assert f.matches("any", "done")
    assert f.streams is None


def test_stream_filter_with_exact_ids_and_patterns() -> None:
    """Streams match by exact id or fnmatch pattern."""
    f = Filter.from_query("a,news-*", None)
    assert f.matches("a", "music")
    assert f.matches("news-1", "music")
    assert not f.matches("b", "music")


def test_kind_filter_keeps_done_and_error_unless_named() -> None:
    """kind=speech still delivers done/error; naming done chooses status messages explicitly."""
    speech = Filter.from_query(None, "speech")
    assert speech.matches("a", "speech")
    assert not speech.matches("a", "music")
    assert speech.matches("a", "done")
    assert speech.matches("a", "error")
    only_done = Filter.from_query(None, "music,done")
    assert only_done.matches("a", "done")
    assert not only_done.matches("a", "error")


def test_unknown_kind_is_refused() -> None:
    """A kind that does not exist is a clear error."""
    with pytest.raises(ValueError, match="unknown kind spoken"):
        Filter.from_query(None, "spoken")


def test_restricted_to_limits_an_unfiltered_subscriber() -> None:
    """A subscriber naming no stream gets only the streams its token allows."""
    f = Filter.from_query(None, "music").restricted_to(["team-*"])
    assert f.matches("team-a", "music")
    assert not f.matches("other", "music")
    assert not f.matches("team-a", "speech")


def test_drop_oldest_policy_keeps_the_newest_and_counts() -> None:
    """A full queue drops its oldest message and counts the drop."""
    s, _ = sub(Filter(), capacity=2)
    assert s.offer(b"1")
    assert s.offer(b"2")
    assert not s.offer(b"3")
    assert list(s.queue) == [b"2", b"3"]
    assert s.dropped == 1


def test_disconnect_policy_marks_overflow() -> None:
    """Under the disconnect policy a full queue marks the subscriber and wakes it to close."""
    s, wakes = sub(Filter(), capacity=1, policy="disconnect")
    assert s.offer(b"1")
    assert not s.offer(b"2")
    assert s.overflowed
    assert list(s.queue) == [b"1"]
    assert len(wakes) == 2


def test_wake_only_when_queue_becomes_non_empty() -> None:
    """The adapter is woken once per burst, not per message."""
    s, wakes = sub(Filter())
    s.offer(b"1")
    s.offer(b"2")
    assert len(wakes) == 1


def test_fanout_routes_by_filter_and_reuses_the_payload() -> None:
    """Each subscriber gets only what it asked for, the same bytes object for all."""
    fanout = Fanout()
    a, _ = sub(Filter(["a"]))
    everything, _ = sub(Filter())
    fanout.add(a)
    fanout.add(everything)
    payload = b'{"kind":"speech"}'
    fanout.publish("a", "speech", payload)
    fanout.publish("b", "speech", b"other")
    assert list(a.queue) == [payload]
    assert a.queue[0] is everything.queue[0]
    assert len(everything.queue) == 2
    fanout.remove(a)
    fanout.remove(a)
    assert len(fanout) == 1


def test_fanout_counts_drops() -> None:
    """Drops across subscribers are returned and totalled."""
    fanout = Fanout()
    s, _ = sub(Filter(), capacity=1)
    fanout.add(s)
    assert fanout.publish("a", "done", b"1") == 0
    assert fanout.publish("a", "done", b"2") == 1
    assert fanout.drops == 1
