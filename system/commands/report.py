"""`reelrl report RUN_DIR`: (re)write a run's report.md and plots from what the run wrote
(metrics, held-out evaluations, accounting) and print its summary table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write a run's report.md and plots")
    parser.add_argument("run_dir", help="the run directory `reelrl train` printed")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from system.cli import UserError

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    from system.reporting.report import write_report

    table = write_report(run_dir)
    print(table or "no GRPO stage was evaluated before and after training")
    print(f"report: {run_dir / 'report.md'}")
    return 0
