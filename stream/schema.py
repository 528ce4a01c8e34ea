"""The wire schema: every message that enters or leaves the process.

Input lines, the three event kinds (a tagged union on ``kind``), and the per-line ``done`` and
``error`` messages (tagged on ``type``). Encoders and decoders are built once at import time and
shared; adapters call :func:`decode_input` and :func:`encode` and never build JSON by hand.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = [
    "ActionEvent",
    "Done",
    "Error",
    "ErrorCode",
    "Event",
    "InputLine",
    "Latency",
    "MusicEvent",
    "OutboundMessage",
    "SpeechEvent",
    "decode_input",
    "decode_outbound",
    "encode",
    "encode_str",
    "event_kind",
    "input_refusal",
]


# JavaScript clients lose integer precision past 2**53, and a negative seq has no meaning.
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class InputLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One subtitle line as a client sends it.

    Attributes:
        text: The subtitle line, verbatim.
        seq: The client's sequence number for the line (0 to 2**53 - 1); the server assigns
            one when absent.
        t: A timestamp the client vouches for (used when the line itself carries none).
    """

    text: str
    seq: Seq | None = None
    t: str | None = None


class _EventBase(msgspec.Struct, frozen=True, tag_field="kind"):
    """Fields every event carries, in wire order."""

    stream: str
    seq: int
    t: str | None
    start: int
    end: int
    confidence: float
    backend: str


class SpeechEvent(_EventBase, frozen=True, tag="speech"):
    """Someone speaks: ``speaker（status）：text``."""

    speaker: str
    status: str
    text: str


class MusicEvent(_EventBase, frozen=True, tag="music"):
    """Background music or musical sound design: the cue, its type and mood."""

    cue: str
    type: str
    mood: str


class ActionEvent(_EventBase, frozen=True, tag="action"):
    """A sound or on-screen cue that implies a physical event in the picture."""

    cue: str
    action: str


Event = SpeechEvent | MusicEvent | ActionEvent


class Latency(msgspec.Struct, frozen=True):
    """Per-line latency breakdown in milliseconds, measured with monotonic clocks.

    Attributes:
        received_to_queued: Frame received until the line entered the scheduler queue.
        queue: Time the line waited in the queue before the engine took it.
        model: Time the engine spent on the line's batch.
        first_event: Frame received until the line's first event was sent (``None`` when the
            line produced no event).
        total: Frame received until the ``done`` message was sent.
    """

    received_to_queued: float
    queue: float
    model: float
    first_event: float | None
    total: float


class Done(msgspec.Struct, frozen=True, tag_field="type", tag="done"):
    """Closes one line: how many events it produced and how long it took."""

    stream: str
    seq: int
    events: int
    latency: Latency
    backend: str = ""


class ErrorCode:
    """The ``code`` values an :class:`Error` message can carry."""

    BAD_JSON: Final = "bad_json"
    BAD_MESSAGE: Final = "bad_message"
    BAD_ENCODING: Final = "bad_encoding"
    BINARY_FRAME: Final = "binary_frame"
    FRAME_TOO_LARGE: Final = "frame_too_large"
    LINE_TOO_LONG: Final = "line_too_long"
    EMPTY_LINE: Final = "empty_line"
    RATE_LIMITED: Final = "rate_limited"
    TOO_MANY_STREAMS: Final = "too_many_streams"
    UNAUTHORIZED: Final = "unauthorized"
    FORBIDDEN: Final = "forbidden"
    OVERLOADED: Final = "overloaded"
    ENGINE_FAILED: Final = "engine_failed"
    ENGINE_TIMEOUT: Final = "engine_timeout"
    SHUTTING_DOWN: Final = "shutting_down"


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """A clear, actionable error for the sender of a bad message or a failed line."""

    code: str
    message: str
    seq: int | None = None
    stream: str | None = None


OutboundMessage = SpeechEvent | MusicEvent | ActionEvent | Done | Error

_ENCODER: Final = msgspec.json.Encoder()
_INPUT_DECODER: Final = msgspec.json.Decoder(InputLine)
_EVENT_DECODER: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)
_STATUS_DECODER: Final[msgspec.json.Decoder[Done | Error]] = msgspec.json.Decoder(Done | Error)


class _Envelope(msgspec.Struct):
    kind: str | None = None
    type: str | None = None


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)


def event_kind(event: Event) -> str:
    """The event's ``kind`` tag: ``speech``, ``music`` or ``action``."""
    match event:
        case SpeechEvent():
            return "speech"
        case MusicEvent():
            return "music"
        case ActionEvent():
            return "action"


def encode(message: OutboundMessage | InputLine) -> bytes:
    """Encode a message as compact UTF-8 JSON."""
    return _ENCODER.encode(message)


def encode_str(message: OutboundMessage | InputLine) -> str:
    """Encode a message as a JSON ``str`` (what a WebSocket text frame carries)."""
    return _ENCODER.encode(message).decode("utf-8")


def decode_input(payload: bytes | str) -> InputLine:
    """Decode one ingest payload: a JSON input message, or a bare subtitle line.

    A payload whose first non-blank character is ``{`` is a JSON message and must be valid;
    anything else is the subtitle text itself.

    Args:
        payload: The frame or MQTT payload, as received.

    Returns:
        The input line.

    Raises:
        msgspec.ValidationError: The JSON does not have the input message's shape.
        msgspec.DecodeError: The JSON is malformed.
        UnicodeDecodeError: ``payload`` is bytes that are not UTF-8.
    """
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    if text.lstrip().startswith("{"):
        return _INPUT_DECODER.decode(text)
    return InputLine(text=text)


def input_refusal(exc: UnicodeDecodeError | msgspec.DecodeError) -> tuple[str, str]:
    """The ``(code, message)`` an adapter answers when :func:`decode_input` raised ``exc``."""
    if isinstance(exc, UnicodeDecodeError):
        return ErrorCode.BAD_ENCODING, "the payload is not UTF-8"
    if isinstance(exc, msgspec.ValidationError):  # a DecodeError too: test it first
        return ErrorCode.BAD_MESSAGE, f"bad input message: {exc}"
    return ErrorCode.BAD_JSON, f"malformed JSON: {exc}"


def decode_outbound(payload: bytes | str) -> OutboundMessage:
    """Decode an event, ``done`` or ``error`` message (for subscribers and tests).

    Raises:
        msgspec.ValidationError: The payload is not one of the outbound messages.
        msgspec.DecodeError: The JSON is malformed.
    """
    envelope = _ENVELOPE_DECODER.decode(payload)
    if envelope.kind is not None:
        return _EVENT_DECODER.decode(payload)
    return _STATUS_DECODER.decode(payload)
