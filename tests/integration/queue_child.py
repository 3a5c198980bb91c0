"""A learner-like consumer process for crash tests: applies and acks `--ack` groups, then
reads `--hold` more without acking, prints their stream ids and waits to be killed.

Output lines: `APPLIED <group id>` per acked group, then `HELD <stream id> ...`.
"""

from __future__ import annotations

import argparse
import sys
import time

from system.config import QueueConfig
from system.transport.queue import RolloutQueue
from system.transport.redis_server import connect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--ack", type=int, required=True)
    parser.add_argument("--hold", type=int, required=True)
    args = parser.parse_args()
    config = QueueConfig(url=args.url, block_ms=100, min_idle_ms=300)
    queue = RolloutQueue(connect(config), args.run, config, consumer=args.consumer)
    acked = 0
    while acked < args.ack:
        for d in queue.consume(count=min(4, args.ack - acked)):
            queue.ack([d.stream_id])
            print(f"APPLIED {d.group.group_id}", flush=True)
            acked += 1
    held: list[str] = []
    while len(held) < args.hold:
        held += [d.stream_id for d in queue.consume(count=args.hold - len(held))]
    print("HELD " + " ".join(held), flush=True)
    while True:  # hold the entries until killed
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
