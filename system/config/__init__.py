"""The config layer, the bottom of the stack: the run's pydantic models (`models`), YAML
loading with `extends:` and overrides (`loading`), the error types other layers catch
(`errors`, torch-free) and the process-wide log set-up (`logs`). Every other layer imports it;
it imports none of them. The names other modules use are re-exported here."""

from system.config.errors import ConfigError
from system.config.loading import dump_config, load_config, parse_override, stage_config
from system.config.models import (
    CheckpointConfig,
    DataConfig,
    DatasetSpec,
    EvalConfig,
    Family,
    GRPOConfig,
    JudgeConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ProblemType,
    QueueConfig,
    ResourcesConfig,
    RewardsConfig,
    RolloutConfig,
    RunConfig,
    SamplingConfig,
    StageConfig,
    SyntheticSpec,
    TGRPOConfig,
    VideoConfig,
    WeightSyncConfig,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DatasetSpec",
    "EvalConfig",
    "Family",
    "GRPOConfig",
    "JudgeConfig",
    "LearnerConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ProblemType",
    "QueueConfig",
    "ResourcesConfig",
    "RewardsConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplingConfig",
    "StageConfig",
    "SyntheticSpec",
    "TGRPOConfig",
    "VideoConfig",
    "WeightSyncConfig",
    "dump_config",
    "load_config",
    "parse_override",
    "stage_config",
]
