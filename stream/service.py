"""``subtag serve``: the streaming service, and the :class:`Service` that tests and the demo embed.

:class:`Service` wires the pieces in one ``asyncio.TaskGroup`` with named tasks::

    ws server (stream.ws) --submit--> Pipeline (stream.pipeline) --sinks--> Fanout -> /events
    mqtt bridge (stream.mqtt) --^                                      \\--> MQTT bridge

Usage::

    async with Service(load_config(path)) as svc:   # binds, loads the engine, serves
        await svc.wait_closed()                      # until request_shutdown() or a signal
    # leaving the block drains: stop accepting, finish lines in flight, flush publishes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from websockets.frames import CloseCode

from engine.base import Tagger, load_tagger
from stream.auth import Authenticator
from stream.config import ServiceConfig, load_config
from stream.errors import ConfigError, EngineError, SubtagError
from stream.fanout import Fanout
from stream.metrics import ServiceMetrics
from stream.mqtt import MqttBridge
from stream.pipeline import Pipeline
from stream.ws import WebSocketFrontend

__all__ = ["Service", "choose_backend", "configure", "run"]

log = logging.getLogger(__name__)


def choose_backend(config: ServiceConfig) -> tuple[str, str]:
    """The backend the config selects, and why (for the startup log)."""
    engine = config.engine
    if engine.backend == "auto":
        if engine.model:
            return "seqgpt", f"engine.model is set ({engine.model})"
        return "rules", "no engine.model is configured"
    return engine.backend, f"engine.backend = {engine.backend!r}"


class Service:
    """The streaming service: WebSocket + MQTT in, tagged events out.

    Args:
        config: The configuration (see stream.config).
        tagger: A ready tagger to use instead of the one the config selects (tests, demo).
    """

    def __init__(self, config: ServiceConfig, *, tagger: Tagger | None = None) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.pipeline = Pipeline(config, self.metrics)
        self.fanout = Fanout()
        self.authenticator = Authenticator(
            config.auth, active=config.auth.active(config.server.host)
        )
        self.ws = WebSocketFrontend(
            config,
            self.pipeline,
            self.fanout,
            self.metrics,
            self.authenticator,
            is_ready=lambda: self.ready,
        )
        self.mqtt: MqttBridge | None = None
        if config.mqtt.url:
            self.mqtt = MqttBridge(config, self.pipeline, self.metrics)
        self.ready = False
        self.failure: BaseException | None = None
        self._given_tagger = tagger
        self._group: asyncio.TaskGroup | None = None
        self._shutdown = asyncio.Event()
        self._closed = False
        self._loops: list[asyncio.Task[None]] = []
        self.pipeline.sinks.append(self._to_subscribers)
        if self.mqtt is not None:
            self.pipeline.sinks.append(self.mqtt.publish)

    def _to_subscribers(self, stream: str, kind: str, payload: bytes) -> None:
        dropped = self.fanout.publish(stream, kind, payload)
        if dropped:
            self.metrics.drop("subscriber_queue", dropped)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The WebSocket/HTTP port actually bound."""
        return self.ws.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the service (127.0.0.1 when listening on every address)."""
        host = self.config.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def tagger(self) -> Tagger | None:
        """The engine in use (``None`` while it loads)."""
        return self.pipeline.tagger

    async def __aenter__(self) -> Self:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        try:
            await self.ws.start()
            auth = "on" if self.authenticator.active else "off"
            log.info(
                "serving on %s (ws://.../ingest/{stream}, ws://.../events); auth %s",
                self.url,
                auth,
            )
            await self._load_engine()
            # The scheduler ends by itself once drained; the loops below run until cancelled.
            scheduler = group.create_task(self.pipeline.run(), name="scheduler")
            scheduler.add_done_callback(self._scheduler_ended)
            self._loops.append(group.create_task(self._expire_streams(), name="stream-expiry"))
            if self.mqtt is not None:
                self._loops.append(group.create_task(self.mqtt.run(), name="mqtt"))
        except BaseException as exc:
            await self._stop_group(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _load_engine(self) -> None:
        tagger = self._given_tagger
        if tagger is not None:
            log.info("engine: %s (given by the caller)", tagger.name)
        else:
            backend, why = choose_backend(self.config)
            log.info("engine: loading %s because %s", backend, why)
            engine = self.config.engine
            options: dict[str, object] = {}
            if engine.providers:
                options["providers"] = list(engine.providers)
            if engine.threads:
                options["threads"] = engine.threads
            started = time.perf_counter()
            try:
                tagger = await asyncio.to_thread(load_tagger, backend, engine.model, **options)
            except SubtagError:
                raise  # already a clear message (missing export, bad option, missing extra)
            except Exception as exc:
                raise EngineError(f"cannot load the {backend} engine: {exc}") from exc
            log.info("engine: %s ready in %.2f s", tagger.name, time.perf_counter() - started)
        inline = self.config.engine.inline
        self.pipeline.inline = inline == "always" or (inline == "auto" and tagger.name == "rules")
        self.pipeline.tagger = tagger
        self.metrics.engine = tagger
        self.ready = True
        self.metrics.ready.set(1)

    def _scheduler_ended(self, task: asyncio.Task[None]) -> None:
        # The scheduler only returns once drained; if it dies, no line would ever be tagged
        # again while /healthz still said 200. Say so, go unready, and shut down so that a
        # supervisor restarts the process (serve exits non-zero).
        if task.cancelled() or task.exception() is None:
            return
        self.failure = task.exception()
        log.error("the scheduler failed; shutting down", exc_info=self.failure)
        self.ready = False
        self.metrics.ready.set(0)
        self.request_shutdown()

    async def _expire_streams(self) -> None:
        period = max(0.05, min(self.config.window.idle_expiry_s / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            self.pipeline.expire()

    def request_shutdown(self) -> None:
        """Ask :meth:`wait_closed` to return (signal handlers call this)."""
        self._shutdown.set()

    async def wait_closed(self) -> None:
        """Wait until a shutdown is requested."""
        await self._shutdown.wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()
        await self._stop_group(exc_type, exc, tb)

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, finish lines in flight, flush, close."""
        if self._closed:
            return
        self._closed = True
        self._shutdown.set()
        timeout = self.config.server.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        server = self.ws.server
        if server is not None:
            server.close(close_connections=False)  # stop listening; keep open connections
        self.pipeline.close()
        pending = self.pipeline.in_flight
        try:
            async with asyncio.timeout(timeout):
                await self.pipeline.drained()
        except TimeoutError:
            log.warning(
                "shutdown: %d line(s) still in flight after %.1f s",
                self.pipeline.in_flight,
                timeout,
            )
        await self.ws.flush(deadline)
        if self.mqtt is not None:
            await self.mqtt.flush(deadline)
        if server is not None:
            # Server.close() acts only on its first call (close_connections=False above), so
            # the open connections are closed here: 1001, clients know to reconnect.
            closing = [
                asyncio.create_task(c.close(CloseCode.GOING_AWAY, "the service is shutting down"))
                for c in server.connections
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    if closing:
                        await asyncio.wait(closing)
                    await server.wait_closed()
        log.info("shutdown: drained %d line(s) in flight", pending)

    async def _stop_group(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group = self._group
        if group is None:
            return
        self._group = None
        if self.ws.server is not None and not self._closed:
            self.ws.server.close()
        self.pipeline.close()
        if self.mqtt is not None:
            self.mqtt.stop()
        for task in self._loops:
            task.cancel()
        await group.__aexit__(exc_type, exc, tb)


# -- the `subtag serve` command ---------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML configuration (default: built-in defaults; see configs/default.toml)",
    )
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    parser.add_argument("--model", help="override engine.model (a SeqGPT export directory)")
    parser.add_argument("--mqtt", metavar="URL", help="override mqtt.url (mqtt://HOST:PORT)")


def run(args: argparse.Namespace) -> int:
    """Run the service until SIGINT/SIGTERM, then drain; 0, or 1 if the scheduler failed."""
    config = load_config(args.config)
    server = config.server
    if args.host is not None or args.port is not None:
        server = dataclasses.replace(
            server,
            host=args.host if args.host is not None else server.host,
            port=args.port if args.port is not None else server.port,
        )
    config = dataclasses.replace(config, server=server)
    if args.model:
        config = dataclasses.replace(
            config, engine=dataclasses.replace(config.engine, model=args.model)
        )
    if args.mqtt:
        config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, url=args.mqtt))
    if config.auth.active(config.server.host) and not config.auth.tokens:
        raise ConfigError(
            f"auth is on (host {config.server.host!r} is not loopback) but no tokens are set; "
            "set $SUBTAG_TOKENS, add [[auth.tokens]], or set auth.enabled = 'off'"
        )
    failed = asyncio.run(_serve(config))
    return 1 if failed else 0


async def _serve(config: ServiceConfig) -> bool:
    loop = asyncio.get_running_loop()
    log.info("config: %s", config.source)
    service = Service(config)
    try:
        async with service:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, service.request_shutdown)
            await service.wait_closed()
            log.info("shutdown requested: draining")
    except BaseExceptionGroup:
        if service.failure is None:
            raise
        # The scheduler's failure was logged with its traceback when it happened.
    return service.failure is not None
