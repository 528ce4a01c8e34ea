"""Service benchmark: N streams over WebSocket -> `subtag serve` -> one WebSocket subscriber.

Starts the real service (rules backend) in its own process on a free loopback port, opens N
``/ingest/{stream}`` connections and one ``/events`` subscriber, and steps the offered load.
At each step it offers R lines/s for a few seconds (round-robin over the streams, sent in 5 ms
ticks) and reports, from the ``done`` messages the subscriber received:

* sustained lines/s (lines done during the step / its duration),
* the latency the service adds per line, ``total - model`` from each ``done`` (p50, p99),
* the client-observed latency, send -> ``done`` at the subscriber (p50, p99),
* lost lines (sent but never done) and lost events (done.events vs events received).

The last step offers "as fast as possible" (every stream keeps a window of lines in flight).
The load generator shares the machine with the service, as it would on a 2-core box.

Baseline, measured in the same run with the same client and steps: a bare WebSocket relay
(``--baseline relay``, the least a hand-written service must do: decode each line's JSON, encode
a ``done`` for it and broadcast it to the subscribers, no tagging, windows, scheduling or
metrics). The table prints the service's sustained rate and client-observed latency as ratios to
the relay's. PNG plots (throughput vs offered load, latency vs load, latency CDF per step) are
written to ``--plot-dir`` (default ``artifacts/bench_service``).

    .venv/bin/python tools/bench_service.py                 # default steps, 50 streams
    .venv/bin/python tools/bench_service.py --streams 100 --steps 1000,4000 --seconds 3
    .venv/bin/python tools/bench_service.py --baseline none --plot-dir ''   # service only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.schema import Done  # noqa: E402

LINES = [
    "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！",
    "[00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…",
    "[00:05:31] [玻璃瓶晃动声] 李佳琦（对白）：看！摇一摇，全是绵密泡泡！",
    "[00:05:35] [欢快口哨声]",
    "[00:01:10] [悬疑低音提琴滑音] 女主（OS）：他骗了我三年…",
]
_DONE_PREFIX = b'{"type":"done"'
_DONE = msgspec.json.Decoder(Done)


@dataclass
class Step:
    """One load step's measurements."""

    offered: float | None
    seconds: float
    sent: int = 0
    done: int = 0
    events_reported: int = 0
    events_received: int = 0
    added_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# `subtag serve` without the CLI dispatcher (which imports every command's module).
_SERVE = """
import argparse, logging, sys
from stream import service
logging.basicConfig(level=logging.WARNING)
parser = argparse.ArgumentParser()
service.configure(parser)
sys.exit(service.run(parser.parse_args()))
"""


# The baseline: a bare relay with the same wire protocol for what the benchmark reads.
_RELAY = """
import asyncio, sys
import msgspec
from websockets.asyncio.server import broadcast, serve
from stream.schema import Done, InputLine, Latency, encode

subscribers = set()
decode = msgspec.json.Decoder(InputLine).decode
zero = Latency(0.0, 0.0, 0.0, None, 0.0)

async def handler(ws):
    path = ws.request.path
    if path.startswith("/events"):
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
        return
    stream = path.rsplit("/", 1)[-1]
    async for frame in ws:
        line = decode(frame)
        broadcast(subscribers, encode(Done(stream, line.seq or 0, 0, zero, "relay")).decode())

def health(connection, request):
    if request.path == "/healthz":
        return connection.respond(200, "ok")
    return None

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), process_request=health,
                     max_queue=None):
        await asyncio.Future()

asyncio.run(main())
"""


