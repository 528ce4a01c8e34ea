"""The SeqGPT backends on the tiny random-weight model: mechanics, streaming, parity.

The tiny model's answers are arbitrary, so these tests check how answers are obtained and turned
into events (batching, verbatim spans, counters, order, parity between runtimes), never accuracy.
"""

from __future__ import annotations

import pytest

from engine.decode import TorchCausalLM, score_labels
from engine.prompts import CLASSIFY, CUE_KIND_LABELS, EXTRACT, LINE_LABELS, build_prompt
from engine.questions import Answerer, Codec, Question, score_batch
from engine.session import OrtCausalLM


def _torch_codec(model: TorchCausalLM) -> Codec:
    tokenizer = model.tokenizer
    return Codec(
        lambda text: list(tokenizer(text)["input_ids"]),
        lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
    )


def _ort_codec(model: OrtCausalLM) -> Codec:
    tokenizer = model.tokenizer
    return Codec(
        lambda text: list(tokenizer.encode(text).ids),
        lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
    )


_QUESTIONS = [
    ("[00:05:22] [轻柔竖琴泛音]\t轻柔竖琴泛音", CUE_KIND_LABELS),
    ("旁白：这是一个关于勇气的故事。", ("说话人", "台词", "钢琴", "钢琴曲", "欢快")),
    ("[门被推开]", ("开门", "开关门", "敲门")),
]


def test_batched_scoring_equals_scoring_each_prompt(torch_model: TorchCausalLM) -> None:
    """score_batch over left-padded prompts gives score_labels' probabilities per prompt."""
    codec = _torch_codec(torch_model)
    eos = torch_model.config.eos_id
    prompts = [codec.encode(build_prompt(text, CLASSIFY, labels)) for text, labels in _QUESTIONS]
    candidates = [[(*codec.encode(label), eos) for label in labels] for _, labels in _QUESTIONS]
    # Multi-token labels sharing a first token exercise the batched deeper step.
    assert any(len(c) > 2 for cands in candidates for c in cands)
    batched = score_batch(torch_model, prompts, candidates)
    for ids, cands, probs in zip(prompts, candidates, batched, strict=True):
        assert probs == pytest.approx(score_labels(torch_model, ids, cands), abs=1e-5)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_prefix_cache_scoring_equals_batched_scoring(torch_model: TorchCausalLM) -> None:
    """Scoring through the prefix cache picks the same labels with the same probabilities."""
    codec = _torch_codec(torch_model)
    context = "[00:05:20] 上一句\t"
    questions = [
        Question(build_prompt(context + text, CLASSIFY, labels), tuple(labels), "输入: " + context)
        for text, labels in _QUESTIONS
    ]
    batched = Answerer(torch_model, codec).choose(questions)
    cached_answerer = Answerer(torch_model, codec, prefix_cache=4)
    cached = cached_answerer.choose(questions)
    assert [c.label for c in cached if c] == [b.label for b in batched if b]
    for a, b in zip(cached, batched, strict=True):
        assert a is not None
        assert b is not None
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
    assert cached_answerer.cache is not None
    assert cached_answerer.cache.hits >= 2


def test_extraction_streams_answers_with_confidences(torch_model: TorchCausalLM) -> None:
    """extract yields (prompt, answer, confidence) per line, confidences in (0, 1]."""
    codec = _torch_codec(torch_model)
    answerer = Answerer(torch_model, codec, max_new_tokens=24)
    prompts = [build_prompt(text, EXTRACT, LINE_LABELS) for text, _ in _QUESTIONS]
    results = list(answerer.extract(prompts))
    assert {index for index, _, _ in results} <= set(range(len(prompts)))
    assert all(0.0 < confidence <= 1.0 for _, _, confidence in results)
    assert 0 < answerer.generated_tokens <= 24 * len(prompts)


def test_onnx_and_torch_answer_alike(torch_model: TorchCausalLM, ort_model: OrtCausalLM) -> None:
    """Both runtimes choose the same labels and extract the same answers on the tiny model."""
    questions = [
        Question(build_prompt(text, CLASSIFY, labels), tuple(labels)) for text, labels in _QUESTIONS
    ]
    by_torch = Answerer(torch_model, _torch_codec(torch_model), max_new_tokens=16)
    by_ort = Answerer(ort_model, _ort_codec(ort_model), max_new_tokens=16)
    torch_choices, ort_choices = by_torch.choose(questions), by_ort.choose(questions)
    assert [c and c.label for c in torch_choices] == [c and c.label for c in ort_choices]
    prompts = [q.prompt.replace(CLASSIFY + ":", EXTRACT + ":") for q in questions]
    torch_answers = [(i, a) for i, a, _ in by_torch.extract(prompts)]
    ort_answers = [(i, a) for i, a, _ in by_ort.extract(prompts)]
    assert torch_answers == ort_answers
