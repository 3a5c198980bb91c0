"""`reelrl config show CONFIG [a.b=c ...]`: print the resolved config, or why it is invalid."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="inspect run configs")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    show = sub.add_parser("show", help="print the resolved config (extends + overrides)")
    show.add_argument("config", help="YAML config file")
    show.add_argument("overrides", nargs="*", metavar="a.b=c", help="dotted overrides")
    show.add_argument("--stage", help="print the config of this stage (name or index)")
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from system.cli import UserError
    from system.config import ConfigError, dump_config, load_config, stage_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    if args.stage is not None:
        names = [s.name for s in config.stages]
        if args.stage in names:
            index = names.index(args.stage)
        elif args.stage.isdigit() and int(args.stage) < len(names):
            index = int(args.stage)
        else:
            raise UserError(f"--stage {args.stage!r}: no such stage; stages are {names}")
        config = stage_config(config, index)
    print(dump_config(config), end="")
    return 0
