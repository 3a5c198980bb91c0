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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
