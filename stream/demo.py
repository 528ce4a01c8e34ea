"""``subtag demo``: the service on the embedded default, a replayed sample and a live table.

Starts :class:`~stream.service.Service` in this process on the built-in configuration (the rules
backend unless a model is configured), prints the live viewer's URL, subscribes to ``/events``
with :func:`~stream.listen.listen`, replays the bundled sample (``stream/samples/demo.srt``, about
45 s) over WebSocket at its real pace, and shows each event in a terminal table as it arrives.
It exits when the replay is acknowledged (``--stay`` keeps serving until Ctrl-C), after
``--duration`` seconds, or on Ctrl-C, always through the service's graceful drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from stream.config import ServiceConfig, load_config
from stream.errors import ConfigError, InputError
from stream.schema import ActionEvent, Done, Error, MusicEvent, OutboundMessage, SpeechEvent

if TYPE_CHECKING:
    from stream.replay import ReplayResult
    from stream.service import Service
    from stream.sources import SourceLine

__all__ = ["DEMO_SAMPLE", "DemoView", "configure", "run"]

DEMO_SAMPLE: Final = "demo.srt"
"""The bundled sample, in ``stream/samples/``."""

DEMO_STREAM: Final = "demo"
_ROWS: Final = 14  # table rows kept on screen; the viewer page keeps more
_KIND_STYLES: Final = {
    "speech": "bold dodger_blue1",
    "music": "bold medium_purple1",
    "action": "bold orange1",
}


class DemoView:
    """What the terminal shows: the latest events and running latency figures.

    Pure bookkeeping (no I/O, no clock): :meth:`add` takes each message from ``/events`` and
    :meth:`table` renders the current state, so it is testable without a terminal.
    """

    def __init__(self, rows: int = _ROWS, title: str = "") -> None:
        self.title = title
        self.recent: deque[SpeechEvent | MusicEvent | ActionEvent] = deque(maxlen=rows)
        self.events = 0
        self.lines = 0
        self.errors: list[Error] = []
        self.latencies: deque[float] = deque(maxlen=1000)

    def add(self, message: OutboundMessage) -> None:
        """Account for one message from ``/events``."""
        match message:
            case Done():
                self.lines += 1
                self.latencies.append(message.latency.total)
            case Error():
                self.errors.append(message)
            case _:
                self.events += 1
                self.recent.append(message)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (0-100) of the recent per-line latencies, in ms."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(1, -(-len(ordered) * q // 100))
        return ordered[int(rank) - 1]

    def summary(self) -> str:
        """One line: lines, events, errors and latency percentiles."""
        p50, p99 = self.percentile(50), self.percentile(99)
        latency = (
            "" if p50 is None or p99 is None else f", latency p50 {p50:.2f} ms p99 {p99:.2f} ms"
        )
        return f"{self.lines} line(s), {self.events} event(s), {len(self.errors)} error(s){latency}"

    def table(self) -> Table:
        """The latest events, newest last, with the summary as caption."""
        table = Table(
            title=self.title or None,
            title_justify="left",
            expand=True,
            caption=self.summary(),
            caption_justify="left",
        )
        table.add_column("t", style="cyan", no_wrap=True, width=12)
        table.add_column("#", justify="right", width=4)
        table.add_column("kind", width=7)
        table.add_column("who / cue", ratio=1)
        table.add_column("details", ratio=2)
        for event in self.recent:
            kind, who, details = describe(event)
            table.add_row(
                Text(event.t or "—"),
                str(event.seq),
                Text(kind, style=_KIND_STYLES[kind]),
                Text(who),
                Text(details),
            )
        return table


def describe(event: SpeechEvent | MusicEvent | ActionEvent) -> tuple[str, str, str]:
    """``(kind, who or cue, details)`` of an event, as the table and plain output show it."""
    match event:
        case SpeechEvent():
            status = f"（{event.status}）" if event.status else ""
            return "speech", f"{event.speaker}{status}", event.text
        case MusicEvent():
            return "music", event.cue, f"type: {event.type or '-'}  mood: {event.mood or '-'}"
        case ActionEvent():
            return "action", event.cue, f"action: {event.action or '-'}"


# -- the command ------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` arguments."""
    parser.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="port; a free one is used if it is busy (8765)"
    )
    parser.add_argument(
        "--sample", type=Path, default=None, help="subtitle file to replay (default: bundled)"
    )
    parser.add_argument("--stream", default=DEMO_STREAM, help="stream id to replay into (demo)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay time scale (1.0)")
    parser.add_argument(
        "--no-pace", dest="pace", action="store_false", help="send every line at once"
    )
    parser.add_argument(
        "--stay", action="store_true", help="keep serving after the replay, until Ctrl-C"
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds in all"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print one line per event instead of the live table (default when not a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every line was tagged, 130 on Ctrl-C."""
    if args.speed <= 0:
        raise InputError("--speed must be > 0")
    if args.duration is not None and args.duration <= 0:
        raise InputError("--duration must be > 0")
    from stream.sources import read_subtitle_file

    # The demo's own connections opening and closing are noise in its table.
    logging.getLogger("stream.ws.protocol").setLevel(logging.WARNING)

    sample = args.sample or Path(str(resources.files("stream").joinpath("samples", DEMO_SAMPLE)))
    lines = read_subtitle_file(sample)
    config = load_config(None)
    host = args.host or config.server.host
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, host=host, port=args.port)
    )
    if config.auth.active(host) and not config.auth.tokens:
        raise ConfigError(
            f"auth is on (host {host!r} is not loopback) but no tokens are set; "
            "set $SUBTAG_TOKENS or use the default --host 127.0.0.1"
        )
    console = Console()
    plain = args.plain or not console.is_terminal
    return asyncio.run(_demo(config, lines, args, console, plain, name=sample.name))


