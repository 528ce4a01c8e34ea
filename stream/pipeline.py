"""The line pipeline: admit a line, batch it, run the engine, publish events as they come.

This is the async heart of the service, between the adapters (stream.ws, stream.mqtt) and the
engine. Decisions live in the pure core (stream.window, stream.scheduler); this module adds the
clock, the engine execution and the publication:

* :meth:`Pipeline.submit` is called by an adapter for each decoded line, with the
  ``received_ns`` stamp the adapter took the moment the frame arrived. It answers at once with
  an error tuple when the line is refused (the adapter tells the sender).
* :meth:`Pipeline.run` is the scheduler task: it takes micro-batches and hands them to the
  tagger. The rules backend runs inline on the event loop (microseconds per line; a thread hop
  would cost more than the work); model backends run in one worker thread that hands each
  event back to the loop the moment the generator yields it, so events are published before
  the batch ends.
* Each outbound message is encoded once and handed to every sink (the WebSocket fan-out, the
  MQTT bridge) and, for ``done``/``error``, to the line's sender.

Failure policy: when a batch raises, its lines are re-run one at a time, skipping the events
each already published (backends are deterministic), so only the failing line gets an
``engine_failed`` error. A batch step longer than ``engine.line_timeout_ms`` is abandoned (its
worker thread is left to finish on its own and its late results are ignored) and retried the
same way, so only the hung line gets ``engine_timeout``. The deadline counts from the last
event the step yielded (a large batch that keeps producing is not cut off). Inline backends
cannot be timed out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from engine.base import LineJob, Tagger
from stream.config import ServiceConfig
from stream.limits import check_line
from stream.metrics import ServiceMetrics
from stream.scheduler import FairQueue, PushResult
from stream.schema import Done, Error, ErrorCode, Event, InputLine, Latency, encode
from stream.window import StreamTable

__all__ = ["PendingLine", "Pipeline", "Reply", "Sink"]

log = logging.getLogger(__name__)

Reply = Callable[[bytes], object]
"""Where a line's ``done``/``error`` go back to its sender (an ingest connection's queue)."""

Sink = Callable[[str, str, bytes], object]
"""A transport that receives every outbound message: ``sink(stream, kind, payload)``."""

_NS_PER_MS: Final = 1_000_000


@dataclass(slots=True, eq=False)
class PendingLine:
    """A line inside the service, with its latency stamps (monotonic ns)."""

    stream: str
    seq: int
    text: str
    t: str | None
    context: tuple[str, ...]
    received_ns: int
    queued_ns: int
    reply: Reply | None
    taken_ns: int = 0
    first_event_ns: int = 0
    events: int = 0
    skip: int = 0
    failed: bool = False
    job: LineJob | None = field(default=None)


def _now() -> int:
    return time.monotonic_ns()


class _Abandoned(Exception):
    """The batch step overran its deadline."""


class Pipeline:
    """Admission, scheduling, engine execution and publication of lines."""

    def __init__(
        self,
        config: ServiceConfig,
        metrics: ServiceMetrics,
        *,
        clock: Callable[[], int] = _now,
    ) -> None:
        self._config = config
        self._limits = config.limits
        self._metrics = metrics
        self._clock = clock
        self.streams = StreamTable(
            config.limits.max_streams,
            window_lines=config.window.lines,
            window_tokens=config.window.tokens,
            idle_expiry_ns=int(config.window.idle_expiry_s * 1e9),
        )
        self.queue: FairQueue[PendingLine] = FairQueue(
            max_batch=config.scheduler.max_batch,
            max_wait_ns=int(config.scheduler.max_wait_ms * _NS_PER_MS),
            max_per_stream=config.scheduler.queue_per_stream,
            max_total=config.scheduler.max_queued,
        )
        self.sinks: list[Sink] = []
        self.tagger: Tagger | None = None
        self.inline = True
        self.closing = False
        self.in_flight = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._timeout_s = config.engine.line_timeout_ms / 1000

    # -- admission ---------------------------------------------------------------------

    def pin(self, stream: str) -> bool:
        """Keep ``stream`` live while a connection feeds it; ``False`` when the table is full."""
        state = self.streams.admit(stream, self._clock())
        if state is None:
            return False
        state.pins += 1
        self._metrics.live_streams.set(len(self.streams))
        return True

    def unpin(self, stream: str) -> None:
        """Undo :meth:`pin`."""
        state = self.streams.get(stream)
        if state is not None and state.pins > 0:
            state.pins -= 1

    def submit(
        self, stream: str, line: InputLine, received_ns: int, reply: Reply | None
    ) -> tuple[str, str] | None:
        """Admit one decoded line.

        Args:
            stream: The stream id (already validated by the adapter).
            line: The decoded input.
            received_ns: ``time.monotonic_ns()`` when the frame arrived.
            reply: Where this line's ``done``/``error`` also go, or ``None``.

        Returns:
            ``None`` when queued, else ``(error code, message)`` for the sender.
        """
        if self.closing:
            return (
                ErrorCode.SHUTTING_DOWN,
                "the service is shutting down; send the line again later",
            )
        refused = check_line(line.text, self._limits)
        if refused is not None:
            return refused
        now = self._clock()
        streams = self.streams
        known = len(streams)
        state = streams.admit(stream, now)
        if len(streams) != known:
            self._metrics.live_streams.set(len(streams))
        if state is None:
            return (
                ErrorCode.TOO_MANY_STREAMS,
                f"the service already has {self._limits.max_streams} live streams",
            )
        pending = PendingLine(
            stream=stream,
            seq=state.assign_seq(line.seq),
            text=line.text,
            t=line.t,
            context=state.window.context(),
            received_ns=received_ns,
            queued_ns=now,
            reply=reply,
        )
        result = self.queue.push(stream, pending, now)
        if result != PushResult.OK:
            where = "this stream" if result == PushResult.STREAM_FULL else "the service"
            return ErrorCode.OVERLOADED, f"too many lines queued for {where}; slow down"
        state.window.push(line.text)
        state.pins += 1
        self.in_flight += 1
        self._idle.clear()
        if not self._wakeup.is_set():
            self._wakeup.set()
        return None

    def error(self, stream: str | None, seq: int | None, code: str, message: str) -> bytes:
        """Count an error and return its encoded message (for the adapter to send)."""
        self._metrics.error(code)
        return encode(Error(code=code, message=message, seq=seq, stream=stream))

    # -- the scheduler task ------------------------------------------------------------

    async def run(self) -> None:
        """Take micro-batches and tag them until :meth:`close` and the queue is empty."""
        queue = self.queue
        metrics = self._metrics
        while True:
            now = self._clock()
            due = queue.due_in(now)
            if due is None:
                if self.closing:
                    return
                self._wakeup.clear()
                metrics.queue_depth.set(0)
                await self._wakeup.wait()
                continue
            if due > 0:
                # Waiting for the batch to fill; a plain sleep is cheaper than a wakeable
                # wait and max_wait_ms bounds the delay anyway.
                await asyncio.sleep(due / 1e9)
                continue
            batch = queue.take(now)
            metrics.queue_depth.set(queue.depth)
            metrics.batch_size.observe(len(batch))
            metrics.in_flight.set(len(batch))
            for line in batch:
                line.taken_ns = now
            try:
                await self._process(batch)
            finally:
                now = self._clock()
                for line in batch:
                    queue.release(line.stream, now)
                    state = self.streams.get(line.stream)
                    if state is not None and state.pins > 0:
                        state.pins -= 1
                self.in_flight -= len(batch)
                metrics.in_flight.set(0)
                if self.in_flight == 0:
                    self._idle.set()
            # Let the adapters read and send between batches.
            await asyncio.sleep(0)

    def close(self) -> None:
        """Refuse new lines; :meth:`run` returns once the queue is drained."""
        self.closing = True
        self._wakeup.set()

    async def drained(self) -> None:
        """Wait until every admitted line has its ``done`` or ``error``."""
        await self._idle.wait()

    def expire(self) -> list[str]:
        """Forget idle streams (called periodically by the service)."""
        gone = self.streams.expire(self._clock())
        self._metrics.live_streams.set(len(self.streams))
        return gone

    # -- engine execution --------------------------------------------------------------

    async def _process(self, batch: list[PendingLine]) -> None:
        for line in batch:
            line.job = LineJob(line.stream, line.seq, line.text, line.t, line.context)
        started = self._clock()
        failure: str | None = None
        try:
            if self.inline:
                self._run_inline(batch)
            else:
                await self._run_threaded(batch)
        except _Abandoned:
            failure = ErrorCode.ENGINE_TIMEOUT
        except Exception:
            log.exception("engine failed on a batch of %d line(s)", len(batch))
            failure = ErrorCode.ENGINE_FAILED
        if failure is not None and len(batch) > 1:
            # Find the culprit: one line at a time, skipping events already published.
            for line in batch:
                line.skip = line.events
                await self._process_one(line)
        elif failure is not None:
            self._fail(batch[0], failure)
        model_ns = self._clock() - started
        for line in batch:
            if not line.failed:
                self._finish(line, model_ns)

    async def _process_one(self, line: PendingLine) -> None:
        try:
            if self.inline:
                self._run_inline([line])
            else:
                await self._run_threaded([line])
        except _Abandoned:
            self._fail(line, ErrorCode.ENGINE_TIMEOUT)
        except Exception:
            log.exception("engine failed on line %s#%d", line.stream, line.seq)
            self._fail(line, ErrorCode.ENGINE_FAILED)

    def _run_inline(self, batch: list[PendingLine]) -> None:
        assert self.tagger is not None
        jobs = [line.job for line in batch]
        for index, event in self.tagger.tag(jobs):  # type: ignore[arg-type]
            self._event(batch[index], event)

    async def _run_threaded(self, batch: list[PendingLine]) -> None:
        assert self.tagger is not None
        tagger = self.tagger
        loop = asyncio.get_running_loop()
        jobs: Sequence[LineJob] = [line.job for line in batch]  # type: ignore[misc]
        abandoned = False
        timeout_s = self._timeout_s
        watchdog: asyncio.Timeout | None = None

        def deliver(index: int, event: Event) -> None:
            if abandoned:
                return
            if watchdog is not None:
                # The deadline is for a step without progress, not for the whole batch: a
                # big batch that keeps yielding is working, a silent one is hung.
                watchdog.reschedule(loop.time() + timeout_s)
            self._event(batch[index], event)

        def work() -> None:
            iterator: Iterator[tuple[int, Event]] = iter(tagger.tag(jobs))
            for index, event in iterator:
                if abandoned:
                    return
                loop.call_soon_threadsafe(deliver, index, event)

        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "subtag-engine")
        future = loop.run_in_executor(self._executor, work)
        try:
            async with asyncio.timeout(timeout_s) as watchdog:
                await future
                # The deliveries were scheduled before the future's result: let them run.
                await asyncio.sleep(0)
        except TimeoutError:
            abandoned = True
            # The hung thread cannot be stopped; give later batches a fresh one.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise _Abandoned from None

    # -- publication -------------------------------------------------------------------

    def _event(self, line: PendingLine, event: Event) -> None:
        if line.skip:
            line.skip -= 1
            return
        payload = encode(event)
        kind = event.__struct_config__.tag
        assert isinstance(kind, str)
        for sink in self.sinks:
            sink(line.stream, kind, payload)
        if line.events == 0:
            line.first_event_ns = self._clock()
        line.events += 1
        counter = self._metrics.events.get(kind)
        if counter is not None:
            counter.inc()

    def _finish(self, line: PendingLine, model_ns: int) -> None:
        now = self._clock()
        received = line.received_ns
        first = (line.first_event_ns - received) / _NS_PER_MS if line.events else None
        total_ns = now - received
        latency = Latency(
            received_to_queued=(line.queued_ns - received) / _NS_PER_MS,
            queue=(line.taken_ns - line.queued_ns) / _NS_PER_MS,
            model=model_ns / _NS_PER_MS,
            first_event=first,
            total=total_ns / _NS_PER_MS,
        )
        backend = self.tagger.name if self.tagger is not None else ""
        payload = encode(
            Done(
                stream=line.stream,
                seq=line.seq,
                events=line.events,
                latency=latency,
                backend=backend,
            )
        )
        for sink in self.sinks:
            sink(line.stream, "done", payload)
        if line.reply is not None:
            line.reply(payload)
        m = self._metrics
        m.lines_done.inc()
        m.line_latency.observe(total_ns / 1e9)
        m.queue_wait.observe((line.taken_ns - line.queued_ns) / 1e9)
        m.model_time.observe(model_ns / 1e9)
        if line.events:
            m.first_event.observe((line.first_event_ns - received) / 1e9)

    def _fail(self, line: PendingLine, code: str) -> None:
        line.failed = True
        if code == ErrorCode.ENGINE_TIMEOUT:
            message = (
                f"the engine took longer than {self._config.engine.line_timeout_ms:g} ms on "
                "this line; it was skipped and the stream goes on"
            )
        else:
            message = "the engine failed on this line; it was skipped and the stream goes on"
        payload = self.error(line.stream, line.seq, code, message)
        if self._config.fanout.errors_to_subscribers:
            for sink in self.sinks:
                sink(line.stream, "error", payload)
        if line.reply is not None:
            line.reply(payload)
