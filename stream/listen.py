"""``subtag listen``: print a running service's events as they arrive.

:func:`listen` is the reusable part: an async generator over the decoded messages of
``/events`` (events, ``done``, ``error``), used by the CLI, the demo and the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from stream.errors import InputError
from stream.schema import Done, Error, OutboundMessage, decode_outbound

__all__ = ["configure", "events_url", "listen", "run"]


def events_url(url: str, *, streams: str | None = None, kinds: str | None = None) -> str:
    """``url`` with ``?stream=``/``&kind=`` filters added (an ``http://`` base becomes ``ws://``)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/events"
    query = dict(parse_qsl(parts.query))
    if streams:
        query["stream"] = streams
    if kinds:
        query["kind"] = kinds
    return urlunsplit((scheme, parts.netloc, path, urlencode(query, safe=",*"), ""))


async def listen(
    url: str,
    *,
    token: str | None = None,
    retries: int = 0,
    backoff: float = 0.2,
    max_backoff: float = 5.0,
) -> AsyncIterator[OutboundMessage]:
    """Yield each message of ``/events`` as it arrives, until the service closes.

    With ``retries`` > 0 a closed or lost connection is re-opened (a service restart, a
    slow-subscriber close): the first attempt after ``backoff`` seconds, then doubling up to
    ``max_backoff``, giving up after ``retries`` failed attempts in a row. Messages sent while
    no connection was open are not replayed; ``done`` messages (``stream``, ``seq``) show what
    was missed.

    Args:
        url: ``ws://HOST:PORT/events`` with optional ``?stream=a,b&kind=speech`` filters.
        token: Bearer token with the ``subscribe`` scope, when the service needs one.
        retries: Reconnect attempts in a row before giving up (0 = end with the connection).
        backoff: First reconnect delay in seconds.
        max_backoff: Longest reconnect delay in seconds.

    Raises:
        InputError: The service cannot be reached (after the retries) or refuses the
            subscription (HTTP status or close code 1008: retrying would not help).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.frames import CloseCode

    headers = {"Authorization": f"Bearer {token}"} if token else None
    failures = 0
    while True:
        try:
            ws = await connect(url, additional_headers=headers, max_size=None)
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace").strip()
            raise InputError(
                f"the service refused {url}: HTTP {exc.response.status_code} {body}"
            ) from exc
        except (OSError, InvalidHandshake) as exc:
            failures += 1
            if failures > retries:
                raise InputError(f"cannot reach {url}: {exc}") from exc
            await asyncio.sleep(min(backoff * 2 ** (failures - 1), max_backoff))
            continue
        failures = 0
        try:
            async for frame in ws:
                try:
                    yield decode_outbound(frame)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a newer service's message this client does not know
        except ConnectionClosed:
            pass
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
        if ws.close_code == CloseCode.POLICY_VIOLATION:
            raise InputError(f"the service closed {url}: {ws.close_reason or 'access denied'}")
        if retries <= 0:
            return
        await asyncio.sleep(backoff)


def _line(message: OutboundMessage) -> str:
    if isinstance(message, Done):
        lat = message.latency
        first = "-" if lat.first_event is None else f"{lat.first_event:.2f}"
        return (
            f"{message.stream}#{message.seq} done  {message.events} event(s)  "
            f"total {lat.total:.2f} ms  first {first} ms  model {lat.model:.2f} ms"
        )
    if isinstance(message, Error):
        return f"{message.stream}#{message.seq} error {message.code}: {message.message}"
    fields = {
        k: v
        for k, v in msgspec.structs.asdict(message).items()
        if k not in ("stream", "seq", "backend", "confidence", "start", "end")
    }
    kind = message.__struct_config__.tag
    detail = "  ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
    return f"{message.stream}#{message.seq} {kind:<6} {detail}"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``listen`` arguments."""
    parser.add_argument("url", help="ws://HOST:PORT/events (filters may be in the query)")
    parser.add_argument("--stream", help="only these streams (comma-separated, * allowed)")
    parser.add_argument("--kind", help="only these kinds: speech,music,action,done,error")
    parser.add_argument("--token", help="bearer token (default $SUBTAG_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print raw JSON, one per line")
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages")
    parser.add_argument(
        "--retries",
        type=int,
        default=10,
        help="reconnect attempts in a row when the service goes away (default 10; 0 = exit)",
    )


def run(args: argparse.Namespace) -> int:
    """Print messages until the service closes, Ctrl-C, or ``--count``."""
    url = events_url(args.url, streams=args.stream, kinds=args.kind)
    token = args.token or os.environ.get("SUBTAG_TOKEN")

    async def main() -> None:
        seen = 0
        async for message in listen(url, token=token, retries=args.retries):
            if args.json:
                print(msgspec.json.encode(message).decode("utf-8"), flush=True)
            else:
                print(_line(message), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
    return 0
