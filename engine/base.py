"""The contract between the service and every tagging backend.

The service hands a backend a batch of :class:`LineJob` (lines from possibly many streams) and
iterates what :meth:`Tagger.tag` yields: ``(index into the batch, event)`` pairs, each the moment
the backend has it. Backends: ``rules`` (stream.rules, no model), ``seqgpt`` (ONNX Runtime) and
``seqgpt-torch`` (the transformers reference). Service code never knows which one it has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from stream.schema import Event

__all__ = ["BACKENDS", "LineJob", "Tagger", "load_tagger"]

BACKENDS = ("rules", "seqgpt", "seqgpt-torch")


@dataclass(frozen=True, slots=True)
class LineJob:
    """One line to tag, with its stream's recent lines as context.

    Attributes:
        stream: The stream the line belongs to.
        seq: The line's sequence number within its stream.
        text: The subtitle line, verbatim.
        t: The timestamp the sender gave (or the cue timing of a subtitle file), if any; a
            timestamp inside the line takes precedence.
        context: Earlier lines of the same stream, oldest first (the rolling window).
    """

    stream: str
    seq: int
    text: str
    t: str | None = None
    context: tuple[str, ...] = field(default=())


@runtime_checkable
class Tagger(Protocol):
    """A backend that turns lines into events."""

    @property
    def name(self) -> str:
        """The backend's name, as it appears in each event's ``backend`` field."""
        ...

    def tag(self, jobs: Sequence[LineJob]) -> Iterator[tuple[int, Event]]:
        """Tag a batch of lines lazily.

        Yields ``(i, event)`` where ``i`` indexes ``jobs``. Within one job, events come in the
        order of their position in the line; events of different jobs may interleave. Nothing
        runs until the iterator is advanced.
        """
        ...


def load_tagger(backend: str, model: str | None = None, **options: object) -> Tagger:
    """Build the named backend.

    Args:
        backend: One of :data:`BACKENDS`.
        model: For ``seqgpt`` an export directory; for ``seqgpt-torch`` a Hugging Face model
            directory or hub id. Ignored by ``rules``.
        **options: Backend options (providers, threads, decoding mode...).

    Raises:
        stream.errors.ConfigError: Unknown backend, or a model backend without a model.
    """
    from stream.errors import ConfigError

    if backend == "rules":
        from stream.rules import RulesTagger

        return RulesTagger()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not model:
        raise ConfigError(f"backend {backend!r} needs a model (--model DIR)")
    if backend == "seqgpt":
        from engine.seqgpt import SeqGPTTagger

        return SeqGPTTagger.from_export(model, **options)
    from engine.reference import TorchSeqGPTTagger

    return TorchSeqGPTTagger.from_pretrained(model, **options)
