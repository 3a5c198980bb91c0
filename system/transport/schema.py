"""The wire schema of a rollout group: the typed records a rollout actor publishes and a learner
rank consumes, and the checks every field passes.

A `RolloutGroup` is one prompt (its token ids and a `VisionRef` that says how to re-decode the
video, or `ImageRef`s for its images — never the pixels) and the G sampled completions (`RolloutSample`) with their behaviour
log-probs, rewards and finish reasons. Constructing one validates it; `ProtocolError` names the
offending field. The msgpack codec is `system.transport.protocol`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 3
"""3: `images` (image prompts) joined the group."""
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_INT32_MAX = 2**31 - 1
IDS_DTYPE = np.dtype("<i4")
LOGPROBS_DTYPE = np.dtype("<f4")
FRAMES_DTYPE = np.dtype("<i4")
TIMES_DTYPE = np.dtype("<f8")

Scalar = str | int | float | bool | None
_PLAIN_SCALARS = frozenset({str, int, float, bool})


class ProtocolError(ValueError):
    """A message that does not follow the schema; `field` names where it went wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------- field checks


def check_str(value: Any, name: str, *, empty: bool = True) -> str:
    if type(value) is not str:
        raise ProtocolError(name, f"must be a string, got {type(value).__name__}")
    if not empty and not value:
        raise ProtocolError(name, "must not be empty")
    return value


def check_version_starts(value: Any, tokens: int, name: str) -> tuple[tuple[int, int], ...]:
    """(version, first token) pairs: versions rising, starts rising from 0, each < `tokens`."""
    if type(value) not in (tuple, list):
        raise ProtocolError(name, f"must be a sequence of pairs, got {type(value).__name__}")
    out = []
    for i, pair in enumerate(value):
        if type(pair) not in (tuple, list) or len(pair) != 2:
            raise ProtocolError(f"{name}[{i}]", "must be a (version, first token) pair")
        version = _check_int(pair[0], f"{name}[{i}].version")
        start = _check_int(pair[1], f"{name}[{i}].start")
        if i == 0 and start != 0:
            raise ProtocolError(
                f"{name}[0].start", f"the first version starts at token 0, not {start}"
            )
        if i and (version <= out[-1][0] or start <= out[-1][1]):
            raise ProtocolError(f"{name}[{i}]", "versions and starts must rise")
        if start >= max(tokens, 1):
            raise ProtocolError(f"{name}[{i}].start", f"{start} is past the {tokens} tokens")
        out.append((version, start))
    return tuple(out)


def _check_opt_str(value: Any, name: str) -> str | None:
    return None if value is None else check_str(value, name)


def _check_int(value: Any, name: str, *, low: int = 0) -> int:
    if type(value) is not int:
        raise ProtocolError(name, f"must be an integer, got {type(value).__name__}")
    if value < low:
        raise ProtocolError(name, f"must be >= {low}, got {value}")
    return value


def check_float(value: Any, name: str) -> float:
    # bool is an int subclass: a reward of True is a bug upstream, not a number.
    if type(value) not in (float, int):
        raise ProtocolError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(name, f"must be finite, got {value}")
    return float(value)


def _check_opt_float(value: Any, name: str) -> float | None:
    return None if value is None else check_float(value, name)


