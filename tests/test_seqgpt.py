"""The SeqGPT backends on the tiny random-weight model: mechanics, streaming, parity.

The tiny model's answers are arbitrary, so these tests check how answers are obtained and turned
into events (batching, verbatim spans, counters, order, parity between runtimes), never accuracy.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from engine.base import LineJob, load_tagger
from engine.decode import TorchCausalLM, score_labels
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
)
from engine.questions import Answerer, Codec, Question, score_batch
from engine.reference import TorchSeqGPTTagger
from engine.seqgpt import SeqGPTTagger, _question_sets
from engine.session import OrtCausalLM
from stream.errors import ConfigError
from stream.rules import load_lexicon
from stream.schema import ActionEvent, Event, MusicEvent, SpeechEvent


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


def test_shared_prefixes_are_prefilled_once_with_the_same_scores(
    torch_model: TorchCausalLM,
) -> None:
    """Grouped prefill (shared prefix once, rests left-padded after it) changes no probability."""
    codec = _torch_codec(torch_model)
    eos = torch_model.config.eos_id
    head = "输入: [00:05:20] 上一句\t[00:05:22] [轻柔竖琴泛音] 女主（OS）：他骗了我三年…\t"
    texts = ["轻柔竖琴泛音", "女主", "他骗了我三年…"]
    prompts = [codec.encode(build_prompt(head[4:] + t, CLASSIFY, CUE_KIND_LABELS)) for t in texts]
    prompts.append(codec.encode(build_prompt("另一行", CLASSIFY, CUE_KIND_LABELS)))
    shared = [len(codec.encode(head))] * 3 + [0]
    assert all(p[: shared[0]] == prompts[0][: shared[0]] for p in prompts[:3])
    candidates = [[(*codec.encode(label), eos) for label in CUE_KIND_LABELS]] * len(prompts)
    grouped = score_batch(torch_model, prompts, candidates, shared)
    plain = score_batch(torch_model, prompts, candidates)
    for a, b in zip(grouped, plain, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_prefix_cache_scoring_equals_batched_scoring(torch_model: TorchCausalLM) -> None:
    """Scoring through the prefix cache picks the same labels with the same probabilities."""
    codec = _torch_codec(torch_model)
    context = "[00:05:20] 上一句\t"
    questions = [
        Question(
            build_prompt(context + text, CLASSIFY, labels), tuple(labels), ("输入: " + context,)
        )
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


# -- the taggers ----------------------------------------------------------------------------

# The development lines of /work/shared/samples/cases.jsonl: (text, cues, speakers) expected.
_CASES: list[tuple[str, list[str], list[str]]] = [
    (
        "[00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！",
        ["轻柔竖琴泛音"],
        ["李佳琦"],
    ),
    ("[00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…", ["滴答声"], ["助理"]),
    (
        "[00:05:31] [玻璃瓶晃动声] 李佳琦（对白）：看！摇一摇，全是绵密泡泡！",
        ["玻璃瓶晃动声"],
        ["李佳琦"],
    ),
    ("[00:05:35] [欢快口哨声]", ["欢快口哨声"], []),
    ("[00:01:10] [悬疑低音提琴滑音] 女主（OS）：他骗了我三年…", ["悬疑低音提琴滑音"], ["女主"]),
    ("[00:01:15] [手机震动声] 男主（画外音）：喂？你在听吗？", ["手机震动声"], ["男主"]),
    (
        "[00:01:18] [急促脚步声由远及近] 女主（对白，颤抖）：门…门锁被撬开了…",
        ["急促脚步声由远及近"],
        ["女主"],
    ),
    ("[00:01:22] [玻璃爆裂声+警笛由远及近]", ["玻璃爆裂声", "警笛由远及近"], []),
    (
        "[00:03:01] [科技感电子脉冲音] 主讲人（画外音）："
        "量子纠缠的本质，是两个粒子的状态不可分割。",
        ["科技感电子脉冲音"],
        ["主讲人"],
    ),
    (
        "[00:03:07] [数据流刷屏声] 字幕弹出：【薛定谔方程】|【贝尔不等式】|【EPR佯谬】",
        ["数据流刷屏声", "字幕弹出：【薛定谔方程】|【贝尔不等式】|【EPR佯谬】"],
        [],
    ),
    ("[00:03:12] [清脆按键声]", ["清脆按键声"], []),
    (
        "[00:00:08] [温暖木吉他] 店长（画外音）：早上六点，面包房的灯先亮了。",
        ["温暖木吉他"],
        ["店长"],
    ),
    ("[00:00:14] [烤箱计时器叮声] [面团摔打声]", ["烤箱计时器叮声", "面团摔打声"], []),
    (
        "[00:09:40] 队长（对白）：撤！快撤！ [爆炸声] [悲壮交响乐]",
        ["爆炸声", "悲壮交响乐"],
        ["队长"],
    ),
    ("[00:00:02] ♪ 轻快的钢琴曲 ♪ 旁白：这是一个关于勇气的故事。", ["轻快的钢琴曲"], ["旁白"]),
    ("[00:02:30] （敲门声）小林（OS）：这么晚了，会是谁？", ["敲门声"], ["小林"]),
]
# Lines with text the line reader cannot place, so the extraction path runs too.
_UNPLACED = ["旁白 这是一个关于勇气的故事 警笛声", "[00:04:00] 雨声 人群嘈杂 MARY I told you"]


def _jobs(texts: list[str], stream: str = "demo") -> list[LineJob]:
    return [
        LineJob(
            stream, seq, text, "00:00:00" if seq % 2 else None, tuple(texts[max(0, seq - 4) : seq])
        )
        for seq, text in enumerate(texts)
    ]


_ALL_JOBS = _jobs([text for text, _, _ in _CASES] + _UNPLACED)


@pytest.fixture(scope="module")
def onnx_tagger(tiny_export_dir: Path) -> SeqGPTTagger:
    """The seqgpt backend on the tiny export (CPU EP)."""
    return SeqGPTTagger.from_export(tiny_export_dir, max_new_tokens=24)


@pytest.fixture(scope="module")
def torch_tagger(tiny_model_dir: Path) -> TorchSeqGPTTagger:
    """The seqgpt-torch backend on the tiny HF directory."""
    return TorchSeqGPTTagger.from_pretrained(tiny_model_dir, max_new_tokens=24)


_LEXICON = {
    "type": {*load_lexicon().instruments.values.values(), *load_lexicon().genres.values.values()},
    "mood": set(load_lexicon().moods.values.values()),
    "action": set(load_lexicon().actions.values.values()),
}


def _comparable(events: list[tuple[int, Event]]) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for index, event in events:
        fields = msgspec.structs.asdict(event)
        fields.pop("backend")
        fields["confidence"] = pytest.approx(fields["confidence"], abs=1e-4)
        rows.append((index, {"kind": type(event).__name__, **fields}))
    return rows


def test_onnx_and_torch_backends_emit_identical_events(
    onnx_tagger: SeqGPTTagger, torch_tagger: TorchSeqGPTTagger
) -> None:
    """seqgpt and seqgpt-torch yield the same events in the same order on the tiny model."""
    by_onnx = list(onnx_tagger.tag(_ALL_JOBS))
    by_torch = list(torch_tagger.tag(_ALL_JOBS))
    assert len(by_onnx) >= 2 * len(_CASES) - 2
    assert _comparable(by_onnx) == _comparable(by_torch)
    assert {event.backend for _, event in by_onnx} == {"seqgpt"}
    assert {event.backend for _, event in by_torch} == {"seqgpt-torch"}
    assert onnx_tagger.generated_tokens > 0  # the unplaced lines were extracted


def test_a_batch_equals_its_lines_tagged_one_by_one(onnx_tagger: SeqGPTTagger) -> None:
    """Batching across jobs changes nothing but the interleaving of their events."""
    batched = list(onnx_tagger.tag(_ALL_JOBS))
    one_by_one = [
        (i, event) for i, job in enumerate(_ALL_JOBS) for _, event in onnx_tagger.tag([job])
    ]
    for i in range(len(_ALL_JOBS)):
        mine = [(0, e) for j, e in batched if j == i]
        alone = [(0, e) for j, e in one_by_one if j == i]
        assert _comparable(mine) == _comparable(alone)


def test_events_are_well_formed_with_verbatim_spans(onnx_tagger: SeqGPTTagger) -> None:
    """Each event's text or cue is line[start:end], t is the line's own stamp, in line order."""
    events = list(onnx_tagger.tag(_ALL_JOBS))
    assert {type(event) for _, event in events} >= {SpeechEvent}
    for index, event in events:
        job = _ALL_JOBS[index]
        assert (event.stream, event.seq) == (job.stream, job.seq)
        span = event.text if isinstance(event, SpeechEvent) else event.cue
        assert job.text[event.start : event.end] == span
        assert 0.0 < event.confidence <= 1.0
        stamp = job.text[1:9] if job.text.startswith("[0") else job.t
        assert event.t == stamp
        if isinstance(event, MusicEvent):
            assert event.type in (*MUSIC_TYPE_LABELS, *_LEXICON["type"])
            assert event.mood in (*MUSIC_MOOD_LABELS, *_LEXICON["mood"])
        if isinstance(event, ActionEvent):
            assert event.action in (*ACTION_LABELS, *_LEXICON["action"], "字幕弹出")
    for index in range(len(_ALL_JOBS)):
        starts = [event.start for i, event in events if i == index]
        assert starts == sorted(starts)


def test_sample_cues_get_one_event_each(onnx_tagger: SeqGPTTagger) -> None:
    """Every sample line yields one event per expected event, the cues verbatim."""
    events = list(onnx_tagger.tag(_ALL_JOBS[: len(_CASES)]))
    for index, (_, expected_cues, expected_speakers) in enumerate(_CASES):
        mine = [event for i, event in events if i == index]
        cues = [event.cue for event in mine if not isinstance(event, SpeechEvent)]
        speakers = [event.speaker for event in mine if isinstance(event, SpeechEvent)]
        assert sorted(cues) == sorted(expected_cues)
        assert speakers == expected_speakers


def test_grammar_lines_generate_no_tokens(tiny_export_dir: Path) -> None:
    """Lines the grammar fully places are answered by scoring alone: zero generated tokens."""
    tagger = SeqGPTTagger.from_export(tiny_export_dir)
    events = list(tagger.tag(_jobs([text for text, _, _ in _CASES])))
    assert events
    assert tagger.generated_tokens == 0
    assert tagger.answerer.questions_asked > 0


def test_speech_before_any_cue_leaves_before_model_work(tiny_export_dir: Path) -> None:
    """A line that opens with speech yields it before a single question is asked."""
    tagger = SeqGPTTagger.from_export(tiny_export_dir)
    events = tagger.tag(_jobs(["[00:09:40] 队长（对白）：撤！快撤！ [爆炸声] [悲壮交响乐]"]))
    _, first = next(events)
    assert isinstance(first, SpeechEvent)
    assert tagger.answerer.questions_asked == 0
    rest = list(events)
    assert tagger.answerer.questions_asked > 0
    assert [e.cue for _, e in rest if not isinstance(e, SpeechEvent)] == ["爆炸声", "悲壮交响乐"]


def test_ready_order_publishes_speech_first_then_cues(tiny_export_dir: Path) -> None:
    """order=ready yields all grammar speech of a batch before model work, same events overall."""
    ready = SeqGPTTagger.from_export(tiny_export_dir, order="ready")
    jobs = _ALL_JOBS[:4]
    events = ready.tag(jobs)
    speech_count = sum(len(speakers) for _, _, speakers in _CASES[:4])
    head = [next(events) for _ in range(speech_count)]
    assert all(isinstance(event, SpeechEvent) for _, event in head)
    assert ready.answerer.questions_asked == 0
    in_position = SeqGPTTagger.from_export(tiny_export_dir).tag(jobs)
    key = lambda item: (item[0], item[1].start)  # noqa: E731
    assert _comparable(sorted([*head, *events], key=key)) == _comparable(
        sorted(in_position, key=key)
    )


def test_non_verbatim_spans_are_dropped_and_counted(onnx_tagger: SeqGPTTagger) -> None:
    """An extracted span not in the text is never published and raises dropped_spans."""
    job = LineJob("demo", 7, "旁白 这是一个关于勇气的故事 警笛声")
    line = onnx_tagger._plan(0, job)
    ((_, region),) = line.regions
    before = onnx_tagger.dropped_spans
    answers = [
        Answer("说话人", ("旁白",)),
        Answer("台词", ("这是一个关于勇气的故事", "这句不在行里")),
        Answer("音效", ("警笛声", "警笛声")),
    ]
    produced = [item for a in answers for item in onnx_tagger._read_answer(line, region, a, 0.5)]
    assert onnx_tagger.dropped_spans == before + 1
    speech = [event for event, _ in produced if event is not None]
    assert [(e.speaker, e.text, job.text[e.start : e.end]) for e in speech] == [
        ("旁白", "这是一个关于勇气的故事", "这是一个关于勇气的故事")
    ]
    cues = [cue for _, cue in produced if cue is not None]
    assert [(c.text, c.kind) for c in cues] == [("警笛声", "音效")]  # the repeat is not new


def test_generate_mode_gives_labels_or_counts_them(tiny_export_dir: Path) -> None:
    """In generate mode every cue event's labels come from the label sets or are counted."""
    tagger = SeqGPTTagger.from_export(tiny_export_dir, mode="generate")
    events = list(tagger.tag(_ALL_JOBS[:6]))
    cues = sum(len(cues) for _, cues, _ in _CASES[:6])
    cue_events = [e for _, e in events if not isinstance(e, SpeechEvent)]
    assert len(cue_events) + tagger.invalid_answers >= cues
    for event in cue_events:
        labels = (event.type, event.mood) if isinstance(event, MusicEvent) else (event.action,)
        assert all(
            label in (*MUSIC_TYPE_LABELS, *MUSIC_MOOD_LABELS, *ACTION_LABELS, "")
            for label in labels
        )


