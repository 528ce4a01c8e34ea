"""``subtag replay``: send a subtitle file to a running service, paced like a live stream.

Each line goes out as a JSON input message ``{"text", "seq", "t"}`` (``seq`` = its index), at
the moment its subtitle timestamp says (``--speed`` scales time, ``--no-pace`` sends at once).
The service acknowledges every line with ``done`` (or ``error``); replay waits for all of them.
Over WebSocket a lost connection is re-opened with backoff and every line not yet acknowledged
is sent again (at least once: a line whose ``done`` was lost in the drop is tagged twice).
Over MQTT lines are published QoS 1 to ``{prefix}/{stream}/lines`` and acknowledgements are
read from ``{prefix}/{stream}/done`` and ``.../errors``; a line a draining service refused
(``shutting_down``) is published again until acknowledged, so a restart loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import urlsplit

import msgspec

from stream.errors import InputError
from stream.schema import Done, Error, ErrorCode, InputLine, decode_outbound, encode_str

__all__ = ["ReplayResult", "configure", "replay", "run"]

log = logging.getLogger(__name__)

# How often lines refused with shutting_down are published again over MQTT.
_RESEND_S: Final = 0.5


class _Line(Protocol):
    """What replay needs of a line (stream.sources.SourceLine has it)."""

    @property
    def text(self) -> str: ...

    @property
    def start_ms(self) -> int | None: ...


@dataclass(slots=True)
class ReplayResult:
    """What a replay did.

    Attributes:
        sent: Lines sent (resends not counted).
        done: Lines acknowledged with ``done``.
        events: Events the service reported in those ``done`` messages.
        errors: ``error`` messages received.
        elapsed_s: Wall time from the first send to the last acknowledgement.
        reconnects: Connections re-opened after a loss.
        retried: Lines the service refused as ``shutting_down`` and that were resent.
    """

    sent: int = 0
    done: int = 0
    events: int = 0
    errors: list[Error] = field(default_factory=list)
    elapsed_s: float = 0.0
    reconnects: int = 0
    retried: int = 0

    @property
    def lines_per_s(self) -> float:
        """Acknowledged lines per second of wall time."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _timestamp(ms: int | None) -> str | None:
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _messages(lines: Sequence[_Line]) -> list[str]:
    out = []
    for seq, line in enumerate(lines):
        t = getattr(line, "t", None)
        if not isinstance(t, str):
            t = _timestamp(line.start_ms)
        out.append(encode_str(InputLine(text=line.text, seq=seq, t=t)))
    return out


class _Pacer:
    """Sleeps until each line's moment: its start time relative to the first, over ``speed``."""

    def __init__(self, lines: Sequence[_Line], speed: float, pace: bool) -> None:
        self._starts = [line.start_ms for line in lines]
        self._origin = next((s for s in self._starts if s is not None), None)
        self._speed = speed
        self._pace = pace and speed > 0
        self._t0 = time.monotonic()

    async def wait(self, index: int) -> None:
        start = self._starts[index]
        if not self._pace or start is None or self._origin is None:
            return
        due = self._t0 + (start - self._origin) / 1000 / self._speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def replay(
    lines: Sequence[_Line],
    to: str,
    *,
    stream: str | None = None,
    speed: float = 1.0,
    pace: bool = True,
    token: str | None = None,
    prefix: str = "subtag",
    ack_timeout: float = 30.0,
    retries: int = 5,
) -> ReplayResult:
    """Send ``lines`` to a service and wait for their acknowledgements.

    Args:
        lines: The lines, in order (``start_ms`` paces them).
        to: ``ws://HOST:PORT/ingest/STREAM`` or ``mqtt://HOST:PORT``.
        stream: The stream id (required for MQTT; for WebSocket it is in the URL).
        speed: Time scale of the pacing (2.0 = twice as fast).
        pace: ``False`` sends every line at once.
        token: Bearer token for the service (WebSocket) or ignored (MQTT uses broker auth).
        prefix: MQTT topic prefix.
        ack_timeout: Seconds to wait for outstanding acknowledgements after the last send.
        retries: WebSocket reconnect attempts after a connection loss.

    Returns:
        What was sent and acknowledged.

    Raises:
        InputError: ``to`` is not a ws:// or mqtt:// URL, or MQTT without ``stream``.
    """
    scheme = urlsplit(to).scheme
    if scheme in ("ws", "wss"):
        return await _replay_ws(lines, to, speed, pace, token, ack_timeout, retries)
    if scheme in ("mqtt", "mqtts"):
        if not stream:
            raise InputError("replay to MQTT needs --stream ID")
        return await _replay_mqtt(lines, to, stream, speed, pace, prefix, ack_timeout)
    raise InputError(f"--to must be ws://HOST:PORT/ingest/STREAM or mqtt://HOST:PORT, got {to!r}")


