"""Answering SeqGPT questions in batches: closed questions by scoring, extraction by streaming.

The tagger asks two kinds of question (see docs/seqgpt-tagging.md):

- closed ones (``分类`` with a small label set: music or action, the music's type and mood, the
  action a cue implies), answered by :meth:`Answerer.choose`. In ``scores`` mode the answer is
  label-constrained scoring: one batched prefill of every prompt, then each label's tokens
  (ending in EOS) scored against the few LM-head rows that matter, so no token is generated, the
  answer cannot be malformed and its probability is real. ``generate`` mode decodes the label
  greedily (or with beams) and keeps it only if it is one of the labels.
- open ones (``抽取``), answered by :meth:`Answerer.extract`: batched greedy decoding whose output
  goes through :func:`engine.prompts.stream_answers` machinery, so each ``label: spans`` line is
  handed over the moment it is complete, with the geometric mean of its tokens' probabilities.

Everything runs over :class:`engine.decode.CausalLM`, so the ONNX Runtime backend and the torch
reference share this code and differ only in the model and tokenizer underneath.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.decode import CausalLM, PrefixCache, beam_search, greedy, left_pad, score_labels
from engine.manifest import ModelShape
from engine.prompts import Answer, AnswerParser, IncrementalDetokenizer
from stream.errors import ConfigError

__all__ = ["MODES", "Answerer", "Choice", "Codec", "Question", "score_batch"]

MODES = ("scores", "generate")
_PREFIX_MEMO = 1024

FloatArray = npt.NDArray[np.float32]
Past = list[Any]


@dataclass(frozen=True, slots=True)
class Codec:
    """A tokenizer reduced to what decoding needs.

    Attributes:
        encode: Prompt text to token ids, exactly as the model saw them in training (no BOS:
            BLOOM adds none; ``[GEN]`` is one special token).
        decode: Generated ids to text, special tokens skipped.
    """

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


@dataclass(frozen=True, slots=True)
class Question:
    """A closed question: a prompt and the labels it allows.

    Attributes:
        prompt: The full prompt (``engine.prompts.build_prompt``).
        labels: The allowed answers.
        prefixes: Starts of the prompt that other prompts share, shortest first: the
            stream's context block (shared with the stream's next lines, kept by a prefix
            cache) and the context plus the line (shared by all questions about the line).
            A batch prefills each distinct longest prefix once.
    """

    prompt: str
    labels: tuple[str, ...]
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Choice:
    """The answer to a closed question and the model's probability for it."""

    label: str
    probability: float


def _branching(
    candidates: Sequence[tuple[int, ...]],
) -> dict[tuple[int, ...], list[int]]:
    """Token-trie nodes with more than one allowed next token, each with those tokens."""
    children: dict[tuple[int, ...], list[int]] = {}
    for cand in candidates:
        for depth in range(len(cand)):
            options = children.setdefault(cand[:depth], [])
            if cand[depth] not in options:
                options.append(cand[depth])
    return {path: tokens for path, tokens in children.items() if len(tokens) > 1}


def _softmax(scores: FloatArray) -> FloatArray:
    shifted = np.exp(scores - scores.max())
    result: FloatArray = shifted / shifted.sum()
    return result


def _prefill(
    model: CausalLM, prompts: Sequence[Sequence[int]], shared: Sequence[int] | None
) -> tuple[FloatArray, Past, npt.NDArray[np.int64]]:
    """Prefill prompts; return each one's last hidden state, the past and the attention mask.

    Without ``shared``: one left-padded pass. With it, prompts are grouped by their first
    ``shared[i]`` tokens: each distinct prefix is prefilled once (one left-padded pass), its
    cache fanned out to the prompts that share it, and the rest of each prompt fed in a second
    pass, left-padded too. The padding between a prefix and a rest is masked out, and BLOOM's
    ALiBi positions count only unmasked tokens, so every prompt sees exactly its own tokens.
    """
    if not shared or not any(shared):
        ids, mask = left_pad(prompts, model.config.pad_id)
        _, hidden, past = model.forward_hidden(ids, mask, None)
        return hidden[:, -1], past, mask
    # A prompt without a shared prefix still takes the two-pass path with its own prefix.
    cuts = [n if 0 < n < len(ids) else len(ids) - 1 for ids, n in zip(prompts, shared, strict=True)]
    groups: dict[tuple[int, ...], int] = {}
    row_group = [
        groups.setdefault(tuple(ids[:cut]), len(groups))
        for ids, cut in zip(prompts, cuts, strict=True)
    ]
    head_ids, head_mask = left_pad(list(groups), model.config.pad_id)
    _, _, head_past = model.forward_hidden(head_ids, head_mask, None)
    rest_ids, rest_mask = left_pad(
        [ids[cut:] for ids, cut in zip(prompts, cuts, strict=True)], model.config.pad_id
    )
    mask = np.concatenate([head_mask[row_group], rest_mask], axis=1)
    _, hidden, past = model.forward_hidden(rest_ids, mask, model.select(head_past, row_group))
    return hidden[:, -1], past, mask


