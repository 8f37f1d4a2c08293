"""`gpt2-max`: tools around the GPT2LMHeadModel MAX architecture."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from .checkpoints import PRESETS, write_checkpoint


def _checkpoint(args: argparse.Namespace) -> int:
    out = write_checkpoint(args.out, args.preset, seed=args.seed, layout=args.layout)
    print(out)
    return 0


def _verify(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("MAX_SERVE_DISABLE_TELEMETRY", "1")
    from .verify import DEFAULT_PROMPTS, verdict_json, verify

    verdict = verify(
        args.model_path,
        devices=args.devices,
        prompts=args.prompt or DEFAULT_PROMPTS,
        decode_steps=args.decode_steps,
    )
    if args.json:
        with open(args.json, "w") as f:
            f.write(verdict_json(verdict) + "\n")
    return verdict.status


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .gguf_export import write_gguf

    try:
        print(write_gguf(Path(args.checkpoint_dir), Path(args.out), args.to))
    except (OSError, ValueError) as error:  # unreadable or not a GPT-2
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _perplexity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from .perplexity import perplexity

    try:
        text = Path(args.file).read_text(encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        ids = tokenizer(text)["input_ids"]
        ppl, scored = perplexity(
            args.model_path, ids, stride=args.stride, devices=args.devices
        )
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"perplexity {ppl:.6f} over {scored} tokens")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from .gguf_unpack import unpack

    try:
        unpacked = unpack(args.gguf, args.out)
    except (OSError, ValueError) as error:  # unreadable, not GPT-2, inconsistent
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_flags:
        print("\n".join(unpacked.serve_flags()))
    else:
        flags = " ".join(shlex.quote(f) for f in unpacked.serve_flags())
        print(f"max serve --custom-architectures gpt2_lmhead_model {flags}")
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

    ver = sub.add_parser(
        "verify",
        help="check that a GPT-2 checkpoint runs correctly on MAX: the weight "
        "mapping, then logits and greedy tokens against transformers "
        "(exit 0 PASS, 1 FAIL, 2 unreadable)",
    )
    ver.add_argument(
        "--model-path", required=True, help="local directory or hub repo id"
    )
    ver.add_argument("--devices", default="cpu", help="as max serve's --devices")
    ver.add_argument(
        "--prompt", action="append", help="a prompt to decode (repeatable)"
    )
    ver.add_argument("--decode-steps", type=int, default=32)
    ver.add_argument("--json", help="also write the verdict as JSON to this file")
    ver.set_defaults(run=_verify)

    conv = sub.add_parser(
        "convert",
        help="write a GPT-2 checkpoint as a GGUF file in llama.cpp's layout, "
        "float32, half or Q8_0 (f16/bf16/q8_0, as convert_hf_to_gguf.py "
        "--outtype) or quantized (as llama-quantize would, without an imatrix)",
    )
    conv.add_argument("checkpoint_dir", help="local checkpoint directory")
    conv.add_argument("out", help="the .gguf file to write")
    conv.add_argument(
        "--to",
        required=True,
        choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"],
        help="q8_0: as convert_hf_to_gguf.py --outtype q8_0; "
        "q4_k_m: Q4_K, with Q6_K for the head and some ffn_down layers",
    )
    conv.set_defaults(run=_convert)

    ppl = sub.add_parser(
        "perplexity",
        help="perplexity of a UTF-8 text file, run on MAX in process: windows "
        "of n_positions tokens, `--stride` apart, as transformers' guide",
    )
    ppl.add_argument("file", help="the text to score")
    ppl.add_argument(
        "--model-path", required=True, help="local directory or hub repo id"
    )
    ppl.add_argument(
        "--stride",
        type=int,
        default=None,
        help="tokens between window starts (default n_positions / 2)",
    )
    ppl.add_argument("--devices", default="cpu", help="as max serve's --devices")
    ppl.set_defaults(run=_perplexity)

    unp = sub.add_parser(
        "unpack",
        help="write the config.json and tokenizer files a GGUF file's metadata "
        "describes into a directory, so max serve can serve the file alone; "
        "prints the max serve command",
    )
    unp.add_argument("gguf", help="a llama.cpp GPT-2 .gguf file")
    unp.add_argument("out", help="directory to write")
    unp.add_argument(
        "--print-flags",
        action="store_true",
        help="print only max serve's model flags, one per line (for scripts)",
    )
    unp.set_defaults(run=_unpack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
