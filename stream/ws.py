"""The WebSocket/HTTP adapter: ``/ingest/{stream}``, ``/events``, ``/healthz``, ``/metrics``, ``/``.

One port serves everything: websockets' ``process_request`` answers the plain HTTP routes and
refuses bad handshakes (404, 400, 401, 403) before a WebSocket exists. This module only moves
bytes: decoding is the schema's, decisions are the pipeline's and the pure core's.

Sending: each connection (subscriber or ingest sender) has a bounded
:class:`~stream.fanout.Subscriber` queue drained by one pump task. The pump writes frames
straight to the transport while its write buffer is low and awaits the socket's drain when it
is high, so a slow reader backs up only its own queue (where the fan-out policy applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from stream.auth import Access, Authenticator, AuthError, bearer_token
from stream.config import ServiceConfig
from stream.fanout import Fanout, Filter, Subscriber
from stream.limits import RateLimiter
from stream.metrics import CONTENT_TYPE, ServiceMetrics
from stream.pipeline import Pipeline
from stream.schema import ErrorCode, decode_input, input_refusal

__all__ = ["STREAM_ID", "WebSocketFrontend", "valid_stream"]

log = logging.getLogger(__name__)

# websockets logs every request's raw headers at DEBUG, bearer tokens included: its logger is
# held at INFO so that `subtag -v serve` never writes a token to the log.
_PROTOCOL_LOG: Final = logging.getLogger("stream.ws.protocol")
_PROTOCOL_LOG.setLevel(logging.INFO)

# Stream ids appear in MQTT topics and URLs: no '/', '+', '#', spaces or control characters.
STREAM_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")

# Close codes websockets sends on its own for a breach, and the error code they are counted as.
_CLOSE_BREACHES: Final[dict[int, str]] = {
    CloseCode.MESSAGE_TOO_BIG: ErrorCode.FRAME_TOO_LARGE,
    CloseCode.INVALID_DATA: ErrorCode.BAD_ENCODING,
}

# Write-buffer size above which a pump waits for the socket instead of writing more.
_HIGH_WATER: Final = 256 * 1024
# Most messages framed into one socket write.
_BURST: Final = 256


def valid_stream(stream: str) -> bool:
    """Whether ``stream`` is a usable stream id (1-128 of ``A-Za-z0-9._:@-``)."""
    return STREAM_ID.fullmatch(stream) is not None


@dataclass(slots=True)
class _Session:
    """What the handshake decided about a connection, for its handler."""

    route: str
    stream: str
    access: Access
    filter: Filter | None = None


class WebSocketFrontend:
    """Routes, handshake checks and the per-connection loops of the WebSocket port."""

    def __init__(
        self,
        config: ServiceConfig,
        pipeline: Pipeline,
        fanout: Fanout,
        metrics: ServiceMetrics,
        authenticator: Authenticator,
        *,
        is_ready: Callable[[], bool],
    ) -> None:
        self._config = config
        self._limits = config.limits
        self._pipeline = pipeline
        self._fanout = fanout
        self._metrics = metrics
        self._auth = authenticator
        self._is_ready = is_ready
        self._sessions: weakref.WeakKeyDictionary[ServerConnection, _Session] = (
            weakref.WeakKeyDictionary()
        )
        self._pumps: set[asyncio.Task[None]] = set()
        self._queues: list[Subscriber] = []
        self.server: Server | None = None
        self.subscriber_count = 0

    async def start(self) -> Server:
        """Bind the port and start serving."""
        limits = self._limits
        self.server = await serve(
            self._handle,
            self._config.server.host,
            self._config.server.port,
            process_request=self._process_request,
            # Frames up to 4x the limit are read and answered with `frame_too_large`;
            # beyond that websockets closes with 1009 before buffering them.
            max_size=limits.max_frame_bytes * 4 + 1024,
            compression=None,
            server_header="subtag",
            logger=_PROTOCOL_LOG,
        )
        return self.server

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None
        port: int = next(iter(self.server.sockets)).getsockname()[1]
        return port

    # -- HTTP routes and handshake -----------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if path == "/healthz":
            if self._is_ready():
                return connection.respond(200, "ok\n")
            return connection.respond(503, "loading the engine\n")
        if path == "/metrics" and self._config.metrics.enabled:
            return _response(connection, 200, self._metrics.render(), CONTENT_TYPE)
        if path == "/" or path.startswith("/static/"):
            return self._static(connection, "index.html" if path == "/" else path[8:])
        token = bearer_token(request.headers.get("Authorization"), one("token"))
        try:
            if path.startswith("/ingest/"):
                stream = path[len("/ingest/") :]
                if not valid_stream(stream):
                    return connection.respond(
                        400, f"bad stream id {stream!r}: use 1-128 of A-Z a-z 0-9 . _ : @ -\n"
                    )
                access = self._auth.authenticate(token, "ingest")
                self._auth.check_streams(access, [stream])
                self._sessions[connection] = _Session("ingest", stream, access)
                return None
            if path == "/events":
                try:
                    wanted = Filter.from_query(one("stream"), one("kind"))
                except ValueError as exc:
                    return connection.respond(400, f"{exc}\n")
                access = self._auth.authenticate(token, "subscribe")
                if wanted.streams is not None:
                    self._auth.check_streams(access, wanted.streams)
                wanted = wanted.restricted_to(access.streams)
                self._sessions[connection] = _Session("events", "", access, wanted)
                return None
        except AuthError as exc:
            self._metrics.error(exc.code)
            return connection.respond(exc.status, f"{exc}\n")
        return connection.respond(
            404, "not found; routes: /ingest/{stream}, /events, /healthz, /metrics, /\n"
        )

    def _static(self, connection: ServerConnection, name: str) -> Response:
        if not name or "/" in name or name.startswith("."):
            return connection.respond(404, "not found\n")
        try:
            body = resources.files("stream").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if name == "index.html":
                return connection.respond(
                    404, "the live viewer page (stream/static/index.html) is not installed\n"
                )
            return connection.respond(404, f"no static file {name!r}\n")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        return _response(connection, 200, body, kind)

    # -- connections -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        session = self._sessions.pop(connection, None)
        if session is None:  # pragma: no cover - process_request always records one
            await connection.close(CloseCode.INTERNAL_ERROR, "no session")
            return
        if session.route == "ingest":
            await self._ingest(connection, session)
        else:
            await self._subscribe(connection, session)

    def _outbox(
        self, connection: ServerConnection, filter: Filter
    ) -> tuple[Subscriber, asyncio.Task[None]]:
        wake = asyncio.Event()
        sub = Subscriber(
            filter,
            capacity=self._config.fanout.subscriber_queue,
            policy=self._config.fanout.policy,
            wake=wake.set,
        )
        task = asyncio.create_task(self._pump(connection, sub, wake), name="ws-pump")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        self._queues.append(sub)
        return sub, task

    async def _pump(
        self, connection: ServerConnection, sub: Subscriber, wake: asyncio.Event
    ) -> None:
        queue = sub.queue
        try:
            while True:
                await wake.wait()
                wake.clear()
                if sub.overflowed:
                    self._metrics.drop("subscriber_queue", len(queue))
                    queue.clear()
                    await connection.close(
                        CloseCode.TRY_AGAIN_LATER, "subscriber too slow: its queue overflowed"
                    )
                    return
                transport = connection.transport
                protocol = connection.protocol
                while queue:
                    if transport.get_write_buffer_size() > _HIGH_WATER:
                        # Back-pressure: send() waits for the socket to drain.
                        await connection.send(queue.popleft(), text=True)
                        continue
                    if protocol.state is not State.OPEN:
                        queue.clear()
                        return
                    # Frame the whole burst with the sans-I/O protocol and hand it to the
                    # socket in one write: one syscall per burst instead of one per message.
                    for _ in range(min(len(queue), _BURST)):
                        protocol.send_text(queue.popleft())
                    chunks = protocol.data_to_send()
                    if all(chunks):
                        transport.write(b"".join(chunks))
                    else:  # an end-of-stream marker: let websockets handle it
                        for chunk in chunks:
                            if chunk:
                                transport.write(chunk)
                        connection.send_data()
        except ConnectionClosed:
            return
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(sub)

    async def _ingest(self, connection: ServerConnection, session: _Session) -> None:
        stream = session.stream
        pipeline = self._pipeline
        metrics = self._metrics
        limits = self._limits
        if not pipeline.pin(stream):
            payload = pipeline.error(
                stream,
                None,
                ErrorCode.TOO_MANY_STREAMS,
                f"the service already has {limits.max_streams} live streams",
            )
            await connection.send(payload, text=True)
            await connection.close(CloseCode.TRY_AGAIN_LATER, "too many live streams")
            return
        outbox, pump = self._outbox(connection, Filter())
        reply = outbox.offer if self._config.server.ack_lines else None
        limiter = RateLimiter(limits.lines_per_second, limits.burst, time.monotonic_ns())
        max_bytes = limits.max_frame_bytes
        lines = metrics.lines_ws
        metrics.connections.inc()
        try:
            async for message in connection:
                received = time.monotonic_ns()
                refused: tuple[str, str] | None = None
                seq: int | None = None
                if isinstance(message, bytes):
                    refused = ErrorCode.BINARY_FRAME, "send each line as a text frame"
                elif len(message) * 3 > max_bytes and len(message.encode()) > max_bytes:
                    refused = (
                        ErrorCode.FRAME_TOO_LARGE,
                        f"the frame exceeds the limit of {max_bytes} bytes",
                    )
                elif not limiter.allow(received):
                    refused = (
                        ErrorCode.RATE_LIMITED,
                        f"more than {limits.lines_per_second:g} lines/s on this connection; "
                        "the line was dropped",
                    )
                else:
                    try:
                        line = decode_input(message)
                    except msgspec.DecodeError as exc:
                        refused = input_refusal(exc)
                    else:
                        seq = line.seq
                        refused = pipeline.submit(stream, line, received, reply)
                        if refused is None:
                            lines.inc()
                            continue
                outbox.offer(pipeline.error(stream, seq, *refused))
        except ConnectionClosed:
            pass
        finally:
            sent = connection.protocol.close_sent
            if sent is not None and sent.code in _CLOSE_BREACHES:
                # websockets itself closed for a frame it would not read: count the breach.
                metrics.error(_CLOSE_BREACHES[sent.code])
            metrics.connections.dec()
            pipeline.unpin(stream)
            await self._finish_pump(outbox, pump)

    async def _subscribe(self, connection: ServerConnection, session: _Session) -> None:
        assert session.filter is not None
        if self.subscriber_count >= self._limits.max_subscribers:
            payload = self._pipeline.error(
                None,
                None,
                ErrorCode.OVERLOADED,
                f"the server already has {self._limits.max_subscribers} subscribers; "
                "try again later",
            )
            await connection.send(payload, text=True)
            await connection.close(CloseCode.TRY_AGAIN_LATER, "too many subscribers")
            return
        sub, pump = self._outbox(connection, session.filter)
        self._fanout.add(sub)
        self.subscriber_count += 1
        self._metrics.subscribers.set(self.subscriber_count)
        try:
            # Subscribers send nothing; reading keeps ping/close handling going.
            async for _ in connection:
                pass
        except ConnectionClosed:
            pass
        finally:
            self._fanout.remove(sub)
            self.subscriber_count -= 1
            self._metrics.subscribers.set(self.subscriber_count)
            self._metrics.drop("subscriber_queue", sub.dropped)
            await self._finish_pump(sub, pump)

    @staticmethod
    async def _finish_pump(sub: Subscriber, pump: asyncio.Task[None]) -> None:
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def flush(self, deadline: float) -> None:
        """Wait until every connection's queue is written, or ``time.monotonic()`` > deadline."""
        # Polling once at shutdown is simpler than an event per queue.
        while any(sub.queue for sub in self._queues) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def _response(
    connection: ServerConnection, status: int, body: bytes, content_type: str
) -> Response:
    response = connection.respond(status, "")
    headers = Headers(
        (k, v)
        for k, v in response.headers.raw_items()
        if k.lower() not in ("content-type", "content-length")
    )
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    return Response(response.status_code, response.reason_phrase, headers, body)
