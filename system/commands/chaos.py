"""`reelrl chaos CONFIG [a.b=c ...] [--faults a,b] [--json]`: run a config's stages while
injecting faults into the real processes; one row per fault (times injected, groups
published / applied / dead-lettered / lost / applied twice, recovery time)."""

from __future__ import annotations

import argparse


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
    import contextlib
    import sys

    from system.chaos.report import to_json, to_table
    from system.chaos.runner import ChaosError, run_chaos, select
    from system.cli import UserError
    from system.config import ConfigError, load_config
    from system.runtime import RunSetupError

    try:
        names = select([n.strip() for n in args.faults.split(",")] if args.faults else None)
        load_config(args.config, args.overrides)
        # With --json, stdout carries only the report; the run's own output goes to stderr.
        quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
        with quiet:
            rows, summary = run_chaos(args.config, args.overrides, names)
    except (ChaosError, ConfigError, RunSetupError) as exc:
        raise UserError(str(exc)) from None
    print(to_json(rows, summary) if args.json else to_table(rows, summary), flush=True)
    return 0 if summary["all_ok"] else 1
