"""Decoding on the tiny model: greedy and beam equal transformers' generate; label scoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from engine.decode import (
    CausalLM,
    PrefixCache,
    TorchCausalLM,
    beam_search,
    greedy,
    greedy_from,
    left_pad,
    score_labels,
)
from engine.session import OrtCausalLM

TEXTS = [
    "输入: [00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！\n"
    "分类: 音乐，动作\n输出: [GEN]",
    "输入: [door slams] JOHN: Who's there?\n抽取: 说话人，台词\n输出: [GEN]",
    "输入: 水\n分类: music，action\n输出: [GEN]",
]


@pytest.fixture(scope="module")
def prompts(ort_model: OrtCausalLM) -> list[list[int]]:
    """Token ids of three prompts of different lengths (so batches need padding)."""
    encoded = [ort_model.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert len({len(p) for p in encoded}) == 3
    return encoded


def _hf_greedy(
    torch_model: TorchCausalLM,
    prompts: Sequence[Sequence[int]],
    new: int,
    eos: int = 2,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """transformers' generate (greedy, left padding), each row cut after its EOS."""
    ids, mask = left_pad(prompts, 3)
    out = torch_model.model.generate(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        max_new_tokens=new,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=3,
        repetition_penalty=repetition_penalty,
    )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def _collect(steps: Any, n: int) -> list[list[int]]:
    rows: list[list[int]] = [[] for _ in range(n)]
    for step in steps:
        for i, token in enumerate(step):
            if token is not None:
                rows[i].append(token)
    return rows


