"""The hybrid SeqGPT tagger: the line grammar for structure, the model for what it cannot decide.

For each line the grammar (stream.grammar) finds the timestamp, the speakers and their
utterances, the cues and any text it could not place, all as verbatim spans with offsets. Those
speech events are certain and go out before any model work. The model then answers only what the
grammar cannot (docs/seqgpt-tagging.md has the prompt design and why it keeps generated tokens
per line low):

1. per cue, ``分类: 音乐，音效`` by label-constrained scoring (zero generated tokens): music or
   a sound effect (an ``action`` event), with a real probability as the event's confidence;
2. per cue, its details, also scored over closed label sets: a music cue's type and mood, a
   sound cue's implied action. Asked in the same batched pass as step 1 (the questions about
   a line share its prefix, prefilled once), so a cue's event needs one model round;
3. per stretch of text the grammar could not place, ``抽取: 说话人，台词，音乐，音效`` decoded
   greedily; each answer line is parsed the moment it ends, its spans checked verbatim against
   the text (a span that is not a substring is dropped and counted in :attr:`dropped_spans`),
   speech published at once, extracted cues sent through step 2.

Every step is batched across all lines of the batch (left-padded prefill and decoding). Events
stream: with ``order="position"`` (the :class:`engine.base.Tagger` contract) a line's events
leave in their order in the line, each as soon as it and those before it are decided; with
``order="ready"`` each leaves the moment it is decided.

:class:`SeqGPTTagger` runs the ONNX export (``--backend seqgpt``); engine.reference subclasses it
with the transformers model (``--backend seqgpt-torch``): the same prompts and the same decoding
code, only the model underneath differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from engine.base import LineJob
from engine.decode import CausalLM
from engine.lineparts import line_parts, screen_action
from engine.prompts import (
    ACTION_LABELS,
    CLASSIFY,
    CUE_KIND_LABELS,
    EXTRACT,
    LINE_LABELS,
    MUSIC_MOOD_LABELS,
    MUSIC_TYPE_LABELS,
    Answer,
    build_prompt,
    compose_input,
    normalize_label,
    select_context,
)
from engine.questions import MODES, Answerer, Choice, Codec, Question
from stream.errors import ConfigError
from stream.rules import load_lexicon
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent

__all__ = ["ORDERS", "SeqGPTTagger", "TaggerOptions"]

ORDERS = ("position", "ready")

_MUSIC, _SOUND = CUE_KIND_LABELS
_SPEAKER, _UTTERANCE, _LINE_MUSIC, _LINE_SOUND = LINE_LABELS
_GRAMMAR_CONFIDENCE = 1.0


@dataclass(frozen=True, slots=True)
class TaggerOptions:
    """How the SeqGPT backends ask their questions (``**options`` of ``load_tagger``).

    Attributes:
        mode: ``scores``: closed questions by label-constrained scoring (no generated tokens,
            real probabilities); ``generate``: closed questions decoded and matched to a label.
        num_beams: 1 = greedy (batched, streaming); more = beam search per prompt.
        max_new_tokens: Most tokens one extraction answer may take.
        context_period: Prefix-stability period of the context (engine.prompts.select_context);
            0 gives the whole rolling window every time.
        prefix_cache: Prefilled context prefixes to keep (scores mode); 0 batches prefill.
        order: ``position`` (a line's events in line order) or ``ready`` (each at once).
    """

    mode: str = "scores"
    num_beams: int = 1
    max_new_tokens: int = 48
    context_period: int = 4
    prefix_cache: int = 0
    order: str = "position"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        for name in ("num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("context_period", "prefix_cache"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")

    @classmethod
    def split(cls, options: Mapping[str, object]) -> tuple[TaggerOptions, dict[str, object]]:
        """Take this class's options out of ``options``; return them and the rest.

        Raises:
            stream.errors.ConfigError: An option has the wrong type.
        """
        mine: dict[str, Any] = {}
        rest = dict(options)
        for spec in fields(cls):
            if spec.name not in rest:
                continue
            value = rest.pop(spec.name)
            wanted = type(getattr(cls(), spec.name))
            if wanted is int and isinstance(value, str) and value.isdigit():
                value = int(value)
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ConfigError(f"option {spec.name} must be {wanted.__name__}, not {value!r}")
            mine[spec.name] = value
        return cls(**mine), rest


@dataclass(slots=True)
class _Cue:
    """A cue (or an extracted cue span) waiting for the model's verdict."""

    job: int
    text: str
    start: int
    end: int
    kind: str | None = None  # _MUSIC or _SOUND once known
    confidence: float = 0.0
    event: Event | None = None
    action: str = ""  # decided without the model (on-screen text: its label)


@dataclass(slots=True)
class _Region:
    """Text of a line the grammar could not place, to be extracted."""

    job: int
    text: str
    start: int
    speaker: str = ""
    taken: set[tuple[str, int]] = field(default_factory=set)


@dataclass(slots=True)
class _Slot:
    """A place in a line that yields events; ``events`` is None until decided."""

    start: int
    events: list[Event] | None = None


@dataclass(slots=True)
class _Line:
    """One job's plan: its slots in line order and what the model must answer."""

    job: LineJob
    t: str | None
    context: tuple[str, ...]
    slots: list[_Slot]
    cues: list[tuple[_Slot, _Cue]]
    regions: list[tuple[_Slot, _Region]]
    released: int = 0


class SeqGPTTagger:
    """Tags lines with SeqGPT over ONNX Runtime (``name`` ``seqgpt``).

    Build with :meth:`from_export`. :attr:`dropped_spans` counts model spans that were not
    verbatim in the line (never published); :attr:`invalid_answers` counts generated answers
    that were not one of the labels (``generate`` mode).

    Args:
        model: The model (:class:`engine.decode.CausalLM`).
        codec: Its tokenizer.
        options: How to ask.
    """

    backend_name: ClassVar[str] = "seqgpt"

    def __init__(self, model: CausalLM, codec: Codec, options: TaggerOptions) -> None:
        self.model = model
        self.codec = codec
        self.options = options
        self.answerer = Answerer(
            model,
            codec,
            mode=options.mode,
            num_beams=options.num_beams,
            max_new_tokens=options.max_new_tokens,
            prefix_cache=options.prefix_cache,
        )
        self.dropped_spans = 0
        self.invalid_answers = 0

    @classmethod
    def from_export(cls, export_dir: str | Path, **options: object) -> SeqGPTTagger:
        """Load a ``subtag export`` directory.

        Args:
            export_dir: The export directory.
            **options: :class:`TaggerOptions` fields, plus ``provider`` (``cpu``, ``cuda``,
                ``tensorrt``) or ``providers`` (ONNX Runtime provider names in preference
                order, the first is used), ``threads`` (intra-op threads, 0 = default) and
                ``variant`` (``main`` or ``int8``).

        Raises:
            stream.errors.ConfigError: Unknown or ill-typed option.
            stream.errors.ExportMismatchError: The export is stale or does not match.
            stream.errors.MissingExtraError: onnxruntime is not installed.
        """
        from engine.session import OrtCausalLM, SessionOptions

        tagger_options, rest = TaggerOptions.split(options)
        session_options: dict[str, Any] = {}
        provider = rest.pop("provider", None)
        providers = rest.pop("providers", None)
        if providers:
            if not isinstance(providers, list | tuple) or not all(
                isinstance(p, str) for p in providers
            ):
                raise ConfigError(f"providers must be a list of names, not {providers!r}")
            provider = _short_provider(providers[0])
        if provider is not None:
            session_options["provider"] = str(provider)
        threads = rest.pop("threads", None)
        if threads is not None:
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
                raise ConfigError(f"threads must be a whole number >= 0, not {threads!r}")
            if threads:
                session_options["intra_op_threads"] = threads
        variant = rest.pop("variant", None)
        if variant is not None:
            session_options["variant"] = str(variant)
        _reject_unknown(rest)
        model = OrtCausalLM.from_export(export_dir, SessionOptions(**session_options))
        tokenizer = model.tokenizer
        codec = Codec(
            encode=lambda text: list(tokenizer.encode(text).ids),
            decode=lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)),
        )
        return cls(model, codec, tagger_options)

    @property
    def name(self) -> str:
        """``seqgpt`` (``seqgpt-torch`` for the reference)."""
        return self.backend_name

    @property
    def generated_tokens(self) -> int:
        """Tokens generated so far (extraction and ``generate``-mode answers)."""
        return self.answerer.generated_tokens

    # -- tagging ---------------------------------------------------------------------------

    def tag(self, jobs: Sequence[LineJob]) -> Iterator[tuple[int, Event]]:
        """Tag a batch lazily; see the module docstring for what is asked and when."""
        lines = [self._plan(index, job) for index, job in enumerate(jobs)]
        # Grammar-certain events first: no model work stands before them.
        yield from self._release(lines)
        cues = [cue for line in lines for _, cue in line.cues]
        self._decide(lines, cues)
        yield from self._release(lines)
        regions = [(line, slot, region) for line in lines for slot, region in line.regions]
        if not regions:
            return
        found: dict[int, list[Event]] = {id(slot): [] for _, slot, _ in regions}
        extracted: list[tuple[_Slot, _Cue]] = []
        prompts = [
            build_prompt(compose_input(line.context, region.text), EXTRACT, LINE_LABELS)
            for line, _, region in regions
        ]
        for index, answer, confidence in self.answerer.extract(prompts):
            line, slot, region = regions[index]
            for event, cue in self._read_answer(line, region, answer, confidence):
                if cue is not None:
                    extracted.append((slot, cue))
                elif event is not None:
                    found[id(slot)].append(event)
                    if self.options.order == "ready":
                        yield region.job, event
        self._decide(lines, [cue for _, cue in extracted])
        for slot, cue in extracted:
            if cue.event is not None:
                found[id(slot)].append(cue.event)
                if self.options.order == "ready":
                    yield cue.job, cue.event
        for _, slot, _ in regions:
            slot.events = sorted(found[id(slot)], key=lambda event: event.start)
            if self.options.order == "ready":
                slot.events = []  # already yielded one by one
        yield from self._release(lines)

    def _release(self, lines: list[_Line]) -> Iterator[tuple[int, Event]]:
        """Yield each line's decided slots, in line order up to the first undecided one."""
        for index, line in enumerate(lines):
            if self.options.order == "ready":
                for slot in line.slots:
                    if slot.events:
                        for event in slot.events:
                            yield index, event
                        slot.events = []
                continue
            while line.released < len(line.slots):
                events = line.slots[line.released].events
                if events is None:
                    break
                for event in events:
                    yield index, event
                line.released += 1

    def _decide(self, lines: list[_Line], cues: list[_Cue]) -> None:
        """Ask every cue's kind and details in one batched pass; build the cues' events.

        The details of both kinds are asked before the kind is known: those questions share
        the line's prefix, which is prefilled once, so the unused ones cost only their short
        rest, and the line's events need one model pass instead of two in a row.
        """
        asked: list[tuple[_Cue, str, Question]] = []
        for cue in cues:
            sets = _question_sets(cue)
            line = lines[cue.job]
            asked += [(cue, what, self._question(line, cue, labels)) for what, labels in sets]
        answers: dict[tuple[int, str], Choice | None] = {}
        choices = self.answerer.choose([question for _, _, question in asked])
        for (cue, what, _), choice in zip(asked, choices, strict=True):
            answers[id(cue), what] = choice
        for cue in cues:
            if cue.kind is None:
                kind = answers[id(cue), "kind"]
                if kind is None:
                    self.invalid_answers += 1
                    continue
                cue.kind, cue.confidence = kind.label, kind.probability
            common = self._common(lines[cue.job], cue.start, cue.end, cue.confidence)
            if cue.kind == _MUSIC:
                cue.event = MusicEvent(
                    **common,
                    cue=cue.text,
                    type=self._label(answers[id(cue), "type"]),
                    mood=self._label(answers[id(cue), "mood"]),
                )
            else:
                action = cue.action or self._label(answers[id(cue), "action"])
                cue.event = ActionEvent(**common, cue=cue.text, action=action)
        for line in lines:
            for slot, cue in line.cues:
                if slot.events is None and (cue.event is not None or cue.kind is None):
                    slot.events = [] if cue.event is None else [cue.event]

    def _label(self, choice: Choice | None) -> str:
        if choice is None:
            self.invalid_answers += 1
            return ""
        return choice.label

    def _question(self, line: _Line, cue: _Cue, labels: Sequence[str]) -> Question:
        text = compose_input(line.context, line.job.text, cue.text)
        # The context block is what consecutive lines of the stream share (select_context).
        whole_line = "输入: " + compose_input(line.context, line.job.text, "")
        prefixes: tuple[str, ...] = (whole_line,)
        if line.context:
            prefixes = ("输入: " + compose_input(line.context, ""), whole_line)
        return Question(build_prompt(text, CLASSIFY, labels), tuple(labels), prefixes)

    def _common(self, line: _Line, start: int, end: int, confidence: float) -> dict[str, Any]:
        return {
            "stream": line.job.stream,
            "seq": line.job.seq,
            "t": line.t,
            "start": start,
            "end": end,
            "confidence": round(float(confidence), 6),
            "backend": self.name,
        }

    def _read_answer(
        self, line: _Line, region: _Region, answer: Answer, confidence: float
    ) -> Iterator[tuple[Event | None, _Cue | None]]:
        """Turn one extraction answer into speech events or cues, keeping verbatim spans only."""
        for span in answer.spans:
            offset = self._locate(region, answer.label, span)
            if offset is None:
                continue
            start = region.start + offset
            end = start + len(span)
            if answer.label == _SPEAKER:
                region.speaker = region.speaker or span
            elif answer.label == _UTTERANCE:
                yield (
                    SpeechEvent(
                        **self._common(line, start, end, confidence),
                        speaker=region.speaker,
                        status="",
                        text=span,
                    ),
                    None,
                )
            elif answer.label in (_LINE_MUSIC, _LINE_SOUND):
                yield None, _Cue(region.job, span, start, end, answer.label, confidence)

    def _locate(self, region: _Region, label: str, span: str) -> int | None:
        """Offset of a verbatim span in the region (a repeat finds the next occurrence)."""
        offset = region.text.find(span)
        if offset < 0:
            self.dropped_spans += 1
            return None
        while (label, offset) in region.taken:
            offset = region.text.find(span, offset + 1)
            if offset < 0:
                return None  # the model repeated itself: nothing new to publish
        region.taken.add((label, offset))
        return offset

    def _plan(self, index: int, job: LineJob) -> _Line:
        """Parse a line into slots: certain speech, cues to ask about, text to extract."""
        timestamp, parts = line_parts(job.text)
        line = _Line(
            job=job,
            t=timestamp if timestamp is not None else job.t,
            context=select_context(job.context, job.seq, self.options.context_period),
            slots=[],
            cues=[],
            regions=[],
        )
        for part in sorted(parts, key=lambda part: part.start):
            slot = _Slot(part.start)
            if part.kind == "speech":
                slot.events = [
                    SpeechEvent(
                        **self._common(line, part.start, part.end, _GRAMMAR_CONFIDENCE),
                        speaker=part.speaker,
                        status=part.status,
                        text=part.text,
                    )
                ]
            elif part.kind == "cue":
                line.cues.append((slot, _Cue(index, part.text, part.start, part.end)))
            elif part.kind == "screen":
                # On-screen text is shown, not heard: an action whatever the model would say,
                # and its label (字幕弹出) says what happens: nothing to ask.
                cue = _Cue(index, part.text, part.start, part.end, _SOUND, _GRAMMAR_CONFIDENCE)
                cue.action = screen_action(part.text)
                line.cues.append((slot, cue))
            elif any(ch.isalnum() for ch in part.text):
                line.regions.append((slot, _Region(index, part.text, part.start)))
            else:
                continue  # punctuation or blanks between parts: nothing to ask
            line.slots.append(slot)
        return line


