"""`reelrl synth --out DIR --n N [--eval N] [--text N] [--seed S]`: write the synthetic video
tasks (mp4 clips with known answers, train.jsonl and eval.jsonl) and text-only questions
(text.jsonl) into DIR."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate the synthetic video tasks (clips + train/eval JSONL)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, required=True, help="training records")
    parser.add_argument("--eval", type=int, default=None, help="held-out records (default: --n)")
    parser.add_argument("--text", type=int, default=0, help="text-only questions (text.jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from system.cli import UserError

    n_eval = args.n if args.eval is None else args.eval
    if args.n < 1 or n_eval < 0 or args.text < 0:
        raise UserError(
            f"--n must be >= 1, --eval and --text >= 0; got --n {args.n} --eval {n_eval} "
            f"--text {args.text}"
        )
    import time

    from system.data.synthetic import generate

    began = time.perf_counter()
    manifest = generate(args.out, args.n, n_eval, args.seed, args.text)
    seconds = time.perf_counter() - began
    clips = args.n + n_eval
    print(f"wrote {clips} clips to {args.out} in {seconds:.1f}s ({clips / seconds:.0f} clips/s)")
    for split, tasks in manifest["tasks"].items():
        print(f"  {split}: " + ", ".join(f"{t} {k}" for t, k in tasks.items()))
    if args.text:
        print(f"  text: {args.text} questions")
    return 0
