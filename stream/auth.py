"""Access control: bearer tokens with scopes and allowed stream patterns.

Pure core: the adapters extract the presented token (``Authorization: Bearer`` header or
``?token=``) and ask :class:`Authenticator` whether it may ``ingest`` into, or ``subscribe`` to,
a stream. Tokens are compared in constant time and never logged; only their ``name`` is.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from stream.config import AuthConfig, TokenConfig
from stream.schema import ErrorCode

__all__ = ["OPEN_ACCESS", "Access", "AuthError", "Authenticator", "Scope", "bearer_token"]

Scope = Literal["ingest", "subscribe"]


@dataclass(frozen=True, slots=True)
class Access:
    """What a connection may do once authenticated.

    Attributes:
        name: The token's label (safe to log), ``"anonymous"`` when auth is off.
        scopes: The scopes granted.
        streams: Allowed stream patterns (fnmatch).
    """

    name: str
    scopes: frozenset[str]
    streams: tuple[str, ...]

    def allows_stream(self, stream: str) -> bool:
        """Whether ``stream`` matches one of the allowed patterns."""
        return any(p == "*" or fnmatch.fnmatchcase(stream, p) for p in self.streams)


OPEN_ACCESS: Final = Access("anonymous", frozenset({"ingest", "subscribe"}), ("*",))


class AuthError(Exception):
    """A request is refused: HTTP status for the handshake, error code and reason for a frame.

    Attributes:
        status: 401 (no or unknown token) or 403 (token lacks the scope or stream).
        code: :class:`stream.schema.ErrorCode` value.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a client presented: the ``Authorization: Bearer`` header wins over ``?token=``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


class Authenticator:
    """Checks presented tokens against the configured ones."""

    def __init__(self, config: AuthConfig, *, active: bool) -> None:
        self.active = active
        self._tokens: tuple[TokenConfig, ...] = config.tokens

    def authenticate(self, token: str | None, scope: Scope) -> Access:
        """The access ``token`` grants for ``scope``.

        Raises:
            AuthError: 401 when the token is missing or unknown, 403 when it lacks ``scope``.
        """
        if not self.active:
            return OPEN_ACCESS
        if not token:
            raise AuthError(
                401,
                ErrorCode.UNAUTHORIZED,
                "a token is required: send 'Authorization: Bearer TOKEN' or '?token=TOKEN'",
            )
        found = self._lookup(token)
        if found is None:
            raise AuthError(401, ErrorCode.UNAUTHORIZED, "unknown token")
        if scope not in found.scopes:
            raise AuthError(
                403,
                ErrorCode.FORBIDDEN,
                f"token {found.name or '(unnamed)'!r} lacks scope {scope!r}",
            )
        return Access(found.name or "token", frozenset(found.scopes), found.streams)

    def _lookup(self, token: str) -> TokenConfig | None:
        presented = token.encode("utf-8")
        match = None
        # Compare against every token (no early exit) so timing does not reveal which matched.
        for candidate in self._tokens:
            if hmac.compare_digest(candidate.token.encode("utf-8"), presented):
                match = candidate
        return match

    @staticmethod
    def check_streams(access: Access, streams: Iterable[str]) -> None:
        """Refuse when any named stream (or pattern) is outside the token's patterns.

        Raises:
            AuthError: 403 naming the first stream not allowed.
        """
        if "*" in access.streams:
            return
        for stream in streams:
            if not access.allows_stream(stream):
                raise AuthError(
                    403,
                    ErrorCode.FORBIDDEN,
                    f"token {access.name!r} may not use stream {stream!r}",
                )
