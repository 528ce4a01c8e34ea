"""Engine benchmark: per-line latency of SeqGPT tagging work against transformers `generate`.

Modes, on the same prompts (sample lines of one stream, each with its 3 earlier lines as
context, SeqGPT classification prompt):

    a  transformers generate, greedy, fixed new tokens (the baseline a user would write)
    b  our engine, ONNX Runtime, fp32 graph, greedy, same new tokens
    c  our engine, ONNX Runtime, int8 graph, greedy, same new tokens
    e  Hugging Face Optimum's ORTModelForCausalLM generate, only if optimum is installed
    d  our best mode for the tagging question: label-constrained scoring on the int8 graph, one
       prefill per line, the stream's earlier context reused from the KV cache (prefix-stable
       context: engine.prompts.select_context with period 3, so 1-3 context lines)

Every figure is printed as a ratio to (a) measured in the same run, next to the machine's limits
measured in the same run (memory bandwidth, fp32 GEMM throughput) and each decode step as a
fraction of its weight-streaming bound. Defaults run in a few minutes on two cores.

Usage:
    .venv/bin/python tools/bench_engine.py [--model-dir artifacts/seqgpt-full]
        [--export-dir artifacts/seqgpt-full-onnx] [--lines 4] [--new-tokens 32]
        [--threads 2] [--modes abcd] [--provider cpu|cuda|tensorrt] [--plot PATH] [--json PATH]

The full-size random-weight model and its export are built on first use (~2.2 GB + ~4 GB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.decode import PrefixCache, greedy, score_labels  # noqa: E402
from engine.prompts import CLASSIFY, select_context  # noqa: E402
from engine.session import OrtCausalLM, SessionOptions  # noqa: E402
from stream.progress import progress_bar  # noqa: E402

SAMPLES = Path("/work/shared/samples/cases.jsonl")
LABELS = ("说话", "音乐", "动作")
CONTEXT_LINES = 3
NEVER = -1  # an EOS id no model produces: every prompt decodes exactly --new-tokens


@dataclass
class ModeResult:
    """Per-line measurements of one mode."""

    name: str
    title: str
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    new_tokens: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    fed_tokens: list[int] = field(default_factory=list)
    weight_bytes: float = 0.0
    block_params: float = 0.0
    head_params: float = 0.0
    note: str = ""


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _ns() -> int:
    return time.perf_counter_ns()


# -- prompts ------------------------------------------------------------------------------


def _sample_lines(path: Path) -> list[str]:
    lines = [json.loads(row)["text"] for row in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line.strip()]


class PromptIds:
    """SeqGPT prompts as token ids, tokenized segment by segment.

    Segment-wise tokenization keeps a line's ids the same whether it is the line being tagged or
    a context line of a later prompt, so prompts that share text also share a token prefix (the
    condition for KV reuse); the text is the exact prompt of engine.prompts.build_prompt.
    """

    def __init__(self, tokenizer: Any, gen_id: int) -> None:
        self.tokenizer = tokenizer
        self.gen_id = gen_id
        self._cache: dict[str, list[int]] = {}

    def enc(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return self._cache[text]

    def build(self, context: Sequence[str], line: str) -> tuple[list[int], int]:
        """Prompt ids and the length of the part ending with ``line`` (the reusable prefix)."""
        ids = self.enc("输入: ")
        for i, segment in enumerate([*context, line]):
            ids = ids + (self.enc("\t") if i else []) + self.enc(segment.replace("\t", " "))
        upto = len(ids)
        question = f"\n{CLASSIFY}: {'，'.join(LABELS)}\n输出: "
        return ids + self.enc(question) + [self.gen_id], upto


# -- machine limits -----------------------------------------------------------------------


def _ort_matmul_session(m: int, k: int, n: int, threads: int, int8: bool) -> tuple[Any, Any]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tmp = tempfile.mkdtemp(prefix="bench-mm-")
    path = Path(tmp) / "mm.onnx"
    onnx.save_model(model, str(path))
    if int8:
        from engine.export import quantize_int8

        quantize_int8(path, Path(tmp) / "mm8.onnx", per_channel=True)
        path = Path(tmp) / "mm8.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, rng.standard_normal((m, k), dtype=np.float32)


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = _ns()
        fn()
        best = min(best, (_ns() - start) / 1e9)
    return best


def measure_limits(threads: int) -> dict[str, float]:
    """Memory bandwidth and GEMM throughput, measured now (same run as the modes)."""
    limits: dict[str, float] = {}
    src = np.ones(256 * 1024 * 1024 // 4, dtype=np.float32)  # 256 MiB
    dst = np.empty_like(src)
    copy_s = _best_time(lambda: np.copyto(dst, src), 5)
    limits["copy_GBps"] = 2 * src.nbytes / copy_s / 1e9  # read + write
    # The decode step's own access pattern: a GEMV streaming a 1 GiB weight through ORT.
    session, x = _ort_matmul_session(1, 1024, 262144, threads, int8=False)
    gemv_s = _best_time(lambda: session.run(None, {"x": x}), 5)
    limits["gemv_read_GBps"] = 1024 * 262144 * 4 / gemv_s / 1e9
    limits["bandwidth_GBps"] = max(limits["copy_GBps"], limits["gemv_read_GBps"])
    session, x = _ort_matmul_session(256, 1024, 4096, threads, int8=False)
    gemm_s = _best_time(lambda: session.run(None, {"x": x}), 5)
    limits["gemm_fp32_GFLOPs"] = 2 * 256 * 1024 * 4096 / gemm_s / 1e9
    session, x = _ort_matmul_session(256, 1024, 4096, threads, int8=True)
    gemm8_s = _best_time(lambda: session.run(None, {"x": x}), 5)
    limits["gemm_int8_GOPs"] = 2 * 256 * 1024 * 4096 / gemm8_s / 1e9
    return limits


# -- modes --------------------------------------------------------------------------------


def _set_weights(result: ModeResult, cfg: Any, bytes_per: float) -> None:
    """Parameters and the bytes a decode step streams: every block plus the LM head."""
    hidden, n_layer, vocab = int(cfg.hidden_size), int(cfg.n_layer), int(cfg.vocab_size)
    result.block_params = n_layer * (12 * hidden * hidden + 13 * hidden)
    result.head_params = vocab * hidden
    result.weight_bytes = (result.block_params + result.head_params) * bytes_per


def _time_generate(
    model: Any, result: ModeResult, prompts: list[list[int]], new: int, warmup: int
) -> ModeResult:
    """Time `model.generate` greedy per line, exactly `new` tokens, first token via a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[int] = []

        def put(self, value: Any) -> None:
            self.times.append(_ns())

        def end(self) -> None:
            pass

    for i, ids in enumerate(prompts[:warmup] + prompts):
        stamps = Stamps()
        start = _ns()
        with torch.inference_mode():
            model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=3,
                streamer=stamps,
            )
        end = _ns()
        if i < warmup:
            continue
        first = stamps.times[1]  # times[0] is the prompt itself
        result.latencies_s.append((end - start) / 1e9)
        result.ttft_s.append((first - start) / 1e9)
        result.decode_ms.append((end - first) / 1e6 / max(1, new - 1))
        result.prompt_tokens.append(len(ids))
        result.fed_tokens.append(len(ids))
    result.new_tokens = new
    _set_weights(result, model.config, 4)
    return result


