"""Subcommands of the `reelrl` CLI.

Each module here defines `register(subparsers)`, which adds its parser and sets
`func=<handler>` on it. Modules must import only the standard library at top level: heavy
imports (torch, vllm, ray, ...) happen inside the handler so that `reelrl --help` is instant.
"""

# Module names under system.commands, in the order they appear in `reelrl --help`.
COMMANDS = [
    "train",
    "config",
    "tiny_model",
    "synth",
    "queue",
    "bench",
    "infer",
    "eval",
    "report",
    "chaos",
    "doctor",
]
