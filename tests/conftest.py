"""Test-suite wiring: tier markers, GPU skipping, and the shared fixtures.

Fixtures live in tests/fixtures/ by what they provide (models, redis, ray, videos) and are
loaded here as plugins. Unit tests carry no marker; `integration`, `e2e`, `slow` and `gpu`
mark the heavier tiers.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.env",
    "tests.fixtures.models",
    "tests.fixtures.redis",
    "tests.fixtures.ray",
    "tests.fixtures.videos",
]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    # DeepSpeed picks its accelerator from this; without CUDA it must be the CPU one.
    if not _cuda_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
