"""The `reelrl` command line: a thin argparse front that dispatches to system.commands.

Parsing happens before any heavy import, so `reelrl --help` and argument errors are instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from system.commands import COMMANDS


class UserError(Exception):
    """An error caused by the user's input (config, paths, arguments): printed without a
    traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelrl",
        description="Asynchronous actor/learner GRPO for video reasoning VLMs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"system.commands.{name}").register(subparsers)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; `a.b=c` overrides may come before, between or after options
    (`train CONFIG --base-dir DIR a.b=c`), as with any other command-line tool."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    extra = [x for x in rest if "=" in x and not x.startswith("-")]
    if extra and isinstance(getattr(args, "overrides", None), list):
        args.overrides += extra
        rest = [x for x in rest if x not in extra]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from system.config.logs import configure

    configure()
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"reelrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reelrl {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s copy: commands raise system.cli.UserError.
    from system.cli import main as _main

    sys.exit(_main())
