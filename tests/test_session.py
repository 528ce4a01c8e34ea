"""OrtCausalLM: refusing stale or mismatched exports, provider fallback, tokenizer, head rows."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.decode import TorchCausalLM
from engine.session import OrtCausalLM, SessionOptions
from stream.errors import ConfigError, ExportMismatchError


@pytest.fixture
def export_copy(tiny_export_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny export that a test may damage."""
    return Path(shutil.copytree(tiny_export_dir, tmp_path / "export"))


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_valid_export_loads_on_the_cpu_ep(ort_model: OrtCausalLM) -> None:
    """The tiny export loads with the CPU provider and its manifest's shape."""
    assert ort_model.provider == "cpu"
    assert ort_model.session.get_providers() == ["CPUExecutionProvider"]
    assert ort_model.config.n_layer == 2
    assert ort_model.config.head_dim == 16


def test_stale_export_format_is_refused(export_copy: Path) -> None:
    """An export written by another format version is refused with the re-export command."""
    _edit_json(export_copy / "manifest.json", format=0)
    with pytest.raises(ExportMismatchError, match=r"stale.*subtag export --model"):
        OrtCausalLM.from_export(export_copy)


def test_directory_without_manifest_is_refused(export_copy: Path) -> None:
    """A directory that is not an export says so and how to make one."""
    (export_copy / "manifest.json").unlink()
    with pytest.raises(ExportMismatchError, match="not a subtag export"):
        OrtCausalLM.from_export(export_copy)


def test_replaced_weights_are_refused(export_copy: Path) -> None:
    """A graph data file of another size than the manifest records is refused."""
    with (export_copy / "model.onnx.data").open("ab") as handle:
        handle.write(b"\0" * 64)
    with pytest.raises(ExportMismatchError, match=r"model\.onnx\.data is \d+ bytes"):
        OrtCausalLM.from_export(export_copy)


def test_same_size_edit_is_caught_by_the_hash(export_copy: Path) -> None:
    """A same-size change to a small file (the tokenizer) is caught by its SHA-256."""
    path = export_copy / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[-2] = ord(" ") if data[-2] != ord(" ") else ord("\n")
    path.write_bytes(bytes(data))
    with pytest.raises(ExportMismatchError, match="changed after the export"):
        OrtCausalLM.from_export(export_copy)


def test_full_hash_catches_a_same_size_weight_edit(export_copy: Path) -> None:
    """With verify_hashes, a flipped byte in the weights is refused."""
    path = export_copy / "model.onnx.data"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportMismatchError, match=r"model\.onnx\.data was changed"):
        OrtCausalLM.from_export(export_copy, SessionOptions(verify_hashes=True))


def test_config_disagreeing_with_the_graph_is_refused(export_copy: Path) -> None:
    """A config.json for another model (more layers) than the graph's is refused."""
    _edit_json(export_copy / "config.json", n_layer=24)
    manifest = json.loads((export_copy / "manifest.json").read_text())
    # Keep the file record consistent, so the config check itself is what refuses it.
    from engine.manifest import file_record

    record = file_record(export_copy / "config.json")
    manifest["files"]["config.json"] = {"size": record.size, "sha256": record.sha256}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportMismatchError, match="n_layer=24"):
        OrtCausalLM.from_export(export_copy)


def test_missing_int8_variant_is_a_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Asking for the int8 graph of an export without one says how to make it."""
    from engine.export import export_model

    export_model(str(tiny_model_dir), tmp_path, parity=False)
    with pytest.raises(ConfigError, match="--quantize int8"):
        OrtCausalLM.from_export(tmp_path, SessionOptions(variant="int8"))


def test_unknown_provider_is_a_config_error(tiny_export_dir: Path) -> None:
    """A provider name outside cpu/cuda/tensorrt is refused before anything loads."""
    with pytest.raises(ConfigError, match="provider must be one of"):
        OrtCausalLM.from_export(tiny_export_dir, SessionOptions(provider="rocm"))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_gpu_provider_falls_back_loudly(
    tiny_export_dir: Path, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a usable GPU, cuda/tensorrt fall back to the CPU EP with a warning naming them."""
    from engine.session import gpu_available

    if gpu_available():
        pytest.skip("a GPU is usable here: nothing falls back")
    with caplog.at_level(logging.WARNING, logger="engine.session"):
        model = OrtCausalLM.from_export(tiny_export_dir, SessionOptions(provider=provider))
    assert model.provider == "cpu"
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    assert any(wanted in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    ids = np.asarray([[5, 6, 7]], dtype=np.int64)
    logits, _ = model.forward(ids, np.ones_like(ids), None)
    assert logits.shape == (1, model.config.vocab_size)


def test_runtime_tokenizer_matches_transformers(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM
) -> None:
    """The export's tokenizer.json (tokenizers only) encodes prompts like the HF tokenizer."""
    text = (
        "输入: [00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…\n分类: 音乐，动作\n输出: [GEN]"
    )
    ours = ort_model.tokenizer.encode(text, add_special_tokens=False).ids
    theirs = torch_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ours == theirs


def test_head_rows_are_the_tied_embedding(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM
) -> None:
    """Rows memory-mapped from the export equal the torch model's LM head rows."""
    ids = [0, 2, 5, ort_model.config.vocab_size - 1]
    np.testing.assert_array_equal(ort_model.head_rows(ids), torch_model.head_rows(ids))


def test_select_repeats_and_reorders_rows(ort_model: OrtCausalLM) -> None:
    """select() gathers batch rows of a past (beam reorder, fan-out of one prefill)."""
    ids = np.asarray([[5, 6, 7], [8, 9, 10]], dtype=np.int64)
    _, past = ort_model.forward(ids, np.ones_like(ids), None)
    picked = ort_model.select(past, [1, 1, 0])
    assert picked[0].shape[0] == 3
    np.testing.assert_array_equal(picked[0][0], past[0][1])
    np.testing.assert_array_equal(picked[0][2], past[0][0])