def _account(
    result: ReplayResult,
    payload: str | bytes,
    pending: set[int],
    refused: set[int] | None = None,
) -> None:
    try:
        message = decode_outbound(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("replay: ignoring an unreadable message from the service")
        return
    if isinstance(message, Done):
        if message.seq in pending:
            pending.discard(message.seq)
            result.done += 1
            result.events += message.events
    elif isinstance(message, Error):
        if message.code == ErrorCode.SHUTTING_DOWN and message.seq in pending:
            # Not an answer about the line: it stays unacknowledged and is resent once the
            # connection to the (restarted) service is re-opened.
            result.retried += 1
            if refused is not None:
                refused.add(message.seq)
            return
        result.errors.append(message)
        if message.seq is not None:
            pending.discard(message.seq)


async def _replay_ws(
    lines: Sequence[_Line],
    to: str,
    speed: float,
    pace: bool,
    token: str | None,
    ack_timeout: float,
    retries: int,
) -> ReplayResult:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    messages = _messages(lines)
    result = ReplayResult()
    pending: set[int] = set()
    all_acked = asyncio.Event()
    pacer = _Pacer(lines, speed, pace)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    next_index = 0
    attempt = 0
    started = time.monotonic()

    async def read(ws: ClientConnection) -> None:
        async for frame in ws:
            _account(result, frame, pending)
            if next_index == len(messages) and not pending:
                all_acked.set()

    while True:
        try:
            async with connect(to, additional_headers=headers, max_size=None) as ws:
                attempt = 0
                reader = asyncio.create_task(read(ws), name="replay-read")
                waiter = asyncio.create_task(all_acked.wait(), name="replay-acked")
                try:
                    # After a reconnect, resend what is unacknowledged first, in order.
                    for seq in sorted(pending):
                        await ws.send(messages[seq])
                    while next_index < len(messages):
                        await pacer.wait(next_index)
                        pending.add(next_index)
                        await ws.send(messages[next_index])
                        next_index += 1
                        result.sent += 1
                    if not pending:
                        all_acked.set()
                    async with asyncio.timeout(ack_timeout):
                        await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, waiter):
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await reader
                if all_acked.is_set() or not pending:
                    break
                raise ConnectionError(f"closed with {len(pending)} line(s) unacknowledged")
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise InputError(f"the service refused {to}: HTTP {status}") from exc
        except TimeoutError:
            log.warning("replay: %d line(s) not acknowledged in %.0f s", len(pending), ack_timeout)
            break
        except (OSError, ConnectionClosed, InvalidHandshake) as exc:
            attempt += 1
            if attempt > retries:
                raise InputError(f"cannot reach {to}: {exc}") from exc
            result.reconnects += 1
            await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
    result.elapsed_s = time.monotonic() - started
    return result


async def _replay_mqtt(
    lines: Sequence[_Line],
    to: str,
    stream: str,
    speed: float,
    pace: bool,
    prefix: str,
    ack_timeout: float,
) -> ReplayResult:
    import aiomqtt

    parts = urlsplit(to)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    messages = _messages(lines)
    result = ReplayResult()
    pending: set[int] = set()
    refused: set[int] = set()
    pacer = _Pacer(lines, speed, pace)
    started = time.monotonic()
    try:
        async with aiomqtt.Client(
            host, port, username=parts.username, password=parts.password
        ) as client:
            await client.subscribe(f"{prefix}/{stream}/done", qos=1)
            await client.subscribe(f"{prefix}/{stream}/errors", qos=1)

            async def read() -> None:
                async for message in client.messages:
                    if isinstance(message.payload, bytes):
                        _account(result, message.payload, pending, refused)
                    if result.sent == len(messages) and not pending:
                        return

            reader = asyncio.create_task(read(), name="replay-read")
            for index, text in enumerate(messages):
                await pacer.wait(index)
                pending.add(index)
                await client.publish(f"{prefix}/{stream}/lines", text, qos=1)
                result.sent += 1
            deadline = time.monotonic() + ack_timeout
            while pending and not reader.done() and time.monotonic() < deadline:
                await asyncio.wait([reader], timeout=min(_RESEND_S, deadline - time.monotonic()))
                # Lines a draining service refused go back to the broker, which holds them for
                # the service's persistent session until it (or its successor) is back. Again
                # every round until acknowledged: a copy the draining instance drops as a
                # duplicate (same seq) gets no second error; the service dedupes the extras.
                for seq in sorted(refused & pending):
                    await client.publish(f"{prefix}/{stream}/lines", messages[seq], qos=1)
            if pending:
                log.warning("replay: %d line(s) not acknowledged", len(pending))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    except aiomqtt.MqttError as exc:
        raise InputError(f"cannot reach the broker at {to}: {exc}") from exc
    result.elapsed_s = time.monotonic() - started
    return result


# -- the `subtag replay` command --------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``replay`` arguments."""
    parser.add_argument("file", help="subtitle file (.srt, .vtt, .ass, or plain lines)")
    parser.add_argument(
        "--to", required=True, help="ws://HOST:PORT/ingest/STREAM or mqtt://HOST:PORT"
    )
    parser.add_argument("--stream", help="stream id (MQTT)")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale (default 1.0)")
    parser.add_argument(
        "--no-pace", dest="pace", action="store_false", help="send every line at once"
    )
    parser.add_argument("--token", help="bearer token (default $SUBTAG_TOKEN)")
    parser.add_argument("--prefix", default="subtag", help="MQTT topic prefix")


def run(args: argparse.Namespace) -> int:
    """Replay a file; print a one-line summary; exit 1 when some line was not acknowledged."""
    import os

    from stream.sources import read_subtitle_file

    if args.speed <= 0:
        raise InputError("--speed must be > 0")
    lines = read_subtitle_file(args.file)
    token = args.token or os.environ.get("SUBTAG_TOKEN")
    result = asyncio.run(
        replay(
            lines,
            args.to,
            stream=args.stream,
            speed=args.speed,
            pace=args.pace,
            token=token,
            prefix=args.prefix,
        )
    )
    print(
        f"replay: sent {result.sent} line(s), {result.done} done, {result.events} event(s), "
        f"{len(result.errors)} error(s) in {result.elapsed_s:.2f} s",
        file=sys.stderr,
    )
    for error in result.errors[:10]:
        print(f"  error {error.code} (seq {error.seq}): {error.message}", file=sys.stderr)
    return 0 if result.done + len(result.errors) >= result.sent else 1
