"""The export manifest: what an export directory holds, and the checks a runtime makes on it.

``subtag export`` writes ``manifest.json`` beside the ONNX graphs. A runtime reads it before it
builds a session and refuses, with a message that says how to re-export, an export that is:

- *stale*: written by an older export format than this code reads (graph inputs/outputs changed);
- *mismatched*: its files are not the ones the manifest describes (replaced or truncated graph,
  another tokenizer or config copied in), or its config disagrees with the graph's KV inputs.

Small files (config, tokenizer) are hashed on every load; the multi-gigabyte graph files are
checked by size on every load and by SHA-256 only on request, because hashing them costs seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream.errors import ExportMismatchError

__all__ = [
    "EXPORT_FORMAT",
    "MANIFEST_NAME",
    "FileRecord",
    "HeadRecord",
    "Manifest",
    "ModelShape",
    "file_record",
    "hash_tensors",
    "load_manifest",
    "reexport_hint",
    "sha256_file",
]

# Bump when the graph's inputs/outputs or the directory layout change; older exports are refused.
EXPORT_FORMAT = 1
MANIFEST_NAME = "manifest.json"
# Files above this size are verified by size unless a full check is asked for.
_HASH_ALWAYS_BELOW = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The model facts a runtime needs without reading the graph.

    Attributes:
        n_layer: Transformer blocks (one key and one value cache input each).
        n_head: Attention heads.
        head_dim: Size of one head.
        hidden_size: Width of the hidden state (n_head * head_dim).
        vocab_size: Rows of the LM head (may exceed the tokenizer's size: padded vocabulary).
        bos_id: Beginning-of-sequence token id.
        eos_id: End-of-sequence token id.
        pad_id: Padding token id.
        gen_id: Id of the ``[GEN]`` token that ends every SeqGPT prompt, if the tokenizer has it.
    """

    n_layer: int
    n_head: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    gen_id: int | None = None

    @classmethod
    def of(cls, config: Any, tokenizer: Any = None) -> ModelShape:
        """Read the shape from a transformers BLOOM config and (optionally) its tokenizer.

        Special ids missing from the config default to BLOOM's (bos 1, eos 2, pad 3); ``gen_id``
        is ``None`` without a tokenizer or when ``[GEN]`` is not a known token.
        """
        gen_id = None
        if tokenizer is not None:
            gen = tokenizer.convert_tokens_to_ids("[GEN]")
            gen_id = None if gen is None or gen == tokenizer.unk_token_id else int(gen)

        def special(value: Any, default: int) -> int:
            return int(value if value is not None else default)

        return cls(
            n_layer=int(config.n_layer),
            n_head=int(config.n_head),
            head_dim=int(config.hidden_size) // int(config.n_head),
            hidden_size=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            bos_id=special(config.bos_token_id, 1),
            eos_id=special(config.eos_token_id, 2),
            pad_id=special(config.pad_token_id, 3),
            gen_id=gen_id,
        )


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """Where the tied embedding / LM-head matrix [vocab, hidden] lies in the graph's data file.

    Label scoring projects the hidden state onto a few of its rows; the runtime memory-maps them
    from here instead of parsing the graph (no onnx package needed at runtime).
    """

    file: str
    offset: int
    rows: int
    cols: int
    dtype: str


@dataclass(frozen=True, slots=True)
class FileRecord:
    """Size and SHA-256 of one file of the export."""

    size: int
    sha256: str


