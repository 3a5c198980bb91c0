"""The chaos report: one row per fault, as a table or JSON.

A row says how often the fault was injected, what happened to the groups published while it
acted (published / applied / dead-lettered / still in the stream / lost / applied twice, from
the `Ledger`), the recovery time (injection until the next learner step completed after the
system handled it) and whether every check of the fault held.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

COLUMNS = [
    ("fault", 13),
    ("injected", 8),
    ("published", 9),
    ("applied", 7),
    ("dead", 5),
    ("skipped", 7),
    ("lost", 4),
    ("twice", 5),
    ("recovery_s", 10),
    ("ok", 3),
]


@dataclass
class Row:
    """One fault's figures."""

    fault: str
    number: int
    injected: int = 0
    published: int = 0
    applied: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    """Records skipped by a rollout actor (unreadable video) or inputs refused."""
    in_stream: int = 0
    lost: int = 0
    applied_twice: int = 0
    recovery_s: float | None = None
    ok: bool = False
    detail: str = ""
    checks: dict[str, Any] = field(default_factory=dict)


def totals(rows: list[Row], ledger_totals: dict[str, int]) -> dict[str, Any]:
    """Run-wide figures: the whole ledger and whether every row held."""
    return {**ledger_totals, "all_ok": all(r.ok for r in rows)}


def to_json(rows: list[Row], summary: dict[str, Any]) -> str:
    return json.dumps({"faults": [asdict(r) for r in rows], "totals": summary}, indent=1)


def to_table(rows: list[Row], summary: dict[str, Any]) -> str:
    head = "  ".join(name.ljust(width) for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        cells = [f"{r.number}.{r.fault}", r.injected, r.published, r.applied, r.dead_lettered,
                 r.skipped, r.lost, r.applied_twice, rec, "yes" if r.ok else "NO"]  # fmt: skip
        lines.append("  ".join(str(c).ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("")
    for r in rows:
        lines.append(f"{r.number}.{r.fault}: {r.detail}")
    lines.append("")
    lines.append(
        "run: "
        + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "all_ok")
        + f"; every fault held: {'yes' if summary['all_ok'] else 'NO'}"
    )
    return "\n".join(lines)
