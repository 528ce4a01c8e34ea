"""Property tests (hypothesis) of the two functions every hostile byte goes through first.

``stream.schema.decode_input`` may only return an :class:`InputLine` or raise one of its
documented exceptions (``msgspec.DecodeError`` and its subclass ``ValidationError``, or
``UnicodeDecodeError`` for bytes); anything else would reach the adapters as a crash.
``stream.grammar.parse_line`` must never raise at all. Inputs are what can come off the wire:
arbitrary bytes, any text a UTF-8 frame can carry (no lone surrogates: WebSocket and the MQTT
adapter reject those before decoding), and JSON documents of every shape.
"""

from __future__ import annotations

import json
import string
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream.schema import (
    ActionEvent,
    Done,
    Error,
    InputLine,
    MusicEvent,
    SpeechEvent,
    decode_input,
    decode_outbound,
    encode,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DOCUMENTED = (msgspec.DecodeError, UnicodeDecodeError)

# JSON values of every shape, nested a few levels.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)

# Dicts that look like input messages: the real keys (and some others) with values of any type.
message_like = st.dictionaries(
    st.sampled_from(["text", "seq", "t", "extra", "kind", ""]) | st.text(max_size=5),
    json_values,
    max_size=5,
)

brackets = st.text(alphabet="[]【】（）()♪{}<>「」〔〕", max_size=200)


def _decode(payload: bytes | str) -> InputLine | None:
    """decode_input, turning only the documented exceptions into ``None``."""
    try:
        return decode_input(payload)
    except DOCUMENTED:
        return None


@FUZZ
@given(st.binary(max_size=2048))
@example(b"\xff\xfe{")
@example(b"{" * 10_000)
@example(b'{"text": "' + b"\x80" * 8 + b'"}')
def test_decode_input_on_any_bytes_raises_only_documented_errors(payload: bytes) -> None:
    """Arbitrary bytes decode to a line or raise only the documented exceptions."""
    line = _decode(payload)
    if line is not None:
        assert isinstance(line, InputLine)
        assert isinstance(line.text, str)


@FUZZ
@given(st.text(max_size=2048))
@example("")
@example("   \t\n")
@example("\x00\x01\x1b[31m\x7f")
@example("[" * 5000)
@example("{" + "[" * 5000)
def test_decode_input_on_any_text_raises_only_documented_errors(text: str) -> None:
    """Any text decodes to a line or raises only the documented exceptions."""
    line = _decode(text)
    if line is not None:
        assert isinstance(line, InputLine)


@FUZZ
@given(st.text(max_size=500).filter(lambda s: not s.lstrip().startswith("{")))
def test_text_that_is_not_json_is_the_line_itself(text: str) -> None:
    """A payload not starting with '{' is the subtitle text, verbatim, with no seq or t."""
    assert decode_input(text) == InputLine(text=text)
    assert decode_input(text.encode("utf-8")) == InputLine(text=text)


@FUZZ
@given(
    st.builds(
        InputLine,
        text=st.text(max_size=300),
        seq=st.none() | st.integers(min_value=0, max_value=2**53 - 1),
        t=st.none() | st.text(max_size=20),
    )
)
def test_encoded_input_lines_round_trip(line: InputLine) -> None:
    """Every input message the schema can encode decodes back to itself."""
    assert decode_input(encode(line)) == line
    assert decode_input(encode(line).decode("utf-8")) == line


@FUZZ
@given(message_like)
@example({"text": "a", "seq": True})
@example({"text": "a", "seq": 1.5})
@example({"text": "a", "seq": "1"})
@example({"text": ["a"]})
@example({"text": "a", "unknown": 1})
@example({"seq": 1})
def test_json_objects_of_any_shape_are_validated(document: dict[str, Any]) -> None:
    """A JSON object is accepted exactly when it has the input message's shape."""
    payload = json.dumps(document)
    well_formed = (
        set(document) <= {"text", "seq", "t"}
        and isinstance(document.get("text"), str)
        and (document.get("seq") is None or type(document.get("seq")) is int)
        and (document.get("t") is None or isinstance(document.get("t"), str))
    )
    if well_formed:
        line = decode_input(payload)
        assert line.text == document["text"]
        assert line.seq == document.get("seq")
        assert line.t == document.get("t")
    else:
        with pytest.raises(msgspec.ValidationError):
            decode_input(payload)


@FUZZ
@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_json_that_is_not_an_object_is_plain_text_or_refused(value: object) -> None:
    """Non-object JSON is a bare line unless it starts with '{' (then it must be an object)."""
    payload = json.dumps(value)
    assert decode_input(payload) == InputLine(text=payload)


@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
def test_deeply_nested_json_is_a_clear_decode_error(depth: int) -> None:
    """Deeply nested JSON fails with a DecodeError, never a RecursionError or a crash."""
    nested = '{"text": "a", "t": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(msgspec.DecodeError):
        decode_input(nested)
    with pytest.raises(msgspec.DecodeError):
        decode_input("{" * depth)
    with pytest.raises(msgspec.DecodeError):
        decode_input('{"text": ' + "[" * depth)


@FUZZ
@given(st.binary(max_size=1024) | st.text(max_size=1024).map(str.encode))
@example(b'{"kind": "speech"}')
@example(b'{"type": "done"}')
@example(b'{"kind": 1}')
def test_decode_outbound_raises_only_documented_errors(payload: bytes) -> None:
    """Subscribers' decoder on any bytes returns a message or raises a DecodeError."""
    try:
        message = decode_outbound(payload)
    except msgspec.DecodeError:
        return
    assert isinstance(message, SpeechEvent | MusicEvent | ActionEvent | Done | Error)
    assert decode_outbound(encode(message)) == message


# -- the line grammar ------------------------------------------------------------------------

line_pieces = st.lists(
    st.sampled_from(
        [
            "[00:05:22] ",
            "[00:05:22.500]",
            "[",
            "]",
            "【",
            "】",
            "（",
            "）",
            "(",
            ")",
            "♪",
            "：",
            ":",
            "+",
            "李佳琦",
            "画外音",
            "OS",
            "对白，颤抖",
            "雷声",
            " ",
            "\t",
            "\x00",
            "\u200b",
            "…",
        ]
    )
    | st.text(alphabet=string.printable, max_size=5)
    | st.text(max_size=3),
    max_size=40,
).map("".join)


def _check_spans(text: str, parsed: Any) -> None:
    """The grammar's documented invariants: verbatim slices, in order, inside the line."""
    grammar = pytest.importorskip("stream.grammar")
    assert parsed.text == text
    previous = 0
    for span in parsed.spans:
        assert 0 <= span.start <= span.end <= len(text), span
        assert span.start >= previous or isinstance(span, grammar.SpeechSpan), span
        previous = span.start
        if isinstance(span, grammar.CueSpan):
            assert text[span.cue_start : span.cue_end] == span.cue
            assert span.start <= span.cue_start <= span.cue_end <= span.end
            assert span.cue.strip() == span.cue != ""
        elif isinstance(span, grammar.SpeechSpan):
            assert text[span.speaker_start : span.speaker_end] == span.speaker
            assert text[span.status_start : span.status_end] == span.status
            assert text[span.text_start : span.text_end] == span.text
        elif isinstance(span, grammar.TimestampSpan):
            assert span.value in text[span.start : span.end]
        else:
            assert text[span.start : span.end] == span.text
            assert span.text.strip() == span.text != ""


@FUZZ
@given(line_pieces | brackets | st.text(max_size=1000))
@example("")
@example("   ")
@example("[" * 10_000)
@example("]" * 10_000)
@example("【" * 500 + "】" * 499)
@example("（" * 100 + "：" + "）" * 3)
@example("♪" * 101)
@example("<v " * 1000)
@example("x" * 100_000)
@example("[00:05:22] [轻柔竖琴泛音]+[滴答声] 李佳琦（画外音）：姐妹们！[门铃] 还有")
def test_parse_line_never_raises_and_spans_are_verbatim_slices(text: str) -> None:
    """parse_line returns in-order verbatim spans for any text, only-bracket and huge lines too."""
    grammar = pytest.importorskip("stream.grammar")
    first = grammar.parse_line(text)
    _check_spans(text, first)
    assert grammar.parse_line(text) == first, "parse_line must be a pure function"


@FUZZ
@given(line_pieces | brackets)
def test_the_scanner_itself_does_not_raise(text: str) -> None:
    """The grammar's scanner handles every line itself: its catch-all fallback stays unused."""
    grammar = pytest.importorskip("stream.grammar")
    # parse_line falls back to plain text on any exception, which would hide a grammar bug
    # from every other test; the scanner is run directly here so such a bug fails loudly.
    parsed = grammar._Scanner(text).run()
    _check_spans(text, parsed)


WORST_SHAPES = (
    "[",
    "]",
    "【",
    "（",
    "(",
    "♪",
    "<",
    "<v ",
    "a ",
    "甲：",
    "甲（",
    "- ",
    "。甲",
    "A: ",
)


@pytest.mark.parametrize("unit", WORST_SHAPES)
def test_worst_case_lines_at_the_line_limit_parse_quickly(unit: str) -> None:
    """A 4096-character line (the default limit) of any repeated worst shape parses in < 1 s.

    The rules backend runs inline on the event loop and cannot be timed out, so a super-linear
    blow-up here would stall every stream; 1 s is ~20x the slowest shape measured.
    """
    import time

    grammar = pytest.importorskip("stream.grammar")
    text = (unit * (4096 // len(unit) + 1))[:4096]
    started = time.perf_counter()
    grammar.parse_line(text)
    assert time.perf_counter() - started < 1.0
