"""Tokens, scopes and stream patterns; rate limits and line checks (pure core)."""

from __future__ import annotations

import pytest

from stream.auth import OPEN_ACCESS, Authenticator, AuthError, bearer_token
from stream.config import AuthConfig, LimitsConfig, TokenConfig
from stream.limits import RateLimiter, check_line
from stream.schema import ErrorCode

SECOND = 1_000_000_000

TOKENS = AuthConfig(
    enabled="on",
    tokens=(
        TokenConfig(token="writer", scopes=("ingest",), streams=("news-*",), name="w"),
        TokenConfig(token="reader", scopes=("subscribe",), name="r"),
    ),
)


def test_bearer_header_wins_over_query() -> None:
    """The Authorization header is used before ?token=."""
    assert bearer_token("Bearer abc", "q") == "abc"
    assert bearer_token("bearer  abc ", None) == "abc"
    assert bearer_token("Basic xyz", "q") == "q"
    assert bearer_token(None, None) is None


def test_auth_off_grants_everything() -> None:
    """With auth off every request gets open access."""
    auth = Authenticator(TOKENS, active=False)
    assert auth.authenticate(None, "ingest") is OPEN_ACCESS


def test_missing_and_unknown_tokens_are_401() -> None:
    """No token or a wrong one is refused as unauthorized."""
    auth = Authenticator(TOKENS, active=True)
    with pytest.raises(AuthError) as missing:
        auth.authenticate(None, "ingest")
    assert missing.value.status == 401
    assert missing.value.code == ErrorCode.UNAUTHORIZED
    with pytest.raises(AuthError, match="unknown token") as wrong:
        auth.authenticate("nope", "ingest")
    assert wrong.value.status == 401


def test_scope_and_stream_patterns_are_enforced() -> None:
    """A token may only use its scopes, on streams matching its patterns."""
    auth = Authenticator(TOKENS, active=True)
    access = auth.authenticate("writer", "ingest")
    assert access.name == "w"
    auth.check_streams(access, ["news-1"])
    with pytest.raises(AuthError, match="may not use stream 'sports'") as other:
        auth.check_streams(access, ["sports"])
    assert other.value.status == 403
    with pytest.raises(AuthError, match="lacks scope 'subscribe'") as scope:
        auth.authenticate("writer", "subscribe")
    assert scope.value.code == ErrorCode.FORBIDDEN


def test_error_messages_never_contain_the_secret() -> None:
    """Refusals name the token's label, never the token."""
    auth = Authenticator(TOKENS, active=True)
    with pytest.raises(AuthError) as exc:
        auth.authenticate("writer", "subscribe")
    assert "writer" not in str(exc.value)


def test_rate_limiter_allows_burst_then_refills() -> None:
    """A token bucket allows a burst, then the sustained rate."""
    limiter = RateLimiter(rate=10, burst=3, now_ns=0)
    assert [limiter.allow(0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(SECOND // 10)
    assert not limiter.allow(SECOND // 10)


def test_rate_zero_means_unlimited() -> None:
    """A rate of 0 disables the limit."""
    limiter = RateLimiter(rate=0, burst=1, now_ns=0)
    assert all(limiter.allow(0) for _ in range(100))


def test_check_line_refuses_empty_and_long_lines() -> None:
    """Empty lines and lines over the limit get their error codes."""
    limits = LimitsConfig(max_line_chars=5)
    assert check_line("你好", limits) is None
    assert check_line("   ", limits) == (ErrorCode.EMPTY_LINE, "the line is empty")
    refused = check_line("123456", limits)
    assert refused is not None
    assert refused[0] == ErrorCode.LINE_TOO_LONG
