"""ONNX Runtime sessions over a ``subtag export`` directory: providers, checks, one forward step.

:class:`OrtCausalLM` is what decoding drives (see engine/decode.py): ``forward`` takes int64 ids
and mask as numpy and a *past* (the KV cache of the previous step, opaque to callers) and returns
the last position's logits and the new past. On the CPU EP the past is the list of ``present``
arrays ORT returned, passed straight back as the next inputs (no copies, no concatenation in
numpy); on CUDA/TensorRT it is a list of ``OrtValue`` s that stay on the device between steps,
bound through IOBinding, and only the logits row comes back to the host.

Providers come from :class:`SessionOptions`. A provider that is not available (onnxruntime built
without it, no GPU, missing CUDA libraries) is never silently replaced: the fallback is logged
as a warning that names the provider and the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.manifest import Manifest, ModelShape, load_manifest, reexport_hint
from stream.errors import ConfigError, EngineError, ExportMismatchError

__all__ = ["PROVIDERS", "OrtCausalLM", "SessionOptions", "gpu_available"]

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")
_ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_FALLBACK = {"tensorrt": "cuda", "cuda": "cpu"}

Past = list[Any]


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How to build the ONNX Runtime session.

    Attributes:
        provider: ``cpu``, ``cuda`` or ``tensorrt`` (falls back tensorrt -> cuda -> cpu, loudly).
        variant: Which graph of the export: ``main`` (fp32 or fp16 as exported) or ``int8``
            (the dynamically quantized CPU graph, needs ``--quantize int8`` at export).
        intra_op_threads: Threads inside one operator (CPU EP); 0 lets ORT choose.
        inter_op_threads: Threads across operators (CPU EP; the graph is sequential, keep 1).
        device_id: CUDA device for the cuda and tensorrt providers.
        trt_cache_dir: TensorRT engine cache directory (engines take minutes to build).
        trt_fp16: Let TensorRT run in fp16.
        trt_max_batch: Largest batch of the TensorRT optimisation profile.
        trt_max_seq: Largest total sequence (past + new) of the profile.
        trt_opt_batch: Batch the profile is tuned for.
        trt_opt_seq: Total sequence the profile is tuned for.
        cuda_graphs: Ask for CUDA graph capture (needs static shapes; see docs/engine.md).
        verify_hashes: Hash the large graph files against the manifest too (seconds per GB).
    """

    provider: str = "cpu"
    variant: str = "main"
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    device_id: int = 0
    trt_cache_dir: str | None = None
    trt_fp16: bool = True
    trt_max_batch: int = 8
    trt_max_seq: int = 1024
    trt_opt_batch: int = 1
    trt_opt_seq: int = 256
    cuda_graphs: bool = False
    verify_hashes: bool = False


