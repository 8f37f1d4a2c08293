"""`gpt2-max`: tools around the GPT2LMHeadModel MAX architecture."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .checkpoints import PRESETS, write_checkpoint


def _checkpoint(args: argparse.Namespace) -> int:
    out = write_checkpoint(args.out, args.preset, seed=args.seed, layout=args.layout)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2-max", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ckpt = sub.add_parser(
        "checkpoint",
        help="write a GPT-2 checkpoint with seeded random weights and the "
        "real GPT-2 tokenizer (for machines without hub access)",
    )
    ckpt.add_argument("out", help="directory to write")
    ckpt.add_argument("--preset", choices=sorted(PRESETS), default="distilgpt2")
    ckpt.add_argument("--seed", type=int, default=0)
    ckpt.add_argument(
        "--layout",
        choices=["hub", "transformers"],
        default="hub",
        help="tensor names as published on the hub, or as save_pretrained writes",
    )
    ckpt.set_defaults(run=_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