def score_batch(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    candidate_sets: Sequence[Sequence[Sequence[int]]],
    shared: Sequence[int] | None = None,
) -> list[list[float]]:
    """:func:`engine.decode.score_labels` for many prompts at once.

    One batched prefill of every prompt (each shared prefix once, see ``shared``), then at most
    one batched step over the candidate prefixes that reach a deeper branch of their prompt's
    token trie (right-padded: padding after real tokens cannot affect them, the model is
    causal). Each candidate's probability is the product, along its path, of the model's
    probability of each allowed next token normalised over the allowed ones, so each prompt's
    results sum to 1.

    Args:
        model: The model.
        prompts: Token ids of each prompt (ending with ``[GEN]``).
        candidate_sets: For each prompt, the token ids of each allowed answer (ending with EOS,
            so that none is a prefix of another).
        shared: For each prompt, how many of its first tokens it shares with other prompts
            (0: none); shared prefixes are prefilled once.

    Returns:
        One probability list per prompt, one entry per candidate.

    Raises:
        ValueError: Mismatched lengths, or an empty, duplicate or prefix candidate.
    """
    if len(prompts) != len(candidate_sets):
        raise ValueError("score_batch needs one candidate set per prompt")
    sets = [[tuple(c) for c in cands] for cands in candidate_sets]
    for cands in sets:
        if not cands or any(not c for c in cands) or len(set(cands)) != len(cands):
            raise ValueError("each prompt needs distinct, non-empty candidates")
        for a in cands:
            if any(a != b and b[: len(a)] == a for b in cands):
                raise ValueError(f"candidate {list(a)} is a prefix of another; end each label")
    last, past, mask = _prefill(model, prompts, shared)
    branching = [_branching(cands) for cands in sets]
    hidden_at: list[dict[tuple[int, ...], FloatArray]] = [
        {(): last[row]} for row in range(len(prompts))
    ]
    rows: list[tuple[int, tuple[int, ...]]] = []
    for prompt, (cands, branches) in enumerate(zip(sets, branching, strict=True)):
        deep = [path for path in branches if path]
        for cand in cands:
            depth = max((len(p) for p in deep if cand[: len(p)] == p), default=0)
            if depth and (prompt, cand[:depth]) not in rows:
                rows.append((prompt, cand[:depth]))
    if rows:
        width = max(len(path) for _, path in rows)
        step_ids = np.full((len(rows), width), model.config.pad_id, dtype=np.int64)
        step_mask = np.zeros((len(rows), mask.shape[1] + width), dtype=np.int64)
        for i, (prompt, path) in enumerate(rows):
            step_ids[i, : len(path)] = path
            step_mask[i, : mask.shape[1]] = mask[prompt]
            step_mask[i, mask.shape[1] : mask.shape[1] + len(path)] = 1
        fanned = model.select(past, [prompt for prompt, _ in rows])
        _, deep_hidden, _ = model.forward_hidden(step_ids, step_mask, fanned)
        for prompt, branches in enumerate(branching):
            for path in branches:
                if path:
                    i = next(
                        k
                        for k, (p, row) in enumerate(rows)
                        if p == prompt and row[: len(path)] == path
                    )
                    hidden_at[prompt][path] = deep_hidden[i, len(path) - 1]
    results: list[list[float]] = []
    for prompt, (cands, branches) in enumerate(zip(sets, branching, strict=True)):
        probs_at = {
            path: dict(
                zip(
                    tokens,
                    _softmax(model.head_rows(tokens) @ hidden_at[prompt][path]).tolist(),
                    strict=True,
                )
            )
            for path, tokens in branches.items()
        }
        results.append(
            [
                math.prod(probs_at.get(c[:d], {}).get(c[d], 1.0) for d in range(len(c)))
                for c in cands
            ]
        )
    return results


class _LogitsTap:
    """A :class:`CausalLM` that remembers the logits of its last step.

    :func:`engine.decode.greedy` yields token ids only; the tap gives the probability of each
    chosen token (for an answer's confidence) without a second pass over the model.
    """

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.config: ModelShape = model.config
        self.logits: FloatArray | None = None

    def forward(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        past: Past | None,
    ) -> tuple[FloatArray, Past]:
        logits, new_past = self.model.forward(input_ids, attention_mask, past)
        self.logits = logits
        return logits, new_past

    def forward_hidden(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        past: Past | None,
    ) -> tuple[FloatArray, FloatArray, Past]:
        return self.model.forward_hidden(input_ids, attention_mask, past)

    def select(self, past: Past, rows: Sequence[int]) -> Past:
        return self.model.select(past, rows)

    def past_length(self, past: Past | None) -> int:
        return self.model.past_length(past)

    def head_rows(self, token_ids: Sequence[int]) -> FloatArray:
        return self.model.head_rows(token_ids)


