"""`reelrl eval [CONFIG] [--model DIR] [--data JSONL] [--modes ...] [--tau T] [a.b=c ...]`:
evaluate a model on a held-out JSONL set in the direct, always-think and gated modes and print
accuracy, mIoU, R@0.3/0.5/0.7, think ratio and mean response length per mode.

Without CONFIG the embedded defaults are used; --model / --data / --root override the config's
model path, first eval dataset and data root."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate direct / always-think / gated modes")
    parser.add_argument("config", nargs="?", help="run config YAML (optional)")
    parser.add_argument("overrides", nargs="*", help="config overrides a.b=c")
    parser.add_argument("--model", help="HF model directory (overrides model.path)")
    parser.add_argument("--data", help="held-out JSONL (overrides data.eval)")
    parser.add_argument("--root", help="directory video paths are relative to")
    parser.add_argument("--modes", nargs="+", choices=["direct", "always_think", "gated"])
    parser.add_argument("--tau", type=float, help="gating threshold (default: by family)")
    parser.add_argument("--max-prompts", type=int, help="evaluate at most this many records")
    parser.add_argument("--first-tokens", type=int, default=64, help="first-pass token limit")
    parser.add_argument("--think-tokens", type=int, default=512, help="think-pass token limit")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.set_defaults(func=_run)


def load_run_config(args: argparse.Namespace):
    """The run config of an eval/infer command: YAML (or defaults) + overrides + flags."""
    from system.config import RunConfig, load_config, parse_override
    from system.config.loading import model_family

    overrides = list(args.overrides or [])
    if args.config and "=" in args.config:  # no YAML given, only overrides
        overrides.insert(0, args.config)
        args.config = None
    if args.config:
        config = load_config(args.config, overrides)
    else:
        data: dict = {}
        for key, value in (parse_override(o) for o in overrides):
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        config = RunConfig.model_validate(data)
    model = getattr(args, "model", None)
    if model:
        config.model.path = model
        config.model.family = model_family(model)
    if getattr(args, "root", None):
        config.data.root = args.root
    return config


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from system.cli import UserError

    config = load_run_config(args)
    paths = [args.data] if args.data else [spec.path for spec in config.data.eval]
    if not paths:
        raise UserError("no held-out data: pass --data JSONL or set data.eval in the config")
    report = asyncio.run(_evaluate(config, args, paths))
    from system.reporting.evaluation import print_table, summarize

    report["modes"] = summarize(report["rows"], _modes(config, args))

    print_table(report)
    if report.get("judge"):
        print(f"free-form answers judged by {report['judge']}")
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


async def _evaluate(config, args: argparse.Namespace, paths: list[str]) -> dict:
    from transformers import AutoProcessor

    from actors.engine import VLLMEngine
    from actors.evaluation import evaluate
    from actors.gating import default_tau
    from actors.judge import make_judge
    from system.config import DatasetSpec
    from system.data.records import load_dataset

    records = [r for p in paths for r in load_dataset(DatasetSpec(path=p)).records]
    records = records[: args.max_prompts or config.eval.max_prompts]
    modes = _modes(config, args)
    tau = default_tau(config.model.family, args.tau if args.tau is not None else config.eval.tau)
    processor = AutoProcessor.from_pretrained(config.model.path)
    engine = VLLMEngine.create(config)
    try:
        judge = await make_judge(config)
        return await evaluate(
            engine, processor, records, config, modes, tau, args.first_tokens, args.think_tokens,
            judge,
        )  # fmt: skip
    finally:
        engine.shutdown()


def _modes(config, args: argparse.Namespace) -> list[str]:
    """--modes, else the config's (`answer` for a run in another format than answer_twice)."""
    from actors.evaluation import eval_modes

    return list(args.modes) if args.modes and config.rewards.format == "answer_twice" else (
        eval_modes(config))  # fmt: skip
