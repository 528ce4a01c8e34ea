"""``subtag export``: SeqGPT (BLOOM) to ONNX with a KV cache, a manifest, parity and int8.

The graph is traced from :class:`KVCacheDecoder`, a thin module we own over a loaded
``BloomForCausalLM``: it reuses the model's own layers and weights and spells out only the
attention glue (ALiBi from the attention mask, causal + padding mask, cache concatenation), so the
traced graph has dynamic batch, sequence and past axes, accepts a zero-length past for the
prefill, and does no work nobody asked for:

- inputs ``input_ids`` [batch, seq] int64, ``attention_mask`` [batch, past+seq] int64,
  ``past_key_values.{i}.key/.value`` [batch, heads, past, head_dim] (transformers 5.x layout);
- outputs ``logits`` [batch, vocab] for the LAST position only (full-width logits for every
  prompt position cost ~0.2 s per 150-token prefill of the 560M model on two cores and nothing
  reads them), ``hidden`` [batch, seq, hidden] (the final layer-normed state, which label scoring
  projects onto a few LM-head rows), ``present.{i}.key/.value`` [batch, heads, past+seq, head_dim].

The directory layout and every check are in docs/engine.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.manifest import (
    EXPORT_FORMAT,
    HeadRecord,
    Manifest,
    ModelShape,
    file_record,
    hash_tensors,
    load_manifest,
)
from stream.errors import EngineError, InputError, MissingExtraError
from stream.progress import progress_bar

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_PROMPTS",
    "configure",
    "export_model",
    "input_names",
    "output_names",
    "parity_check",
    "quantize_int8",
    "run",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
INT8_FILE = "model.int8.onnx"
# fp32 logits of the same graph in torch and ORT differ by float reassociation only.
FP32_PARITY_TOLERANCE = 1e-2

# SeqGPT-shaped prompts (see engine/prompts.py for the real builder) for the parity check.
PARITY_PROMPTS = (
    "输入: [00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！\n"
    "分类: 音乐，动作\n输出: [GEN]",
    "输入: [00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…\n抽取: 说话人，状态\n输出: [GEN]",
    "输入: [door slams] JOHN: Who's there?\n分类: music，action\n输出: [GEN]",
)


def input_names(n_layer: int) -> list[str]:
    """Graph input names, in order."""
    names = ["input_ids", "attention_mask"]
    for i in range(n_layer):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def output_names(n_layer: int) -> list[str]:
    """Graph output names, in order."""
    names = ["logits", "hidden"]
    for i in range(n_layer):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


def _require_export_stack() -> None:
    for module in ("torch", "transformers", "onnx"):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingExtraError(module, "export") from exc


def _decoder_class() -> type[torch.nn.Module]:
    """Build the wrapper class lazily so importing this module never imports torch."""
    import torch
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    class KVCacheDecoder(torch.nn.Module):
        """BLOOM forward over flat KV tensors: (ids, mask, *past) -> (logits, hidden, *present)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            config = model.config
            self.n_head = int(config.n_head)
            self.head_dim = int(config.hidden_size) // self.n_head
            # BLOOM's option (off for SeqGPT) to take residuals after the layer norms.
            self.post_ln_residual = bool(config.apply_residual_connection_post_layernorm)
            self.slopes: torch.Tensor
            slopes = _get_alibi_slopes(self.n_head, torch.device("cpu")).to(torch.float32)
            self.register_buffer("slopes", slopes, persistent=False)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            tr = self.model.transformer
            batch, seq = input_ids.shape
            total = attention_mask.shape[1]
            x = tr.word_embeddings_layernorm(tr.word_embeddings(input_ids))
            mask = attention_mask.to(torch.float32)
            # ALiBi position of each key = number of real tokens before it: left padding shifts
            # nothing (transformers' build_alibi_tensor does the same).
            positions = (torch.cumsum(mask, dim=-1) - 1.0) * mask
            alibi = self.slopes[None, :, None, None] * positions[:, None, None, :]
            query_abs = torch.arange(seq, device=input_ids.device)[:, None] + (total - seq)
            key_abs = torch.arange(total, device=input_ids.device)[None, :]
            allowed = (key_abs <= query_abs)[None, None] & (attention_mask[:, None, None, :] > 0)
            # Scores stay float32 whatever the weights' dtype: softmax in fp16 overflows.
            bias = torch.where(allowed, alibi, torch.finfo(torch.float32).min)
            scale = 1.0 / math.sqrt(self.head_dim)
            presents: list[torch.Tensor] = []
            for i, block in enumerate(tr.h):
                attn = block.self_attention
                normed = block.input_layernorm(x)
                qkv = attn.query_key_value(normed).view(batch, seq, self.n_head, 3, self.head_dim)
                query = qkv[..., 0, :].transpose(1, 2)
                key = torch.cat([past[2 * i], qkv[..., 1, :].transpose(1, 2)], dim=2)
                value = torch.cat([past[2 * i + 1], qkv[..., 2, :].transpose(1, 2)], dim=2)
                presents += [key, value]
                scores = torch.matmul(query, key.transpose(-1, -2)).to(torch.float32) * scale
                probs = torch.softmax(scores + bias, dim=-1).to(query.dtype)
                context = torch.matmul(probs, value).transpose(1, 2)
                context = context.reshape(batch, seq, self.n_head * self.head_dim)
                attended = attn.dense(context) + (normed if self.post_ln_residual else x)
                normed = block.post_attention_layernorm(attended)
                x = block.mlp(normed, normed if self.post_ln_residual else attended)
            hidden = tr.ln_f(x)
            # Tied LM head, last position only; MatMul (not Gemm) so int8 quantization covers it.
            logits = torch.matmul(hidden[:, -1, :], tr.word_embeddings.weight.t())
            return (logits.to(torch.float32), hidden, *presents)

    return KVCacheDecoder


