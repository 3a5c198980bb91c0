"""`reelrl train CONFIG [a.b=c ...] [--resume RUN_DIR] [--base-dir DIR]`: run a config's stages
end to end."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train: Redis, rollout actors, learner ranks and weight sync, all stages"
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="a.b=c", help="dotted overrides")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run directory")
    parser.add_argument(
        "--base-dir",
        metavar="DIR",
        help="resolve the config's relative paths (output_dir, model.path, data) against DIR "
        "instead of the current directory: on a cluster, storage every node mounts",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from system.cli import UserError
    from system.config import ConfigError
    from system.config.errors import CheckpointError, NonFiniteError, RecoveryError
    from system.orchestration.driver import train
    from system.orchestration.runtime import RunSetupError

    try:
        run_dir = train(args.config, args.overrides, resume=args.resume, base_dir=args.base_dir)
    except (ConfigError, RunSetupError) as exc:
        raise UserError(str(exc)) from None
    except (CheckpointError, NonFiniteError, RecoveryError) as exc:
        # A clear stop: the last committed checkpoint holds; --resume continues from it.
        print(f"reelrl train: stopped: {exc}", file=sys.stderr)
        return 1
    print(f"done: {run_dir}")
    return 0
