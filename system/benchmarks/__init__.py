"""Benchmarks behind `reelrl bench NAME`: each module has `run(args) -> dict`."""
