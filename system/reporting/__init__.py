"""The reporting layer: metrics logging and console progress (`metrics`), the group accounting
(`accounting`), held-out evaluation statistics (`evaluation`) and the run report (`report`).
Reads what the actors and the learner produce; starts no process."""
