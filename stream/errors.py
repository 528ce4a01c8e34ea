"""The project's exceptions: each carries a message a user can act on."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EngineError",
    "ExportMismatchError",
    "InputError",
    "MissingExtraError",
    "SubtagError",
]


class SubtagError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SubtagError):
    """A configuration file or value is invalid; the message names the key."""


class InputError(SubtagError):
    """An input file or message cannot be read (missing, unreadable, bad encoding)."""


class EngineError(SubtagError):
    """The model engine cannot be loaded or failed on a batch."""


class ExportMismatchError(EngineError):
    """A model export does not match what the runtime expects (stale, other versions)."""


class MissingExtraError(SubtagError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'subtag[{extra}]'"
        )
        self.module = module
        self.extra = extra