def run_hf_generate(
    model_dir: Path, prompts: list[list[int]], new: int, threads: int, warmup: int
) -> ModeResult:
    """(a) transformers generate, greedy, exactly `new` tokens per line."""
    import torch
    from transformers import BloomForCausalLM

    torch.set_num_threads(threads)
    model: Any = BloomForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    model.eval()
    result = ModeResult("a", "transformers generate greedy (fp32)")
    return _time_generate(model, result, prompts, new, warmup)


def run_optimum(
    model_dir: Path, prompts: list[list[int]], new: int, threads: int, warmup: int
) -> ModeResult:
    """(e) Hugging Face Optimum's ORTModelForCausalLM (only when optimum is installed)."""
    import onnxruntime as ort

    # Imported by name: optimum is optional and not a dependency of this project.
    ort_model_class: Any = importlib.import_module("optimum.onnxruntime").ORTModelForCausalLM
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = ort_model_class.from_pretrained(
        str(model_dir), export=True, session_options=options, provider="CPUExecutionProvider"
    )
    result = ModeResult("e", "Optimum ORTModelForCausalLM generate (fp32)")
    return _time_generate(model, result, prompts, new, warmup)


def run_engine_greedy(
    name: str,
    title: str,
    model: OrtCausalLM,
    prompts: list[list[int]],
    new: int,
    warmup: int,
    bytes_per: float,
) -> ModeResult:
    """(b)/(c) our engine, greedy, exactly `new` tokens per line."""
    result = ModeResult(name, title)
    for i, ids in enumerate(prompts[:warmup] + prompts):
        start = _ns()
        first = 0
        for n, _ in enumerate(greedy(model, [ids], new, eos_id=NEVER)):
            if n == 0:
                first = _ns()
        end = _ns()
        if i < warmup:
            continue
        result.latencies_s.append((end - start) / 1e9)
        result.ttft_s.append((first - start) / 1e9)
        result.decode_ms.append((end - first) / 1e6 / max(1, new - 1))
        result.prompt_tokens.append(len(ids))
        result.fed_tokens.append(len(ids))
    cfg = model.config
    result.new_tokens = new
    _set_weights(result, cfg, bytes_per)
    return result


