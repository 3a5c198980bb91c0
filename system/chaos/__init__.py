"""Fault injection for `reelrl chaos`: run a config's stages while killing, stopping and
poisoning the real processes, and report what survived.

Modules by role: `scene` (what a fault acts on and the `Fault` life cycle), `faults` and
`data_faults` (one class per fault: how it is injected into a live stage and what it checks), `inputs` (bad configs and command lines, refused before anything starts),
`ledger` (where every published group went, derived from Redis and the learner's committed
checkpoint: applied, dead-lettered, still in the stream, lost, applied twice), `report` (the
rows, as a table or JSON) and `runner` (the harness: observes the driver's stages, injects the
faults in order, resumes a run a fault stopped, builds the report).
"""

from __future__ import annotations

# In the order they are injected; `inputs` runs before the run starts, `checkpoint` and
# `nan_stop` stop the run, so they come last.
FAULTS = [
    "inputs",
    "poison",
    "rollout_kill",
    "redis_kill",
    "redis_stop",
    "nan",
    "sender_kill",
    "learner_kill",
    "checkpoint",
    "nan_stop",
]
