"""`reelrl chaos CONFIG [a.b=c ...] [--faults a,b] [--json]`: run a config's stages while
injecting faults into the real processes; one row per fault (times injected, groups
published / applied / dead-lettered / lost / applied twice, recovery time)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chaos", help="train while killing, stopping and poisoning processes; what survived"
    )
    parser.add_argument("config", help="YAML config file (e.g. configs/debug_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="a.b=c", help="dotted overrides")
    parser.add_argument(
        "--faults",
        metavar="A,B",
        help="comma-separated faults to inject (default: all; see docs in README Guarantees)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from system.chaos.report import to_json, to_table
    from system.chaos.runner import ChaosError, run_chaos, select
    from system.cli import UserError
    from system.config import ConfigError, load_config
    from system.orchestration.runtime import RunSetupError

    try:
        names = select([n.strip() for n in args.faults.split(",")] if args.faults else None)
        load_config(args.config, args.overrides)
        with _report_only_on_stdout() if args.json else contextlib.nullcontext() as out:
            rows, summary = run_chaos(args.config, args.overrides, names)
            report = to_json(rows, summary) if args.json else to_table(rows, summary)
            print(report, file=out, flush=True)
    except (ChaosError, ConfigError, RunSetupError) as exc:
        raise UserError(str(exc)) from None
    return 0 if summary["all_ok"] else 1


@contextlib.contextmanager
def _report_only_on_stdout() -> Iterator[TextIO]:
    """With --json, stdout carries only the report: file descriptor 1 is pointed at stderr
    for the rest of the process (the run's output, and the worker logs Ray forwards even
    after the run), and the report is written to the original stdout, which is yielded."""
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        yield report
    finally:
        report.flush()