def gpu_available() -> bool:
    """Whether this onnxruntime offers the CUDA provider and an NVIDIA device node exists."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def _trt_profile(shape: ModelShape, batch: int, seq: int, past: int, total: int) -> str:
    """One TensorRT profile line: every dynamic input with its shape."""
    dims = [f"input_ids:{batch}x{seq}", f"attention_mask:{batch}x{total}"]
    for i in range(shape.n_layer):
        for kind in ("key", "value"):
            dims.append(
                f"past_key_values.{i}.{kind}:{batch}x{shape.n_head}x{past}x{shape.head_dim}"
            )
    return ",".join(dims)


def _provider_entry(name: str, options: SessionOptions, shape: ModelShape) -> Any:
    if name == "cpu":
        return "CPUExecutionProvider"
    if name == "cuda":
        cuda: dict[str, Any] = {
            "device_id": options.device_id,
            # The KV cache grows every step; let the arena grow in place rather than double.
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
        return ("CUDAExecutionProvider", cuda)
    trt: dict[str, Any] = {
        "device_id": options.device_id,
        "trt_fp16_enable": options.trt_fp16,
        # Explicit profiles for every dynamic input, or TensorRT rebuilds engines as shapes grow.
        "trt_profile_min_shapes": _trt_profile(shape, 1, 1, 0, 1),
        # Tuned for one decode step at the typical prompt length.
        "trt_profile_opt_shapes": _trt_profile(
            shape, options.trt_opt_batch, 1, options.trt_opt_seq - 1, options.trt_opt_seq
        ),
        # Prefill of up to trt_max_seq tokens, or a decode step with up to trt_max_seq cached.
        "trt_profile_max_shapes": _trt_profile(
            shape,
            options.trt_max_batch,
            options.trt_max_seq,
            options.trt_max_seq,
            options.trt_max_seq + 1,
        ),
    }
    if options.trt_cache_dir:
        Path(options.trt_cache_dir).mkdir(parents=True, exist_ok=True)
        trt["trt_engine_cache_enable"] = True
        trt["trt_engine_cache_path"] = options.trt_cache_dir
        trt["trt_timing_cache_enable"] = True
        trt["trt_timing_cache_path"] = options.trt_cache_dir
    return ("TensorrtExecutionProvider", trt)


def _check_config(export_dir: Path, manifest: Manifest) -> None:
    """The export's config.json must describe the model the manifest (and graph) were made from."""
    try:
        config = json.loads((export_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportMismatchError(
            f"cannot read {export_dir / 'config.json'}: {exc}; "
            f"{reexport_hint(manifest, export_dir)}"
        ) from exc
    shape = manifest.shape
    expected = {
        "n_layer": shape.n_layer,
        "n_head": shape.n_head,
        "hidden_size": shape.hidden_size,
        "vocab_size": shape.vocab_size,
    }
    for key, want in expected.items():
        got = config.get(key)
        if got != want:
            raise ExportMismatchError(
                f"export {export_dir} is mismatched: config.json has {key}={got}, the graph was "
                f"exported with {key}={want}; {reexport_hint(manifest, export_dir)}"
            )


class OrtCausalLM:
    """A SeqGPT export under ONNX Runtime, stepped one forward call at a time.

    Build with :meth:`from_export`. Attributes: ``tokenizer`` (``tokenizers.Tokenizer``),
    ``config`` (:class:`engine.manifest.ModelShape`), ``manifest``, ``provider`` (the provider
    actually in use: ``cpu``, ``cuda`` or ``tensorrt``).
    """

    def __init__(
        self,
        session: Any,
        manifest: Manifest,
        tokenizer: Any,
        provider: str,
        options: SessionOptions,
        export_dir: Path,
    ) -> None:
        self.session = session
        self.manifest = manifest
        self.config: ModelShape = manifest.shape
        self.tokenizer = tokenizer
        self.provider = provider
        self.options = options
        self.export_dir = export_dir
        self._on_device = provider in ("cuda", "tensorrt")
        names = [i.name for i in session.get_inputs()]
        self._past_names = names[2:]
        self._present_names = [o.name for o in session.get_outputs()][2:]
        past_type = session.get_inputs()[2].type
        self.kv_dtype: type[np.floating[Any]] = np.float16 if "float16" in past_type else np.float32
        self._head: npt.NDArray[Any] | None = None

    @classmethod
    def from_export(
        cls, export_dir: str | Path, options: SessionOptions | None = None
    ) -> OrtCausalLM:
        """Check an export directory and build its session.

        Args:
            export_dir: Directory written by ``subtag export``.
            options: Providers, threads, variant (defaults: CPU EP, 2 threads, main graph).

        Raises:
            stream.errors.ExportMismatchError: The export is stale or does not match its
                manifest (the message says how to re-export).
            stream.errors.ConfigError: Unknown provider or variant.
            stream.errors.EngineError: The session cannot be built on any provider, or
                onnxruntime/tokenizers are missing.
        """
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            # Both are core dependencies of subtag (onnxruntime-gpu also runs the CPU EP).
            raise EngineError(
                f"{exc.name} is not installed; reinstall subtag (pip install subtag) to get "
                "onnxruntime-gpu and tokenizers"
            ) from exc
        opts = options or SessionOptions()
        if opts.provider not in PROVIDERS:
            raise ConfigError(
                f"provider must be one of {', '.join(PROVIDERS)}, not {opts.provider!r}"
            )
        directory = Path(export_dir)
        manifest = load_manifest(directory)
        manifest.verify(directory, full_hash=opts.verify_hashes)
        _check_config(directory, manifest)
        if opts.variant not in manifest.models:
            hint = " (export with --quantize int8)" if opts.variant == "int8" else ""
            raise ConfigError(
                f"export {directory} has no {opts.variant!r} graph{hint}; it has "
                f"{', '.join(sorted(manifest.models))}"
            )
        graph = directory / manifest.models[opts.variant]
        provider = cls._available_provider(opts.provider, ort.get_available_providers())
        if opts.cuda_graphs:
            log.warning(
                "cuda_graphs requested but not used: CUDA graph capture needs fixed input shapes, "
                "and this export's KV cache grows every step (see docs/engine.md)"
            )
        if manifest.dtype == "fp16" and provider == "cpu":
            log.warning(
                "export %s is fp16, meant for the GPU path; the CPU EP runs it slowly", directory
            )
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = opts.intra_op_threads
        session_options.inter_op_num_threads = opts.inter_op_threads
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session, provider = cls._build_session(
            ort, graph, session_options, provider, opts, manifest
        )
        expected = [
            "input_ids",
            "attention_mask",
            *(
                f"past_key_values.{i}.{kind}"
                for i in range(manifest.shape.n_layer)
                for kind in ("key", "value")
            ),
        ]
        got = [i.name for i in session.get_inputs()]
        if got != expected:
            raise ExportMismatchError(
                f"graph {graph} has inputs {got[:4]}... ({len(got)} in all), expected "
                f"{len(expected)} starting {expected[:4]}; {reexport_hint(manifest, directory)}"
            )
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(session, manifest, tokenizer, provider, opts, directory)

    @staticmethod
    def _available_provider(wanted: str, available: Sequence[str]) -> str:
        provider = wanted
        while _ORT_NAMES[provider] not in available:
            fallback = _FALLBACK[provider]
            log.warning(
                "ONNX Runtime provider %s is not available (this onnxruntime offers %s); "
                "falling back to %s",
                _ORT_NAMES[provider],
                ", ".join(available),
                _ORT_NAMES[fallback],
            )
            provider = fallback
        return provider

    @staticmethod
    def _build_session(
        ort: Any,
        graph: Path,
        session_options: Any,
        provider: str,
        opts: SessionOptions,
        manifest: Manifest,
    ) -> tuple[Any, str]:
        while True:
            chain = [provider]
            while chain[-1] in _FALLBACK:
                chain.append(_FALLBACK[chain[-1]])
            entries = [_provider_entry(name, opts, manifest.shape) for name in chain]
            try:
                session = ort.InferenceSession(
                    str(graph), sess_options=session_options, providers=entries
                )
            except Exception as exc:  # ORT raises its own types; the message is what matters
                if provider == "cpu":
                    raise EngineError(f"cannot load {graph} on the CPU provider: {exc}") from exc
                log.warning(
                    "ONNX Runtime provider %s failed to start (%s); falling back to %s",
                    _ORT_NAMES[provider],
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    _ORT_NAMES[_FALLBACK[provider]],
                )
                provider = _FALLBACK[provider]
                continue
            active = session.get_providers()
            if _ORT_NAMES[provider] in active:
                return session, provider
            # ORT itself dropped the provider (e.g. no GPU, CUDA libraries missing): say so.
            used = next(name for name in chain if _ORT_NAMES[name] in active)
            log.warning(
                "ONNX Runtime provider %s could not be initialised (no usable device or its "
                "libraries are missing; run with ORT verbose logging for details); using %s",
                _ORT_NAMES[provider],
                _ORT_NAMES[used],
            )
            return session, used

    # -- the step interface shared with engine.decode.TorchCausalLM -------------------------

    def empty_past(self, batch: int) -> Past:
        """A zero-length KV cache for ``batch`` rows (the prefill's past)."""
        shape = (batch, self.config.n_head, 0, self.config.head_dim)
        if self._on_device:
            import onnxruntime as ort

            device = "cuda"
            return [
                ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, self.kv_dtype, device, self.options.device_id
                )
                for _ in self._past_names
            ]
        empty = np.zeros(shape, dtype=self.kv_dtype)
        return [empty] * len(self._past_names)

    def forward(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        past: Past | None,
    ) -> tuple[npt.NDArray[np.float32], Past]:
        """One step: logits of the last position [batch, vocab] and the extended past.

        Args:
            input_ids: New tokens [batch, seq] (left-padded within the batch).
            attention_mask: [batch, past + seq]: 1 for real tokens, 0 for padding.
            past: The previous step's past, or None for the prefill.
        """
        logits, _, present = self._run(input_ids, attention_mask, past, want_hidden=False)
        return logits, present

    def forward_hidden(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        past: Past | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Past]:
        """Like :meth:`forward`, plus the final normed hidden state [batch, seq, hidden]."""
        logits, hidden, present = self._run(input_ids, attention_mask, past, want_hidden=True)
        assert hidden is not None
        return logits, hidden, present

    def _run(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        past: Past | None,
        *,
        want_hidden: bool,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None, Past]:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if past is None:
            past = self.empty_past(ids.shape[0])
        if self._on_device:
            return self._run_bound(ids, mask, past, want_hidden)
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        feed.update(zip(self._past_names, past, strict=True))
        wanted = ["logits", *(["hidden"] if want_hidden else []), *self._present_names]
        outputs = self.session.run(wanted, feed)
        hidden = np.asarray(outputs[1], dtype=np.float32) if want_hidden else None
        present = outputs[2:] if want_hidden else outputs[1:]
        return np.asarray(outputs[0], dtype=np.float32), hidden, present

    def _run_bound(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        past: Past,
        want_hidden: bool,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None, Past]:
        # IOBinding: past and present live on the device; only ids/mask go up, logits come down.
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        for name, value in zip(self._past_names, past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        if want_hidden:
            binding.bind_output("hidden", "cpu")
        for name in self._present_names:
            binding.bind_output(name, "cuda", self.options.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits = np.asarray(outputs[0].numpy(), dtype=np.float32)
        hidden = np.asarray(outputs[1].numpy(), dtype=np.float32) if want_hidden else None
        present = list(outputs[2:] if want_hidden else outputs[1:])
        return logits, hidden, present

    def select(self, past: Past, rows: Sequence[int]) -> Past:
        """Pick (and repeat) batch rows of a past: beam reordering, fanning one prefill out."""
        index = np.asarray(rows, dtype=np.int64)
        if not self._on_device:
            return [np.ascontiguousarray(value[index]) for value in past]
        import onnxruntime as ort

        # A host round trip: beam reorders are rare next to decode steps on the GPU path.
        return [
            ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(value.numpy()[index]), "cuda", self.options.device_id
            )
            for value in past
        ]

    def past_length(self, past: Past | None) -> int:
        """Number of cached positions."""
        if past is None:
            return 0
        first = past[0]
        shape = first.shape if isinstance(first, np.ndarray) else first.shape()
        return int(shape[2])

    def head_rows(self, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """LM-head rows [len(token_ids), hidden] for projecting hidden states onto a few tokens.

        Raises:
            stream.errors.ExportMismatchError: The manifest does not record where the head lies.
        """
        if self._head is None:
            record = self.manifest.lm_head
            if record is None:
                raise ExportMismatchError(
                    f"export {self.export_dir} does not record its LM head; "
                    f"{reexport_hint(self.manifest, self.export_dir)}"
                )
            self._head = np.memmap(
                self.export_dir / record.file,
                dtype=np.dtype(record.dtype),
                mode="r",
                offset=record.offset,
                shape=(record.rows, record.cols),
            )
        return np.asarray(self._head[np.asarray(token_ids, dtype=np.int64)], dtype=np.float32)
