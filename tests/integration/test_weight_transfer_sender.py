"""Trainer-side child process for the weight-transfer tests (run as a script, never as a test):
loads the tiny model, perturbs it the same way the test does, hosts the gloo group's store
as rank 0 and broadcasts the packed buckets - all of them, or only the first `--die-after`
before dying (SIGKILL-like `os._exit`) or stalling."""

from __future__ import annotations

import argparse
import os
import sys
import time


def perturbed_model(path: str, seed: int):
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "visual" not in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def buckets(model, bucket_bytes: int):
    from system.transport.weight_sync import pack_bucket, plan_buckets

    named = [(n, p.detach()) for n, p in model.named_parameters()]
    return [pack_bucket(chunk) for chunk in plan_buckets(named, bucket_bytes)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bucket-bytes", type=int, required=True)
    parser.add_argument("--group", default="0")
    parser.add_argument("--die-after", type=int, default=-1)
    parser.add_argument("--stall", action="store_true")
    parser.add_argument("--world", type=int, default=2, help="1 + the engines' workers")
    args = parser.parse_args()

    from actors.weight_transfer.gloo_engine import broadcast, open_group, open_store

    packed = buckets(perturbed_model(args.model, args.seed), args.bucket_bytes)
    store = open_store("127.0.0.1", args.port, 0, args.world, 60.0)
    print("LISTENING", flush=True)
    group = open_group("127.0.0.1", args.port, 0, args.world, 60.0, args.group, store)
    for index, bucket in enumerate(packed):
        if index == args.die_after:
            if args.stall:
                time.sleep(3600)
            print("DYING", flush=True)
            os._exit(9)
        broadcast(group, bucket.packed, 60.0)
    print("SENT", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
