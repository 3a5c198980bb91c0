"""The learner's DeepSpeed config follows its settings: precision from the model's dtype, the
AdamW kernel per device, reference offload, partitioned loading, and what an export sends."""

from __future__ import annotations

import pytest
import torch

import learner.engine as eng
from system.config import LearnerConfig
from system.config.models import OptimizerConfig


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_precision_follows_the_model_dtype(dtype):
    config = eng.ds_config(LearnerConfig(), 2, dtype, True)
    assert config["bf16"]["enabled"] is (dtype == torch.bfloat16)
    assert config["fp16"]["enabled"] is (dtype == torch.float16)
    if dtype == torch.float16:
        assert config["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_adamw_kernel_per_device():
    cpu = eng.adamw_params(OptimizerConfig(), cuda=False)
    assert cpu["torch_adam"] is True and "fused" not in cpu
    gpu = eng.adamw_params(OptimizerConfig(), cuda=True)
    assert gpu["torch_adam"] is True and gpu["fused"] is True
    ds = eng.adamw_params(OptimizerConfig(implementation="deepspeed_fused"), cuda=True)
    assert ds["torch_adam"] is False and "fused" not in ds
    with pytest.raises(ValueError, match="needs CUDA"):
        eng.adamw_params(OptimizerConfig(implementation="torch_fused"), cuda=False)


def test_partitioned_loading_only_under_zero3():
    learner = LearnerConfig()
    config = eng.ds_config(learner, 2, torch.float32, False)
    assert eng.partitioned(config, learner) is config
    assert eng.partitioned(config, LearnerConfig(partitioned_load=False)) is None
    stage2 = eng.ds_config(LearnerConfig(zero_stage=2), 2, torch.float32, False)
    assert eng.partitioned(stage2, LearnerConfig(zero_stage=2)) is None


def test_exports_send_the_tower_every_time_when_it_trains():
    tower, llm = "model.visual.blocks.0.attn.qkv.weight", "model.language_model.norm.weight"
    later = eng.exported(include_frozen=False, freeze_vision=True)
    assert later(llm) and not later(tower)
    assert eng.exported(include_frozen=True, freeze_vision=True)(tower)
    assert eng.exported(include_frozen=False, freeze_vision=False)(tower)


def test_a_frozen_projector_trains_and_exports_only_the_language_model():
    merger, llm = "model.visual.merger.linear_fc1.weight", "model.language_model.norm.weight"
    assert eng.is_trainable(merger) and not eng.is_trainable(merger, projector=False)
    assert eng.is_trainable(llm, projector=False)
    later = eng.exported(include_frozen=False, freeze_vision=True, freeze_projector=True)
    assert later(llm) and not later(merger)
    assert eng.exported(include_frozen=False, freeze_vision=True)(merger)


def test_zero3_buffers_sized_from_the_hidden_size():
    config = eng.ds_config(LearnerConfig(), 2, torch.bfloat16, True, hidden=2048)
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 2048**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 2048**2)
    assert zero["stage3_param_persistence_threshold"] == 20480
    assert (
        "reduce_bucket_size"
        not in eng.ds_config(LearnerConfig(), 2, torch.float32, True)["zero_optimization"]
    )