@dataclass(slots=True)
class Manifest:
    """The contents of ``manifest.json``.

    Attributes:
        format: The export format version (see :data:`EXPORT_FORMAT`).
        source: The model directory or hub id exported.
        dtype: ``fp32`` or ``fp16``: the float type of ``model.onnx``.
        opset: The ONNX opset of the graphs.
        versions: Package versions used to export (torch, transformers, onnx, onnxruntime).
        weights_sha256: Hash of the source weights (tensor names and bytes, in name order).
        shape: The model facts (:class:`ModelShape`).
        models: Variant name -> graph file (``main``, and ``int8`` when quantized).
        files: File name -> :class:`FileRecord` for every file the runtime reads.
        parity: Parity results from the export (variant -> max absolute logit difference).
        created: When the export was written (ISO 8601, UTC).
        lm_head: Where the LM-head rows lie (:class:`HeadRecord`), if recorded.
    """

    format: int
    source: str
    dtype: str
    opset: int
    versions: dict[str, str]
    weights_sha256: str
    shape: ModelShape
    models: dict[str, str]
    files: dict[str, FileRecord] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    created: str = ""
    lm_head: HeadRecord | None = None

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, export_dir: Path) -> None:
        """Write ``manifest.json`` into ``export_dir``."""
        (export_dir / MANIFEST_NAME).write_text(self.to_json(), encoding="utf-8")

    def verify(self, export_dir: Path, *, full_hash: bool = False) -> None:
        """Check that the directory's files are the ones this manifest describes.

        Args:
            export_dir: The export directory.
            full_hash: Also hash the large graph files (seconds per gigabyte).

        Raises:
            stream.errors.ExportMismatchError: A file is missing, or differs from the record.
        """
        for name, record in self.files.items():
            path = export_dir / name
            if not path.is_file():
                raise ExportMismatchError(
                    f"export {export_dir} is incomplete: {name} is missing; {reexport_hint(self)}"
                )
            size = path.stat().st_size
            if size != record.size:
                raise ExportMismatchError(
                    f"export {export_dir} does not match its manifest: {name} is {size} bytes, "
                    f"the manifest says {record.size}; {reexport_hint(self)}"
                )
            if (full_hash or size < _HASH_ALWAYS_BELOW) and sha256_file(path) != record.sha256:
                raise ExportMismatchError(
                    f"export {export_dir} does not match its manifest: {name} was changed after "
                    f"the export; {reexport_hint(self)}"
                )


def reexport_hint(manifest: Manifest | None, export_dir: Path | None = None) -> str:
    """The command that rebuilds an export, for error messages."""
    source = manifest.source if manifest is not None else "MODEL_DIR_OR_HUB_ID"
    dtype = manifest.dtype if manifest is not None else "fp32"
    out = str(export_dir) if export_dir is not None else "OUT_DIR"
    return f"re-export it with: subtag export --model {source} --out {out} --dtype {dtype}"


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read in 8 MiB blocks; ``progress`` gets the bytes read so far."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done)
    return digest.hexdigest()


def file_record(path: Path) -> FileRecord:
    """Size and hash of one file."""
    return FileRecord(size=path.stat().st_size, sha256=sha256_file(path))


def hash_tensors(named: Iterable[tuple[str, bytes | memoryview]]) -> str:
    """SHA-256 over (name, data) pairs, so renamed or changed weights both change the hash."""
    digest = hashlib.sha256()
    for name, data in named:
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def load_manifest(export_dir: str | Path) -> Manifest:
    """Read and check the manifest of an export directory.

    Args:
        export_dir: Directory written by ``subtag export``.

    Returns:
        The manifest, after the format check (file checks are :meth:`Manifest.verify`).

    Raises:
        stream.errors.ExportMismatchError: No manifest, an unreadable one, or a stale format.
    """
    directory = Path(export_dir)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ExportMismatchError(
            f"{directory} is not a subtag export (no {MANIFEST_NAME}); "
            f"{reexport_hint(None, directory)}"
        )
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportMismatchError(
            f"cannot read {path}: {exc}; {reexport_hint(None, directory)}"
        ) from exc
    fmt = raw.get("format")
    if fmt != EXPORT_FORMAT:
        raise ExportMismatchError(
            f"export {directory} has format {fmt!r}, this version of subtag reads format "
            f"{EXPORT_FORMAT} (the export is stale); "
            f"re-export it with: subtag export --model {raw.get('source', 'MODEL')} "
            f"--out {directory} --dtype {raw.get('dtype', 'fp32')}"
        )
    try:
        return Manifest(
            format=int(raw["format"]),
            source=str(raw["source"]),
            dtype=str(raw["dtype"]),
            opset=int(raw["opset"]),
            versions={str(k): str(v) for k, v in raw["versions"].items()},
            weights_sha256=str(raw["weights_sha256"]),
            shape=ModelShape(**raw["shape"]),
            models={str(k): str(v) for k, v in raw["models"].items()},
            files={str(k): FileRecord(**v) for k, v in raw.get("files", {}).items()},
            parity={str(k): float(v) for k, v in raw.get("parity", {}).items()},
            created=str(raw.get("created", "")),
            lm_head=HeadRecord(**raw["lm_head"]) if raw.get("lm_head") else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportMismatchError(
            f"{path} is missing or has a malformed field ({exc}); {reexport_hint(None, directory)}"
        ) from exc