def _with_lexicon(word: str | None, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The label set with the rules lexicon's reading of the cue first, when it has one."""
    if not word or word in labels:
        return labels
    try:
        normalize_label(word)
    except ValueError:
        return labels
    return (word, *labels)


def _question_sets(cue: _Cue) -> list[tuple[str, tuple[str, ...]]]:
    """The closed questions to ask about a cue: its kind if unknown, and both kinds' details.

    Each detail set is seeded with the rules lexicon's word for the cue (``低音提琴`` in
    ``悬疑低音提琴滑音``), so the model can pick the specific word the lexicon knows or a
    generic label; the lexicon only proposes, the model's scores decide.
    """
    if cue.action:
        return []
    lexicon = load_lexicon()
    text = cue.text.lower()
    sets: list[tuple[str, tuple[str, ...]]] = []
    if cue.kind is None:
        sets.append(("kind", CUE_KIND_LABELS))
    if cue.kind in (None, _MUSIC):
        found = lexicon.instruments.best(text) or lexicon.genres.best(text)
        mood = lexicon.moods.best(text)
        sets.append(("type", _with_lexicon(found and found[1], MUSIC_TYPE_LABELS)))
        sets.append(("mood", _with_lexicon(mood and mood[1], MUSIC_MOOD_LABELS)))
    if cue.kind in (None, _SOUND):
        action = lexicon.actions.best(text)
        sets.append(("action", _with_lexicon(action and action[1], ACTION_LABELS)))
    return sets


def _short_provider(name: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (short names pass through)."""
    lowered = name.lower()
    for short in ("tensorrt", "cuda", "cpu"):
        if lowered.startswith(short):
            return short
    raise ConfigError(f"unknown ONNX Runtime provider {name!r}; use cpu, cuda or tensorrt")


def _reject_unknown(rest: Mapping[str, object]) -> None:
    if rest:
        known = ", ".join(
            [f.name for f in fields(TaggerOptions)] + ["provider", "providers", "threads"]
        )
        raise ConfigError(f"unknown option(s) {', '.join(sorted(rest))}; known: {known}")
