"""GPU paths of the engine (CUDA EP with IOBinding, TensorRT EP, fp16): skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.decode import beam_search, greedy, left_pad
from engine.session import OrtCausalLM, SessionOptions, gpu_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and onnxruntime-gpu"),
]

PROMPTS = [
    "输入: [00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！\n分类: 音乐，动作\n输出: [GEN]",
    "输入: [door slams] JOHN: Who's there?\n抽取: 说话人，台词\n输出: [GEN]",
]


def _prompts(model: OrtCausalLM) -> list[list[int]]:
    return [model.tokenizer.encode(t, add_special_tokens=False).ids for t in PROMPTS]


def _cuda(export_dir: Path) -> OrtCausalLM:
    model = OrtCausalLM.from_export(export_dir, SessionOptions(provider="cuda"))
    if model.provider != "cuda":
        pytest.skip("the CUDA provider could not start here (see the warning)")
    return model


def test_cuda_keeps_the_kv_cache_on_the_device(
    tiny_export_dir: Path, ort_model: OrtCausalLM
) -> None:
    """With IOBinding the past is a list of device OrtValues and logits match the CPU EP."""
    model = _cuda(tiny_export_dir)
    ids, mask = left_pad(_prompts(model), model.config.pad_id)
    logits, past = model.forward(ids, mask, None)
    assert past[0].device_name().lower() == "cuda"
    cpu_logits, _ = ort_model.forward(ids, mask, None)
    np.testing.assert_allclose(logits, cpu_logits, atol=1e-3, rtol=1e-3)


def test_cuda_greedy_and_beam_equal_the_cpu(tiny_export_dir: Path, ort_model: OrtCausalLM) -> None:
    """Batched greedy and 4-beam search give the CPU EP's tokens on the CUDA EP."""
    model = _cuda(tiny_export_dir)
    prompts = _prompts(model)
    assert list(greedy(model, prompts, 12)) == list(greedy(ort_model, prompts, 12))
    for prompt in prompts:
        assert beam_search(model, prompt, 4, 10) == beam_search(ort_model, prompt, 4, 10)


def test_tensorrt_session_runs_with_profiles(
    tiny_export_dir: Path, ort_model: OrtCausalLM, tmp_path: Path
) -> None:
    """The TensorRT EP builds with explicit profiles and its fp16 logits track the CPU's."""
    options = SessionOptions(provider="tensorrt", trt_cache_dir=str(tmp_path / "trt"))
    model = OrtCausalLM.from_export(tiny_export_dir, options)
    if model.provider != "tensorrt":
        pytest.skip("the TensorRT provider could not start here (see the warning)")
    ids, mask = left_pad(_prompts(model), model.config.pad_id)
    logits, _ = model.forward(ids, mask, None)
    cpu_logits, _ = ort_model.forward(ids, mask, None)
    for a, b in zip(logits, cpu_logits, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99


def test_fp16_export_tracks_fp32_on_cuda(
    tiny_model_dir: Path, ort_model: OrtCausalLM, tmp_path: Path
) -> None:
    """An fp16 export's logits on the CUDA EP stay close to the fp32 graph's."""
    from engine.export import export_model

    export_model(str(tiny_model_dir), tmp_path, dtype="fp16", parity=False)
    model = _cuda(tmp_path)
    ids, mask = left_pad(_prompts(model), model.config.pad_id)
    logits, _ = model.forward(ids, mask, None)
    cpu_logits, _ = ort_model.forward(ids, mask, None)
    scale = float(np.abs(cpu_logits).max())
    assert float(np.abs(logits - cpu_logits).max()) < 0.05 * scale