def run_engine_scoring(
    model: OrtCausalLM, lines: list[str], first: int, count: int, builder: PromptIds
) -> ModeResult:
    """(d) label scoring with the stream's context prefix reused from the KV cache."""
    result = ModeResult("d", "engine int8 label scoring + KV prefix reuse")
    _set_weights(result, model.config, 1)
    candidates = [builder.enc(label) for label in LABELS]
    cache = PrefixCache(model, capacity=8)
    # The stream runs from its first line so the cache holds what a live stream would; lines
    # before `first` warm it up and are not timed.
    for seq in range(first + count):
        window = lines[max(0, seq - CONTEXT_LINES) : seq]
        context = select_context(window, seq, CONTEXT_LINES)
        ids, upto = builder.build(context, lines[seq])
        fed_before = cache.fed_tokens
        start = _ns()
        state = cache.prefill(ids, keep_at=[upto])
        probs = score_labels(model, ids, candidates, state=state)
        end = _ns()
        assert abs(sum(probs) - 1.0) < 1e-4
        if seq < first:
            continue
        result.latencies_s.append((end - start) / 1e9)
        result.ttft_s.append((end - start) / 1e9)
        result.prompt_tokens.append(len(ids))
        result.fed_tokens.append(cache.fed_tokens - fed_before)
    result.note = "one answer per line (probabilities over the labels), no decode steps"
    return result


# -- report -------------------------------------------------------------------------------