@pytest.mark.parametrize(
    "options",
    [{"mode": "sample"}, {"order": "random"}, {"num_beams": 0}, {"bogus": 1}, {"threads": "two"}],
)
def test_bad_options_are_config_errors(tiny_export_dir: Path, options: dict[str, object]) -> None:
    """load_tagger refuses unknown or ill-typed options with a ConfigError naming them."""
    with pytest.raises(ConfigError, match=next(iter(options))):
        load_tagger("seqgpt", str(tiny_export_dir), **options)


def test_beam_search_extraction_matches_between_backends(
    tiny_export_dir: Path, tiny_model_dir: Path
) -> None:
    """With num_beams=2 both backends extract the same events from unplaced text."""
    jobs = _jobs(_UNPLACED)
    onnx = SeqGPTTagger.from_export(tiny_export_dir, num_beams=2, max_new_tokens=12)
    reference = TorchSeqGPTTagger.from_pretrained(tiny_model_dir, num_beams=2, max_new_tokens=12)
    assert _comparable(list(onnx.tag(jobs))) == _comparable(list(reference.tag(jobs)))
    assert 0 < onnx.generated_tokens <= 12 * len(jobs)


def test_prefix_cache_reuses_a_streams_context_with_the_same_events(
    onnx_tagger: SeqGPTTagger, tiny_export_dir: Path
) -> None:
    """prefix_cache scores prompt by prompt, reusing context prefixes, and agrees with batching."""
    cached = SeqGPTTagger.from_export(tiny_export_dir, prefix_cache=8, max_new_tokens=24)
    jobs = _ALL_JOBS[:8]
    assert _comparable(list(cached.tag(jobs))) == _comparable(list(onnx_tagger.tag(jobs)))
    cache = cached.answerer.cache
    assert cache is not None
    assert cache.hits > 0
    assert cache.reused_tokens > 0