def test_greedy_single_prompt_equals_generate(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """Greedy on one prompt yields generate's greedy tokens, one per step."""
    for prompt in prompts:
        ours = _collect(greedy(ort_model, [prompt], 16), 1)[0]
        assert ours == _hf_greedy(torch_model, [prompt], 16)[0]


def test_greedy_batched_with_padding_equals_generate(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """A left-padded batch gives each prompt generate's tokens and its own unbatched tokens."""
    batched = _collect(greedy(ort_model, prompts, 16), 3)
    assert batched == _hf_greedy(torch_model, prompts, 16)
    alone = [_collect(greedy(ort_model, [p], 16), 1)[0] for p in prompts]
    assert batched == alone


def test_greedy_finishes_rows_at_eos(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """A prompt that produces EOS yields it, then None, while the others go on like generate."""
    free = _collect(greedy(ort_model, prompts, 12), 3)
    eos = free[0][2]  # a token row 0 produces at step 3: make it the end-of-sequence token
    steps = list(greedy(ort_model, prompts, 12, eos_id=eos))
    row0 = [step[0] for step in steps]
    end = row0.index(eos)
    assert all(token is None for token in row0[end + 1 :])
    assert _collect(steps, 3) == _hf_greedy(torch_model, prompts, 12, eos=eos)


def test_greedy_is_lazy(ort_model: OrtCausalLM, prompts: list[list[int]]) -> None:
    """Nothing runs until the generator is advanced, and each step runs one forward."""
    calls: list[int] = []

    class Counting:
        config = ort_model.config

        def forward(self, ids: Any, mask: Any, past: Any) -> Any:
            calls.append(ids.shape[1])
            return ort_model.forward(ids, mask, past)

        def select(self, past: Any, rows: Sequence[int]) -> Any:
            return ort_model.select(past, rows)

    steps = greedy(Counting(), prompts, 5)  # type: ignore[arg-type]
    assert calls == []
    next(steps)
    assert len(calls) == 1
    next(steps)
    assert calls[1:] == [1]


def test_torch_and_onnx_drive_the_same_greedy(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """The torch twin behind the same step interface gives the same tokens as ONNX Runtime."""
    assert _collect(greedy(torch_model, prompts, 10), 3) == _collect(
        greedy(ort_model, prompts, 10), 3
    )


def _hf_beam(
    torch_model: TorchCausalLM,
    prompt: Sequence[int],
    new: int,
    eos: int,
    repetition_penalty: float = 1.0,
) -> list[int]:
    out = torch_model.model.generate(
        input_ids=torch.tensor([list(prompt)]),
        max_new_tokens=new,
        num_beams=4,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=3,
        repetition_penalty=repetition_penalty,
    )[0, len(prompt) :].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("model_name", ["ort_model", "torch_model"])
def test_beam_search_equals_generate(
    request: pytest.FixtureRequest,
    model_name: str,
    torch_model: TorchCausalLM,
    prompts: list[list[int]],
) -> None:
    """Four-beam search returns generate(num_beams=4)'s best sequence, with and without EOS."""
    model: CausalLM = request.getfixturevalue(model_name)
    for prompt in prompts:
        greedy_tokens = _collect(greedy(model, [prompt], 6), 1)[0]
        # Default EOS (rarely produced by random weights), and an EOS that beams meet early.
        for eos in (2, greedy_tokens[1]):
            ours = beam_search(model, prompt, num_beams=4, max_new_tokens=10, eos_id=eos)
            assert ours == _hf_beam(torch_model, prompt, 10, eos), (prompt, eos)


def test_repetition_penalty_matches_generate(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """With the authors' repetition_penalty=2.0, batched greedy and beams still equal generate."""
    ours = _collect(greedy(ort_model, prompts, 12, repetition_penalty=2.0), 3)
    assert ours == _hf_greedy(torch_model, prompts, 12, repetition_penalty=2.0)
    assert ours != _collect(greedy(ort_model, prompts, 12), 3)
    for prompt in prompts:
        beams = beam_search(ort_model, prompt, 4, 10, eos_id=2, repetition_penalty=2.0)
        assert beams == _hf_beam(torch_model, prompt, 10, 2, repetition_penalty=2.0)


def _reference_label_probs(
    torch_model: TorchCausalLM, prompt: Sequence[int], candidates: Sequence[Sequence[int]]
) -> list[float]:
    """Constrained probabilities from full transformers forwards, one per trie node."""
    probs = []
    for cand in candidates:
        p = 1.0
        for depth in range(len(cand)):
            allowed = sorted({c[depth] for c in candidates if c[:depth] == cand[:depth]})
            ids = np.asarray([list(prompt) + list(cand[:depth])], dtype=np.int64)
            logits, _ = torch_model.forward(ids, np.ones_like(ids), None)
            scores = logits[0, allowed].astype(np.float64)
            weights = np.exp(scores - scores.max())
            p *= float(weights[allowed.index(cand[depth])] / weights.sum())
        probs.append(p)
    return probs


def test_score_labels_matches_constrained_probabilities(
    ort_model: OrtCausalLM, torch_model: TorchCausalLM, prompts: list[list[int]]
) -> None:
    """Scores equal per-node softmaxes over the allowed tokens from full torch forwards."""
    candidates = [[10, 20, 30], [10, 21], [10, 20, 31], [11], [12, 40]]
    ours = score_labels(ort_model, prompts[0], candidates)
    assert sum(ours) == pytest.approx(1.0, abs=1e-6)
    reference = _reference_label_probs(torch_model, prompts[0], candidates)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_score_labels_first_token_choice_is_the_argmax(
    ort_model: OrtCausalLM, prompts: list[list[int]]
) -> None:
    """With one-token labels, the most probable label is the model's preferred allowed token."""
    labels = [[100], [200], [300], [400]]
    probs = score_labels(ort_model, prompts[1], labels)
    logits, _ = ort_model.forward(np.asarray([prompts[1]]), np.ones((1, len(prompts[1]))), None)
    assert (
        labels[int(np.argmax(probs))][0]
        == [100, 200, 300, 400][int(np.argmax(logits[0, [100, 200, 300, 400]]))]
    )


def test_score_labels_rejects_malformed_candidates(
    ort_model: OrtCausalLM, prompts: list[list[int]]
) -> None:
    """Empty, duplicate and prefix-of-another candidates are refused."""
    for bad in ([], [[1], []], [[5, 6], [5, 6]], [[5], [5, 6]]):
        with pytest.raises(ValueError, match=r"candidate|score_labels"):
            score_labels(ort_model, prompts[0], bad)


def test_prefix_cache_reuses_the_context(ort_model: OrtCausalLM, prompts: list[list[int]]) -> None:
    """A prompt sharing a stored prefix feeds only its own tokens and scores the same."""
    context = prompts[0][:12]
    first = context + prompts[1]
    second = context + prompts[2]
    candidates = [[10, 20], [11], [10, 21]]
    cache = PrefixCache(ort_model, capacity=4)
    cache.prefill(first, keep_at=[len(context)])
    assert len(cache) == 1
    fed_before = cache.fed_tokens
    reused = score_labels(ort_model, second, candidates, cache=cache)
    assert cache.hits == 1
    assert cache.reused_tokens == len(context)
    assert cache.fed_tokens - fed_before == len(prompts[2])
    fresh = score_labels(ort_model, second, candidates)
    np.testing.assert_allclose(reused, fresh, rtol=1e-4, atol=1e-6)
    state = cache.prefill(second)
    logits, _ = ort_model.forward(np.asarray([second]), np.ones((1, len(second))), None)
    np.testing.assert_allclose(state.logits, logits[0], atol=1e-4)


def test_prefix_cache_evicts_least_recently_used(ort_model: OrtCausalLM) -> None:
    """The cache keeps at most `capacity` states, dropping the least recently used."""
    cache = PrefixCache(ort_model, capacity=2)
    for start in (10, 20, 30):
        cache.prefill([start, start + 1, start + 2], store=True)
    assert len(cache) == 2
    assert cache.longest_prefix([10, 11, 12, 13]) is None
    assert cache.longest_prefix([30, 31, 32, 99]) is not None


def test_greedy_from_a_cached_prefix_equals_greedy(
    ort_model: OrtCausalLM, prompts: list[list[int]]
) -> None:
    """Continuing a PrefixCache state greedily gives the same tokens as greedy on the prompt."""
    cache = PrefixCache(ort_model)
    cache.prefill(prompts[0][:10], store=True)
    state = cache.prefill(prompts[0])
    assert cache.reused_tokens == 10
    ours = list(greedy_from(ort_model, state, 12))
    assert ours == _collect(greedy(ort_model, [prompts[0]], 12), 1)[0]