def _token_probability(logits: FloatArray, token: int) -> float:
    shifted = np.exp(logits - logits.max())
    return float(shifted[token] / shifted.sum())


def _geometric_mean(probabilities: Sequence[float]) -> float:
    if not probabilities:
        return 1.0
    return math.exp(sum(math.log(max(p, 1e-12)) for p in probabilities) / len(probabilities))


class _AnswerStream:
    """One prompt's output: detokenized, parsed, each answer with its tokens' probabilities."""

    __slots__ = ("detokenizer", "parser", "probabilities")

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.detokenizer = IncrementalDetokenizer(decode)
        self.parser = AnswerParser()
        self.probabilities: list[float] = []

    def feed(self, token: int, probability: float) -> list[tuple[Answer, float]]:
        self.probabilities.append(probability)
        return self._scored(self.parser.feed(self.detokenizer.feed([token])))

    def close(self) -> list[tuple[Answer, float]]:
        answers = self.parser.feed(self.detokenizer.close()) + self.parser.close()
        return self._scored(answers)

    def _scored(self, answers: list[Answer]) -> list[tuple[Answer, float]]:
        if not answers:
            return []
        # The tokens since the last answer produced these lines; they share the confidence.
        confidence = _geometric_mean(self.probabilities)
        self.probabilities = []
        return [(answer, confidence) for answer in answers]


