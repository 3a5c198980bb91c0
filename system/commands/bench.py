"""`reelrl bench NAME [--json]`: run one benchmark, print a table, and with --json one JSON
object on the last line.

Each benchmark is a module under system.benchmarks with
`run(args: argparse.Namespace) -> dict` that prints its own table and returns the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json

# Benchmark name -> module under system.benchmarks.
BENCHMARKS: dict[str, str] = {
    "video": "video",
    "queue": "queue",
    "learner": "learner",
    "rollout": "rollout",
    "run": "run",
    "peer": "peer",
    "perception": "perception",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--json", action="store_true", help="also print one JSON line at the end")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--size", default="tiny", help="model size where a benchmark builds one")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"system.benchmarks.{BENCHMARKS[args.name]}")
    figures = module.run(args)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    return 0
