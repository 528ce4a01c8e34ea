"""Decoding over a KV-cached causal LM: lazy greedy, beam search, label scoring, prefix reuse.

Everything here drives a :class:`CausalLM`: :class:`engine.session.OrtCausalLM` (ONNX Runtime)
or :class:`TorchCausalLM` (transformers, the reference), through one small step interface, so the
same decoding code runs on both and parity tests compare models, not loops.

- :func:`greedy` is a generator: one list per step with each prompt's new token (None once that
  prompt has finished), produced the moment the step is done. Prompts are batched with LEFT
  padding; the attention mask drives ALiBi positions, so padding changes nothing.
- :func:`beam_search` reproduces transformers' beam search (same candidate selection, length
  penalty and stopping heuristic) for one prompt.
- :func:`score_labels` answers a closed question: it prefills the prompt once and gives each
  allowed label continuation a probability, normalised over the allowed labels only, by
  projecting the final hidden state onto the few LM-head rows that matter. It cannot produce a
  malformed answer, and it never computes the 250,880-wide vocabulary distribution.
- :class:`PrefixCache` keeps KV caches keyed by their token prefix, so a stream's earlier context
  is prefilled once and each new line only pays for its own tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from engine.manifest import ModelShape
from stream.errors import InputError, MissingExtraError

__all__ = [
    "CausalLM",
    "KVState",
    "PrefixCache",
    "TorchCausalLM",
    "beam_search",
    "greedy",
    "greedy_from",
    "left_pad",
    "score_labels",
]

Past = list[Any]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class CausalLM(Protocol):
    """The step interface decoding needs (ONNX Runtime and torch implement it)."""

    config: ModelShape

    def forward(
        self, input_ids: IntArray, attention_mask: IntArray, past: Past | None
    ) -> tuple[FloatArray, Past]:
        """Last-position logits [batch, vocab] and the extended past."""
        ...

    def forward_hidden(
        self, input_ids: IntArray, attention_mask: IntArray, past: Past | None
    ) -> tuple[FloatArray, FloatArray, Past]:
        """Last-position logits, the final normed hidden state [batch, seq, hidden], the past."""
        ...

    def select(self, past: Past, rows: Sequence[int]) -> Past:
        """The past restricted to (or repeated over) the given batch rows."""
        ...

    def past_length(self, past: Past | None) -> int:
        """Cached positions in a past."""
        ...

    def head_rows(self, token_ids: Sequence[int]) -> FloatArray:
        """LM-head rows [len(token_ids), hidden]."""
        ...


class TorchCausalLM:
    """The :class:`CausalLM` interface over a transformers ``BloomForCausalLM`` (the reference).

    The past is the flat list ``[key0, value0, key1, value1, ...]`` of torch tensors
    ``[batch, heads, seq, head_dim]``; a fresh ``DynamicCache`` wraps it for each call, so a past
    held by a :class:`PrefixCache` is never extended in place.
    """

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = ModelShape.of(model.config, tokenizer)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, threads: int | None = None) -> TorchCausalLM:
        """Load a model directory or hub id in fp32 on the CPU.

        Raises:
            stream.errors.MissingExtraError: torch/transformers are not installed.
            stream.errors.InputError: The model cannot be loaded.
        """
        try:
            import torch
            from transformers import AutoTokenizer, BloomForCausalLM
        except ImportError as exc:
            raise MissingExtraError("transformers", "export") from exc
        if threads:
            torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            model: Any = BloomForCausalLM.from_pretrained(str(source), dtype="float32")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load model {source!r}: {exc}") from exc
        model.eval()
        return cls(model, tokenizer)

    def _cache(self, past: Past | None) -> Any:
        from transformers import DynamicCache

        if past is None:
            return DynamicCache(config=self.model.config)
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        return DynamicCache(ddp_cache_data=pairs, config=self.model.config)

    def _run(
        self, input_ids: IntArray, attention_mask: IntArray, past: Past | None, hidden: bool
    ) -> tuple[FloatArray, FloatArray | None, Past]:
        import torch

        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                attention_mask=torch.from_numpy(
                    np.ascontiguousarray(attention_mask, dtype=np.int64)
                ),
                past_key_values=self._cache(past),
                use_cache=True,
                output_hidden_states=hidden,
                # Only the last position's logits are used: skip the vocabulary-wide projection
                # of every prompt position (~0.2 s per 150-token prefill at full size).
                logits_to_keep=1,
            )
        cache = out.past_key_values
        flat: Past = []
        for layer in cache.layers:
            flat += [layer.keys, layer.values]
        logits = out.logits[:, -1, :].float().numpy()
        states = out.hidden_states[-1].float().numpy() if hidden else None
        return logits, states, flat

    def forward(
        self, input_ids: IntArray, attention_mask: IntArray, past: Past | None
    ) -> tuple[FloatArray, Past]:
        """Last-position logits [batch, vocab] and the extended past."""
        logits, _, flat = self._run(input_ids, attention_mask, past, hidden=False)
        return logits, flat

    def forward_hidden(
        self, input_ids: IntArray, attention_mask: IntArray, past: Past | None
    ) -> tuple[FloatArray, FloatArray, Past]:
        """Last-position logits, the final normed hidden state [batch, seq, hidden], the past."""
        logits, states, flat = self._run(input_ids, attention_mask, past, hidden=True)
        assert states is not None
        return logits, states, flat

    def select(self, past: Past, rows: Sequence[int]) -> Past:
        """The past restricted to (or repeated over) the given batch rows."""
        import torch

        index = torch.as_tensor(list(rows), dtype=torch.long)
        return [value.index_select(0, index) for value in past]

    def past_length(self, past: Past | None) -> int:
        """Cached positions in a past."""
        return 0 if past is None else int(past[0].shape[2])

    def head_rows(self, token_ids: Sequence[int]) -> FloatArray:
        """LM-head rows [len(token_ids), hidden]."""
        weight = self.model.get_output_embeddings().weight
        rows: FloatArray = weight.detach()[list(token_ids)].float().numpy()
        return rows


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[IntArray, IntArray]:
    """Batch token lists with LEFT padding, so every row's last token is in the last column.

    Returns:
        ``(input_ids, attention_mask)``, both int64 [batch, longest prompt].

    Raises:
        ValueError: No prompts, or an empty prompt.
    """
    if not prompts:
        raise ValueError("no prompts to decode")
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("a prompt has no tokens")
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, tokens in enumerate(prompts):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def _penalize(scores: FloatArray, seen: set[int], penalty: float) -> None:
    """transformers' repetition penalty, in place: seen tokens' scores shrink toward "unlikely"."""
    index = np.fromiter(seen, dtype=np.int64, count=len(seen))
    picked = scores[index]
    scores[index] = np.where(picked < 0, picked * penalty, picked / penalty)


def greedy(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
    *,
    repetition_penalty: float = 1.0,
) -> Iterator[list[int | None]]:
    """Greedy decoding of several prompts at once, one step per yielded list.

    Each yielded list has one entry per prompt: the token it produced at this step, or None
    once it has finished (the step that produces ``eos_id`` still yields it). Finished prompts
    leave the batch, so they cost nothing afterwards. Nothing runs until iteration starts.

    Args:
        model: The model to step.
        prompts: Token ids of each prompt (no padding; batched here with left padding).
        max_new_tokens: Most tokens to produce per prompt.
        eos_id: End-of-sequence id (default: the model's).
        repetition_penalty: transformers' ``repetition_penalty`` (1.0: off). Like ``generate``,
            it counts every id of the padded batch row, padding included.
    """
    eos = model.config.eos_id if eos_id is None else eos_id
    ids, mask = left_pad(prompts, model.config.pad_id)
    if max_new_tokens <= 0:
        return
    seen = [set(row.tolist()) for row in ids] if repetition_penalty != 1.0 else []
    logits, past = model.forward(ids, mask, None)
    active = list(range(len(prompts)))  # batch row -> prompt index
    for step in range(max_new_tokens):
        if seen:
            logits = np.array(logits, dtype=np.float32)
            for row, prompt in enumerate(active):
                _penalize(logits[row], seen[prompt], repetition_penalty)
        chosen = logits.argmax(axis=-1)
        produced: list[int | None] = [None] * len(prompts)
        keep: list[int] = []
        for row, prompt in enumerate(active):
            token = int(chosen[row])
            produced[prompt] = token
            if seen:
                seen[prompt].add(token)
            if token != eos:
                keep.append(row)
        yield produced
        if not keep or step == max_new_tokens - 1:
            return
        if len(keep) < len(active):
            past = model.select(past, keep)
            mask = mask[keep]
            chosen = chosen[keep]
            active = [active[row] for row in keep]
        mask = np.concatenate([mask, np.ones((len(active), 1), dtype=np.int64)], axis=1)
        logits, past = model.forward(chosen[:, None].astype(np.int64), mask, past)


def _log_softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def _top_k(values: FloatArray, k: int) -> IntArray:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    k = min(k, values.shape[0])
    part = np.argpartition(-values, k - 1)[:k]
    order = np.lexsort((part, -values[part]))
    result: IntArray = part[order].astype(np.int64)
    return result


def beam_search(
    model: CausalLM,
    prompt: Sequence[int],
    num_beams: int = 4,
    max_new_tokens: int = 64,
    eos_id: int | None = None,
    *,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    repetition_penalty: float = 1.0,
) -> list[int]:
    """Beam search for one prompt, as transformers' ``generate(num_beams=...)`` does it.

    Per step: the top ``2 * num_beams`` continuations by accumulated log-probability; those
    ending in EOS (among the first ``num_beams``) become finished hypotheses scored by
    ``sum_logprobs / generated_length ** length_penalty``; the best ``num_beams`` others keep
    running. Stops when no running beam can beat the worst finished one (transformers'
    heuristic for ``early_stopping=False``), or at ``max_new_tokens``. ``repetition_penalty``
    is transformers' (the SeqGPT authors decode with 2.0), applied to the log-probabilities.

    Returns:
        The best hypothesis' new tokens (ending with EOS if it finished that way).
    """
    eos = model.config.eos_id if eos_id is None else eos_id
    if not prompt:
        raise ValueError("a prompt has no tokens")
    if max_new_tokens <= 0:
        return []
    ids = np.asarray([list(prompt)], dtype=np.int64)
    mask = np.ones_like(ids)
    logits, past = model.forward(ids, mask, None)
    running: list[list[int]] = [[]]
    running_scores = np.zeros(1, dtype=np.float32)
    finished: list[tuple[float, list[int]]] = []
    improvable = True
    prompt_seen = set(prompt)
    for generated in range(max_new_tokens):
        log_probs = _log_softmax(logits)
        if repetition_penalty != 1.0:
            for row, beam in enumerate(running):
                _penalize(log_probs[row], prompt_seen | set(beam), repetition_penalty)
        log_probs = log_probs + running_scores[:, None]
        vocab = log_probs.shape[-1]
        flat = log_probs.reshape(-1)
        top = _top_k(flat, 2 * num_beams)
        beams = (top // vocab).tolist()
        tokens = (top % vocab).tolist()
        scores = flat[top]
        at_limit = generated + 1 >= max_new_tokens
        hits = [token == eos or at_limit for token in tokens]
        all_done = len(finished) == num_beams and early_stopping is True
        if improvable and not all_done:
            for j in range(min(num_beams, len(tokens))):
                if hits[j]:
                    score = float(scores[j]) / ((generated + 1) ** length_penalty)
                    finished.append((score, [*running[beams[j]], tokens[j]]))
            finished.sort(key=lambda item: -item[0])
            del finished[num_beams:]
        if all(hits):
            break
        live = [j for j in range(len(tokens)) if not hits[j]][:num_beams]
        running = [[*running[beams[j]], tokens[j]] for j in live]
        running_scores = np.asarray([scores[j] for j in live], dtype=np.float32)
        # transformers' early-stop heuristic (early_stopping=False: judge at the current length).
        length = generated + 1
        if early_stopping == "never" and length_penalty > 0.0:
            length = max_new_tokens
        best_possible = float(running_scores[0]) / (length**length_penalty)
        if len(finished) == num_beams:
            improvable = improvable and best_possible > min(s for s, _ in finished)
        if not improvable or (len(finished) == num_beams and early_stopping is True):
            break
        past = model.select(past, [beams[j] for j in live])
        step_ids = np.asarray([[tokens[j]] for j in live], dtype=np.int64)
        mask = np.ones((len(live), mask.shape[1] + 1), dtype=np.int64)
        logits, past = model.forward(step_ids, mask, past)
    if not finished:
        return running[0]
    return finished[0][1]


@dataclass(frozen=True, slots=True)
class KVState:
    """A prefilled prefix: its tokens, KV cache, and the last position's outputs.

    Attributes:
        tokens: The prefix's token ids.
        past: The KV cache after the prefix (batch of 1).
        logits: Last-position logits [vocab].
        hidden: Last-position final normed hidden state [hidden].
    """

    tokens: tuple[int, ...]
    past: Past
    logits: FloatArray
    hidden: FloatArray


def _extend(model: CausalLM, state: KVState | None, tokens: Sequence[int]) -> KVState:
    """Feed ``tokens`` after ``state`` (or from scratch) and return the new state."""
    past = None if state is None else state.past
    prefix: tuple[int, ...] = () if state is None else state.tokens
    ids = np.asarray([list(tokens)], dtype=np.int64)
    mask = np.ones((1, len(prefix) + len(tokens)), dtype=np.int64)
    logits, hidden, new_past = model.forward_hidden(ids, mask, past)
    return KVState(prefix + tuple(tokens), new_past, logits[0], hidden[0, -1])


class PrefixCache:
    """KV caches of token prefixes, most recently used kept, for prefill reuse.

    A stream's prompt for line *n* usually starts with the same tokens as the prompt for line
    *n-1* up to the new line (the context block); :meth:`prefill` finds the longest stored prefix
    of the requested ids, feeds only the rest, and stores the states at the lengths asked for.
    Memory: each entry holds ``n_layer * 2 * hidden`` floats per cached token (fp32 full size:
    ~192 KiB per token), so keep ``capacity`` modest.
    """

    def __init__(self, model: CausalLM, capacity: int = 16) -> None:
        self.model = model
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], KVState] = OrderedDict()
        self.hits = 0
        self.reused_tokens = 0
        self.fed_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every stored state."""
        self._entries.clear()

    def longest_prefix(self, ids: Sequence[int]) -> KVState | None:
        """The stored state with the longest token prefix of ``ids``, if any."""
        key = tuple(ids)
        best: KVState | None = None
        for tokens, state in self._entries.items():
            is_prefix = len(tokens) <= len(key) and key[: len(tokens)] == tokens
            if is_prefix and (best is None or len(tokens) > len(best.tokens)):
                best = state
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best

    def _store(self, state: KVState) -> None:
        self._entries[state.tokens] = state
        self._entries.move_to_end(state.tokens)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def prefill(
        self, ids: Sequence[int], *, keep_at: Sequence[int] = (), store: bool = False
    ) -> KVState:
        """Prefill ``ids``, reusing the longest stored prefix.

        Args:
            ids: The full token ids.
            keep_at: Prefix lengths whose states to store for later prompts (e.g. the end of the
                context block); lengths outside ``(reused, len(ids)]`` are ignored.
            store: Also store the final state.

        Returns:
            The state after all of ``ids``.
        """
        if not ids:
            raise ValueError("nothing to prefill")
        state = self.longest_prefix(ids)
        start = 0 if state is None else len(state.tokens)
        if state is not None:
            self.hits += 1
            self.reused_tokens += start
        if start == len(ids):
            assert state is not None
            return state
        cuts = sorted({n for n in keep_at if start < n < len(ids)})
        for end in [*cuts, len(ids)]:
            state = _extend(self.model, state, ids[start:end])
            self.fed_tokens += end - start
            if end in cuts or (store and end == len(ids)):
                self._store(state)
            start = end
        assert state is not None
        return state


def greedy_from(
    model: CausalLM, state: KVState, max_new_tokens: int, eos_id: int | None = None
) -> Iterator[int]:
    """Greedy continuation of one prefilled prompt (e.g. from :meth:`PrefixCache.prefill`).

    The first token comes from the state's logits (no model call); each later one costs one
    decode step. Yields tokens as they are produced, EOS included, then stops.
    """
    eos = model.config.eos_id if eos_id is None else eos_id
    logits = state.logits
    past = state.past
    length = len(state.tokens)
    for step in range(max_new_tokens):
        token = int(np.argmax(logits))
        yield token
        if token == eos or step == max_new_tokens - 1:
            return
        length += 1
        ids = np.asarray([[token]], dtype=np.int64)
        step_logits, past = model.forward(ids, np.ones((1, length), dtype=np.int64), past)
        logits = step_logits[0]


def _restricted_softmax(scores: FloatArray) -> FloatArray:
    shifted = np.exp(scores - scores.max())
    result: FloatArray = shifted / shifted.sum()
    return result


def score_labels(
    model: CausalLM,
    prompt_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    *,
    state: KVState | None = None,
    cache: PrefixCache | None = None,
) -> list[float]:
    """Probability of each allowed continuation, normalised over the candidates.

    Constrained decoding as a distribution: walking the token trie of the candidates, each
    branching point contributes the model's probability of each allowed next token, normalised
    over the allowed ones (logits = hidden · LM-head row for those few rows only). A candidate's
    probability is the product along its path, so the results sum to 1. Candidates that differ
    at their first token need nothing beyond the prompt's prefill; deeper branches are resolved
    by one batched step over the candidates that reach them, reusing the prompt's KV cache.

    Args:
        model: The model.
        prompt_ids: The prompt (ending where the answer starts, e.g. with ``[GEN]``).
        candidates: Token ids of each allowed answer; none may be a prefix of another (end each
            with the token that follows an answer, e.g. EOS or a newline, if one could be).
        state: The prompt's prefilled state, if the caller already has it.
        cache: A :class:`PrefixCache` to prefill the prompt through (reusing its context).

    Returns:
        One probability per candidate, in order; they sum to 1.

    Raises:
        ValueError: Fewer than one candidate, an empty or duplicate candidate, or one candidate
            that is a prefix of another.
    """
    cands = [tuple(c) for c in candidates]
    if not cands or any(len(c) == 0 for c in cands):
        raise ValueError("score_labels needs non-empty candidates")
    if len(set(cands)) != len(cands):
        raise ValueError("score_labels: duplicate candidates")
    for a in cands:
        for b in cands:
            if a != b and b[: len(a)] == a:
                raise ValueError(f"candidate {list(a)} is a prefix of {list(b)}; end each label")
    if state is None:
        state = cache.prefill(prompt_ids) if cache is not None else _extend(model, None, prompt_ids)
    # children[path] = distinct next tokens after that path, in first-seen order.
    children: dict[tuple[int, ...], list[int]] = {}
    for cand in cands:
        for depth in range(len(cand)):
            options = children.setdefault(cand[:depth], [])
            if cand[depth] not in options:
                options.append(cand[depth])
    branching = {path: toks for path, toks in children.items() if len(toks) > 1}
    hidden_at: dict[tuple[int, ...], FloatArray] = {(): state.hidden}
    deep = [path for path in branching if path]
    if deep:
        # One batched step: each candidate that passes a deep branch, fed up to its deepest
        # branch point, right-padded (padding after real tokens cannot affect them: causal).
        rows: list[tuple[int, ...]] = []
        for cand in cands:
            depth = max((len(p) for p in deep if cand[: len(p)] == p), default=0)
            if depth and cand[:depth] not in rows:
                rows.append(cand[:depth])
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), model.config.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), len(state.tokens) + width), dtype=np.int64)
        mask[:, : len(state.tokens)] = 1
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, len(state.tokens) : len(state.tokens) + len(row)] = 1
        past = model.select(state.past, [0] * len(rows))
        _, hidden, _ = model.forward_hidden(ids, mask, past)
        for path in deep:
            i = next(k for k, row in enumerate(rows) if row[: len(path)] == path)
            hidden_at[path] = hidden[i, len(path) - 1]
    probs_at: dict[tuple[int, ...], dict[int, float]] = {}
    for path, toks in branching.items():
        scores = model.head_rows(toks) @ hidden_at[path]
        probs_at[path] = dict(zip(toks, _restricted_softmax(scores).tolist(), strict=True))
    result: list[float] = []
    for cand in cands:
        p = 1.0
        for depth in range(len(cand)):
            p *= probs_at.get(cand[:depth], {}).get(cand[depth], 1.0)
        result.append(p)
    return result