class _Steps:
    """Numbered progress lines with durations for the long export steps, plus a bar on a TTY."""

    def __init__(self, total: int, advance: Callable[[float], None] | None = None) -> None:
        self.total = total
        self.done = 0
        self.advance = advance

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        log.info("[%d/%d] %s ...", self.done, self.total, what)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        log.info("[%d/%d] %s: done in %.1f s", self.done, self.total, what, elapsed)
        if self.advance is not None:
            self.advance(1)


def _load_model(source: str) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, BloomForCausalLM

    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model: Any = BloomForCausalLM.from_pretrained(source, dtype="float32")
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load model {source!r}: {exc}. Give a local model directory (config.json, "
            "weights, tokenizer files) or a hub id on a machine that can reach the hub"
        ) from exc
    model.eval()
    return model, tokenizer


def _weights_hash(model: Any) -> str:
    state = model.state_dict()
    # memoryview: hash the tensors' own buffers, no gigabyte-sized copies.
    return hash_tensors(
        (name, memoryview(state[name].detach().contiguous().cpu().numpy()).cast("B"))
        for name in sorted(state)
    )


def _trace(model: Any, shape: ModelShape, path: Path, opset: int, dtype: str) -> None:
    import onnx
    import torch

    wrapper: Any = _decoder_class()(model)
    wrapper.eval()
    float_type = torch.float16 if dtype == "fp16" else torch.float32
    # Trace with past > 0 and seq > 1 so neither axis is specialised to a constant.
    batch, seq, past_len = 2, 3, 2
    ids = torch.randint(4, max(5, min(shape.vocab_size, 200)), (batch, seq))
    mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    past = [
        torch.zeros(batch, shape.n_head, past_len, shape.head_dim, dtype=float_type)
        for _ in range(2 * shape.n_layer)
    ]
    names_in = input_names(shape.n_layer)
    names_out = output_names(shape.n_layer)
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch"},
        "hidden": {0: "batch", 1: "sequence"},
    }
    for name in names_in[2:]:
        dynamic[name] = {0: "batch", 2: "past_sequence"}
    for name in names_out[2:]:
        dynamic[name] = {0: "batch", 2: "total_sequence"}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as tmp:
        raw = Path(tmp) / MODEL_FILE
        # The TorchScript exporter: it handles the dynamic past axis (including length 0) and
        # keeps the graph we wrote; its deprecation warning is not ours to act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (ids, mask, *past),
                str(raw),
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        # One graph file + one data file, whatever the exporter chose (it splits >2 GB models
        # into a file per tensor).
        graph = onnx.load(str(raw), load_external_data=True)
        for stale in (path, path.with_name(DATA_FILE)):
            stale.unlink(missing_ok=True)
        onnx.save_model(
            graph,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
            size_threshold=1024,
        )


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True) -> None:
    """Dynamic int8 quantization of the MatMul and Gather weights, for the CPU path.

    Args:
        src: The fp32 graph.
        dst: Where to write the int8 graph (a single file: int8 weights stay under 2 GB).
        per_channel: One scale per output channel (more accurate, same speed on MLAS).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs every tensor at INFO on the root logger: thousands of lines.
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                model_input=str(src),
                model_output=str(dst),
                op_types_to_quantize=["MatMul", "Gather"],
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        logging.disable(logging.NOTSET)


def _head_record(graph_path: Path, shape: ModelShape) -> HeadRecord | None:
    """Locate the embedding matrix (the tied LM head) in the graph's external data file."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False)
    for tensor in graph.graph.initializer:
        if not tensor.name.endswith("word_embeddings.weight"):
            continue
        if list(tensor.dims) != [shape.vocab_size, shape.hidden_size]:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        if "location" not in info:
            return None
        dtype = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
        return HeadRecord(
            file=info["location"],
            offset=int(info.get("offset", "0")),
            rows=shape.vocab_size,
            cols=shape.hidden_size,
            dtype=dtype[tensor.data_type],
        )
    return None