def start_relay(port: int) -> subprocess.Popen[bytes]:
    """Start the baseline relay on ``port``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", _RELAY, str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def start_service(port: int, config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", _SERVE, "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            raise SystemExit(f"the service exited:\n{process.stderr.read().decode()[-2000:]}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("the service did not become ready in 30 s")


class Bench:
    """The load generator: ingest connections, one subscriber, bookkeeping per line."""

    def __init__(self, port: int, streams: int) -> None:
        self.base = f"ws://127.0.0.1:{port}"
        self.names = [f"b{i}" for i in range(streams)]
        self.ingest: list[ClientConnection] = []
        self.sent_at: dict[tuple[str, int], int] = {}
        self.next_seq = dict.fromkeys(self.names, 0)
        self.step: Step | None = None
        self.outstanding = 0
        self.window_free = asyncio.Event()
        self.drained = asyncio.Event()

    async def open(self) -> None:
        self.subscriber = await connect(self.base + "/events", max_queue=None, max_size=None)
        self.ingest = [
            await connect(f"{self.base}/ingest/{name}", max_queue=None) for name in self.names
        ]
        self.reader = asyncio.create_task(self.read())

    async def close(self) -> None:
        self.reader.cancel()
        for ws in [*self.ingest, self.subscriber]:
            await ws.close()

    async def read(self) -> None:
        async for frame in self.subscriber:
            now = time.perf_counter_ns()
            step = self.step
            data = frame if isinstance(frame, bytes) else frame.encode()
            if not data.startswith(_DONE_PREFIX):
                if step is not None:
                    step.events_received += 1
                continue
            done = _DONE.decode(data)
            sent = self.sent_at.pop((done.stream, done.seq), None)
            self.outstanding -= 1
            if self.outstanding < self.window_limit:
                self.window_free.set()
            if self.outstanding <= 0:
                self.drained.set()
            if step is None or sent is None:
                continue
            step.done += 1
            step.events_reported += done.events
            step.added_ms.append(done.latency.total - done.latency.model)
            step.e2e_ms.append((now - sent) / 1e6)

    window_limit = 1 << 30

    def send(self, index: int) -> None:
        """Send the next line of stream ``index`` without waiting."""
        name = self.names[index]
        seq = self.next_seq[name]
        self.next_seq[name] = seq + 1
        text = LINES[seq % len(LINES)]
        payload = msgspec.json.encode({"text": text, "seq": seq})
        self.sent_at[(name, seq)] = time.perf_counter_ns()
        self.outstanding += 1
        # The frame is written to the socket at once; the 5 ms tick awaits the drain.
        ws = self.ingest[index]
        ws.protocol.send_text(payload)
        ws.send_data()

    async def run_step(self, rate: float | None, seconds: float) -> Step:
        step = Step(rate, seconds)
        self.step = step
        turn = 0
        started = time.perf_counter()
        if rate is None:
            # As fast as possible: keep a bounded number of lines in flight.
            self.window_limit = 20 * len(self.names)
            while time.perf_counter() - started < seconds:
                while self.outstanding < self.window_limit:
                    self.send(turn % len(self.names))
                    turn += 1
                    step.sent += 1
                self.window_free.clear()
                await self.window_free.wait()
        else:
            tick = 0.005
            per_tick = rate * tick
            owed = 0.0
            ticks = 0
            while time.perf_counter() - started < seconds:
                ticks += 1
                owed += per_tick
                while owed >= 1:
                    self.send(turn % len(self.names))
                    turn += 1
                    owed -= 1
                    step.sent += 1
                await asyncio.sleep(max(0.0, started + ticks * tick - time.perf_counter()))
        # Let the tail of the step arrive, but measure throughput over the offered period.
        if self.outstanding > 0:
            self.drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.drained.wait()
        step.seconds = max(seconds, 1e-9)
        self.window_limit = 1 << 30
        self.step = None
        self.sent_at.clear()
        self.outstanding = 0
        return step


def _offered(step: Step) -> str:
    return "max" if step.offered is None else f"{step.offered:,.0f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 and value == value and base == base else "-"


def report(steps: list[Step], streams: int, baseline: list[Step] | None = None) -> str:
    """The table: one row per step, the service against the baseline where there is one."""
    head = (
        "| offered lines/s | sustained lines/s | added p50 / p95 / p99 ms "
        "| e2e p50 / p95 / p99 ms | lost lines | lost events |"
    )
    if baseline:
        head += (
            " relay sustained | relay e2e p50 / p99 ms | sustained vs relay | e2e p50 vs relay |"
        )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, s in enumerate(steps):
        added = " / ".join(f"{percentile(s.added_ms, q):.2f}" for q in (50, 95, 99))
        e2e = " / ".join(f"{percentile(s.e2e_ms, q):.2f}" for q in (50, 95, 99))
        row = (
            f"| {_offered(s)} | {s.done / s.seconds:,.0f} | {added} | {e2e} | {s.sent - s.done} "
            f"| {s.events_reported - s.events_received} |"
        )
        if baseline:
            b = baseline[i]
            b50, b99 = percentile(b.e2e_ms, 50), percentile(b.e2e_ms, 99)
            row += (
                f" {b.done / b.seconds:,.0f} | {b50:.2f} / {b99:.2f} "
                f"| {_ratio(s.done / s.seconds, b.done / b.seconds)} "
                f"| {_ratio(percentile(s.e2e_ms, 50), b50)} |"
            )
        rows.append(row)
    title = f"{streams} streams, rules backend, loopback"
    if baseline:
        title += "; baseline: bare WebSocket relay (no tagging), same client and steps"
    return title + "\n\n" + "\n".join(rows)


def write_plots(directory: Path, runs: dict[str, list[Step]]) -> list[Path]:
    """Throughput vs offered load, latency vs load and a latency CDF per step, as PNGs."""
    from tools.plots import latency_cdf, latency_vs_load, throughput_vs_load

    def load(step: Step) -> float:
        return step.offered if step.offered is not None else step.sent / step.seconds

    written = [
        throughput_vs_load(
            {n: [(load(s), s.done / s.seconds) for s in steps] for n, steps in runs.items()},
            directory / "throughput_vs_load.png",
            title="Sustained vs offered lines/s (loopback, 2 cores)",
        ),
        latency_vs_load(
            {
                n: [
                    (load(s), percentile(s.e2e_ms, 50), percentile(s.e2e_ms, 99))
                    for s in steps
                    if s.e2e_ms
                ]
                for n, steps in runs.items()
            },
            directory / "latency_vs_load.png",
            title="Send -> done latency (p50, p99) vs offered load",
        ),
    ]
    service = runs["subtag serve"]
    written.append(
        latency_cdf(
            {f"{_offered(s)} lines/s": s.e2e_ms for s in service if s.e2e_ms},
            directory / "latency_cdf.png",
            title="subtag serve: send -> done latency per offered load",
        )
    )
    return written


async def run_steps(port: int, args: argparse.Namespace, label: str) -> list[Step]:
    """Open the clients against ``port`` and run every step, with a progress bar."""
    from stream.progress import track

    bench = Bench(port, args.streams)
    await bench.open()
    await bench.run_step(200.0, 1.0)  # warm-up
    steps: list[Step] = []
    for value in track(args.steps.split(","), description=label):
        rate = None if value == "max" else float(value)
        step = await bench.run_step(rate, args.seconds)
        steps.append(step)
        print(
            f"{label}: offered {value:>6}: {step.done / step.seconds:8,.0f} lines/s, "
            f"e2e p99 {percentile(step.e2e_ms, 99):.2f} ms",
            file=sys.stderr,
        )
    await bench.close()
    return steps


async def _measure(process: subprocess.Popen[bytes], port: int, args: argparse.Namespace,
                   label: str) -> list[Step]:  # fmt: skip
    try:
        await wait_ready(port, process)
        return await run_steps(port, args, label)
    finally:
        process.terminate()
        process.wait(timeout=15)


async def main(args: argparse.Namespace) -> int:
    baseline: list[Step] | None = None
    if args.baseline == "relay":
        port = free_port()
        baseline = await _measure(start_relay(port), port, args, "relay")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f"[server]\nack_lines = {'true' if args.ack else 'false'}\n"
            "[limits]\nlines_per_second = 0.0\n"
            f"[scheduler]\nmax_batch = {args.max_batch}\nmax_wait_ms = {args.max_wait_ms}\n"
            "queue_per_stream = 4096\nmax_queued = 200000\n"
            "[fanout]\nsubscriber_queue = 200000\n",
            encoding="utf-8",
        )
        port = free_port()
        steps = await _measure(start_service(port, config), port, args, "subtag serve")
    print(report(steps, args.streams, baseline))
    if args.plot_dir:
        runs = {"subtag serve": steps}
        if baseline:
            runs["bare relay (baseline)"] = baseline
        for path in write_plots(Path(args.plot_dir), runs):
            print(f"plot written to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--steps", default="500,1000,2000,4000,6000,8000,max")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=1.0)
    parser.add_argument(
        "--ack", action="store_true", help="also send each done back on its ingest connection"
    )
    parser.add_argument(
        "--baseline", choices=("relay", "none"), default="relay", help="default: relay"
    )
    parser.add_argument("--plot-dir", default="artifacts/bench_service", help="'' for no plots")
    sys.exit(asyncio.run(main(parser.parse_args())))
