"""Session-scoped fixtures: a tiny random-weight SeqGPT directory and its ONNX export.

Built once per test session in a temporary directory (a few seconds): the HF model directory
(``tiny_model_dir``), its export with the int8 graph (``tiny_export_dir``), and loaded models
(``ort_model``, ``torch_model``) for tests that only read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.decode import TorchCausalLM
from engine.session import OrtCausalLM, SessionOptions

__all__ = ["ort_model", "tiny_export_dir", "tiny_model_dir", "torch_model"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BloomForCausalLM with SeqGPT's architecture and a trained tokenizer."""
    from engine.tiny import build_tiny_seqgpt

    return build_tiny_seqgpt(tmp_path_factory.mktemp("tiny-seqgpt"), seed=0)


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with ``subtag export`` (fp32 + int8)."""
    from engine.export import export_model

    out = tmp_path_factory.mktemp("tiny-export")
    export_model(str(tiny_model_dir), out, quantize="int8")
    return out


@pytest.fixture(scope="session")
def ort_model(tiny_export_dir: Path) -> Iterator[OrtCausalLM]:
    """The tiny export on the ONNX Runtime CPU EP (fp32 graph)."""
    return OrtCausalLM.from_export(tiny_export_dir, SessionOptions(provider="cpu"))


@pytest.fixture(scope="session")
def torch_model(tiny_model_dir: Path) -> TorchCausalLM:
    """The tiny model under transformers (the reference)."""
    return TorchCausalLM.from_pretrained(tiny_model_dir)
