"""Rolling windows, the bounded stream table and the duplicate memory (pure core)."""

from __future__ import annotations

from stream.window import RecentKeys, RollingWindow, StreamTable, estimate_tokens

SECOND = 1_000_000_000


def test_estimate_tokens_counts_cjk_chars_and_ascii_quarters() -> None:
    """CJK characters cost one token each, ASCII about one per four characters."""
    assert estimate_tokens("你好") == 2
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("") == 0


def test_window_push_returns_the_lines_before() -> None:
    """Each line is tagged with the lines that came before it, oldest first."""
    window = RollingWindow(max_lines=2, max_tokens=100)
    assert window.push("一") == ()
    assert window.push("二") == ("一",)
    assert window.push("三") == ("一", "二")
    assert window.context() == ("二", "三")


def test_window_token_budget_drops_oldest_lines() -> None:
    """Lines beyond the token budget fall out oldest first."""
    window = RollingWindow(max_lines=10, max_tokens=5)
    window.push("一二三")
    window.push("四五")
    assert window.tokens == 5
    window.push("六")
    assert window.context() == ("四五", "六")
    assert window.tokens == 3


def test_window_of_zero_lines_keeps_nothing() -> None:
    """A zero-line window gives no context."""
    window = RollingWindow(max_lines=0, max_tokens=100)
    window.push("一")
    assert window.push("二") == ()
    assert len(window) == 0


def test_table_evicts_least_recently_used_unpinned_stream() -> None:
    """When full, the least recently used stream without pins makes room."""
    table = StreamTable(2, window_lines=4, window_tokens=100, idle_expiry_ns=100 * SECOND)
    a = table.admit("a", 0)
    assert a is not None
    a.pins = 1
    assert table.admit("b", 1) is not None
    assert table.admit("c", 2) is not None
    assert list(table) == ["a", "c"]
    assert table.evicted == 1


def test_table_refuses_when_every_stream_is_pinned() -> None:
    """A full table of busy streams refuses a new one instead of growing."""
    table = StreamTable(1, window_lines=4, window_tokens=100, idle_expiry_ns=SECOND)
    state = table.admit("a", 0)
    assert state is not None
    state.pins = 1
    assert table.admit("b", 1) is None
    assert len(table) == 1


def test_table_expires_idle_streams_but_not_pinned_ones() -> None:
    """Streams idle past the expiry are forgotten unless something pins them."""
    table = StreamTable(10, window_lines=4, window_tokens=100, idle_expiry_ns=SECOND)
    table.admit("old", 0)
    pinned = table.admit("pinned", 0)
    assert pinned is not None
    pinned.pins = 1
    table.admit("fresh", 2 * SECOND)
    assert table.expire(2 * SECOND + 1) == ["old"]
    assert sorted(table) == ["fresh", "pinned"]


def test_idle_stream_starts_a_fresh_window() -> None:
    """A stream back after the idle expiry does not get stale context."""
    table = StreamTable(10, window_lines=4, window_tokens=100, idle_expiry_ns=SECOND)
    state = table.admit("a", 0)
    assert state is not None
    state.window.push("旧")
    again = table.admit("a", 5 * SECOND)
    assert again is not None
    assert again.window.context() == ()


def test_assign_seq_follows_client_numbers() -> None:
    """The server numbers lines after the highest client seq it has seen."""
    table = StreamTable(10, window_lines=4, window_tokens=100, idle_expiry_ns=SECOND)
    state = table.admit("a", 0)
    assert state is not None
    assert state.assign_seq(None) == 0
    assert state.assign_seq(7) == 7
    assert state.assign_seq(None) == 8
    assert state.assign_seq(3) == 3
    assert state.assign_seq(None) == 9


def test_recent_keys_detects_duplicates_within_capacity() -> None:
    """A key seen recently is a duplicate; the oldest keys are forgotten past capacity."""
    keys = RecentKeys(2)
    assert keys.add(("a", 1))
    assert not keys.add(("a", 1))
    assert keys.add(("a", 2))
    assert keys.add(("a", 3))
    assert len(keys) == 2
    assert keys.add(("a", 1))  # forgotten: capacity bounds memory
