"""reelrl's system package, in layers (top to bottom; a module imports only its own layer or
those below, enforced by tests/unit/test_layers.py):

- entry points: `cli`, `commands/`, `chaos/`, `benchmarks/`
- `orchestration/`: the driver, a stage's topology and its recovery, placement, runtime checks
- `reporting/`: metrics, accounting, evaluation statistics, the run report
- (`learner/` and `actors/`, the two process roles, sit here, outside this package)
- `data/`: records and importers, video decoding under a budget, synthetic tasks, tiny models
- `transport/`: the group schema and codec, the Redis queue and keyspace, the embedded Redis,
  the weight-sender protocol, the checkpoint commit protocol
- `config/`: pydantic models, YAML loading, torch-free error types, logging set-up
"""
