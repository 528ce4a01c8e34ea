"""The wire schema: round trips and clear validation errors."""

from __future__ import annotations

import msgspec
import pytest

from stream.schema import (
    ActionEvent,
    Done,
    Error,
    InputLine,
    Latency,
    MusicEvent,
    SpeechEvent,
    decode_input,
    decode_outbound,
    encode,
    event_kind,
)

COMMON = {"stream": "s1", "seq": 3, "t": "00:05:22", "start": 0, "end": 4}


@pytest.mark.parametrize(
    "message",
    [
        SpeechEvent(
            **COMMON,
            confidence=1.0,
            backend="rules",
            speaker="李佳琦",
            status="画外音",
            text="姐妹们！",
        ),
        MusicEvent(
            **COMMON, confidence=0.9, backend="rules", cue="轻柔竖琴泛音", type="竖琴", mood="轻柔"
        ),
        ActionEvent(**COMMON, confidence=0.8, backend="seqgpt", cue="敲门声", action="敲门"),
        Done(
            stream="s1", seq=3, events=2, latency=Latency(0.1, 0.2, 1.5, 0.9, 2.0), backend="rules"
        ),
        Error(code="bad_json", message="frame is not valid JSON", seq=None, stream="s1"),
    ],
)
def test_outbound_round_trip(message: object) -> None:
    """Every outbound message decodes back to an equal value."""
    assert decode_outbound(encode(message)) == message  # type: ignore[arg-type]


def test_event_carries_kind_tag() -> None:
    """Events are tagged on ``kind`` and done messages on ``type``."""
    event = ActionEvent(**COMMON, confidence=1.0, backend="rules", cue="敲门声", action="敲门")
    assert msgspec.json.decode(encode(event))["kind"] == "action"
    done = Done(stream="s", seq=1, events=0, latency=Latency(0, 0, 0, None, 0))
    assert msgspec.json.decode(encode(done))["type"] == "done"


def test_input_json_and_bare_text() -> None:
    """A JSON object is a message; anything else is the subtitle text itself."""
    assert decode_input('{"text": "hi", "seq": 4, "t": "00:00:01"}') == InputLine(
        "hi", 4, "00:00:01"
    )
    assert decode_input(b"[00:00:01] hi") == InputLine("[00:00:01] hi")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ('{"text": 5}', msgspec.ValidationError),
        ('{"seq": 1}', msgspec.ValidationError),
        ('{"text": "a", "colour": "red"}', msgspec.ValidationError),
        ('{"text": "a"', msgspec.DecodeError),
    ],
)
def test_input_validation_errors(payload: str, error: type[Exception]) -> None:
    """Wrong types, missing text, unknown fields and broken JSON raise msgspec errors."""
    with pytest.raises(error):
        decode_input(payload)


def test_event_kind_names_the_tag() -> None:
    """event_kind returns the same name the wire carries in ``kind``."""
    event = MusicEvent(**COMMON, confidence=1.0, backend="rules", cue="琴", type="琴", mood="")
    assert event_kind(event) == msgspec.json.decode(encode(event))["kind"] == "music"


@pytest.mark.parametrize("seq", [-1, 2**53])
def test_input_seq_range(seq: int) -> None:
    """A negative seq, or one JavaScript cannot represent exactly, is refused."""
    with pytest.raises(msgspec.ValidationError, match="seq"):
        decode_input(f'{{"text": "a", "seq": {seq}}}')