def report(results: list[ModeResult], limits: dict[str, float], args: argparse.Namespace) -> str:
    """The results table (text) with ratios to mode (a) and fractions of the machine's limits."""
    base = next((r for r in results if r.name == "a"), None)
    base_p50 = statistics.median(base.latencies_s) if base else float("nan")
    out = []
    out.append(
        f"machine (measured now): memory bandwidth {limits['bandwidth_GBps']:.1f} GB/s "
        f"(copy {limits['copy_GBps']:.1f}, ORT GEMV read {limits['gemv_read_GBps']:.1f}); "
        f"fp32 GEMM {limits['gemm_fp32_GFLOPs']:.0f} GFLOP/s; "
        f"int8 GEMM {limits['gemm_int8_GOPs']:.0f} GOP/s; threads {args.threads}"
    )
    header = (
        f"{'mode':<48} {'prompt':>6} {'fed':>5} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'tok/s':>6} {'ttft s':>7} {'ms/tok':>7} {'bound':>6} {'of bnd':>6} {'vs (a)':>7}"
    )
    out += [header, "-" * len(header)]
    for r in results:
        p50 = statistics.median(r.latencies_s)
        tokens_s = r.new_tokens / p50 if r.new_tokens else float("nan")
        decode = statistics.median(r.decode_ms) if r.decode_ms else float("nan")
        streamed = r.weight_bytes if r.decode_ms else 0.0
        bound_ms = streamed / (limits["bandwidth_GBps"] * 1e9) * 1e3
        frac = f"{decode / bound_ms:5.2f}x" if bound_ms else "   -  "
        bound = f"{bound_ms:6.1f}" if bound_ms else "    - "
        out.append(
            f"({r.name}) {r.title:<44} {statistics.mean(r.prompt_tokens):6.0f} "
            f"{statistics.mean(r.fed_tokens):5.0f} {p50:7.3f} {_pct(r.latencies_s, 95):7.3f} "
            f"{_pct(r.latencies_s, 99):7.3f} {tokens_s:6.1f} {statistics.median(r.ttft_s):7.3f} "
            f"{decode:7.1f} {bound} {frac} {base_p50 / p50:6.2f}x"
        )
    out.append(
        "prompt = mean prompt tokens; fed = tokens actually prefilled; ms/tok = decode step "
        "(p50); bound = weights streamed once per step at the measured bandwidth; of bnd = "
        "ms/tok / bound; vs (a) = (a)'s p50 / this p50 (speed-up)."
    )
    for r in results:
        if r.ttft_s:
            prefill = statistics.median(r.ttft_s)
            # Every block for every prefilled token; the LM head for the last position only
            # ((d) projects onto a few head rows instead).
            fed = statistics.mean(r.fed_tokens)
            flops = 2 * (r.block_params * fed + (r.head_params if r.name != "d" else 0))
            peak = limits["gemm_fp32_GFLOPs"] if r.name in "ab" else limits["gemm_int8_GOPs"]
            out.append(
                f"({r.name}) prefill of {fed:.0f} tokens {prefill:.3f} s = "
                f"{flops / prefill / 1e9:.0f} G(FL)OP/s, "
                f"{flops / prefill / 1e9 / peak:.2f} of the measured GEMM peak"
            )
    return "\n".join(out)