def parity_check(
    model: Any, tokenizer: Any, graph: Path, prompts: Sequence[str] = PARITY_PROMPTS
) -> dict[str, float]:
    """Compare the ONNX graph with the transformers model on a few prompts.

    Runs a batched, left-padded prefill and one decode step through both and compares the
    last-position logits.

    Returns:
        ``max_abs_logit_diff`` (over prefill and step), ``max_abs_logit`` (the scale) and
        ``top1_agreement`` (fraction of rows whose arg-max agrees).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    shape = ModelShape.of(model.config, tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    ids = np.full((len(encoded), width), shape.pad_id, dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = 1
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    past_type = np.float16 if "float16" in session.get_inputs()[2].type else np.float32
    feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    for name in input_names(shape.n_layer)[2:]:
        feed[name] = np.zeros((len(encoded), shape.n_head, 0, shape.head_dim), dtype=past_type)
    outputs = session.run(None, feed)
    step_ids = outputs[0].argmax(-1)[:, None].astype(np.int64)
    step_mask = np.concatenate([mask, np.ones((len(encoded), 1), dtype=np.int64)], axis=1)
    step_feed: dict[str, Any] = {"input_ids": step_ids, "attention_mask": step_mask}
    for name, value in zip(input_names(shape.n_layer)[2:], outputs[2:], strict=True):
        step_feed[name] = value
    step_outputs = session.run(None, step_feed)
    with torch.no_grad():
        full_ids = torch.from_numpy(np.concatenate([ids, step_ids], axis=1))
        reference = model(input_ids=full_ids, attention_mask=torch.from_numpy(step_mask)).logits
    ref_prefill = reference[:, -2, :].float().numpy()
    ref_step = reference[:, -1, :].float().numpy()
    diff = max(
        float(np.abs(outputs[0] - ref_prefill).max()),
        float(np.abs(step_outputs[0] - ref_step).max()),
    )
    agree = float(
        np.mean(
            np.concatenate(
                [
                    outputs[0].argmax(-1) == ref_prefill.argmax(-1),
                    step_outputs[0].argmax(-1) == ref_step.argmax(-1),
                ]
            )
        )
    )
    return {
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(np.abs(ref_step).max()),
        "top1_agreement": agree,
    }


def export_model(
    source: str,
    out_dir: str | Path,
    *,
    dtype: str = "fp32",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    parity: bool = True,
) -> Manifest:
    """Export a SeqGPT/BLOOM model to an ONNX export directory.

    Args:
        source: A local model directory or a hub id.
        out_dir: The export directory (created; an earlier export there is replaced).
        dtype: ``fp32`` (CPU and GPU) or ``fp16`` (GPU path).
        quantize: ``int8`` to also write ``model.int8.onnx`` (dynamic quantization, CPU path;
            needs ``dtype="fp32"``), or None.
        opset: ONNX opset.
        parity: Run the parity check against torch at the end.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        stream.errors.InputError: The model cannot be loaded.
        stream.errors.EngineError: The options conflict, or the fp32 parity check fails.
    """
    _require_export_stack()
    import onnx
    import onnxruntime
    import torch
    import transformers

    if dtype not in ("fp32", "fp16"):
        raise EngineError(f"--dtype must be fp32 or fp16, not {dtype!r}")
    if quantize not in (None, "int8"):
        raise EngineError(f"--quantize must be int8, not {quantize!r}")
    if quantize == "int8" and dtype != "fp32":
        raise EngineError("int8 quantization starts from the fp32 graph: use --dtype fp32")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the export directory {out}: {exc}") from exc
    total = 5 + (quantize is not None) + parity
    with progress_bar(f"exporting {source}", total=total) as advance:
        steps = _Steps(total, advance)
        with steps.step(f"loading {source}"):
            model, tokenizer = _load_model(source)
        with steps.step("hashing the weights"):
            weights_sha = _weights_hash(model)
        shape = ModelShape.of(model.config, tokenizer)
        with steps.step(f"copying the tokenizer and config to {out}"):
            tokenizer.save_pretrained(out)
            model.config.save_pretrained(out)
            if not (out / "tokenizer.json").is_file():
                raise EngineError(
                    f"{source} has no fast tokenizer (tokenizer.json); cannot export it"
                )
        traced = model.to(torch.float16) if dtype == "fp16" else model
        with steps.step(f"exporting the {dtype} graph (opset {opset})"):
            _trace(traced, shape, out / MODEL_FILE, opset, dtype)
        if dtype == "fp16":
            model = model.to(torch.float32)
        models = {"main": MODEL_FILE}
        (out / INT8_FILE).unlink(missing_ok=True)
        if quantize == "int8":
            with steps.step("quantizing to int8 (dynamic, per channel)"):
                quantize_int8(out / MODEL_FILE, out / INT8_FILE)
            models["int8"] = INT8_FILE
        results: dict[str, float] = {}
        if parity:
            with steps.step("parity check against torch"):
                for variant, name in models.items():
                    try:
                        check = parity_check(model, tokenizer, out / name)
                    except Exception as exc:  # an fp16 graph may not run on the CPU EP: say so
                        log.warning(
                            "parity: cannot run %s (%s) on the CPU EP: %s", variant, name, exc
                        )
                        continue
                    log.info(
                        "parity %s: max |logit diff| %.3g (logits up to %.3g), "
                        "top-1 agreement %.0f%%",
                        variant,
                        check["max_abs_logit_diff"],
                        check["max_abs_logit"],
                        100 * check["top1_agreement"],
                    )
                    results[variant] = check["max_abs_logit_diff"]
        with steps.step("writing the manifest"):
            names = [MODEL_FILE, DATA_FILE, *models.values(), "tokenizer.json", "config.json"]
            manifest = Manifest(
                format=EXPORT_FORMAT,
                source=source,
                dtype=dtype,
                opset=opset,
                versions={
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
                weights_sha256=weights_sha,
                shape=shape,
                models=models,
                files={name: file_record(out / name) for name in dict.fromkeys(names)},
                parity=results,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                lm_head=_head_record(out / MODEL_FILE, shape),
            )
            manifest.write(out)
    if dtype == "fp32" and results.get("main", 0.0) > FP32_PARITY_TOLERANCE:
        raise EngineError(
            f"parity check failed: the fp32 graph's logits differ from torch by "
            f"{results['main']:.3g} (tolerance {FP32_PARITY_TOLERANCE}); the export in {out} "
            "is not trustworthy"
        )
    return manifest


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``subtag export`` arguments."""
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument("--out", required=True, help="export directory to write")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument(
        "--quantize", choices=("int8",), default=None, help="also write model.int8.onnx (CPU)"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check")


def run(args: argparse.Namespace) -> int:
    """Run ``subtag export``."""
    manifest = export_model(
        args.model,
        args.out,
        dtype=args.dtype,
        quantize=args.quantize,
        opset=args.opset,
        parity=not args.no_parity,
    )
    load_manifest(args.out).verify(Path(args.out), full_hash=False)
    for variant, diff in manifest.parity.items():
        print(f"{variant}: max |logit diff| vs torch = {diff:.3g}")
    print(f"exported {args.model} -> {args.out} ({', '.join(manifest.models.values())})")
    return 0
