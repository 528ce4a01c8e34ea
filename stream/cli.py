"""The ``subtag`` command: one sub-command per job, each in its own module.

Each command module provides ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Modules are imported only to build the parser; heavy imports inside them stay lazy.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from stream.errors import SubtagError

__all__ = ["main"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tag": ("stream.tagfile", "tag a subtitle file (or stdin) and print its events"),
    "serve": ("stream.service", "run the streaming service (WebSocket, MQTT)"),
    "replay": ("stream.replay", "send a subtitle file to a running service, paced"),
    "listen": ("stream.listen", "print events from a running service as they arrive"),
    "demo": ("stream.demo", "start the service on the rules backend and replay a sample"),
    "export": ("engine.export", "export SeqGPT to ONNX with a KV cache"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subtag", description="Streaming, real-time subtitle tagger."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``subtag`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args._run(args)
    except SubtagError as exc:
        print(f"subtag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