async def _start(
    config: ServiceConfig, stack: contextlib.AsyncExitStack, console: Console
) -> Service:
    from stream.service import Service

    try:
        return await stack.enter_async_context(Service(config))
    except (OSError, BaseExceptionGroup) as exc:
        # The bind error may arrive wrapped in the service's task group.
        if not _address_in_use(exc) or config.server.port == 0:
            raise
    console.print(f"[yellow]port {config.server.port} is busy; using a free port instead[/]")
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=0))
    return await stack.enter_async_context(Service(config))


def _address_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_address_in_use(inner) for inner in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def _banner(url: str, name: str, plain: bool, console: Console) -> None:
    if plain:
        print(f"subtag demo: live viewer at {url}/", flush=True)
        print(f"subtag demo: replaying {name} into stream {DEMO_STREAM!r}", flush=True)
        return
    console.print(
        Panel.fit(
            Text.assemble(
                ("Live viewer  ", "bold"),
                (f"{url}/", "bold underline bright_cyan"),
                "\nopen it in a browser; events appear there and below as the sample plays",
            ),
            title="subtag demo",
            border_style="bright_cyan",
        )
    )


async def _listen(
    url: str, token: str | None, view: DemoView, plain: bool, seen: asyncio.Event
) -> None:
    from stream.listen import listen

    async for message in listen(url, token=token):
        view.add(message)
        if plain:
            _print_plain(message)
        seen.set()  # wakes whoever waits for the view to catch up


def _print_plain(message: OutboundMessage) -> None:
    match message:
        case Done():
            return
        case Error():
            print(f"error {message.code} (line {message.seq}): {message.message}", flush=True)
        case _:
            kind, who, details = describe(message)
            print(
                f"{message.t or '-':>12}  #{message.seq:<3} {kind:<6}  {who}  {details}", flush=True
            )


async def _wait_for_subscriber(service: Service, before: int) -> None:
    # The listener subscribes on its first iteration; replaying before that would lose the
    # first lines' events from the table. The fan-out has no "subscribed" signal to await, so
    # poll it (in-process, a few milliseconds at most).
    async with asyncio.timeout(5.0):
        while len(service.fanout) <= before:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _demo(
    config: ServiceConfig,
    lines: Sequence[SourceLine],
    args: argparse.Namespace,
    console: Console,
    plain: bool,
    *,
    name: str,
) -> int:
    from stream.replay import replay

    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    token = os.environ.get("SUBTAG_TOKEN")
    view = DemoView()
    started = time.monotonic()
    result: ReplayResult | None = None
    async with contextlib.AsyncExitStack() as stack:
        service = await _start(config, stack, console)
        base = service.url
        ws_base = "ws" + base.removeprefix("http")
        _banner(base, name, plain, console)
        view.title = f"live events · viewer {base}/"
        live = None
        if not plain:
            live = stack.enter_context(
                Live(view.table(), console=console, refresh_per_second=8, transient=False)
            )
        seen = asyncio.Event()
        before = len(service.fanout)
        listener = asyncio.create_task(
            _listen(f"{ws_base}/events", token, view, plain, seen), name="demo-listen"
        )

        async def work() -> None:
            nonlocal result
            await _wait_for_subscriber(service, before)
            result = await replay(
                lines,
                f"{ws_base}/ingest/{args.stream}",
                speed=args.speed,
                pace=args.pace,
                token=token,
            )
            # Every line is acknowledged; give the subscriber a moment for the last events.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while view.lines < result.done:
                        seen.clear()
                        await seen.wait()
            if args.stay:
                _say(console, plain, f"replay finished; still serving at {base}/ (Ctrl-C stops)")
                await asyncio.Event().wait()

        async def refresh() -> None:
            while live is not None:
                live.update(Group(view.table()))
                await asyncio.sleep(0.125)

        worker = asyncio.create_task(work(), name="demo-replay")
        painter = asyncio.create_task(refresh(), name="demo-table")
        stop = asyncio.create_task(interrupted.wait(), name="demo-signal")
        waiting = {worker, stop}
        timeout = (
            None
            if args.duration is None
            else max(0.0, args.duration - (time.monotonic() - started))
        )
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in (worker, stop, listener, painter):
            task.cancel()
        for task in (worker, stop, listener, painter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if live is not None:
            live.update(view.table())
        # Leaving the stack drains the service gracefully (lines in flight finish).
    if interrupted.is_set():
        _say(console, plain, f"interrupted; {view.summary()}")
        return 130
    if worker not in done:
        _say(console, plain, f"stopped after {args.duration:g} s; {view.summary()}")
        return 0
    _say(console, plain, f"done: {view.summary()}")
    if result is not None and result.errors:
        return 1
    return 0


def _say(console: Console, plain: bool, text: str) -> None:
    if plain:
        print(f"subtag demo: {text}", flush=True)
    else:
        console.print(f"[bold]subtag demo:[/] {text}")