def test_on_screen_text_is_a_certain_action_and_lexicon_words_are_offered(
    tiny_export_dir: Path,
) -> None:
    """On-screen text needs no question; a cue's lexicon word joins its detail label set."""
    tagger = SeqGPTTagger.from_export(tiny_export_dir)
    job = LineJob("demo", 0, "[00:03:07] 字幕弹出：【薛定谔方程】|【EPR佯谬】")
    events = list(tagger.tag([job]))
    ((_, event),) = events
    assert isinstance(event, ActionEvent)
    assert (event.cue, event.action, event.confidence) == (
        "字幕弹出：【薛定谔方程】|【EPR佯谬】",
        "字幕弹出",
        1.0,
    )
    assert tagger.answerer.questions_asked == 0
    line = tagger._plan(0, LineJob("demo", 1, "[00:01:10] [悬疑低音提琴滑音]"))
    ((_, cue),) = line.cues
    sets = dict(_question_sets(cue))
    assert sets["kind"] == CUE_KIND_LABELS
    assert sets["type"] == ("低音提琴", *MUSIC_TYPE_LABELS)
    assert sets["mood"] == MUSIC_MOOD_LABELS  # 悬疑 is already a generic label
    tagged = list(tagger.tag([LineJob("demo", 1, "[00:01:10] [悬疑低音提琴滑音]")]))
    assert len(tagged) == 1
    assert tagger.answerer.questions_asked == 4  # kind, type, mood, action: one round