def as_array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A read-only 1-D array of `dtype` holding valid values (a view when no conversion is
    needed): ids in [0, 2^31), floats finite."""
    if type(value) is np.ndarray and value.dtype == dtype and value.ndim == 1:
        arr = value  # the decoder's case: already the wire dtype
    else:
        arr = _convert(value, dtype, name)
    if dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise ProtocolError(name, f"values must lie in [0, {_INT32_MAX}]")
    # One sum screens for NaN and inf (they propagate through it) without a temporary; only
    # a non-finite sum, which finite values can also reach by overflowing, is looked at closely.
    elif not math.isfinite(np.add.reduce(arr)) and not np.isfinite(arr).all():
        raise ProtocolError(name, "holds a non-finite value (NaN or inf)")
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _convert(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ProtocolError(name, f"must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(dtype)
    if dtype.kind == "i":
        if arr.dtype.kind not in "iu":
            raise ProtocolError(name, f"must hold integers, got dtype {arr.dtype}")
        # Checked before narrowing, which would wrap silently.
        if arr.min() < 0 or arr.max() > _INT32_MAX:
            raise ProtocolError(name, f"values must lie in [0, {_INT32_MAX}]")
    elif arr.dtype.kind not in "fiu":
        raise ProtocolError(name, f"must hold numbers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _check_meta(value: Any, name: str) -> dict[str, Scalar]:
    if type(value) is not dict:
        raise ProtocolError(name, f"must be a map of str -> scalar, got {type(value).__name__}")
    for key, item in value.items():
        kind = type(item)
        if type(key) is str and (kind in _PLAIN_SCALARS or item is None):
            if kind is float and not math.isfinite(item):
                raise ProtocolError(f"{name}[{key!r}]", f"must be finite, got {item}")
            continue
        check_str(key, f"{name} key")
        where = f"{name}[{key!r}]"
        if isinstance(item, dict | list | tuple | bytes | bytearray | np.ndarray):
            raise ProtocolError(
                where, "must be a scalar (str, int, float, bool, None); nesting is not allowed"
            )
        if type(item) is float and not math.isfinite(item):
            raise ProtocolError(where, f"must be finite, got {item}")
        if item is not None and type(item) not in (str, int, float, bool):
            raise ProtocolError(where, f"must be a scalar, got {type(item).__name__}")
    return value


def check_components(value: Any, name: str) -> dict[str, float]:
    if type(value) is not dict:
        raise ProtocolError(name, f"must be a map of str -> number, got {type(value).__name__}")
    return {check_str(k, f"{name} key"): check_float(v, f"{name}[{k!r}]") for k, v in value.items()}


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class VisionRef:
    """How to re-decode the video of a prompt: the same frames at the same size, by reference."""

    path: str
    """Video file path (absolute, or as resolved by the producer) or URI."""
    frame_indices: tuple[int, ...]
    """Absolute frame indices in the file, in order."""
    height: int
    """Frame height after resizing, pixels."""
    width: int
    """Frame width after resizing, pixels."""
    fps: float
    """Native frame rate of the file."""
    timestamps: tuple[float, ...]
    """Presentation time (seconds) of each sampled frame, one per frame index."""
    content_hash: str
    """Hash of the decoded frames; a re-decode must reproduce it."""
    start: float | None = None
    """Start (seconds) of the span the frames were sampled from, if any."""
    end: float | None = None
    """End (seconds) of the span the frames were sampled from, if any."""

    def __post_init__(self) -> None:
        check_str(self.path, "vision.path", empty=False)
        frames = tuple(as_array(self.frame_indices, FRAMES_DTYPE, "vision.frame_indices").tolist())
        times = tuple(as_array(self.timestamps, TIMES_DTYPE, "vision.timestamps").tolist())
        if len(times) != len(frames):
            raise ProtocolError(
                "vision.timestamps",
                f"has {len(times)} entries but frame_indices has {len(frames)}; give one per frame",
            )
        object.__setattr__(self, "frame_indices", frames)
        object.__setattr__(self, "timestamps", times)
        _check_int(self.height, "vision.height", low=1)
        _check_int(self.width, "vision.width", low=1)
        object.__setattr__(self, "fps", check_float(self.fps, "vision.fps"))
        if self.fps <= 0:
            raise ProtocolError("vision.fps", f"must be > 0, got {self.fps}")
        check_str(self.content_hash, "vision.content_hash")
        start = _check_opt_float(self.start, "vision.start")
        end = _check_opt_float(self.end, "vision.end")
        if start is not None and end is not None and end < start:
            raise ProtocolError("vision.end", f"must be >= start ({start}), got {end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """How to re-decode one image of a prompt: the same pixels at the same size."""

    path: str
    """Image file path (absolute, or as resolved by the producer)."""
    height: int
    """Height after resizing, pixels."""
    width: int
    """Width after resizing, pixels."""
    content_hash: str
    """Hash of the decoded, resized pixels; a re-decode must reproduce it."""

    def __post_init__(self) -> None:
        check_str(self.path, "images[].path", empty=False)
        _check_int(self.height, "images[].height", low=1)
        _check_int(self.width, "images[].width", low=1)
        check_str(self.content_hash, "images[].content_hash")


@dataclass(frozen=True, slots=True, eq=False)
class RolloutSample:
    """One sampled completion of a group: tokens, behaviour log-probs, reward."""

    completion_ids: np.ndarray
    """Completion token ids, int32 [T]."""
    logprobs: np.ndarray
    """Log-probability of each completion token under the behaviour policy, float32 [T]."""
    reward: float
    """Total reward."""
    reward_components: dict[str, float] = field(default_factory=dict)
    """Named parts of the reward (e.g. task, format), as the reward function reports them."""
    finish_reason: str = "stop"
    """Why generation ended (stop, length, ...)."""
    version_starts: tuple[tuple[int, int], ...] = ()
    """For a completion sampled across weight updates: (weight version, index of the first
    token it sampled) of each version, oldest first, the first at token 0. Empty: every token
    came from the group's `weight_version`."""

    def __post_init__(self) -> None:
        ids = as_array(self.completion_ids, IDS_DTYPE, "completion_ids")
        logprobs = as_array(self.logprobs, LOGPROBS_DTYPE, "logprobs")
        if len(logprobs) != len(ids):
            raise ProtocolError(
                "logprobs", f"has {len(logprobs)} entries but completion_ids has {len(ids)}"
            )
        object.__setattr__(self, "completion_ids", ids)
        object.__setattr__(self, "logprobs", logprobs)
        object.__setattr__(self, "reward", check_float(self.reward, "reward"))
        components = check_components(self.reward_components, "reward_components")
        object.__setattr__(self, "reward_components", components)
        check_str(self.finish_reason, "finish_reason")
        starts = check_version_starts(self.version_starts, len(ids), "version_starts")
        object.__setattr__(self, "version_starts", starts)

    @property
    def oldest_version(self) -> int | None:
        """The oldest weight version that sampled a token of it (None: not recorded)."""
        return self.version_starts[0][0] if self.version_starts else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RolloutSample):
            return NotImplemented
        return (
            np.array_equal(self.completion_ids, other.completion_ids)
            and np.array_equal(self.logprobs, other.logprobs)
            and self.reward == other.reward
            and self.reward_components == other.reward_components
            and self.finish_reason == other.finish_reason
            and self.version_starts == other.version_starts
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class RolloutGroup:
    """G completions of one prompt, scored: the unit a learner rank consumes."""

    run_id: str
    """Run the group belongs to."""
    group_id: str
    """UUID of the group; the learner skips group ids it has already applied."""
    record_id: str
    """Dataset record (prompt) id."""
    weight_version: int
    """Policy weight version that generated the samples: for samples sampled across weight
    updates, the oldest (what staleness and admission count)."""
    created_at: float
    """Unix time generation started."""
    finished_at: float
    """Unix time the group was scored."""
    prompt_ids: np.ndarray
    """Prompt token ids as the engine saw them, int32 [P]."""
    vision: VisionRef | None
    """The video of the prompt, by reference (None: text-only prompt)."""
    samples: tuple[RolloutSample, ...]
    """The G completions."""
    problem_type: str = ""
    """Task kind (multiple choice, numerical, temporal grounding, ...)."""
    answer: str = ""
    """Ground-truth answer, for the learner's logs and checks."""
    stage: str | None = None
    """Training stage that produced the group."""
    meta: dict[str, Scalar] = field(default_factory=dict)
    """Small extras, str -> scalar."""
    images: tuple[ImageRef, ...] = ()
    """The images of the prompt, by reference, in prompt order (none for a video or a
    text-only prompt)."""

    def __post_init__(self) -> None:
        check_str(self.run_id, "run_id", empty=False)
        check_str(self.group_id, "group_id", empty=False)
        try:
            uuid.UUID(self.group_id)
        except ValueError:
            raise ProtocolError("group_id", f"must be a UUID, got {self.group_id!r}") from None
        check_str(self.record_id, "record_id")
        _check_int(self.weight_version, "weight_version")
        object.__setattr__(self, "created_at", check_float(self.created_at, "created_at"))
        object.__setattr__(self, "finished_at", check_float(self.finished_at, "finished_at"))
        object.__setattr__(self, "prompt_ids", as_array(self.prompt_ids, IDS_DTYPE, "prompt_ids"))
        if self.vision is not None and not isinstance(self.vision, VisionRef):
            raise ProtocolError(
                "vision", f"must be a VisionRef or None, got {type(self.vision).__name__}"
            )
        images = tuple(self.images)
        for i, image in enumerate(images):
            if not isinstance(image, ImageRef):
                raise ProtocolError(
                    f"images[{i}]", f"must be an ImageRef, got {type(image).__name__}"
                )
        if images and self.vision is not None:
            raise ProtocolError("images", "a prompt carries a video or images, not both")
        object.__setattr__(self, "images", images)
        samples = tuple(self.samples)
        if not samples:
            raise ProtocolError("samples", "a group needs at least one sample")
        for i, sample in enumerate(samples):
            if not isinstance(sample, RolloutSample):
                raise ProtocolError(
                    f"samples[{i}]", f"must be a RolloutSample, got {type(sample).__name__}"
                )
            oldest = sample.oldest_version
            if oldest is not None and oldest < self.weight_version:
                raise ProtocolError(
                    f"samples[{i}].version_starts",
                    f"version {oldest} is older than the group's weight_version "
                    f"{self.weight_version} (which must be the oldest)",
                )
        object.__setattr__(self, "samples", samples)
        check_str(self.problem_type, "problem_type")
        check_str(self.answer, "answer")
        _check_opt_str(self.stage, "stage")
        _check_meta(self.meta, "meta")

    @staticmethod
    def new_group_id() -> str:
        """A fresh random group id."""
        return str(uuid.uuid4())

    @property
    def rewards(self) -> np.ndarray:
        """The G total rewards, float64 [G]."""
        return np.array([s.reward for s in self.samples], dtype=np.float64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RolloutGroup):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            if f == "prompt_ids"
            else getattr(self, f) == getattr(other, f)
            for f in self.__dataclass_fields__
        )

    __hash__ = None  # type: ignore[assignment]
