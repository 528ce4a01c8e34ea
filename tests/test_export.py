"""`subtag export` on the tiny random-weight SeqGPT: layout, manifest, graph I/O, parity, int8."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from engine import export
from engine.decode import TorchCausalLM, greedy, left_pad
from engine.manifest import EXPORT_FORMAT, load_manifest
from engine.session import OrtCausalLM, SessionOptions
from stream.errors import EngineError, InputError

PROMPTS = [
    "输入: [00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！\n分类: 音乐，动作\n输出: [GEN]",
    "输入: [door slams] JOHN: Who's there?\n抽取: 说话人，台词\n输出: [GEN]",
    "输入: 水\n分类: music，action\n输出: [GEN]",
]


def _encode(model: OrtCausalLM, texts: list[str]) -> list[list[int]]:
    return [model.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]


def test_export_writes_the_documented_layout(tiny_export_dir: Path) -> None:
    """The export directory holds the graphs, tokenizer, config and a manifest describing them."""
    for name in (
        "model.onnx",
        "model.onnx.data",
        "model.int8.onnx",
        "tokenizer.json",
        "config.json",
        "manifest.json",
    ):
        assert (tiny_export_dir / name).is_file(), name
    manifest = load_manifest(tiny_export_dir)
    config = json.loads((tiny_export_dir / "config.json").read_text())
    assert manifest.format == EXPORT_FORMAT
    assert manifest.dtype == "fp32"
    assert manifest.models == {"main": "model.onnx", "int8": "model.int8.onnx"}
    assert manifest.shape.n_layer == config["n_layer"] == 2
    assert manifest.shape.vocab_size == config["vocab_size"]
    assert (manifest.shape.bos_id, manifest.shape.eos_id, manifest.shape.pad_id) == (1, 2, 3)
    assert set(manifest.versions) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert len(manifest.weights_sha256) == 64
    assert manifest.lm_head is not None
    assert manifest.lm_head.rows == manifest.shape.vocab_size
    assert manifest.parity["main"] < 1e-3


def test_gen_token_is_one_special_token(ort_model: OrtCausalLM) -> None:
    """`[GEN]` encodes to the single id the manifest records, as the prompt format needs."""
    ids = ort_model.tokenizer.encode("输出: [GEN]", add_special_tokens=False).ids
    assert ort_model.config.gen_id is not None
    assert ids[-1] == ort_model.config.gen_id
    assert ort_model.tokenizer.encode("[GEN]", add_special_tokens=False).ids == [ids[-1]]


def test_graph_io_names_and_dynamic_axes(ort_model: OrtCausalLM) -> None:
    """Inputs/outputs carry the spec's names; batch, sequence and past axes are symbolic."""
    session = ort_model.session
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs)[:4] == [
        "input_ids",
        "attention_mask",
        "past_key_values.0.key",
        "past_key_values.0.value",
    ]
    assert "present.1.value" in outputs
    assert "logits" in outputs
    assert "hidden" in outputs
    assert all(isinstance(d, str) for d in inputs["input_ids"])
    key = inputs["past_key_values.0.key"]
    assert isinstance(key[0], str)
    assert isinstance(key[2], str)
    assert key[1] == ort_model.config.n_head
    assert key[3] == ort_model.config.head_dim


def test_prefill_from_zero_length_past_matches_torch(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM
) -> None:
    """A batched, left-padded prefill with a zero-length past gives torch's logits."""
    ids, mask = left_pad(_encode(ort_model, PROMPTS), ort_model.config.pad_id)
    ort_logits, ort_past = ort_model.forward(ids, mask, None)
    ref_logits, _ = torch_model.forward(ids, mask, None)
    assert ort_model.past_length(ort_past) == ids.shape[1]
    np.testing.assert_allclose(ort_logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_decode_steps_match_torch(ort_model: OrtCausalLM, torch_model: TorchCausalLM) -> None:
    """Several cached decode steps (past > 0, seq 1) keep matching torch's logits."""
    ids, mask = left_pad(_encode(ort_model, PROMPTS), ort_model.config.pad_id)
    ort_logits, ort_past = ort_model.forward(ids, mask, None)
    ref_logits, ref_past = torch_model.forward(ids, mask, None)
    for _ in range(4):
        step = ref_logits.argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones_like(step)], axis=1)
        ort_logits, ort_past = ort_model.forward(step, mask, ort_past)
        ref_logits, ref_past = torch_model.forward(step, mask, ref_past)
        np.testing.assert_allclose(ort_logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_hidden_output_matches_torch(ort_model: OrtCausalLM, torch_model: TorchCausalLM) -> None:
    """The `hidden` output is transformers' final layer-normed hidden state."""
    ids, mask = left_pad(_encode(ort_model, PROMPTS[:1]), ort_model.config.pad_id)
    _, ort_hidden, _ = ort_model.forward_hidden(ids, mask, None)
    _, ref_hidden, _ = torch_model.forward_hidden(ids, mask, None)
    np.testing.assert_allclose(ort_hidden, ref_hidden, atol=1e-4, rtol=1e-4)


def test_int8_graph_stays_close_to_fp32(tiny_export_dir: Path, ort_model: OrtCausalLM) -> None:
    """The int8 graph's logits track the fp32 ones and mostly pick the same first token.

    Later greedy tokens diverge on a random-weight model once one choice differs, so only the
    first choice is compared.
    """
    int8 = OrtCausalLM.from_export(tiny_export_dir, SessionOptions(variant="int8"))
    prompts = _encode(ort_model, PROMPTS)
    ids, mask = left_pad(prompts, ort_model.config.pad_id)
    fp32_logits, _ = ort_model.forward(ids, mask, None)
    int8_logits, _ = int8.forward(ids, mask, None)
    for a, b in zip(fp32_logits, int8_logits, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    fp32_first = next(greedy(ort_model, prompts, 1))
    int8_first = next(greedy(int8, prompts, 1))
    assert sum(a == b for a, b in zip(fp32_first, int8_first, strict=True)) >= 2


def test_fp16_export_declares_half_precision_kv(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--dtype fp16 writes an fp16 graph (KV inputs float16); its numerics are GPU-tested."""
    manifest = export.export_model(str(tiny_model_dir), tmp_path, dtype="fp16", parity=False)
    assert manifest.dtype == "fp16"
    assert manifest.lm_head is not None
    assert manifest.lm_head.dtype == "float16"
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    past = next(i for i in graph.graph.input if i.name == "past_key_values.0.key")
    assert past.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_export_command_reports_parity(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`subtag export` prints the max logit difference and returns 0 on a good export."""
    parser = argparse.ArgumentParser()
    export.configure(parser)
    args = parser.parse_args(["--model", str(tiny_model_dir), "--out", str(tmp_path / "x")])
    assert export.run(args) == 0
    out = capsys.readouterr().out
    assert "main: max |logit diff| vs torch" in out
    assert (tmp_path / "x" / "manifest.json").is_file()


def test_export_of_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    """A model path that does not exist raises InputError naming it, not a traceback."""
    with pytest.raises(InputError, match="cannot load model"):
        export.export_model(str(tmp_path / "nope"), tmp_path / "out", parity=False)


def test_int8_from_fp16_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Quantization starts from fp32; asking for int8 on fp16 says so."""
    with pytest.raises(EngineError, match="--dtype fp32"):
        export.export_model(str(tiny_model_dir), tmp_path, dtype="fp16", quantize="int8")
