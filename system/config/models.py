"""The run configuration's pydantic models: one section per part of a run, a docstring under
every field, limits as `Field` bounds and rules across fields as validators. Unknown keys and
invalid values fail with the dotted field path (loading and overrides: `system.config.loading`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Family = Literal["qwen2_5_vl", "qwen3_vl"]
# The task kinds a dataset record can be; each has its grader in actors/rewards.
ProblemType = Literal[
    "multiple_choice",
    "numerical",
    "math",
    "temporal_grounding",
    "grounded_qa",
    "free_form",
    "subaction",
]


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class ModelConfig(_Section):
    path: str = "runs/models/tiny-qwen2_5_vl"
    """Directory of an HF-format model (config, weights, tokenizer, processor)."""
    family: Family = "qwen2_5_vl"
    """Architecture family; picks the vision grid (28 px Qwen2.5-VL, 32 px Qwen3-VL)."""
    build_tiny: Literal["tiny", "small", "medium"] | None = None
    """When set and `path` does not exist, build a random model of this size there."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype: auto = bfloat16 on GPU, float32 on CPU."""
    freeze_vision: bool = True
    """Freeze the whole vision tower (projector/merger and LLM train)."""
    freeze_projector: bool = False
    """With `freeze_vision`, freeze the projector (merger) too: only the language model
    trains (Pause-and-Think's recipe)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    """The learner's attention kernel (transformers' attn_implementation). None: SDPA, with
    each packed sequence attended over its own span (learner.attention); flash_attention_2
    (needs the flash-attn package) runs packed rows as varlen on GPU."""


class DatasetSpec(_Section):
    path: str
    """JSONL file of records."""
    weight: float = Field(1.0, gt=0)
    """Relative sampling weight when several datasets are mixed."""
    format: Literal["reelrl", "video_r1", "videoauto_r1", "pause_and_think"] = "reelrl"
    """Record shape of the file; non-native shapes are converted on load."""


class SyntheticSpec(_Section):
    out: str = "runs/data/synthetic"
    """Directory for generated clips and JSONL splits (reused when present)."""
    n_train: int = Field(200, ge=1)
    """Training records to generate."""
    n_eval: int = Field(200, ge=0)
    """Held-out records to generate."""
    n_text: int = Field(0, ge=0)
    """Text-only questions to generate (text.jsonl, for a text reasoning SFT stage)."""
    n_assist: int = Field(0, ge=0)
    """Training records of the synthetic assistive task (assist_train.jsonl:
    system.data.synthetic_assist)."""
    n_assist_eval: int = Field(0, ge=0)
    """Held-out records of the assistive task (assist_eval.jsonl)."""
    n_image: int = Field(0, ge=0)
    """Training records of the synthetic image tasks (image_train.jsonl, pictures under
    images/: system.data.synthetic_image)."""
    n_image_eval: int = Field(0, ge=0)
    """Held-out records of the image tasks (image_eval.jsonl)."""
    seed: int = 0
    """Generator seed."""


class DataConfig(_Section):
    root: str = "."
    """Directory that relative video paths in records are resolved against."""
    train: list[DatasetSpec] = Field(default_factory=list)
    """Training datasets, mixed by weight."""
    eval: list[DatasetSpec] = Field(default_factory=list)
    """Held-out datasets for periodic evaluation."""
    synthetic: SyntheticSpec | None = None
    """Generate the synthetic video tasks when their files are missing."""
    shuffle_seed: int | None = None
    """Seed of the deterministic shuffle (None: the run's `seed`)."""
    shuffle: bool = True
    """Read each dataset in a fresh shuffled order every epoch (the learner's SFT mix and each
    rollout actor's); false: in file order, the datasets still mixed by weight."""
    problem_types: list[ProblemType] | None = None
    """Keep only these problem types (None keeps all)."""


class VideoConfig(_Section):
    fps: float = Field(2.0, gt=0)
    """Sampling rate when `num_frames` is not set."""
    num_frames: int | None = Field(None, ge=1)
    """A fixed frame count instead of fps sampling."""
    min_frames: int = Field(4, ge=1)
    """Fewest frames sampled from a video."""
    max_frames: int = Field(256, ge=1)
    """Most frames sampled from a video (VideoAuto-R1: 256)."""
    max_video_tokens: int = Field(4096, ge=1)
    """Budget of visual tokens per video (VideoAuto-R1: 4096)."""
    min_pixels: int = Field(128 * 28 * 28, ge=1)
    """Fewest pixels per frame after resizing."""
    max_pixels: int = Field(768 * 28 * 28, ge=1)
    """Most pixels per frame after resizing."""

    @model_validator(mode="after")
    def _ranges(self) -> VideoConfig:
        if self.min_frames > self.max_frames:
            raise ValueError("min_frames must be <= max_frames")
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must be <= max_pixels")
        return self


class ImageConfig(_Section):
    max_images: int = Field(4, ge=1)
    """Most images one record may carry (the rollout engine's per-prompt limit); a record
    with more is skipped and counted."""
    max_image_tokens: int = Field(2048, ge=1)
    """Budget of visual tokens per record, shared evenly by its images."""
    min_pixels: int = Field(4 * 28 * 28, ge=1)
    """Fewest pixels per image after resizing."""
    max_pixels: int = Field(1024 * 28 * 28, ge=1)
    """Most pixels per image after resizing."""

    @model_validator(mode="after")
    def _ranges(self) -> ImageConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must be <= max_pixels")
        return self


class SamplingConfig(_Section):
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of rollouts; GRPO trains the policy at this temperature (the
    engine's log-probs and the learner's are both of softmax(logits / T)). top_p / top_k
    truncation is not modelled on the learner: the truncated IS weight absorbs it."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(-1, ge=-1)
    """Top-k (-1: off)."""
    max_new_tokens: int = Field(512, ge=1)
    """Longest completion."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings."""


class TGRPOConfig(_Section):
    enabled: bool = False
    """Video-R1 temporal contrast: extra rollouts on shuffled frames, scored, never trained."""
    shuffled_fraction: float = Field(0.5, gt=0, le=1)
    """Shuffled rollouts per prompt as a fraction of G (Video-R1: G/2)."""
    bonus: float = Field(0.3, ge=0)
    """Reward added to correct ordered rollouts when the contrast holds."""
    ratio: float = Field(0.8, gt=0)
    """Contrast holds when ordered accuracy >= ratio x shuffled accuracy."""
    min_accuracy: float = Field(0.1, ge=0, le=1)
    """Only ordered rollouts with accuracy above this get the bonus."""


class RolloutConfig(_Section):
    num_engines: int = Field(1, ge=1)
    """Rollout actors, one vLLM engine each."""
    group_size: int = Field(8, ge=2)
    """G: completions sampled per prompt (GRPO needs at least 2)."""
    prompts_per_batch: int = Field(4, ge=1)
    """Prompts an actor generates for at once."""
    max_staleness: int = Field(1, ge=0)
    """How many weight versions an actor may run ahead of the learner (0: synchronous)."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling parameters."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vLLM tensor parallelism per engine. On GPUs each tensor-parallel worker is a Ray actor
    of vLLM's ray executor in a placement bundle of its own (one GPU each:
    `resources.gpus_per_engine` must equal it); on CPU vLLM's multiprocess executor."""
    gpu_memory_utilization: float = Field(0.15, gt=0, le=1)
    """Share of each GPU vLLM may use (weights, activations, KV cache). Not used on CPU,
    where the KV cache is sized in bytes (`kv_cache_gib`)."""
    kv_cache_gib: float | None = Field(None, gt=0)
    """KV-cache size per engine (per GPU with tensor parallelism), in GiB. None: on CPU,
    what one batch needs (prompts_per_batch x G sequences, plus the shuffled T-GRPO ones, of
    max_model_len tokens at the model's KV bytes per token, +10 % + 64 MiB); on GPU, vLLM sizes
    it from gpu_memory_utilization. Checked before the engine starts: it must hold one
    sequence of max_model_len and fit the host's free memory."""
    max_model_len: int = Field(8192, ge=64)
    """Longest prompt + completion."""
    enforce_eager: bool = True
    """Disable CUDA graphs / compilation (start-up time matters more in debug runs)."""
    seed: int | None = None
    """Engine seed, offset by actor index (None: the run's `seed`)."""
    filter_equal_rewards: bool = True
    """Drop groups whose G rewards are all equal (no learning signal)."""
    t_grpo: TGRPOConfig = Field(default_factory=TGRPOConfig)
    """Temporal-contrast settings."""
    max_restarts: int = Field(3, ge=0)
    """Ray restarts of a dead rollout actor."""


class QueueConfig(_Section):
    url: str | None = None
    """redis:// or rediss:// URL; None starts the embedded Redis in the run directory."""
    password_env: str = "REELRL_REDIS_PASSWORD"
    """Environment variable holding the Redis password (never written in a config)."""
    stream_prefix: str = "reelrl"
    """Stream key is <prefix>:<run>:rollouts."""
    capacity: int = Field(256, ge=1)
    """Undelivered + pending entries at which producers wait."""
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Hard cap on an encoded RolloutGroup."""
    block_ms: int = Field(1000, ge=1)
    """Blocking read timeout."""
    min_idle_ms: int = Field(60_000, ge=1)
    """Entries idle this long in a dead consumer's pending list are claimed."""
    max_deliveries: int = Field(5, ge=1)
    """Entries delivered more often than this go to the dead-letter stream."""
    reconnect_max_s: float = Field(30.0, gt=0)
    """Longest backoff between reconnect attempts."""


class GRPOConfig(_Section):
    beta: float = Field(0.01, ge=0)
    """KL coefficient to the reference policy (0: no reference model)."""
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", validate_default=True)
    """KL estimator of the loss term beta x KL: k3 (GRPO paper, verl low_var_kl; its gradient
    is that of KL(ref || policy)) or k2 (squared log-ratio / 2; its gradient is that of
    KL(policy || ref)). k1's expected gradient is zero, so it is refused when beta > 0."""
    clip_low: float = Field(0.2, ge=0)
    """Lower clip epsilon of the ratio policy / proximal policy (active from the second of
    `iterations` updates, or with GPU non-determinism)."""
    clip_high: float = Field(0.28, ge=0)
    """Upper clip epsilon of the ratio (DAPO's clip-higher)."""
    iterations: int = Field(1, ge=1)
    """Updates per batch (mu in the GRPO paper, TRL's num_iterations): the proximal log-probs
    are computed once before the first, then `iterations` optimizer updates run on the same
    batch with the clip active. 1: one update, the ratio is 1 and only the IS weight acts."""
    scale_by_std: bool = True
    """Divide group-centred rewards by their (population) std, as GRPO does; this weighs
    near-all-right / near-all-wrong groups more (Dr. GRPO's difficulty bias). False: Dr. GRPO."""
    aggregation: Literal["token_mean", "sequence_mean"] = "token_mean"
    """How per-token losses are reduced: token_mean (DAPO: every completion token weighs the
    same) or sequence_mean (the GRPO paper: each sequence's token mean, then the mean over
    sequences; short sequences' tokens weigh more, the length bias Dr. GRPO points out)."""
    is_cap: float = Field(2.0, gt=0)
    """Cap of the truncated importance weight proximal / behaviour policy (stale samples)."""

    @field_validator("kl_estimator")
    @classmethod
    def _kl_regularises(cls, value: str, info: ValidationInfo) -> str:
        beta = info.data.get("beta", 0.0)
        if value == "k1" and beta > 0:
            raise ValueError(
                "k1 cannot be a loss term (its expected gradient is zero, so "
                f"learner.grpo.beta={beta} would regularise nothing); use k3 or k2, or beta: 0"
            )
        return value


class OptimizerConfig(_Section):
    lr: float = Field(1e-6, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, then constant; counted in optimizer updates (steps x
    `learner.grpo.iterations`)."""
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip."""
    implementation: Literal["auto", "torch", "torch_fused", "deepspeed_fused"] = "auto"
    """AdamW kernel: auto = torch_fused on CUDA (torch.optim.AdamW(fused=True)), torch on CPU;
    deepspeed_fused = DeepSpeed's FusedAdam op (built on first use: needs the CUDA toolkit on
    every learner node, or DeepSpeed installed with its ops prebuilt)."""


class LearnerConfig(_Section):
    num_ranks: int = Field(1, ge=1)
    """Learner processes (DeepSpeed data-parallel ranks)."""
    zero_stage: Literal[0, 1, 2, 3] = 3
    """DeepSpeed ZeRO stage."""
    groups_per_step: int = Field(4, ge=1)
    """Rollout groups (or SFT examples) consumed per optimizer step, over all ranks."""
    micro_batch_size: int = Field(2, ge=1)
    """Sequences per forward/backward when not packing (padded to the longest)."""
    packing: bool = True
    """Pack sequences into one row per micro-batch (no padding; positions and the attention
    mask restart at each sequence), up to `max_tokens_per_micro_batch` tokens."""
    share_prompts: bool = True
    """In a packed row, a group's G samples share one copy of their prompt and video (each
    completion attends to it and to itself): the prompt and the vision tower run once per
    group, not G times. Needs the default attention (`model.attn_implementation` unset);
    with another kernel the prompts are repeated."""
    max_tokens_per_micro_batch: int = Field(8192, ge=1)
    """Token budget of a packed micro-batch (prompt, video and completion tokens); a longer
    sequence gets one of its own."""
    partitioned_load: bool = True
    """Build the policy and the reference partitioned across the ranks under ZeRO-3
    (HfDeepSpeedConfig + zero.Init): no rank holds a whole model. false: every rank loads the
    whole model first (more host memory per rank; kept for comparison benchmarks)."""
    reference_offload: bool = False
    """Keep the reference model's ZeRO-3 partitions in host memory (CUDA only): frees its share
    of GPU memory for a slower reference forward."""
    logprob_chunk: int = Field(1024, ge=0)
    """Token positions per chunk of the log-prob and entropy computation (fp32 temporaries of
    chunk x vocabulary at a time; 0: the whole micro-batch at once)."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """GRPO loss settings."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Consecutive non-finite steps after which the run stops."""
    max_restarts: int = Field(2, ge=0)
    """Times the driver restarts the learner group from its last checkpoint when a rank's
    process dies (0: the run stops; resume it with --resume)."""
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)
    """Extra keys merged into the generated DeepSpeed config."""


class JudgeConfig(_Section):
    """A judge for free-form answers (`problem_type: free_form`): it scores each answer against
    the reference on a rubric (action 0.6, location 0.2, object properties 0.2, as
    Pause-and-Think evaluates), replacing ROUGE-L as their task reward."""

    backend: Literal["none", "vllm", "http", "rule"] = "none"
    """none: ROUGE-L (no judge); vllm: a model directory served by vLLM in a Ray actor of
    its own; http: an OpenAI-compatible chat-completions endpoint; rule: a rule-based
    stand-in (word overlap per rubric item) for CPU debug runs, labelled as such wherever
    its scores are reported."""
    model: str | None = None
    """vllm: the judge model's directory (any local HF model); http: the model name sent."""
    url: str | None = None
    """http: the endpoint's base URL (…/v1), e.g. a vLLM `vllm serve` of the judge model."""
    api_key_env: str = "REELRL_JUDGE_API_KEY"
    """http: environment variable holding the endpoint's API key (unset: none sent)."""
    timeout_s: float = Field(60.0, gt=0)
    """Longest wait for one batch of judgements; a judge that is slower, down or dead leaves
    those answers unjudged (their groups are retried, see `retries`), it never stalls the run."""
    retries: int = Field(1, ge=0)
    """How many times a record whose group could not be judged is tried again in a later
    batch before it is skipped (counted as unjudged either way)."""
    max_tokens: int = Field(48, ge=8)
    """Tokens the judge may write (its reply is three short `name: N` lines)."""
    cache_size: int = Field(100_000, ge=0)
    """Judgements kept by (question, answer): a repeated answer is not judged again."""
    gpus: float = Field(0.0, ge=0)
    """vllm: GPUs of the judge's actor (0 on CPU)."""
    max_model_len: int = Field(4096, ge=256)
    """vllm: the judge engine's context length."""

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> JudgeConfig:
        if self.backend == "vllm" and not self.model:
            raise ValueError("rewards.judge.backend='vllm' needs rewards.judge.model (a directory)")
        if self.backend == "http" and not (self.url and self.model):
            raise ValueError(
                "rewards.judge.backend='http' needs rewards.judge.url and rewards.judge.model"
            )
        return self


class RewardsConfig(_Section):
    format: Literal["answer_twice", "think_answer", "thinking_answer", "direct"] = "answer_twice"
    """Output format: VideoAuto-R1 answer->think->answer, Video-R1 think/answer,
    Pause-and-Think thinking/answer (`<thinking>` tags, a short user-addressed answer), or
    direct."""
    w_a1: float = 0.9
    """Weight of the task reward of the first answer."""
    w_a2: float = 1.1
    """Weight of the task reward of the second answer."""
    w_format: float = 1.0
    """Weight of the format reward."""
    w_fallback: float = 0.3
    """Bonus when a1 is the fallback phrase and a2 is correct."""
    math_timeout_s: float = Field(5.0, gt=0)
    """Timeout of one math-verify comparison."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The judge of free-form answers (default none: ROUGE-L)."""
    compat: Literal["reelrl", "videoauto_r1"] = "reelrl"
    """Whose training-reward rules: reelrl's graders, or videoauto_r1 = the released VideoAuto-R1
    reward code reproduced exactly (answer_twice only; its hard-coded fallback bonus, 0.3/1.1
    added to the a2 reward, replaces w_fallback, which must stay 0.3). Evaluation keeps
    reelrl's graders. docs/rewards.md lists every difference."""

    @model_validator(mode="after")
    def _compat_is_reproducible(self) -> RewardsConfig:
        if self.compat == "videoauto_r1":
            if self.format != "answer_twice":
                raise ValueError(
                    f"rewards.format={self.format!r}: rewards.compat='videoauto_r1' reproduces "
                    "the answer_twice rewards only"
                )
            if self.w_fallback != 0.3:
                raise ValueError(
                    f"rewards.w_fallback={self.w_fallback}: under rewards.compat='videoauto_r1' "
                    "the fallback bonus is VideoAuto-R1's hard-coded 0.3; use compat 'reelrl' "
                    "to change it"
                )
        return self


class WeightSyncConfig(_Section):
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Transport: auto = nccl on GPU, gloo on CPU."""
    every_steps: int = Field(1, ge=1)
    """Broadcast new weights every this many learner steps."""
    bucket_mb: int = Field(256, ge=1)
    """Size of a packed bucket."""
    timeout_s: float = Field(120.0, gt=0)
    """A broadcast that does not finish within this fails instead of hanging."""


class ResourcesConfig(_Section):
    colocate: bool = False
    """Share one GPU between learner and rollout (vLLM sleeps during learner steps)."""
    offload_optimizer: bool = True
    """Colocated on a GPU: the learner's optimizer state (Adam moments, fp32 master weights,
    gradient buffers) moves to host memory while the engines generate and back before its
    step (DeepSpeed's offload_states / reload_states). No effect elsewhere."""
    gpus_per_learner_rank: float = Field(0, ge=0)
    """GPUs reserved per learner rank (0 on CPU)."""
    gpus_per_engine: float = Field(0, ge=0)
    """GPUs reserved per rollout engine (0 on CPU): a share of one GPU with one
    tensor-parallel worker, else exactly `rollout.tensor_parallel_size` (a GPU per worker)."""
    cpus_per_learner_rank: float = Field(1, ge=0)
    """CPUs reserved per learner rank."""
    cpus_per_engine: float = Field(1, ge=0)
    """CPUs reserved per rollout engine."""
    ray_address: str | None = None
    """Ray cluster to join (None: RAY_ADDRESS, else a local instance)."""
    learner_node_label: str | None = None
    """Run learner ranks only on nodes offering this Ray custom resource (e.g. `ray start
    --resources='{"trainer": 1}'`, or a KubeRay group's rayStartParams): pins the role to a
    node pool. None: any node."""
    rollout_node_label: str | None = None
    """Run rollout actors (vLLM engines) only on nodes offering this Ray custom resource."""
    node_wait_s: float = Field(300.0, ge=0)
    """When the last node offering `rollout_node_label` leaves, how long the run waits for one
    to join (a replacement pod, the autoscaler) before it stops with a clear error; its rollout
    actors restart there."""


class CheckpointConfig(_Section):
    every_steps: int = Field(50, ge=1)
    """Commit a checkpoint every this many steps (and at the end)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk."""
    export_hf: bool = True
    """Also write an HF-format model (loadable by vLLM) with each checkpoint."""


class LoggingConfig(_Section):
    tensorboard: bool = True
    """Write TensorBoard event files."""
    jsonl: bool = True
    """Write metrics.jsonl."""
    console_every_s: float = Field(10.0, gt=0)
    """Seconds between console progress lines."""


class EvalConfig(_Section):
    enabled: bool = True
    """Evaluate GRPO stages on `data.eval` with the rollout engines: before the first step
    (the previous stage's weights), every `every_steps`, and after the last step."""
    every_steps: int = Field(0, ge=0)
    """Also evaluate every this many steps (0: only before and after the stage)."""
    max_prompts: int = Field(200, ge=1)
    """Held-out prompts per evaluation."""
    first_max_tokens: int = Field(64, ge=1)
    """Token limit of the first (answer) pass."""
    think_max_tokens: int = Field(512, ge=1)
    """Token limit of the think pass."""
    modes: list[Literal["direct", "always_think", "gated"]] = Field(
        default_factory=lambda: ["direct", "always_think", "gated"]
    )
    """Inference modes evaluated (VideoAuto-R1's, for the answer_twice format; a run in
    another `rewards.format` is evaluated in one mode, `answer`: a greedy reply in that
    format, free-form answers graded by the judge)."""
    tau: float | None = Field(None, gt=0, le=1)
    """Gating threshold (None: 0.97 for Qwen2.5-VL, 0.98 for Qwen3-VL)."""


class StageConfig(_Section):
    name: str
    """Stage name; its outputs go to <run_dir>/<name>."""
    algorithm: Literal["sft", "grpo"]
    """SFT (completion tokens only) or GRPO from rollouts."""
    total_steps: int = Field(..., ge=1)
    """Optimizer steps in this stage."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides applied to the run config for this stage."""


class RunConfig(_Section):
    name: str = "run"
    """Run name: the stream key and the run directory use it."""
    output_dir: str = "runs"
    """Parent of run directories."""
    seed: int = 0
    """Run seed: the data order and the rollout engines' sampling unless `data.shuffle_seed` /
    `rollout.seed` set their own, and the weights of a tiny model when this run builds it."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stages: Annotated[list[StageConfig], Field(min_length=1)] = Field(
        default_factory=lambda: [StageConfig(name="rl", algorithm="grpo", total_steps=100)]
    )
    """Stages run in order; each starts from the previous stage's HF export."""

    @model_validator(mode="after")
    def _groups_split_over_ranks(self) -> RunConfig:
        learner = self.learner
        if learner.groups_per_step % learner.num_ranks:
            raise ValueError(
                f"learner.groups_per_step={learner.groups_per_step} must be a multiple of "
                f"learner.num_ranks={learner.num_ranks} (each rank takes an equal share)"
            )
        return self

    @model_validator(mode="after")
    def _grpo_samples(self) -> RunConfig:
        grpo = [s.name for s in self.stages if s.algorithm == "grpo"]
        if grpo and self.rollout.sampling.temperature <= 0:
            raise ValueError(
                f"rollout.sampling.temperature must be > 0 for GRPO stages {grpo}: a group "
                "needs G different samples (temperature 0 is greedy)"
            )
        return self

    @model_validator(mode="after")
    def _engine_gpus_hold_its_workers(self) -> RunConfig:
        tp, gpus = self.rollout.tensor_parallel_size, self.resources.gpus_per_engine
        if tp > 1 and gpus > 0 and gpus != tp:
            raise ValueError(
                f"resources.gpus_per_engine={gpus:g} with rollout.tensor_parallel_size={tp}: "
                f"each tensor-parallel worker needs a GPU of its own (vLLM refuses to start "
                f"{tp} workers on a share of one); set resources.gpus_per_engine: {tp}"
            )
        if tp > 1 and gpus > 0 and self.resources.colocate:
            raise ValueError(
                f"resources.colocate with rollout.tensor_parallel_size={tp}: a colocated engine "
                "shares the learner's one GPU; use tensor_parallel_size: 1"
            )
        return self

    @model_validator(mode="after")
    def _stage_names_unique(self) -> RunConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @property
    def data_seed(self) -> int:
        """Seed of the training data order."""
        return self.seed if self.data.shuffle_seed is None else self.data.shuffle_seed

    @property
    def rollout_seed(self) -> int:
        """Sampling seed of the first rollout engine (later ones add their index)."""
        return self.seed if self.rollout.seed is None else self.rollout.seed
