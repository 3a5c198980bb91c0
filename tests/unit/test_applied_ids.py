"""Exactly-once state in bounded space: the stream-id watermark plus the ids above it, checked
on a synthetic run of a million groups consumed out of order by several ranks."""

from __future__ import annotations

import json
import random

from system.transport.applied import AppliedIds


def test_watermark_and_window():
    a = AppliedIds()
    assert "1-0" not in a
    a.add(["5-0", "7-0", "7-1"])
    assert {"5-0", "7-0", "7-1"} <= {s for s in ("5-0", "7-0", "7-1") if s in a}
    assert "6-0" not in a
    a.advance("6-0")  # 6-0 still open: every id below it is resolved
    assert a.below == "6-0" and a.above == {"7-0", "7-1"}
    assert "5-0" in a and "4-9" in a and "6-0" not in a and "7-1" in a and "7-2" not in a
    a.advance("3-0")  # never moves down
    assert a.below == "6-0"
    a.advance(None)  # nothing open: up to the newest applied id
    assert a.below == "7-2" and a.above == set()
    assert "7-1" in a and "7-2" not in a and "100-0" not in a
    assert AppliedIds.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert AppliedIds.from_dict({}) == AppliedIds()


def test_a_million_groups_keep_the_state_small_and_apply_none_twice():
    # 1M entries published in order; 4 ranks take them in steps of 8 groups each, a rank
    # sometimes holding one entry pending for a while (a slow or interrupted step); the
    # learner checkpoints every 25 steps (what the worker does: add the committed stream ids,
    # advance to the oldest entry still open in the stream).
    rng = random.Random(0)
    n = 1_000_000
    ids = [f"{1_700_000_000_000 + i // 3}-{i % 3}" for i in range(n)]
    state, committed, open_ids = AppliedIds(), [], set(ids)
    held: list[str] = []
    position, step, largest = 0, 0, 0
    cursor = 0  # the oldest id possibly open
    while position < n:
        take = ids[position : position + 32]
        position += len(take)
        if rng.random() < 0.05:  # one entry held back past this step
            held.append(take.pop(rng.randrange(len(take))))
        if held and rng.random() < 0.3:
            take.append(held.pop(0))
        committed += take
        step += 1
        if step % 25 == 0 or position >= n:
            if position >= n:
                committed += held
                held = []
            state.add(committed)
            open_ids.difference_update(committed)
            while cursor < n and ids[cursor] not in open_ids:
                cursor += 1
            state.advance(ids[cursor] if cursor < n else None)
            committed = []
            largest = max(largest, len(json.dumps(state.to_dict())))
    assert largest <= 1_000_000, largest  # checkpoint state <= 1 MB all along
    assert largest < 20_000, largest  # in fact a few hundred ids at most
    # Restore, then every entry comes back (a Redis that lost its acks): none is new.
    restored = AppliedIds.from_dict(json.loads(json.dumps(state.to_dict())))
    assert all(s in restored for s in ids)
    assert f"{1_700_000_000_000 + n}-0" not in restored  # a later entry is new


def test_an_open_entry_is_never_taken_for_applied():
    rng = random.Random(1)
    ids = [f"{1000 + i}-0" for i in range(2000)]
    state, open_ids = AppliedIds(), set(ids)
    for _ in range(60):
        done = rng.sample(sorted(open_ids), min(20, len(open_ids)))
        state.add(done)
        open_ids.difference_update(done)
        oldest = min(open_ids, key=lambda s: int(s.split("-")[0]), default=None)
        state.advance(oldest)
        assert not any(s in state for s in open_ids)
        assert all(s in state for s in set(ids) - open_ids)