def plot(results: list[ModeResult], path: Path) -> None:
    """Latency CDF per mode (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs = np.sort(np.asarray(r.latencies_s))
        ax.step(
            xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=f"({r.name}) {r.title}"
        )
    ax.set_xscale("log")
    ax.set_xlabel("per-line latency (s)")
    ax.set_ylabel("fraction of lines")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ensure_model(model_dir: Path, export_dir: Path, full_size: bool) -> None:
    """Build the random-weight model and its export (fp32 + int8) if missing."""
    from engine.export import export_model
    from engine.tiny import build_tiny_seqgpt

    if not (model_dir / "config.json").is_file():
        print(f"building the random-weight model in {model_dir} ...", file=sys.stderr)
        build_tiny_seqgpt(model_dir, full_size=full_size, seed=0)
    if not (export_dir / "manifest.json").is_file():
        print(f"exporting to {export_dir} (fp32 + int8) ...", file=sys.stderr)
        export_model(str(model_dir), export_dir, quantize="int8")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/seqgpt-full")
    parser.add_argument("--export-dir", type=Path, default=ROOT / "artifacts/seqgpt-full-onnx")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test only)")
    parser.add_argument("--lines", type=int, default=4, help="timed lines per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed lines per mode first")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="abcde", help="e runs only if optimum is installed")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--plot", type=Path, default=None, help="write a latency CDF PNG")
    parser.add_argument("--json", type=Path, default=None, help="write raw results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    ensure_model(args.model_dir, args.export_dir, full_size=not args.tiny)
    lines = _sample_lines(args.samples)
    first = CONTEXT_LINES  # the first timed line has a full 3-line context
    count = min(args.lines, len(lines) - first)
    warmup = min(args.warmup, count)

    limits = measure_limits(args.threads)
    options: dict[str, Any] = {
        "provider": args.provider,
        "intra_op_threads": args.threads,
        "inter_op_threads": 1,
    }
    if args.provider == "tensorrt":
        # TensorRT engines take minutes to build: keep them between runs.
        options["trt_cache_dir"] = str(ROOT / "artifacts/trt-cache")
    results: list[ModeResult] = []
    prompts: list[list[int]] = []
    builder: PromptIds | None = None
    if any(m in args.modes for m in "bcd"):
        probe = OrtCausalLM.from_export(args.export_dir, SessionOptions(**options))
        gen_id = probe.config.gen_id if probe.config.gen_id is not None else 0
        builder = PromptIds(probe.tokenizer, gen_id)
        for seq in range(first, first + count):
            prompts.append(builder.build(lines[seq - CONTEXT_LINES : seq], lines[seq])[0])
        del probe
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(args.export_dir / "tokenizer.json"))
        builder = PromptIds(tok, tok.token_to_id("[GEN]") or 0)
        for seq in range(first, first + count):
            prompts.append(builder.build(lines[seq - CONTEXT_LINES : seq], lines[seq])[0])

    has_optimum = importlib.util.find_spec("optimum") is not None
    wanted = [m for m in args.modes if m in "abcd" or (m == "e" and has_optimum)]
    with progress_bar(f"benchmark modes {''.join(wanted)}", total=len(wanted)) as advance:
        if "a" in args.modes:
            results.append(
                run_hf_generate(args.model_dir, prompts, args.new_tokens, args.threads, warmup)
            )
            advance(1)
        if "b" in args.modes:
            model = OrtCausalLM.from_export(
                args.export_dir, SessionOptions(variant="main", **options)
            )
            results.append(
                run_engine_greedy(
                    "b",
                    f"engine fp32 greedy ({model.provider})",
                    model,
                    prompts,
                    args.new_tokens,
                    warmup,
                    4,
                )
            )
            advance(1)
            del model
        if "c" in args.modes or "d" in args.modes:
            int8 = OrtCausalLM.from_export(
                args.export_dir, SessionOptions(variant="int8", **options)
            )
            if "c" in args.modes:
                results.append(
                    run_engine_greedy(
                        "c",
                        f"engine int8 greedy ({int8.provider})",
                        int8,
                        prompts,
                        args.new_tokens,
                        warmup,
                        1,
                    )
                )
                advance(1)
            if "d" in args.modes:
                results.append(run_engine_scoring(int8, lines, first, count, builder))
                advance(1)
        if has_optimum and "e" in args.modes:
            results.append(
                run_optimum(args.model_dir, prompts, args.new_tokens, args.threads, warmup)
            )
            advance(1)
    text = report(results, limits, args)
    print(
        f"SeqGPT engine benchmark: {args.export_dir.name}, {count} lines/mode (+{warmup} warm-up), "
        f"{args.new_tokens} new tokens, context {CONTEXT_LINES} lines, provider {args.provider}"
    )
    print(text)
    if not has_optimum:
        print("(Hugging Face Optimum is not installed: its ORTModelForCausalLM was not measured)")
    if args.plot:
        plot(results, args.plot)
        print(f"latency CDF written to {args.plot}")
    if args.json:
        args.json.write_text(
            json.dumps({"limits": limits, "modes": [r.__dict__ for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
