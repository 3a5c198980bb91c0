"""`reelrl queue stats --redis URL --run RUN`: the state of a run's rollout stream.

Prints length, undelivered and pending entries (per consumer), dead letters, counters and the
published/applied rates measured over `--interval` seconds. The password comes from the
environment variable named by `--password-env` (default: queue.password_env's default).
"""

from __future__ import annotations

import argparse

DEFAULT_PASSWORD_ENV = "REELRL_REDIS_PASSWORD"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("queue", help="inspect a run's rollout queue")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    stats = sub.add_parser("stats", help="length, pending per consumer, lag, dead letters, rates")
    stats.add_argument("--redis", required=True, metavar="URL", help="redis:// or rediss:// URL")
    stats.add_argument("--run", required=True, help="run name")
    stats.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="VAR",
        help=f"environment variable holding the password (default {DEFAULT_PASSWORD_ENV})",
    )
    stats.add_argument("--prefix", default="reelrl", help="stream key prefix (queue.stream_prefix)")
    stats.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between the two rate samples (0: no rates)",
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object instead")
    stats.set_defaults(func=_stats)


def _stats(args: argparse.Namespace) -> int:
    import json
    import time

    from system.cli import UserError
    from system.config import QueueConfig
    from system.transport.keys import rates, read_stats
    from system.transport.redis_server import RedisConnectError, connect

    if args.interval < 0:
        raise UserError(f"--interval must be >= 0, got {args.interval}")
    try:
        config = QueueConfig(
            url=args.redis, password_env=args.password_env, stream_prefix=args.prefix
        )
        client = connect(config)
    except RedisConnectError as exc:
        raise UserError(str(exc)) from None
    before = read_stats(client, config, args.run)
    if before["length"] == 0 and before["published"] == 0 and not before["consumers"]:
        raise UserError(
            f"no queue for run {args.run!r} at {args.prefix}:{args.run}:rollouts; check --run and --prefix"
        )
    figures = dict(before)
    if args.interval > 0:
        time.sleep(args.interval)
        figures = read_stats(client, config, args.run)
        figures.update({k: round(v, 2) for k, v in rates(before, figures).items()})
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(_table(figures))
    return 0


def _table(s: dict) -> str:
    lines = [
        f"stream          {s['stream']}",
        f"length          {s['length']}  (undelivered {s['undelivered']} + pending {s['pending']})",
        f"oldest entry    {s['oldest_age_s']:.1f} s",
        f"published       {s['published']}",
        f"applied         {s['applied']}  (skipped duplicates {s['skipped']}, claimed {s['claimed']})",
        f"dead letters    {s['dead_letters']}",
    ]
    if "published_per_s" in s:
        lines.append(
            f"rates           {s['published_per_s']:.1f} published/s, {s['applied_per_s']:.1f} applied/s"
        )
    for name, c in sorted(s["consumers"].items()):
        lines.append(
            f"consumer {name:<10} pending {c['pending']:<6} idle {c['idle_ms'] / 1000:.1f} s"
        )
    return "\n".join(lines)
