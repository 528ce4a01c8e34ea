"""Build a random-weight SeqGPT-architecture model and tokenizer (see engine/tiny.py).

Usage: .venv/bin/python tools/make_tiny_seqgpt.py --out DIR [--full-size] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.tiny import build_tiny_seqgpt


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and build the model directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument(
        "--full-size", action="store_true", help="SeqGPT-560M shapes (for timing; ~2.2 GB fp32)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = parser.parse_args(argv)
    out = build_tiny_seqgpt(args.out, full_size=args.full_size, seed=args.seed)
    print(f"wrote {'full-size' if args.full_size else 'tiny'} random-weight SeqGPT to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