class Answerer:
    """Asks a SeqGPT model batches of questions.

    Args:
        model: The model (ONNX Runtime or torch).
        codec: Its tokenizer.
        mode: ``scores`` (closed questions by label-constrained scoring, no tokens generated)
            or ``generate`` (closed questions decoded like open ones).
        num_beams: 1 for greedy (batched, streaming); more for beam search, one prompt at a
            time and not streaming within a prompt (the authors' setting is 4).
        max_new_tokens: Most tokens an extraction answer may take.
        prefix_cache: In ``scores`` mode, keep this many prefilled context prefixes and score
            each prompt on its own, reusing its stream's prefix; 0 batches the prefill of all
            prompts instead (the default: batching wins on a GPU; reuse wins for long contexts
            on a CPU).

    Attributes:
        generated_tokens: Tokens generated so far (extraction, ``generate``-mode answers).
        questions_asked: Prompts answered so far (closed and extraction).

    Raises:
        stream.errors.ConfigError: An option is out of range.
    """

    def __init__(
        self,
        model: CausalLM,
        codec: Codec,
        *,
        mode: str = "scores",
        num_beams: int = 1,
        max_new_tokens: int = 48,
        prefix_cache: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if num_beams < 1:
            raise ConfigError(f"num_beams must be at least 1, not {num_beams}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if prefix_cache < 0:
            raise ConfigError(f"prefix_cache must be 0 or more, not {prefix_cache}")
        self.model = model
        self.codec = codec
        self.mode = mode
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.cache = PrefixCache(model, prefix_cache) if prefix_cache else None
        self.eos_id = model.config.eos_id
        self._label_ids: dict[str, tuple[int, ...]] = {}
        # Prefix texts recur for every question of a line and every line of a context block.
        self._prefix_ids: dict[str, list[int]] = {}
        self.generated_tokens = 0
        self.questions_asked = 0

    def _answer_ids(self, label: str) -> tuple[int, ...]:
        ids = self._label_ids.get(label)
        if ids is None:
            # The answer follows the special [GEN] token, so it tokenizes as text on its own;
            # EOS closes it, so a label that is a prefix of another stays distinguishable.
            ids = (*self.codec.encode(label), self.eos_id)
            self._label_ids[label] = ids
        return ids

    def choose(self, questions: Sequence[Question]) -> list[Choice | None]:
        """Answer closed questions; None where a generated answer is not one of the labels."""
        if not questions:
            return []
        self.questions_asked += len(questions)
        if self.mode == "generate":
            return self._choose_by_generation(questions)
        candidates = [[self._answer_ids(label) for label in q.labels] for q in questions]
        if self.cache is None:
            prompts = [self.codec.encode(q.prompt) for q in questions]
            shared = [
                max(self._prefix_lengths(q, ids), default=0)
                for q, ids in zip(questions, prompts, strict=True)
            ]
            scores = score_batch(self.model, prompts, candidates, shared)
        else:
            scores = [
                score_labels(self.model, ids, cands, state=self._prefill(q, ids))
                for q, cands in zip(questions, candidates, strict=True)
                for ids in [self.codec.encode(q.prompt)]
            ]
        choices: list[Choice | None] = []
        for question, probs in zip(questions, scores, strict=True):
            best = max(range(len(probs)), key=probs.__getitem__)
            choices.append(Choice(question.labels[best], probs[best]))
        return choices

    def _prefix_lengths(self, question: Question, ids: list[int]) -> list[int]:
        """Token lengths of the question's shared prefixes that are token prefixes of ``ids``."""
        lengths: list[int] = []
        for prefix in question.prefixes:
            head = self._prefix_ids.get(prefix)
            if head is None:
                if len(self._prefix_ids) >= _PREFIX_MEMO:
                    self._prefix_ids.clear()  # a live service sees new lines forever
                head = self._prefix_ids[prefix] = self.codec.encode(prefix)
            # A BPE merge across the boundary would make the prefix a different token
            # sequence: then it is not shared, and the prompt is prefilled whole.
            if 0 < len(head) < len(ids) and ids[: len(head)] == head:
                lengths.append(len(head))
        return lengths

    def _prefill(self, question: Question, ids: list[int]) -> Any:
        assert self.cache is not None
        return self.cache.prefill(ids, keep_at=self._prefix_lengths(question, ids))

    def _choose_by_generation(self, questions: Sequence[Question]) -> list[Choice | None]:
        longest = max(len(self._answer_ids(label)) for q in questions for label in q.labels)
        texts: dict[int, tuple[list[str], list[float]]] = {}
        for index, answer, confidence in self._generate([q.prompt for q in questions], longest):
            lines, confidences = texts.setdefault(index, ([], []))
            lines.append(answer.label if not answer.spans else "")
            confidences.append(confidence)
        choices: list[Choice | None] = []
        for index, question in enumerate(questions):
            lines, confidences = texts.get(index, ([], []))
            # A classification answer is one bare label; anything else is not an answer.
            if len(lines) == 1 and lines[0] in question.labels:
                choices.append(Choice(lines[0], confidences[0]))
            else:
                choices.append(None)
        return choices

    def extract(self, prompts: Sequence[str]) -> Iterator[tuple[int, Answer, float]]:
        """Decode extraction prompts; yield ``(prompt index, answer, confidence)`` as lines end.

        The confidence is the geometric mean of the probabilities of the tokens that produced
        the answer's line. With ``num_beams`` > 1 each prompt is decoded whole before its
        answers are yielded.
        """
        if prompts:
            self.questions_asked += len(prompts)
            yield from self._generate(prompts, self.max_new_tokens)

    def _generate(self, prompts: Sequence[str], limit: int) -> Iterator[tuple[int, Answer, float]]:
        ids = [self.codec.encode(prompt) for prompt in prompts]
        if self.num_beams > 1:
            yield from self._generate_beams(ids, limit)
            return
        tap = _LogitsTap(self.model)
        streams = [_AnswerStream(self.codec.decode) for _ in prompts]
        open_streams = set(range(len(prompts)))
        for produced in greedy(tap, ids, limit, self.eos_id):
            assert tap.logits is not None
            row = 0
            for index, token in enumerate(produced):
                if token is None:
                    continue
                probability = _token_probability(tap.logits[row], token)
                row += 1
                self.generated_tokens += 1
                if token == self.eos_id:
                    open_streams.discard(index)
                    scored = streams[index].close()
                else:
                    scored = streams[index].feed(token, probability)
                for answer, confidence in scored:
                    yield index, answer, confidence
        # Prompts cut off by max_new_tokens: their last line still counts.
        for index in sorted(open_streams):
            for answer, confidence in streams[index].close():
                yield index, answer, confidence

    def _generate_beams(
        self, prompts: list[list[int]], limit: int
    ) -> Iterator[tuple[int, Answer, float]]:
        for index, prompt in enumerate(prompts):
            tokens = beam_search(self.model, prompt, self.num_beams, limit, self.eos_id)
            self.generated_tokens += len(tokens)
            stream = _AnswerStream(self.codec.decode)
            scored: list[tuple[Answer, float]] = []
            for token, probability in zip(tokens, self._probabilities(prompt, tokens), strict=True):
                if token == self.eos_id:
                    break
                scored += stream.feed(token, probability)
            scored += stream.close()
            for answer, confidence in scored:
                yield index, answer, confidence

    def _probabilities(self, prompt: list[int], tokens: list[int]) -> list[float]:
        """Each chosen token's probability, by replaying the sequence (beam search keeps none)."""
        ids = np.asarray([prompt], dtype=np.int64)
        logits, past = self.model.forward(ids, np.ones_like(ids), None)
        probabilities: list[float] = []
        for position, token in enumerate(tokens):
            probabilities.append(_token_probability(logits[0], token))
            if position + 1 < len(tokens):
                step = np.asarray([[token]], dtype=np.int64)
                mask = np.ones((1, len(prompt) + position + 1), dtype=np.int64)
                logits, past = self.model.forward(step, mask, past)
        return probabilities
