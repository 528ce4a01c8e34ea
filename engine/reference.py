"""The transformers reference backend (``--backend seqgpt-torch``).

The same tagger as engine.seqgpt (same prompts, same questions, same decoding code in
engine.questions and engine.decode) over ``BloomForCausalLM`` in fp32 on the CPU, tokenized with
the checkpoint's own ``AutoTokenizer`` the way the SeqGPT authors call it. Its events are the
yardstick the ONNX Runtime backend is compared against: on the same checkpoint both emit the same
events (tests/test_seqgpt.py checks it on the tiny model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from engine.questions import Codec
from engine.seqgpt import SeqGPTTagger, TaggerOptions
from stream.errors import ConfigError

__all__ = ["TorchSeqGPTTagger"]


class TorchSeqGPTTagger(SeqGPTTagger):
    """Tags lines with SeqGPT under transformers (``name`` ``seqgpt-torch``)."""

    backend_name: ClassVar[str] = "seqgpt-torch"

    @classmethod
    def from_pretrained(cls, source: str | Path, **options: object) -> TorchSeqGPTTagger:
        """Load a Hugging Face model directory (or hub id, where the hub is reachable).

        Args:
            source: The model directory or hub id.
            **options: :class:`engine.seqgpt.TaggerOptions` fields, plus ``threads`` (torch
                intra-op threads, 0 = default). ONNX Runtime's ``provider(s)`` are accepted and
                ignored, so one configuration can switch backends.

        Raises:
            stream.errors.ConfigError: Unknown or ill-typed option.
            stream.errors.MissingExtraError: torch or transformers is not installed.
            stream.errors.InputError: The model cannot be loaded.
        """
        from engine.decode import TorchCausalLM

        tagger_options, rest = TaggerOptions.split(options)
        threads = rest.pop("threads", None)
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or threads < 0
        ):
            raise ConfigError(f"threads must be a whole number >= 0, not {threads!r}")
        rest.pop("provider", None)
        rest.pop("providers", None)
        if rest:
            raise ConfigError(f"unknown option(s) for seqgpt-torch: {', '.join(sorted(rest))}")
        model = TorchCausalLM.from_pretrained(source, threads=threads or None)
        tokenizer: Any = model.tokenizer

        def encode(text: str) -> list[int]:
            return list(tokenizer(text)["input_ids"])

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=True))

        return cls(model, Codec(encode, decode), tagger_options)
