"""`reelrl tiny-model --family F --out DIR [--size tiny|small|medium]`: build a random model of a
real architecture with a tokenizer trained on the spot (no hub access)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tiny-model", help="build a randomly initialised Qwen2.5-VL / Qwen3-VL for tests"
    )
    parser.add_argument("--family", required=True, choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--out", required=True, help="directory to save_pretrained into")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from system.data.tiny_model import build_tiny_model

    summary = build_tiny_model(args.family, args.out, size=args.size, seed=args.seed)
    print(summary)
    return 0
